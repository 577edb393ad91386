"""Config of the policy server roles: upstream keys (spec 8), JSON or TOML, plus a few cfnet keys.

Three upstream jobs, three dataclasses: `ExternalConfig` (policy-server), `InternalConfig`
(policy-server-internal) and `SyncerConfig` (policy-server-asg-syncer). `cfnet policy-server serve`
runs them in one process; the internal and syncer configs come from their own files or from the
`internal` / `asg_syncer` blocks of the external file, which inherit `database`, `tag_length`,
`log_prefix`, `log_level` and the UAA/CC keys they do not set.

cfnet keys (not upstream): `static_tokens_file` (tokens without UAA), `request_timeout` (upstream
renders it and ignores it; cfnet uses it as the timeout of every UAA and Cloud Controller call),
`health_check_host`, `watch_max_wait_seconds`, and the two nested blocks.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfnet.core.config import build_config, read_config_file
from cfnet.core.errors import ConfigError
from cfnet.store.db import DatabaseConfig

LOG_LEVELS = ("debug", "info", "error", "fatal")
PORT = {"min": 0, "max": 65535}
# Keys a nested `internal` / `asg_syncer` block takes from the external config when it omits them.
INHERITED = ("database", "tag_length", "log_prefix", "log_level", "max_open_connections",
             "max_idle_connections", "connections_max_lifetime_seconds", "metron_address",
             "uaa_client", "uaa_client_secret", "uaa_url", "uaa_port", "uaa_ca", "cc_url",
             "cc_ca_cert", "skip_ssl_validation", "request_timeout", "listen_host")


@dataclass
class ExternalConfig:
    """`policy-server` (spec 8.1)."""

    listen_host: str = "0.0.0.0"
    listen_port: int = field(default=4002, metadata=PORT)
    log_prefix: str = "cfnetworking"
    log_level: str = field(default="info", metadata={"choices": LOG_LEVELS})
    debug_server_host: str = "127.0.0.1"
    debug_server_port: int = field(default=31821, metadata=PORT)
    enable_tls: bool = False
    server_cert_file: str = ""
    server_key_file: str = ""
    uaa_client: str = ""
    uaa_client_secret: str = ""
    uaa_url: str = ""
    uaa_port: int = field(default=8443, metadata=PORT)
    uaa_ca: str = ""
    cc_url: str = ""
    cc_ca_cert: str = ""
    skip_ssl_validation: bool = False
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    database_migration_timeout: int = field(default=600, metadata={"min": 1})
    tag_length: int = field(default=2, metadata={"min": 1, "max": 3})
    metron_address: str = ""
    cleanup_interval: int = field(default=3600, metadata={"min": 1})
    cc_app_request_chunk_size: int = 100  # upstream ignores it too (chunks are always 100)
    max_policies: int = field(default=150, metadata={"min": 1})
    enable_space_developer_self_service: bool = False
    allowed_cors_domains: list[str] = field(default_factory=list)
    max_open_connections: int = field(default=200, metadata={"min": 0})
    max_idle_connections: int = field(default=10, metadata={"min": 0})
    connections_max_lifetime_seconds: int = field(default=3600, metadata={"min": 0})
    ca_cert_file: str = ""  # rendered by the BOSH template, unused (as upstream)
    request_timeout: int = field(default=5, metadata={"min": 1})
    static_tokens_file: str = ""
    internal: dict[str, Any] | None = None
    asg_syncer: dict[str, Any] | None = None

    def validate(self) -> None:
        self.database.validate()
        if self.enable_tls and not (self.server_cert_file and self.server_key_file):
            raise ConfigError("invalid config: key 'server_cert_file' and 'server_key_file' are "
                              "required when enable_tls is true")
        if not self.static_tokens_file:
            for key in ("uaa_url", "uaa_client", "cc_url"):
                if not getattr(self, key):
                    raise ConfigError(f"invalid config: key '{key}' is required "
                                      "(or set 'static_tokens_file')")

    @property
    def uaa_base_url(self) -> str:
        """Upstream builds it as `uaa_url + ":" + uaa_port`."""
        if not self.uaa_url:
            return ""
        return f"{self.uaa_url.rstrip('/')}:{self.uaa_port}" if self.uaa_port else self.uaa_url


@dataclass
class InternalConfig:
    """`policy-server-internal` (spec 8.2)."""

    listen_host: str = "0.0.0.0"
    internal_listen_port: int = field(default=4003, metadata=PORT)
    health_check_host: str = "127.0.0.1"
    health_check_port: int = field(default=31946, metadata=PORT)
    health_check_timeout_seconds: int = 5
    debug_server_host: str = "127.0.0.1"
    debug_server_port: int = field(default=31945, metadata=PORT)
    ca_cert_file: str = field(default="", metadata={"required": True})
    server_cert_file: str = field(default="", metadata={"required": True})
    server_key_file: str = field(default="", metadata={"required": True})
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    tag_length: int = field(default=2, metadata={"min": 1, "max": 3})
    metron_address: str = ""
    log_prefix: str = "cfnetworking"
    log_level: str = field(default="info", metadata={"choices": LOG_LEVELS})
    max_open_connections: int = field(default=200, metadata={"min": 0})
    max_idle_connections: int = field(default=10, metadata={"min": 0})
    connections_max_lifetime_seconds: int = field(default=3600, metadata={"min": 0})
    watch_max_wait_seconds: int = field(default=120, metadata={"min": 0})

    def validate(self) -> None:
        self.database.validate()


@dataclass
class SyncerConfig:
    """`policy-server-asg-syncer` (spec 8.3). The Locket keys are accepted and unused."""

    asg_poll_interval_seconds: int = field(default=60, metadata={"min": 1})
    retry_deadline_seconds: int = field(default=300, metadata={"min": 0})
    uuid: str = ""
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    uaa_client: str = ""
    uaa_client_secret: str = ""
    uaa_url: str = ""
    uaa_port: int = field(default=8443, metadata=PORT)
    uaa_ca: str = ""
    cc_url: str = field(default="", metadata={"required": True})
    cc_ca_cert: str = ""
    cc_internal_url: str = field(default="", metadata={"required": True})
    cc_internal_ca_cert: str = ""
    cc_internal_client_cert: str = ""
    cc_internal_client_key: str = ""
    log_prefix: str = "cfnetworking"
    log_level: str = field(default="info", metadata={"choices": LOG_LEVELS})
    metron_address: str = ""
    skip_ssl_validation: bool = False
    request_timeout: int = field(default=5, metadata={"min": 1})
    tag_length: int = field(default=2, metadata={"min": 1, "max": 3})
    locket_address: str = ""
    locket_ca_cert_file: str = ""
    locket_client_cert_file: str = ""
    locket_client_key_file: str = ""
    max_open_connections: int = 1
    max_idle_connections: int = 1
    connections_max_lifetime_seconds: int = 3600

    def validate(self) -> None:
        self.database.validate()

    @property
    def uaa_base_url(self) -> str:
        if not self.uaa_url:
            return ""
        return f"{self.uaa_url.rstrip('/')}:{self.uaa_port}" if self.uaa_port else self.uaa_url


@dataclass
class ServeConfig:
    """What `serve` runs: the external server, the internal server and the syncer, if configured."""

    external: ExternalConfig | None
    internal: InternalConfig | None
    syncer: SyncerConfig | None


def _nested(external_data: dict[str, Any], block: str, cls: type[Any]) -> Any:
    data = external_data.get(block)
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config: key '{block}': expected an object")
    merged = {k: external_data[k] for k in INHERITED
              if k in external_data and k not in data and k in cls.__dataclass_fields__}
    merged.update(data)
    cfg = build_config(merged, cls, prefix=block + ".")
    cfg.validate()
    return cfg


def load_external(path: str | Path) -> tuple[ExternalConfig, dict[str, Any]]:
    data = read_config_file(path)
    cfg = build_config(data, ExternalConfig)
    cfg.validate()
    return cfg, data


def load_internal(path: str | Path) -> InternalConfig:
    cfg = build_config(read_config_file(path), InternalConfig)
    cfg.validate()
    return cfg


def load_syncer(path: str | Path) -> SyncerConfig:
    cfg = build_config(read_config_file(path), SyncerConfig)
    cfg.validate()
    return cfg


def load_serve(config_file: str | Path | None, internal_file: str | Path | None = None,
               syncer_file: str | Path | None = None) -> ServeConfig:
    """The configs `serve` runs; the files win over the nested blocks of the external file."""
    external, internal, syncer = None, None, None
    data: dict[str, Any] = {}
    if config_file:
        external, data = load_external(config_file)
    internal = load_internal(internal_file) if internal_file else _nested(data, "internal",
                                                                           InternalConfig)
    syncer = load_syncer(syncer_file) if syncer_file else _nested(data, "asg_syncer", SyncerConfig)
    return ServeConfig(external, internal, syncer)


@dataclass(frozen=True)
class StaticToken:
    token: str
    user_name: str
    scopes: tuple[str, ...]
    sub: str


def load_static_tokens(path: str | Path) -> dict[str, StaticToken]:
    """`{"tokens": [{"token", "user_name", "scopes", "sub"?}]}` from JSON or TOML, by token."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"invalid config: key 'static_tokens_file': {p}: "
                          f"{e.strerror or e}") from None
    try:
        data = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"invalid config: key 'static_tokens_file': {p}: {e}") from None
    tokens = data.get("tokens") if isinstance(data, dict) else None
    if not isinstance(tokens, list):
        raise ConfigError(f"invalid config: key 'static_tokens_file': {p}: "
                          "expected an object with a 'tokens' list")
    out: dict[str, StaticToken] = {}
    first_seen: dict[str, int] = {}
    for i, t in enumerate(tokens):
        where = f"invalid config: key 'static_tokens_file': {p}: tokens[{i}]"
        if not isinstance(t, dict) or not isinstance(t.get("token"), str) or not t["token"]:
            raise ConfigError(f"{where}: 'token' must be a non-empty string")
        scopes = t.get("scopes", [])
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise ConfigError(f"{where}: 'scopes' must be a list of strings")
        user = t.get("user_name", "")
        sub = t.get("sub", "") or user
        if not isinstance(user, str) or not isinstance(sub, str):
            raise ConfigError(f"{where}: 'user_name' and 'sub' must be strings")
        unknown = sorted(set(t) - {"token", "user_name", "scopes", "sub"})
        if unknown:
            raise ConfigError(f"{where}: unknown key '{unknown[0]}'")
        if t["token"] in first_seen:  # name positions only: the value is a secret
            raise ConfigError(f"{where}: duplicate token (same as tokens[{first_seen[t['token']]}])")
        first_seen[t["token"]] = i
        out[t["token"]] = StaticToken(t["token"], user, tuple(scopes), sub)
    return out


def _check_pem_certs(path: str, key: str) -> None:
    from cryptography import x509

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"invalid config: key '{key}': cannot read {path}: "
                          f"{e.strerror or e}") from None
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(f"invalid config: key '{key}': {path} holds no PEM certificate") \
            from None


def _check_pair(cert: str, key: str, ca: str, keys: dict[str, str]) -> None:
    """check_tls_files with the config key names; without a CA, the certificate stands in."""
    from cfnet.web.tls import TLSFileError, TLSFiles, check_tls_files

    try:
        check_tls_files(TLSFiles(Path(cert), Path(key), Path(ca or cert)))
    except TLSFileError as e:
        raise ConfigError(f"invalid config: key '{keys[e.which]}': {e.problem}") from None


def check_files(config: ServeConfig, roles: tuple[str, ...]) -> None:
    """Every file a role will read (TLS pairs, CAs, static tokens), checked before any database
    work, so a bad one is one line naming its key (exit 3) instead of a failure after migrating."""
    ext, internal, syncer = config.external, config.internal, config.syncer
    if "internal" in roles and internal is not None:
        _check_pair(internal.server_cert_file, internal.server_key_file, internal.ca_cert_file,
                    {"ca": "ca_cert_file", "cert": "server_cert_file", "key": "server_key_file"})
    if "external" in roles and ext is not None:
        if ext.enable_tls:
            _check_pair(ext.server_cert_file, ext.server_key_file, "",
                        {"ca": "server_cert_file", "cert": "server_cert_file",
                         "key": "server_key_file"})
        if ext.static_tokens_file:
            load_static_tokens(ext.static_tokens_file)
        for key in ("uaa_ca", "cc_ca_cert"):
            if getattr(ext, key):
                _check_pem_certs(getattr(ext, key), key)
    if "asg-syncer" in roles and syncer is not None:
        for key in ("uaa_ca", "cc_ca_cert", "cc_internal_ca_cert"):
            if getattr(syncer, key):
                _check_pem_certs(getattr(syncer, key), key)
        if syncer.cc_internal_client_cert or syncer.cc_internal_client_key:
            _check_pair(syncer.cc_internal_client_cert, syncer.cc_internal_client_key, "",
                        {"ca": "cc_internal_client_cert", "cert": "cc_internal_client_cert",
                         "key": "cc_internal_client_key"})
