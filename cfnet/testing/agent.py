"""Run real `cfnet vxlan-agent` processes inside Silk cells, and make containers the way the CNI
wrapper will, for tests, benchmarks and the lab.

    with Sandbox() as box, silk_deployment(box.topology(), work) as silk:
        ps = start_policy_server_in(silk, work / "ps")          # in the control-plane host
        a = start_agent(silk.cells["cell1"], work / "a1", ps)   # in cell1's namespace
        c = Containers(box, a).add("h1", app_id="app-a")         # veth, datastore, cell table
        a.force("/force-policy-poll-cycle")

`Containers.add` follows the wrapper's ADD order (spec dataplane 0.2): the container's veth pair
(`s-<ip>` in the cell, `eth0` with a /32 in the container, link-local gateway 169.254.0.1, as silk
builds it), the datastore entry (cfnet.cni.datastore), `/force-policy-poll-cycle`, the
per-container structure (cell_table's container-add transaction, under the cell's flock), then
`/force-asgs-for-container`. `remove` follows DEL. Everything talks to the cells from threads
that entered their namespaces; nothing touches the caller's namespace.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfnet.net import netns
from cfnet.net.topology import stop_process
from cfnet.testing import procs
from cfnet.testing.silk import Cell, DeploymentFailed, SilkDeployment, _wait, call_in_netns, \
    http_in_netns

FORCE_PORT = 8722
DEBUG_PORT = 8721


# -- the policy server, inside the control-plane host ----------------------------------------------


def start_policy_server_in(silk: SilkDeployment, workdir: Path, **kwargs: Any) -> Any:
    """A real policy server in the deployment's control-plane host, on its underlay address
    (reachable from every cell). Started from a thread inside that namespace, so its readiness
    checks never leave it. Stop it with `.stop()`."""
    from cfnet.store.db import DatabaseConfig
    from cfnet.testing.policy_server import start_policy_server

    host = silk.controller_host
    db = kwargs.pop("database", None) or DatabaseConfig(
        type="sqlite", path=str(workdir / "policy.db"), timeout=10)
    return call_in_netns(host.ns, lambda: start_policy_server(
        workdir, db, listen_host=host.ip, netns=host.ns, **kwargs), timeout=120)


def policy_client(silk: SilkDeployment, ps: Any) -> Any:
    """Run `fn(PolicyClient)` inside the control-plane host: `policy_client(silk, ps)(fn)`."""
    from cfnet.clients.policy_api import PolicyClient

    def call(fn: Callable[[Any], Any]) -> Any:
        def go() -> Any:
            with PolicyClient(ps.external_url, ps.admin_token) as client:
                return fn(client)

        return call_in_netns(silk.controller_host.ns, go)

    return call


# -- the agent ------------------------------------------------------------------------------------


@dataclass
class RunningAgent(procs.ConfiguredProcess):
    cell: Cell
    workdir: Path
    config_path: Path
    process: subprocess.Popen[bytes] | None = None
    output_path: Path | None = None
    runs: int = 0

    @property
    def ns(self) -> str:
        return self.cell.ns

    @property
    def datastore_path(self) -> str:
        return self.config["cni_datastore_path"]

    @property
    def lock_path(self) -> str:
        return self.config["iptables_lock_file"]

    def force(self, path: str, timeout: float = 30.0) -> tuple[int, str]:
        status, body = http_in_netns(self.ns, f"http://127.0.0.1:{FORCE_PORT}{path}",
                                     timeout=timeout)
        return status, body.decode()

    def debug(self, path: str, method: str = "GET", body: bytes | None = None) -> tuple[int, str]:
        status, data = http_in_netns(self.ns, f"http://127.0.0.1:{DEBUG_PORT}{path}", method, body)
        return status, data.decode()

    def start(self, wait: bool = True, timeout: float = 60.0) -> RunningAgent:
        if self.running:
            raise DeploymentFailed(f"agent of {self.cell.name} is already running")
        self.runs += 1
        self.output_path = self.workdir / f"vxlan-agent-{self.runs}.log"
        argv = [sys.executable, "-m", "cfnet", "vxlan-agent", "--config-file",
                str(self.config_path)]
        with open(self.output_path, "wb") as out:
            self.process = netns.spawn(self.ns, argv, log=out,
                                       env=dict(os.environ, PYTHONUNBUFFERED="1"))
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        def failed() -> str | None:
            if self.process is not None and self.process.poll() is not None:
                tail = " | ".join(self.output().strip().splitlines()[-3:])
                return f"exited with {self.process.returncode}: {tail}"
            return None

        _wait(f"agent of {self.cell.name}", lambda: self.log_lines("starting"), timeout, failed)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()  # SIGTERM to `ip netns exec`, which execs the agent
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                stop_process(self.process)
        return self.process.returncode


def agent_config(cell: Cell, workdir: Path, ps: Any, **overrides: Any) -> dict[str, Any]:
    """Upstream keys for an agent on `cell`, talking to the policy server `ps`; short intervals."""
    tls = ps.client_tls
    config: dict[str, Any] = {
        "policy_server_url": ps.internal_url,
        "cni_datastore_path": str(workdir / "container-metadata" / "store.json"),
        "ca_cert_file": str(tls.ca), "client_cert_file": str(tls.cert),
        "client_key_file": str(tls.key),
        "poll_interval": 1, "asg_poll_interval": 2, "enable_asg_syncing": True,
        "iptables_lock_file": str(workdir / "garden-cni" / "iptables.lock"),
        "debug_server_host": "127.0.0.1", "debug_server_port": DEBUG_PORT,
        "force_policy_poll_cycle_host": "127.0.0.1", "force_policy_poll_cycle_port": FORCE_PORT,
        "log_level": "debug", "log_prefix": "cfnetworking",
        "underlay_ips": [cell.underlay_ip], "overlay_network": "10.255.0.0/16",
        "client_timeout_seconds": 5, "policy_watch_seconds": 10, "poll_jitter": 0.0,
    }
    config.update(overrides)
    return config


def start_agent(cell: Cell, workdir: str | Path, ps: Any, start: bool = True,
                **overrides: Any) -> RunningAgent:
    """Write an agent config for `cell` and (by default) start the agent and wait until ready."""
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    # Tests count rejections: the kernel's per-destination ICMP rate limit (about 6 errors, then
    # one a second) would turn a rejection into a silent drop.
    netns.sysctl(cell.ns, "net.ipv4.icmp_ratelimit", 0)
    cfg = agent_config(cell, work, ps, **overrides)
    Path(cfg["cni_datastore_path"]).parent.mkdir(parents=True, exist_ok=True)
    config_path = work / "vxlan-agent.json"
    config_path.write_text(json.dumps(cfg, indent=2))
    agent = RunningAgent(cell, work, config_path)
    if start:
        agent.start()
    return agent


# -- containers, as the CNI wrapper makes them ----------------------------------------------


@dataclass
class Container:
    handle: str
    ip: str
    ns: str
    host_if: str
    metadata: dict[str, str] = field(default_factory=dict)


def host_veth(ip: str) -> str:
    return "s-" + "".join(f"{int(o):03d}" for o in ip.split("."))


@contextmanager
def cell_lock(path: str) -> Iterator[None]:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class Containers:
    """Containers of one cell, made and removed as the wrapper will (see the module doc)."""

    def __init__(self, box: Any, agent: RunningAgent, call_agent: bool = True) -> None:
        self.box = box
        self.agent = agent
        self.cell = agent.cell
        self.call_agent = call_agent
        self.by_handle: dict[str, Container] = {}
        self._mutex = threading.Lock()
        self._used: set[str] = set()
        self._n = 0

    def _allocate(self) -> tuple[str, str]:
        net = ipaddress.IPv4Network(self.cell.overlay_subnet)
        with self._mutex:
            for addr in list(net.hosts())[1:]:
                if str(addr) not in self._used:
                    self._used.add(str(addr))
                    self._n += 1
                    return str(addr), f"{self.cell.name}c{self._n}"
        raise DeploymentFailed(f"no free address in {net}")

    def _release(self, ip: str) -> None:
        with self._mutex:
            self._used.discard(ip)

    def add(self, handle: str, app_id: str | None = None, space_id: str = "",
            workload: str = "app", ports: str = "8080", **extra: str) -> Container:
        from cfnet.cni.datastore import Datastore
        from cfnet.core import asg_rules as ar
        from cfnet.net import cell_table as ct
        from cfnet.net.nft import Nft

        ip, suffix = self._allocate()
        ns = self.box.netns(suffix)
        host_if = host_veth(ip)
        try:
            plug(self.cell.ns, ns, host_if, ip, self.cell.mtu or 1450)
            metadata = {"container_workload": workload, "ports": ports, **extra}
            if app_id:
                metadata["policy_group_id"] = app_id
                metadata["app_id"] = app_id
            if space_id:
                metadata["space_id"] = space_id
            Datastore(self.agent.datastore_path).add(handle, ip, metadata)
            c = Container(handle, ip, ns, host_if, metadata)
            with self._mutex:
                self.by_handle[handle] = c
            if self.call_agent:
                self._expect(self.agent.force("/force-policy-poll-cycle"), handle)
            with cell_lock(self.agent.lock_path), Nft(self.cell.ns) as nft:
                state = ct.list_cell(nft)
                nft.run(ct.render_container_add(ct.ContainerNet(
                    handle, ip, ar.netout_chains(handle, workload, []),
                    underlay_ifs=[self.cell.host.ifname]), state))
            if self.call_agent:
                self._expect(self.agent.force(f"/force-asgs-for-container?container={handle}"),
                             handle)
            return c
        except BaseException:
            self._teardown(handle, ip, ns)
            raise

    @staticmethod
    def _expect(answer: tuple[int, str], handle: str) -> None:
        status, body = answer
        if status != 200:
            raise DeploymentFailed(f"agent refused container {handle}: {status} {body}")

    def remove(self, handle: str) -> None:
        with self._mutex:
            c = self.by_handle.pop(handle)
        self._teardown(handle, c.ip, c.ns)
        if self.call_agent:
            self._expect(self.agent.force(f"/force-orphaned-asgs-cleanup?container={handle}"),
                         handle)

    def _teardown(self, handle: str, ip: str, ns: str) -> None:
        from cfnet.cni.datastore import Datastore
        from cfnet.net import cell_table as ct
        from cfnet.net.nft import Nft

        Datastore(self.agent.datastore_path).delete(handle)
        unplug(self.cell.ns, host_veth(ip))  # now: a namespace's links go away asynchronously
        netns.remove(ns)
        with cell_lock(self.agent.lock_path), Nft(self.cell.ns) as nft:
            ct.remove_container(nft, handle)
        self._release(ip)

    def remove_all(self) -> None:
        for h in list(self.by_handle):
            self.remove(h)


def plug(cell_ns: str, ct_ns: str, host_if: str, ip: str, mtu: int) -> None:
    """silk's shape: veth `s-…` in the cell with 169.254.0.1/32 and a /32 route to the container;
    `eth0` in the container with ip/32, default route via 169.254.0.1."""
    from pyroute2 import IPRoute

    with IPRoute(netns=cell_ns) as ipr:
        ipr.link("add", ifname=host_if, kind="veth", mtu=mtu,
                 peer={"ifname": "eth0", "mtu": mtu, "net_ns_fd": netns.path(ct_ns)})
        idx = ipr.link_lookup(ifname=host_if)[0]
        ipr.addr("add", index=idx, address="169.254.0.1", prefixlen=32, scope=253)
        ipr.link("set", index=idx, state="up")
        ipr.route("add", dst=f"{ip}/32", oif=idx, scope=253, proto=3)
    with IPRoute(netns=ct_ns) as ipr:
        idx = ipr.link_lookup(ifname="eth0")[0]
        ipr.addr("add", index=idx, address=ip, prefixlen=32)
        ipr.link("set", index=idx, state="up")
        ipr.route("add", dst="169.254.0.1/32", oif=idx, scope=253, proto=3)
        ipr.route("add", dst="0.0.0.0/0", gateway="169.254.0.1", oif=idx, prefsrc=ip, proto=3)


def unplug(cell_ns: str, host_if: str) -> None:
    """Delete the container's veth pair (both ends) if it exists."""
    from pyroute2 import IPRoute

    with IPRoute(netns=cell_ns) as ipr:
        found = ipr.link_lookup(ifname=host_if)
        if found:
            ipr.link("del", index=found[0])


# -- traffic --------------------------------------------------------------------------------

SERVER = r"""
import socket, sys, threading
def tcp(port):
    s = socket.create_server((sys.argv[1], port))
    while True:
        c, _ = s.accept()
        threading.Thread(target=echo, args=(c,), daemon=True).start()
def echo(c):
    try:
        while True:
            d = c.recv(65536)
            if not d:
                break
            c.sendall(d)
    except OSError:
        pass
    finally:
        c.close()
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], port))
    while True:
        d, a = s.recvfrom(65536)
        s.sendto(d, a)
for spec in sys.argv[2:]:
    proto, port = spec.split(":")
    threading.Thread(target=tcp if proto == "tcp" else udp, args=(int(port),), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

CLIENT = r"""
import json, socket, sys
out = {}
for spec in sys.argv[2:]:
    proto, port = spec.split(":")
    if proto == "tcp":
        s = socket.socket(); s.settimeout(float(sys.argv[1].split("/")[1]))
        try:
            s.connect((sys.argv[1].split("/")[0], int(port))); s.sendall(b"x"); s.recv(1)
            out[spec] = "ok"
        except ConnectionRefusedError:
            out[spec] = "refused"
        except OSError as e:
            out[spec] = type(e).__name__
        finally:
            s.close()
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(float(sys.argv[1].split("/")[1]))
        try:
            # connected, so that an ICMP port-unreachable is reported (ECONNREFUSED)
            s.connect((sys.argv[1].split("/")[0], int(port))); s.send(b"x"); s.recv(1)
            out[spec] = "ok"
        except ConnectionRefusedError:
            out[spec] = "refused"
        except OSError as e:
            out[spec] = type(e).__name__
        finally:
            s.close()
print(json.dumps(out))
"""


def serve(c: Container, *specs: str) -> subprocess.Popen[bytes]:
    """Echo servers in container `c` on `tcp:PORT` / `udp:PORT`; returns once they listen."""
    proc = subprocess.Popen(netns.exec_argv(c.ns, [sys.executable, "-c", SERVER, c.ip, *specs]),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        proc.kill()
        raise DeploymentFailed(f"echo server in {c.handle} did not start")
    deadline = time.monotonic() + 10
    tcp = [s.split(":")[1] for s in specs if s.startswith("tcp:")]
    while time.monotonic() < deadline:
        out = netns.run(c.ns, ["ss", "-Htln"]).stdout
        if all(f":{p} " in out for p in tcp):
            return proc
        time.sleep(0.02)
    proc.kill()
    raise DeploymentFailed(f"echo server in {c.handle} is not listening")


def probe(src: Container, dst_ip: str, *specs: str, timeout: float = 1.0) -> dict[str, str]:
    """One connection attempt per `tcp:PORT`/`udp:PORT` from `src` to `dst_ip`: "ok" when the
    echo came back, "refused" when rejected, else the error's name (e.g. "TimeoutError")."""
    out = netns.run(src.ns, [sys.executable, "-c", CLIENT, f"{dst_ip}/{timeout}", *specs],
                    timeout=30 + len(specs) * timeout).stdout
    return json.loads(out)


def wait_for(what: str, condition: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll `condition` until true (AssertionError after `timeout`)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


__all__ = ["Container", "Containers", "RunningAgent", "agent_config", "call_in_netns", "plug",
           "policy_client", "probe", "serve", "start_agent", "start_policy_server_in", "wait_for"]
