"""Shared harness for the wrapper and bandwidth kernel tests: one Silk cell on an underlay with a
"router" and an "internet" host, and helpers that run CNI plugins inside the cell exactly as a
runtime does (`ip netns exec <cell> python -m cfnet cni <plugin>`, CNI_* env, config on stdin)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfnet.net import netns
from cfnet.net.topology import stop_process

CELL_DNS = "169.254.0.2"  # a link-local DNS server address on the cell
HOST_SVC_PORT = 9100
INTERNET_IP2 = "10.10.0.200"  # a second address of the internet host

# A TCP responder: answers every connection with the peer's address, on each given port.
RESPONDER = """
import socket, sys, threading
def serve(host, port):
    s = socket.create_server((host, port), reuse_port=True)
    while True:
        c, peer = s.accept()
        try:
            c.sendall(peer[0].encode())
        finally:
            c.close()
for p in sys.argv[2:]:
    threading.Thread(target=serve, args=(sys.argv[1], int(p)), daemon=True).start()
threading.Event().wait()
"""
# A TCP client: per address:port, what the server said, or how the connection failed.
CLIENT = """
import socket, sys
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect((host, int(port))); print(target, "ok", s.recv(100).decode() or "-")
    except ConnectionRefusedError:
        print(target, "refused", "-")
    except OSError as e:
        print(target, "error", e.__class__.__name__)
    finally:
        s.close()
"""


@dataclass
class Run:
    code: int
    out: dict[str, Any] | None
    stdout: str
    stderr: str


@dataclass
class Env:
    box: Any
    silk: Any
    work: Path
    router: Any
    internet: Any
    containers: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def cell(self) -> Any:
        return self.silk.cells["cell1"]

    def container_ns(self, suffix: str) -> str:
        name = self.box.netns(suffix)
        self.containers.append(name)
        return name

    def silk_conf(self, **changes: Any) -> dict[str, Any]:
        cell = self.cell
        conf = {"cniVersion": "1.0.0", "name": "silk", "type": "silk-cni", "daemonPort": 23954,
                "dataDir": str(cell.workdir / "host-local"), "datastore": str(cell.datastore),
                "mtu": 0}
        conf.update(changes)
        return conf

    @property
    def datastore(self) -> Path:
        return self.cell.workdir / "container-metadata" / "store.json"

    def wrapper_conf(self, handle: str = "", port_mappings: list[dict[str, int]] | None = None,
                     net_out_rules: list[dict[str, Any]] | None = None,
                     metadata: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
        """The plugin entry of the conflist as libcni hands it over, with runtimeConfig and
        metadata as garden-hook injects them."""
        cell = self.cell
        conf: dict[str, Any] = {
            "cniVersion": "1.0.0", "name": "cni-wrapper", "type": "cni-wrapper-plugin",
            "datastore": str(self.datastore),
            "iptables_lock_file": str(cell.workdir / "garden-cni" / "iptables.lock"),
            "instance_address": cell.underlay_ip,
            "underlay_ips": [cell.underlay_ip],
            "no_masquerade_cidr_range": "10.255.0.0/16",
            "dns_servers": [CELL_DNS, "8.8.8.8"],
            "host_tcp_services": [f"{cell.underlay_ip}:{HOST_SVC_PORT}"],
            "host_udp_services": [],
            "deny_networks": {"always": [], "running": [], "staging": []},
            "iptables_asg_logging": False, "iptables_c2c_logging": False,
            "iptables_denied_logs_per_sec": 1, "iptables_accepted_udp_logs_per_sec": 100,
            "ingress_tag": "ffff0000", "vtep_name": "silk-vtep",
            "policy_agent_force_poll_address": "127.0.0.1:8722",
            "policy_agent_timeout_seconds": 2,
            "outbound_connections": {"limit": False, "logging": False, "burst": 1000,
                                     "rate_per_sec": 100, "dry_run": False},
            "delegate": self.silk_conf(),
            "runtimeConfig": {"portMappings": port_mappings or [],
                              "netOutRules": net_out_rules or []},
            "metadata": metadata if metadata is not None else {
                "policy_group_id": "app-" + handle, "space_id": "space-1",
                "container_workload": "app"},
        }
        conf.update(changes)
        return conf

    def cni(self, plugin: str, command: str, container_id: str, ns: str | None,
            conf: dict[str, Any], ifname: str = "eth0", argv: list[str] | None = None) -> Run:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env.update(CNI_COMMAND=command, CNI_CONTAINERID=container_id, CNI_IFNAME=ifname,
                   CNI_PATH="/usr/lib/cni", CFNET_CNI_LOG="stderr", CFNET_CNI_LOG_LEVEL="debug")
        if ns is not None:
            env["CNI_NETNS"] = netns.path(ns)
        argv = argv or [sys.executable, "-m", "cfnet", "cni", plugin]
        proc = subprocess.run(netns.exec_argv(self.cell.ns, argv),
                              input=json.dumps(conf), capture_output=True, text=True, env=env,
                              timeout=90)
        out = json.loads(proc.stdout) if proc.stdout.strip() else None
        return Run(proc.returncode, out, proc.stdout, proc.stderr)

    def add(self, handle: str, ns: str, **kw: Any) -> tuple[str, dict[str, Any]]:
        run = self.cni("wrapper", "ADD", handle, ns, self.wrapper_conf(handle, **kw))
        assert run.code == 0, (run.stdout, run.stderr)
        assert run.out is not None
        return run.out["ips"][0]["address"].split("/")[0], run.out

    def delete(self, handle: str, ns: str | None, **kw: Any) -> Run:
        run = self.cni("wrapper", "DEL", handle, ns, self.wrapper_conf(handle, **kw))
        assert run.code == 0, (run.stdout, run.stderr)
        assert run.stdout == ""
        return run

    # -- observing the cell ------------------------------------------------------------------------

    def write_base(self) -> None:
        """The cell table's base ruleset, as the agent writes it when it starts."""
        from cfnet.net import cell_table as ct

        netns.run(self.cell.ns, ["nft", "-f", "-"], input=ct.render_base())

    def table(self) -> str:
        """`nft list table ip cfnet` of the cell ("" when absent)."""
        proc = netns.run(self.cell.ns, ["nft", "list", "table", "ip", "cfnet"], check=False)
        return proc.stdout if proc.returncode == 0 else ""

    def snapshot(self) -> dict[str, Any]:
        """Everything a container ADD could leave behind on the cell."""
        cell = self.cell
        links = json.loads(netns.run(cell.ns, ["ip", "-j", "link", "show"]).stdout)
        ipam = cell.workdir / "host-local" / "ipam" / "silk"
        return {
            "links": sorted(l["ifname"] for l in links),
            "ipam": sorted(p.name for p in ipam.iterdir()
                           if not p.name.startswith("last_reserved_ip") and p.name != "lock")
            if ipam.exists() else [],
            "datastore": json.loads(self.datastore.read_text() or "{}")
            if self.datastore.exists() else {},
            "silk_store": json.loads(cell.datastore.read_text() or "{}")
            if cell.datastore.exists() else {},
            "table": self.table_state(),
        }

    def table_state(self) -> dict[str, Any] | None:
        """The cell table as data without handles. The elements of `underlay_ifs` and `host_svc`
        are left out: they are cell-wide config that every ADD adds idempotently and no
        container's DEL removes."""
        proc = netns.run(self.cell.ns, ["nft", "-j", "list", "table", "ip", "cfnet"], check=False)
        if proc.returncode != 0:
            return None
        out: dict[str, Any] = {}
        for obj in json.loads(proc.stdout)["nftables"]:
            kind = next(iter(obj))
            if kind == "metainfo":
                continue
            body = _without_handles(obj[kind])
            if kind in ("set", "map") and body["name"] in ("underlay_ifs", "host_svc"):
                body.pop("elem", None)
            key = f"{kind} {body.get('chain', '')} {body.get('name', '')}"
            out.setdefault(key, []).append(body)
        return out

    def run_in(self, ns: str, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        return netns.run(ns, argv, **kw)

    def connect(self, ns: str, *targets: str) -> dict[str, tuple[str, str]]:
        """target -> (outcome, what the server said)."""
        out = netns.run(ns, [sys.executable, "-c", CLIENT, *targets]).stdout
        result = {}
        for line in out.splitlines():
            target, outcome, said = line.split(None, 2)
            result[target] = (outcome, said)
        return result

    def connect_each(self, ns: str, *targets: str) -> list[str]:
        """The outcome of each connection attempt, in order (targets may repeat)."""
        out = netns.run(ns, [sys.executable, "-c", CLIENT, *targets]).stdout
        return [line.split(None, 2)[1] for line in out.splitlines()]

    def responder(self, ns: str, host: str, *ports: int) -> None:
        proc = netns.spawn(ns, [sys.executable, "-c", RESPONDER, host, *map(str, ports)])
        self.procs.append(proc)
        wait_listening(ns, list(ports))


def _without_handles(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_handles(v) for k, v in value.items() if k != "handle"}
    if isinstance(value, list):
        return [_without_handles(v) for v in value]
    return value


def wait_listening(ns: str, ports: list[int], deadline: float = 15) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        out = netns.run(ns, ["ss", "-Htln"]).stdout
        if all(f":{p} " in out for p in ports):
            return
        time.sleep(0.05)
    raise AssertionError(f"listeners {ports} did not come up in {ns}")


@contextmanager
def deployment(work: Path, label: str) -> Iterator[Env]:
    """A controller, one cell ("cell1") with its daemon, a router and an internet host; TCP
    responders on the internet host (80, 8080 on both its addresses), on the cell's link-local
    DNS address (53, 54) and on the cell's underlay address (HOST_SVC_PORT and the next port)."""
    from cfnet.testing.netns import Sandbox
    from cfnet.testing.silk import silk_deployment

    with Sandbox(label) as box, silk_deployment(box.topology(), work, cells=1) as silk:
        router = silk.topology.add_host("router")
        internet = silk.topology.add_host("internet")
        netns.run(internet.ns, ["ip", "addr", "add", f"{INTERNET_IP2}/24", "dev", "eth0"])
        cell = silk.cells["cell1"]
        (cell.workdir / "container-metadata").mkdir()  # as the BOSH job does
        netns.run(cell.ns, ["ip", "addr", "add", f"{CELL_DNS}/32", "dev", "lo"])
        e = Env(box=box, silk=silk, work=work, router=router, internet=internet)
        e.write_base()
        try:
            e.responder(internet.ns, "0.0.0.0", 80, 8080)
            e.responder(cell.ns, CELL_DNS, 53, 54)
            e.responder(cell.ns, cell.underlay_ip, HOST_SVC_PORT, HOST_SVC_PORT + 1)
            yield e
        finally:
            for p in e.procs:
                stop_process(p)
