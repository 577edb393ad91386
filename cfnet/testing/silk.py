"""A multi-cell Silk deployment in network namespaces: for tests, later issues and `cfnet lab`.

    with Sandbox() as box, silk_deployment(box.topology(), tmp_path, cells=2) as silk:
        a, b = silk.cells.values()
        a.overlay_subnet, b.underlay_ip, a.netinfo(), silk.routable_leases()

On a `Topology` (switch namespace + bridge), the harness adds a control-plane host running a real
`cfnet silk-controller` (SQLite by default, or the given database, which must be reachable from
inside the control-plane namespace: 127.0.0.1 there is not the machine's) and one host per cell running a
real `cfnet silk-daemon`, each process inside its own namespace. `add_cell` returns once the cell
holds a lease and its VTEP is up; `wait_converged` once every cell routes to every other cell's
subnet. Everything is stopped on exit (the namespaces themselves belong to the topology's owner,
normally a `Sandbox`, which removes them).

Nothing here talks to the caller's namespace: requests to the controller or to a daemon's netinfo
endpoint are made from a thread that has entered the target namespace (`call_in_netns`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cfnet.net import netns
from cfnet.net.topology import Host, Topology, stop_process
from cfnet.store.db import DatabaseConfig
from cfnet.testing import procs
from cfnet.testing.netns import Sandbox
from cfnet.testing.silk_controller import RunningController, controller_config
from cfnet.web.tls import Bundle, generate_bundle

T = TypeVar("T")
CONTROLLER_PORT = 4103
NETINFO_PORT = 23954
DEBUG_PORT = 22233
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class DeploymentFailed(RuntimeError):
    """A controller or daemon exited, or did not become ready in time."""


def call_in_netns(ns: str, fn: Callable[[], T], timeout: float = 30.0) -> T:
    """Run `fn` on a fresh thread that has entered namespace `ns`; sockets it opens live there
    (`netns.call_in`, under the name the test harnesses import)."""
    return netns.call_in(ns, fn, timeout)


def http_in_netns(ns: str, url: str, method: str = "GET", body: bytes | None = None,
                  timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body) of a plain HTTP request made from inside `ns`."""
    def request() -> tuple[int, bytes]:
        req = urllib.request.Request(url, data=body, method=method)
        try:
            with _OPENER.open(req, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    return call_in_netns(ns, request, timeout=timeout + 5)


def _wait(what: str, condition: Callable[[], Any], timeout: float,
          failed: Callable[[], str | None] = lambda: None) -> Any:
    """Poll `condition` until it returns something true; DeploymentFailed on timeout or failure."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        reason = failed()
        if reason:
            raise DeploymentFailed(f"{what}: {reason}")
        if time.monotonic() > deadline:
            raise DeploymentFailed(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.05)


@dataclass
class Cell(procs.ConfiguredProcess):
    """One cell: a host on the underlay running a silk-daemon."""

    name: str
    host: Host
    config_path: Path
    workdir: Path
    process: subprocess.Popen[bytes] | None = None
    output_path: Path | None = None  # the current daemon's stdout and stderr
    runs: int = 0
    overlay_subnet: str = ""
    mtu: int = 0

    @property
    def ns(self) -> str:
        return self.host.ns

    @property
    def underlay_ip(self) -> str:
        return self.host.ip

    @property
    def datastore(self) -> Path:
        return Path(self.config["datastore"])

    def netinfo(self, path: str = "/") -> dict[str, Any]:
        """The daemon's netinfo document, read inside the cell as the CNI plugin does."""
        status, body = http_in_netns(self.ns, f"http://127.0.0.1:{NETINFO_PORT}{path}")
        if status != 200:
            raise DeploymentFailed(f"netinfo of {self.name}: HTTP {status}: {body[:200]!r}")
        return json.loads(body)

    def debug(self, path: str, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
        return http_in_netns(self.ns, f"http://127.0.0.1:{DEBUG_PORT}{path}", method, body)

    def vtep(self) -> Any:
        """The VTEP as the kernel has it in this cell (a VtepInfo, or None)."""
        from pyroute2 import IPRoute

        from cfnet.net import vtep

        with IPRoute(netns=self.ns) as ipr:
            return vtep.inspect(ipr, self.config.get("vtep_name", "silk-vtep"))

    def routed_subnets(self) -> set[str]:
        """Overlay subnets this cell routes through its VTEP via another cell's base IP."""
        import socket

        from pyroute2 import IPRoute

        with IPRoute(netns=self.ns) as ipr:
            found = ipr.link_lookup(ifname=self.config.get("vtep_name", "silk-vtep"))
            if not found:
                return set()
            return {f"{r.get('RTA_DST')}/{r['dst_len']}"
                    for r in ipr.get_routes(family=socket.AF_INET, table=254)
                    if r.get("RTA_OIF") == found[0] and r.get("RTA_GATEWAY")}


class SilkDeployment:
    """A controller and cells on one topology; see the module doc."""

    def __init__(self, topology: Topology, workdir: Path, controller: RunningController,
                 controller_host: Host, daemon_defaults: dict[str, Any],
                 database: DatabaseConfig, controller_overrides: dict[str, Any]) -> None:
        self.topology = topology
        self.workdir = workdir
        self.controller = controller
        self.controller_host = controller_host
        self.daemon_defaults = daemon_defaults
        self.database = database
        self.controller_overrides = controller_overrides
        self.cells: dict[str, Cell] = {}

    # -- cells -----------------------------------------------------------------------------------

    def daemon_config(self, host: Host, workdir: Path, **overrides: Any) -> dict[str, Any]:
        """A daemon config for `host`: the upstream keys, short intervals for tests."""
        bundle = self.controller.bundle
        config: dict[str, Any] = {
            "underlay_ip": host.ip,
            "subnet_prefix_length": 24,
            "overlay_network": "10.255.0.0/16",
            "health_check_port": NETINFO_PORT,
            "debug_server_port": DEBUG_PORT,
            "vtep_name": "silk-vtep",
            "connectivity_server_url": self.controller.url,
            "ca_cert_file": str(bundle.ca_cert),
            "client_cert_file": str(bundle.client.cert),
            "client_key_file": str(bundle.client.key),
            "vni": 1,
            "vtep_port": 4789,
            "poll_interval": 1,
            "datastore": str(workdir / "silk-store.json"),
            "partition_tolerance_seconds": 604800,
            "client_timeout_seconds": 2,
            "log_prefix": "cfnetworking",
            "log_level": "debug",
            "poll_jitter": 0.0,
        }
        config.update(self.daemon_defaults)
        config.update(overrides)
        return config

    def add_cell(self, name: str, start: bool = True, timeout: float = 60.0,
                 **overrides: Any) -> Cell:
        """A new host on the underlay with a daemon config (and, by default, a running daemon)."""
        host = self.topology.add_host(name)
        workdir = self.workdir / name
        workdir.mkdir(parents=True, exist_ok=True)
        config_path = workdir / "silk-daemon.json"
        config_path.write_text(json.dumps(self.daemon_config(host, workdir, **overrides), indent=2))
        cell = Cell(name=name, host=host, config_path=config_path, workdir=workdir)
        self.cells[name] = cell
        if start:
            self.start_daemon(cell, timeout=timeout)
        return cell

    def start_daemon(self, cell: Cell, wait: bool = True, timeout: float = 60.0) -> Cell:
        """Start the cell's daemon; with `wait`, return once it has its lease and its VTEP."""
        if cell.running:
            raise DeploymentFailed(f"daemon of {cell.name} is already running")
        cell.runs += 1
        cell.output_path = cell.workdir / f"silk-daemon-{cell.runs}.log"
        argv = [sys.executable, "-m", "cfnet", "silk-daemon", "run", "--config-file",
                str(cell.config_path)]
        with open(cell.output_path, "wb") as out:
            cell.process = self.topology.spawn(cell.host.name, argv, log=out,
                                               env=dict(os.environ, PYTHONUNBUFFERED="1"))
        if wait:
            self.wait_ready(cell, timeout)
        return cell

    def wait_ready(self, cell: Cell, timeout: float = 60.0) -> Cell:
        """Wait until the daemon serves netinfo and its VTEP is up; fills subnet and MTU."""
        def failed() -> str | None:
            if cell.process is not None and cell.process.poll() is not None:
                tail = " | ".join(cell.output().strip().splitlines()[-3:])
                return f"exited with {cell.process.returncode}: {tail}"
            return None

        _wait(f"daemon of {cell.name}", lambda: cell.log_lines("running"), timeout, failed)
        info = cell.netinfo()
        cell.overlay_subnet, cell.mtu = info["overlay_subnet"], info["mtu"]
        vtep = cell.vtep()
        if vtep is None or not vtep.up:
            raise DeploymentFailed(f"daemon of {cell.name} is running without a VTEP")
        return cell

    def stop_daemon(self, cell: Cell, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal the daemon and wait for it; its exit code."""
        proc = cell.process
        if proc is None:
            raise DeploymentFailed(f"daemon of {cell.name} was never started")
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                stop_process(proc)
                raise DeploymentFailed(f"daemon of {cell.name} did not exit on signal {sig}")
        return proc.returncode

    def wait_exit(self, cell: Cell, timeout: float = 60.0) -> int:
        """Wait for the daemon to exit on its own; its exit code."""
        assert cell.process is not None
        try:
            return cell.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise DeploymentFailed(f"daemon of {cell.name} still running after {timeout} s") \
                from None

    def teardown(self, cell: Cell) -> subprocess.CompletedProcess[str]:
        """Run `cfnet silk-daemon teardown` inside the cell (the daemon should be stopped)."""
        return netns.run(cell.ns, [sys.executable, "-m", "cfnet", "silk-daemon", "teardown",
                                   "--config-file", str(cell.config_path)], check=False)

    def wait_converged(self, timeout: float = 30.0) -> None:
        """Wait until every running cell routes to the subnet of every other running cell."""
        def done() -> bool:
            cells = [c for c in self.cells.values() if c.running and c.overlay_subnet]
            return all(c.routed_subnets() == {o.overlay_subnet for o in cells if o is not c}
                       for c in cells)

        _wait("overlay convergence", done, timeout)

    # -- the controller --------------------------------------------------------------------------

    def restart_controller(self) -> RunningController:
        """Stop the controller if it runs, and start it again: same address, certificates and
        database, so the daemons find it where they left it."""
        self.controller.stop()
        self.controller = start_controller_in(
            self.topology, self.controller_host, self.workdir / "controller", self.database,
            bundle=self.controller.bundle, **self.controller_overrides)
        return self.controller

    def routable_leases(self) -> list[Any]:
        """GET /leases, asked from the control-plane host over mutual TLS."""
        def ask() -> list[Any]:
            with self.controller.client() as client:
                return client.routable_leases()

        return call_in_netns(self.controller_host.ns, ask)

    def close(self) -> None:
        for cell in self.cells.values():
            if cell.process is not None:
                stop_process(cell.process)
        self.controller.stop()


def start_controller_in(topology: Topology, host: Host, workdir: Path,
                        database: DatabaseConfig, bundle: Bundle | None = None,
                        timeout: float = 60.0, **overrides: Any) -> RunningController:
    """A real `cfnet silk-controller` inside `host`, listening on its underlay address.

    Unlike `cfnet.testing.silk_controller.start_controller(netns=...)`, readiness is checked from
    inside the namespace, so nothing is ever sent from the caller's namespace.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    bundle = bundle or generate_bundle(workdir / "certs", server_names=[host.ip, "localhost"])
    overrides = {"listen_port": CONTROLLER_PORT, "health_check_host": host.ip,
                 "debug_server_host": host.ip, "health_check_port": 19683,
                 "debug_server_port": 46455, **overrides}
    config = controller_config(bundle, database, listen_host=host.ip, **overrides)
    n = len(list(workdir.glob("silk-controller-*.json")))
    config_path = workdir / f"silk-controller-{n}.json"
    config_path.write_text(json.dumps(config, indent=2))
    out, err = workdir / f"silk-controller-{n}.stdout", workdir / f"silk-controller-{n}.stderr"
    argv = netns.exec_argv(host.ns, [sys.executable, "-m", "cfnet", "silk-controller",
                                     "--config-file", str(config_path)])
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        process = subprocess.Popen(argv, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
                                   env=dict(os.environ, PYTHONUNBUFFERED="1"),
                                   start_new_session=True)
    topology.processes.append(process)
    running = RunningController(
        url=f"https://{host.ip}:{config['listen_port']}",
        health_url=f"http://{host.ip}:{config['health_check_port']}/health",
        debug_url=f"http://{host.ip}:{config['debug_server_port']}",
        client_tls=bundle.client, bundle=bundle, config_path=config_path, stdout_path=out,
        stderr_path=err, process=process)

    def healthy() -> bool:
        try:
            return http_in_netns(host.ns, running.health_url, timeout=2)[0] == 200
        except OSError:
            return False

    def failed() -> str | None:
        if process.poll() is None:
            return None
        return f"exited with {process.returncode}: {err.read_text(errors='replace')[-500:]}"

    try:
        _wait("silk-controller", healthy, timeout, failed)
    except BaseException:
        stop_process(process)
        raise
    return running


@contextmanager
def silk_deployment(topology: Topology | Sandbox, workdir: str | Path, cells: int | list[str] = 2,
                    database: DatabaseConfig | None = None, controller_host: str = "cp",
                    daemon_defaults: dict[str, Any] | None = None,
                    **controller_overrides: Any) -> Iterator[SilkDeployment]:
    """A controller in host `controller_host` and daemons in cells `cell1`, `cell2`, ... (or the
    given names), all ready on entry and all stopped on exit. `controller_overrides` are
    controller config keys (for example `lease_expiration_seconds`, `network`). Given a
    `Sandbox`, a new topology of that sandbox is used."""
    if isinstance(topology, Sandbox):
        topology = topology.topology()
    work = Path(workdir)
    names = [f"cell{i + 1}" for i in range(cells)] if isinstance(cells, int) else list(cells)
    cp = topology.add_host(controller_host)
    db = database or DatabaseConfig(type="sqlite", path=str(work / "silk-controller.db"),
                                    timeout=10)
    controller = start_controller_in(topology, cp, work / "controller", db, **controller_overrides)
    deployment = SilkDeployment(topology, work, controller, cp, daemon_defaults or {}, db,
                                controller_overrides)
    try:
        for name in names:
            deployment.add_cell(name)
        yield deployment
    finally:
        deployment.close()


__all__ = ["Cell", "DeploymentFailed", "SilkDeployment", "call_in_netns", "http_in_netns",
           "silk_deployment", "start_controller_in"]

