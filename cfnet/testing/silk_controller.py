"""Run a real `cfnet silk-controller` process for tests, benchmarks and the lab.

    with silk_controller(tmp_path, db_config) as ctl:
        with ctl.client() as client:
            lease = client.acquire("10.244.0.5")

The harness writes certificates (or reuses a given bundle) and a config file, starts
`python -m cfnet silk-controller` (optionally inside a network namespace with `ip netns exec`),
waits until `/health` answers, and stops the process with SIGTERM on exit, killing it if it does
not stop in time. With `netns`, health is probed from inside that namespace (nothing is sent from
the caller's namespace), and the URLs are addresses inside it. Ports default to 0: the controller picks free ones and logs them, and the harness
reads them from its `starting-servers` line, so parallel runs never collide.
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


# Never through an HTTP proxy from the environment: the controller is local (or in a lab netns).
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ControllerFailed(RuntimeError):
    """The controller process exited or did not become healthy in time."""


@dataclass
class RunningController:
    url: str  # https://host:port of the lease API
    health_url: str  # http://host:port/health
    debug_url: str  # http://host:port of the debug listener (/log-level, /metrics)
    client_tls: TLSFiles  # a client certificate the controller accepts, and the CA to trust
    bundle: Bundle
    config_path: Path
    stdout_path: Path
    stderr_path: Path
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def client(self, timeout: float = 5.0) -> Any:
        from cfnet.silk.lease_client import LeaseClient

        return LeaseClient(self.url, self.client_tls, timeout=timeout)

    def log_lines(self) -> list[dict[str, Any]]:
        """The controller's JSON log lines so far."""
        return procs.json_log_lines(self.stdout_path)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait, SIGKILL if needed; the exit code."""
        return procs.stop(self.process, timeout)


def controller_config(bundle: Bundle, database: DatabaseConfig, **overrides: Any) -> dict[str, Any]:
    """A config dict with the upstream keys, test-friendly (free ports, short metrics interval)."""
    config: dict[str, Any] = {
        "listen_host": "127.0.0.1",
        "listen_port": 0,
        "health_check_port": 0,
        "debug_server_port": 0,
        "ca_cert_file": str(bundle.ca_cert),
        "server_cert_file": str(bundle.server.cert),
        "server_key_file": str(bundle.server.key),
        "network": "10.255.0.0/16",
        "subnet_prefix_length": 24,
        "lease_expiration_seconds": 604800,
        "metrics_emit_seconds": 5,
        "staleness_threshold_seconds": 3600,
        "log_prefix": "cfnetworking",
        "database": {k: v for k, v in asdict(database).items() if v not in ("", None)},
    }
    config.update(overrides)
    return config


def start_controller(workdir: str | Path, database: DatabaseConfig, *, bundle: Bundle | None = None,
                     listen_host: str = "127.0.0.1", netns: str | None = None,
                     startup_timeout: float = 60.0, **overrides: Any) -> RunningController:
    """Start a controller and wait until it is healthy. `overrides` are config keys."""
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    if bundle is None:
        bundle = generate_bundle(work / "certs", server_names=[listen_host, "localhost"])
    overrides.setdefault("health_check_host", listen_host)
    overrides.setdefault("debug_server_host", listen_host)
    config = controller_config(bundle, database, listen_host=listen_host, **overrides)
    n = len(list(work.glob("silk-controller-*.json")))
    config_path = work / f"silk-controller-{n}.json"
    config_path.write_text(json.dumps(config, indent=2))
    out, err = work / f"silk-controller-{n}.stdout", work / f"silk-controller-{n}.stderr"
    command = [sys.executable, "-m", "cfnet", "silk-controller", "--config-file", str(config_path)]
    if netns:
        command = ["ip", "netns", "exec", netns, *command]
    process = procs.launch(command, out, err)

    def failure(what: str) -> ControllerFailed:
        return ControllerFailed(procs.failure_text("silk-controller", what, process, err))

    try:
        addresses = procs.wait_for_servers(process, out, failure, startup_timeout)
        running = RunningController(
            url=f"https://{addresses['api']}",
            health_url=f"http://{addresses['health']}/health",
            debug_url=f"http://{addresses['debug']}",
            client_tls=bundle.client, bundle=bundle, config_path=config_path,
            stdout_path=out, stderr_path=err, process=process,
        )
        procs.wait_healthy(process, lambda: _healthy(running.health_url, netns), failure,
                           startup_timeout)
    except BaseException:
        procs.kill(process)
        raise
    return running


@contextmanager
def silk_controller(workdir: str | Path, database: DatabaseConfig, **kwargs: Any) -> Iterator[RunningController]:
    """`start_controller` as a context manager that always stops the process."""
    running = start_controller(workdir, database, **kwargs)
    try:
        yield running
    finally:
        running.stop()


_PROBE = ("import sys, urllib.request as u\n"
          "o = u.build_opener(u.ProxyHandler({}))\n"
          "try:\n    sys.exit(0 if o.open(sys.argv[1], timeout=2).status == 200 else 1)\n"
          "except OSError:\n    sys.exit(1)\n")


def _healthy(url: str, netns: str | None) -> bool:
    if netns is not None:
        probe = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", _PROBE, url],
                               capture_output=True, timeout=30)
        return probe.returncode == 0
    try:
        with _OPENER.open(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


