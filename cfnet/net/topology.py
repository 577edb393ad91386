"""Hosts in network namespaces on a shared underlay: what tests and `cfnet lab` stand on.

A `Topology` owns a switch namespace with a bridge and any number of hosts (control plane, cells,
a router, an "internet"), each a namespace with `eth0` plugged into the bridge and an address on
the underlay network. Every namespace name starts with the topology's prefix, so whatever a
crashed run left behind can be found and removed by prefix alone (`destroy_prefix`). Nothing is
ever created in the caller's own namespace.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import IO, Any

from cfnet.net import netns

BRIDGE = "br0"


@dataclass
class Host:
    name: str  # short name, e.g. "cell1"
    ns: str  # namespace name, prefix + "-" + name
    ip: str  # underlay address
    ifname: str = "eth0"


@dataclass
class Topology:
    prefix: str
    network: str = "10.10.0.0/24"
    hosts: dict[str, Host] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _next: int = 1

    @property
    def switch(self) -> str:
        return f"{self.prefix}-sw"

    def __post_init__(self) -> None:
        self._net = ipaddress.ip_network(self.network)

    def create(self) -> Topology:
        """Create the switch namespace and its bridge."""
        from pyroute2 import IPRoute

        netns.create(self.switch)
        with IPRoute(netns=self.switch) as ipr:
            ipr.link("add", ifname=BRIDGE, kind="bridge")
            ipr.link("set", index=ipr.link_lookup(ifname=BRIDGE)[0], state="up")
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        return self

    def add_host(self, name: str, ip: str | None = None, forwarding: bool = True) -> Host:
        """A new namespace with eth0 on the underlay (next free address unless `ip` is given)."""
        from pyroute2 import IPRoute

        if name in self.hosts:
            raise ValueError(f"host {name} already exists in topology {self.prefix}")
        if ip is None:
            ip = str(self._net.network_address + self._next)
            self._next += 1
        host = Host(name=name, ns=f"{self.prefix}-{name}", ip=ip)
        netns.create(host.ns)
        self.hosts[name] = host
        port = f"p-{len(self.hosts)}"
        with IPRoute(netns=self.switch) as sw:
            sw.link("add", ifname=port, kind="veth",
                    peer={"ifname": host.ifname, "net_ns_fd": netns.path(host.ns)})
            sw.link("set", index=sw.link_lookup(ifname=port)[0],
                    master=sw.link_lookup(ifname=BRIDGE)[0], state="up")
        with IPRoute(netns=host.ns) as ipr:
            idx = ipr.link_lookup(ifname=host.ifname)[0]
            ipr.addr("add", index=idx, address=ip, prefixlen=self._net.prefixlen)
            ipr.link("set", index=idx, state="up")
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        if forwarding:
            netns.sysctl(host.ns, "net.ipv4.ip_forward", 1)
        return host

    def spawn(self, host: str, argv: list[str], log: IO[Any] | int | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start a process inside a host; it is stopped by `destroy`."""
        proc = netns.spawn(self.hosts[host].ns, argv, log=log, env=env)
        self.processes.append(proc)
        return proc

    def destroy(self) -> None:
        """Stop every process and remove every namespace of this topology."""
        for proc in self.processes:
            stop_process(proc)
        self.processes.clear()
        destroy_prefix(self.prefix)
        self.hosts.clear()


def stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL it if it has not exited after `grace` seconds."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def destroy_prefix(prefix: str) -> list[str]:
    """Kill processes inside, then remove, every namespace named `prefix-*`; returns the names."""
    gone = [n for n in netns.names() if n.startswith(prefix + "-")]
    for name in gone:
        for pid in netns.pids_in(name):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for name in gone:
        for _ in range(50):
            if not netns.pids_in(name):
                break
            time.sleep(0.02)
        netns.remove(name)
    return gone
