"""Run a real `cfnet policy-server serve` process for tests, benchmarks and the lab.

    with policy_server(tmp_path, db_config) as ps:
        requests.post(ps.external_url + "/networking/v1/external/policies",
                      headers={"Authorization": f"Bearer {ps.admin_token}"}, json=...)
        requests.get(ps.internal_url + "/networking/v1/internal/policies",
                     cert=ps.client_cert, verify=str(ps.client_tls.ca))

The harness writes certificates (or reuses a given bundle), a static-tokens file (an admin token
and a `network.write` token), the external and internal configs, starts
`python -m cfnet policy-server serve` (optionally inside a network namespace with
`ip netns exec`), waits until both `/health` endpoints answer, and stops the process with SIGTERM
on exit (SIGKILL if it does not stop in time). Ports default to 0: the server picks free ones
and logs them in its `starting-servers` line, which the harness reads, so runs never collide.
Pass `external={...}` / `internal={...}` to override config keys (e.g. `uaa_url`, `cc_url`,
`max_policies`), and `asg_syncer={...}` to run the ASG syncer in the same process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cfnet.store.db import DatabaseConfig
from cfnet.testing import procs
from cfnet.web.tls import Bundle, TLSFiles, generate_bundle

ADMIN_TOKEN = "cfnet-admin-token"
WRITE_TOKEN = "cfnet-write-token"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class PolicyServerFailed(RuntimeError):
    """The server process exited or did not become healthy in time."""


@dataclass
class RunningPolicyServer:
    external_url: str  # http(s)://host:port (the external API root)
    internal_url: str  # https://host:port (mutual TLS)
    health_url: str  # http://host:port/health (internal health listener)
    debug_url: str  # http://host:port (POST /log-level, GET /metrics)
    admin_token: str  # network.admin
    write_token: str  # network.write
    client_tls: TLSFiles  # a client certificate the internal API accepts, and the CA
    bundle: Bundle
    database: DatabaseConfig
    config_path: Path
    internal_config_path: Path
    tokens_path: Path
    stdout_path: Path
    stderr_path: Path
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def client_cert(self) -> tuple[str, str]:
        """`cert=` for requests."""
        return str(self.client_tls.cert), str(self.client_tls.key)

    @property
    def ca_file(self) -> str:
        return str(self.client_tls.ca)

    def log_lines(self) -> list[dict[str, Any]]:
        return procs.json_log_lines(self.stdout_path)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait, SIGKILL if needed; the exit code."""
        return procs.stop(self.process, timeout)


def _db_block(database: DatabaseConfig) -> dict[str, Any]:
    return {k: v for k, v in asdict(database).items() if v not in ("", None)}


def write_tokens(path: Path, admin: str = ADMIN_TOKEN, write: str = WRITE_TOKEN) -> Path:
    path.write_text(json.dumps({"tokens": [
        {"token": admin, "user_name": "admin", "scopes": ["network.admin"]},
        {"token": write, "user_name": "developer", "sub": "developer-guid",
         "scopes": ["network.write"]},
    ]}, indent=2))
    return path


def policy_server_configs(bundle: Bundle, database: DatabaseConfig, tokens_path: Path | None,
                          listen_host: str = "127.0.0.1") -> tuple[dict[str, Any], dict[str, Any]]:
    """External and internal config dicts (upstream keys), free ports, static tokens."""
    external: dict[str, Any] = {
        "listen_host": listen_host, "listen_port": 0,
        "debug_server_host": listen_host, "debug_server_port": 0,
        "log_prefix": "cfnetworking", "log_level": "info",
        "database": _db_block(database), "tag_length": 2, "max_policies": 150,
        "cleanup_interval": 3600, "request_timeout": 5,
    }
    if tokens_path is not None:
        external["static_tokens_file"] = str(tokens_path)
    internal: dict[str, Any] = {
        "listen_host": listen_host, "internal_listen_port": 0,
        "health_check_host": listen_host, "health_check_port": 0,
        "debug_server_host": listen_host, "debug_server_port": 0,
        "ca_cert_file": str(bundle.ca_cert), "server_cert_file": str(bundle.server.cert),
        "server_key_file": str(bundle.server.key),
        "log_prefix": "cfnetworking", "log_level": "info",
        "database": _db_block(database), "tag_length": 2,
    }
    return external, internal


def start_policy_server(workdir: str | Path, database: DatabaseConfig, *,
                        bundle: Bundle | None = None, listen_host: str = "127.0.0.1",
                        netns: str | None = None, external: dict[str, Any] | None = None,
                        internal: dict[str, Any] | None = None,
                        asg_syncer: dict[str, Any] | None = None,
                        startup_timeout: float = 60.0) -> RunningPolicyServer:
    """Start a server and wait until it is healthy. `external`/`internal` override config keys."""
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    if bundle is None:
        bundle = generate_bundle(work / "certs", server_names=[listen_host, "localhost"])
    tokens_path = write_tokens(work / "tokens.json")
    ext_cfg, int_cfg = policy_server_configs(bundle, database, tokens_path, listen_host)
    ext_cfg.update(external or {})
    int_cfg.update(internal or {})
    n = len(list(work.glob("policy-server-*.json")))
    config_path = work / f"policy-server-{n}.json"
    internal_path = work / f"policy-server-internal-{n}.json"
    config_path.write_text(json.dumps(ext_cfg, indent=2))
    internal_path.write_text(json.dumps(int_cfg, indent=2))
    command = [sys.executable, "-m", "cfnet", "policy-server", "serve",
               "--config-file", str(config_path), "--internal-config-file", str(internal_path)]
    if asg_syncer is not None:
        syncer_path = work / f"policy-server-asg-syncer-{n}.json"
        syncer_cfg = {"database": _db_block(database), "log_prefix": "cfnetworking",
                      "uuid": "test-syncer", **asg_syncer}
        syncer_path.write_text(json.dumps(syncer_cfg, indent=2))
        command += ["--asg-syncer-config-file", str(syncer_path)]
    if netns:
        command = ["ip", "netns", "exec", netns, *command]
    out, err = work / f"policy-server-{n}.stdout", work / f"policy-server-{n}.stderr"
    process = procs.launch(command, out, err)

    def failure(what: str) -> PolicyServerFailed:
        return PolicyServerFailed(procs.failure_text("policy-server", what, process, err))

    try:
        addresses = procs.wait_for_servers(process, out, failure, startup_timeout)
        scheme = "https" if ext_cfg.get("enable_tls") else "http"
        running = RunningPolicyServer(
            external_url=f"{scheme}://{addresses['external']}",
            internal_url=f"https://{addresses['internal']}",
            health_url=f"http://{addresses['health']}/health",
            debug_url=f"http://{addresses['debug']}",
            admin_token=ADMIN_TOKEN, write_token=WRITE_TOKEN, client_tls=bundle.client,
            bundle=bundle, database=database, config_path=config_path,
            internal_config_path=internal_path, tokens_path=tokens_path,
            stdout_path=out, stderr_path=err, process=process)
        procs.wait_healthy(process, lambda: _healthy(running.health_url), failure, startup_timeout)
        if scheme == "http":
            procs.wait_healthy(process, lambda: _healthy(running.external_url + "/health"),
                               failure, startup_timeout)
    except BaseException:
        procs.kill(process)
        raise
    return running


@contextmanager
def policy_server(workdir: str | Path, database: DatabaseConfig,
                  **kwargs: Any) -> Iterator[RunningPolicyServer]:
    """`start_policy_server` as a context manager that always stops the process."""
    running = start_policy_server(workdir, database, **kwargs)
    try:
        yield running
    finally:
        running.stop()


def _healthy(url: str) -> bool:
    try:
        with _OPENER.open(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False
