"""adapter.json: the garden-cni job's config for the hook, with upstream's keys and error texts.

Keys match case-insensitively and unknown keys are ignored, as Go's decoder does. Validation
stops at the first missing key, in upstream's order, with `missing required config '<key>'`.
One cfnet key is added: `cni_cache_dir` (libcni's cache directory, default /var/lib/cni), so that
tests and labs can keep the result cache away from the host's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cfnet.garden import gojson

DEFAULT_CACHE_DIR = "/var/lib/cni"
DEFAULT_LOG_PREFIX = "cfnetworking"

# key -> Go type, in upstream's struct order (type errors name the Go type).
_FIELDS: dict[str, str] = {
    "cni_plugin_dir": "string",
    "cni_config_dir": "string",
    "bind_mount_dir": "string",
    "state_file": "string",
    "start_port": "uint32",
    "total_ports": "uint32",
    "log_prefix": "string",
    "search_domains": "[]string",
    "iptables_lock_file": "string",
    "proxy_redirect_cidr": "string",
    "proxy_port": "int",
    "proxy_uid": "int",
    "enable_ingress_proxy_redirect": "bool",
    "cni_cache_dir": "string",
}
# Checked in this order; a zero value (or a missing proxy_uid) is "missing".
_REQUIRED = ("cni_plugin_dir", "cni_config_dir", "bind_mount_dir", "state_file", "start_port",
             "total_ports", "log_prefix", "iptables_lock_file", "proxy_port", "proxy_uid")


class ConfigError(Exception):
    """One line for the operator; `log_prefix` is what upstream would prefix it with."""

    def __init__(self, message: str, log_prefix: str = "") -> None:
        super().__init__(message)
        self.log_prefix = log_prefix


@dataclass
class AdapterConfig:
    cni_plugin_dir: str = ""
    cni_config_dir: str = ""
    bind_mount_dir: str = ""
    state_file: str = ""
    start_port: int = 0
    total_ports: int = 0
    log_prefix: str = ""
    search_domains: list[str] = field(default_factory=list)
    iptables_lock_file: str = ""
    proxy_redirect_cidr: str = ""
    proxy_port: int = 0
    proxy_uid: int | None = None
    enable_ingress_proxy_redirect: bool = False
    cni_cache_dir: str = DEFAULT_CACHE_DIR

    @property
    def plugin_path(self) -> list[str]:
        """Where plugins are looked up by type (`:`-separated like CNI_PATH)."""
        return [p for p in self.cni_plugin_dir.split(":") if p]


def parse(data: bytes | str, path: str) -> AdapterConfig:
    """Decode and validate; ConfigError carries upstream's text and the prefix to print."""
    cfg = AdapterConfig()
    try:
        raw = gojson.unmarshal(data)
    except gojson.GoJSONError as e:
        raise ConfigError(f"parsing config ({path}): {e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"parsing config ({path}): json: cannot unmarshal "
                          f"{gojson.kind(raw).split(' ')[0]} into Go value of type config.Config")
    # Go fills fields in input order; a type error is remembered and decoding goes on, so
    # later valid fields (log_prefix, for the error line) are still set.
    lowered = {k.lower(): k for k in _FIELDS}
    first_error: gojson.GoJSONError | None = None
    for key, value in raw.items():
        name = key if key in _FIELDS else lowered.get(key.lower())
        if name is None:
            continue
        try:
            checked = gojson.go_value(value, "Config", name, _FIELDS[name])
        except gojson.GoJSONError as e:
            first_error = first_error or e
            continue
        if checked is not None:
            setattr(cfg, name, checked)
    if first_error is not None:
        raise ConfigError(f"parsing config ({path}): {first_error}", cfg.log_prefix)
    for name in _REQUIRED:
        value = getattr(cfg, name)
        if value is None or value == "" or (value == 0 and name != "proxy_uid"):
            raise ConfigError(f"missing required config '{name}'", cfg.log_prefix)
    if not cfg.cni_cache_dir:
        cfg.cni_cache_dir = DEFAULT_CACHE_DIR
    return cfg


def load(path: str) -> AdapterConfig:
    """Read adapter.json at `path` (upstream: stat first, then read, then decode)."""
    try:
        os.stat(path)
    except OSError as e:
        raise ConfigError(f"file does not exist: stat {path}: {_go_errno(e)}") from None
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"reading config file: read {path}: {_go_errno(e)}") from None
    return parse(data, path)


def _go_errno(e: OSError) -> str:
    """Go's syscall.Errno text: strerror in lower case ("no such file or directory")."""
    text = os.strerror(e.errno) if e.errno else str(e)
    return text[:1].lower() + text[1:]
