"""A cell for the garden hook: its own namespace, state dirs, CNI configs and a client host.

The hook runs as Garden would run it, as a separate process, entered into the cell's network
namespace with `nsenter --net` (not `ip netns exec`: that gives each call a private mount
namespace, so the bind mount made by `up` would vanish with the process). Containers are
namespaces from the sandbox, handed over as fd 3 with pid 0, or as a real process's pid.
Every bind mount left under the test's directory is detached at teardown.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cfnet.net import netns

DEBIAN_PLUGINS = Path("/usr/lib/cni")
CELL_IP, CLIENT_IP = "192.168.231.1", "192.168.231.2"
SUBNET = "10.99.0.0/24"


def in_netns(ns_path: str, fn: Callable[[], Any]) -> Any:
    """Run `fn` on a thread inside the namespace at `ns_path` (sockets it makes stay there)."""
    return netns.call_in(ns_path, fn)


class Responder:
    """A TCP server inside a container namespace: answers each connection with `reply`."""

    def __init__(self, ns: str, port: int, reply: bytes = b"hello from the container") -> None:
        self.reply = reply

        def listen() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", port))
            s.listen(16)
            return s

        self.sock: socket.socket = in_netns(netns.path(ns), listen)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(self.reply)

    def close(self) -> None:
        self.sock.close()


def tcp_get(ns: str, ip: str, port: int, timeout: float = 5.0) -> bytes:
    """Connect from namespace `ns` and read what the server sends."""

    def go() -> bytes:
        with socket.create_connection((ip, port), timeout=timeout) as s:
            chunks = []
            while chunk := s.recv(4096):
                chunks.append(chunk)
            return b"".join(chunks)

    return in_netns(netns.path(ns), go)


@dataclass
class HookResult:
    rc: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.stdout)


@dataclass
class GardenCell:
    ns: str
    root: Path
    adapter: dict[str, Any] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.root / "adapter.json"

    @property
    def plugin_dir(self) -> Path:
        return self.root / "plugins"

    @property
    def conf_dir(self) -> Path:
        return self.root / "net.d"

    @property
    def ipam_dir(self) -> Path:
        return self.root / "ipam"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def bind_dir(self) -> Path:
        return self.root / "netns"

    @property
    def state_file(self) -> Path:
        return self.root / "state" / "ports.json"

    def write_adapter(self, **changes: Any) -> None:
        self.adapter.update(changes)
        self.config_path.write_text(json.dumps(self.adapter))

    def write_conflist(self, plugins: list[dict[str, Any]], name: str = "cfnet-test",
                       version: str = "1.0.0") -> None:
        for old in self.conf_dir.glob("*"):
            old.unlink()
        doc = {"cniVersion": version, "name": name, "plugins": plugins}
        (self.conf_dir / "10-test.conflist").write_text(json.dumps(doc, indent=2))

    def debian_chain(self, extra: list[dict[str, Any]] | None = None,
                     before: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        chain = [
            {"type": "bridge", "bridge": "cni0", "isGateway": True, "isDefaultGateway": True,
             "ipMasq": False, "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": SUBNET}]],
                      "dataDir": str(self.ipam_dir)}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ]
        return (before or []) + chain + (extra or [])

    def add_script_plugin(self, name: str, body: str) -> None:
        """A plugin of type `name`: a Python script (exec'd like any third-party plugin)."""
        path = self.plugin_dir / name
        path.write_text(f"#!{sys.executable}\n{body}")
        path.chmod(0o755)

    def hook(self, action: str, handle: str, stdin: Any = None, container: str | None = None,
             pid: int = 0, args: list[str] | None = None) -> HookResult:
        """Run `cfnet garden-hook` inside the cell as Guardian does (upstream flag form)."""
        argv = ["nsenter", f"--net={netns.path(self.ns)}", sys.executable, "-m", "cfnet",
                "garden-hook"]
        argv += args if args is not None else [f"--configFile={self.config_path}",
                                                "--action", action, "--handle", handle]
        if stdin is None:
            stdin = {"Pid": pid} if action == "up" else None
        data = stdin if isinstance(stdin, (bytes, str)) else json.dumps(stdin)
        fd = os.open(netns.path(container), os.O_RDONLY) if container else None
        try:
            proc = subprocess.run(
                argv, input=data if isinstance(data, bytes) else data.encode(),
                capture_output=True, timeout=120,
                pass_fds=(fd, 3) if fd is not None else (),
                preexec_fn=(lambda: os.dup2(fd, 3)) if fd is not None else None)
        finally:
            if fd is not None:
                os.close(fd)
        return HookResult(proc.returncode, proc.stdout.decode(), proc.stderr.decode())

    def up(self, handle: str, container: str, netin: list[dict[str, int]] | None = None,
           **extra: Any) -> HookResult:
        stdin = {"Pid": 0, "Properties": {"app_id": "a1", "space_id": "s1"},
                 "netin": netin or [], **extra}
        return self.hook("up", handle, stdin, container=container)

    def down(self, handle: str) -> HookResult:
        return self.hook("down", handle)

    def warm_up(self, container: str) -> None:
        """One up/down pair with a port mapping: third-party plugins keep shared things they
        create on first use (the bridge, portmap's top-level chains); later ones compare to this."""
        res = self.up("warm", container, netin=[{"host_port": 0, "container_port": 1}])
        assert res.rc == 0, res.stderr
        assert self.down("warm").rc == 0

    # -- what the cell holds ------------------------------------------------------------------

    def acquired_ports(self) -> dict[str, list[int]]:
        if not self.state_file.exists() or not self.state_file.read_text().strip():
            return {}
        return json.loads(self.state_file.read_text()).get("acquired_ports", {})

    def mounts(self) -> list[str]:
        """Mount points under this cell's directory (bind-mounted namespaces)."""
        out = []
        with open("/proc/self/mountinfo") as f:
            for line in f:
                point = line.split()[4]
                if point.startswith(str(self.root)):
                    out.append(point)
        return out

    def snapshot(self, containers: tuple[str, ...] = ()) -> dict[str, Any]:
        """Everything a container's network could leave behind in the cell (and containers)."""

        def ip_json(ns: str, *what: str) -> Any:
            return json.loads(netns.run(ns, ["ip", "-j", *what]).stdout or "[]")

        # carrier state (operstate, "linkdown") of a bridge follows its ports asynchronously
        links = sorted((l["ifname"], l.get("master", ""))
                       for l in ip_json(self.ns, "link", "show"))
        addrs = sorted((a["ifname"], i["local"], i["prefixlen"])
                       for a in ip_json(self.ns, "addr", "show") for i in a.get("addr_info", []))
        routes = sorted(json.dumps({k: v for k, v in r.items() if k != "flags"}, sort_keys=True)
                        for r in ip_json(self.ns, "route", "show"))
        neigh = sorted(f"{n.get('dst')} {n.get('dev')}" for n in ip_json(self.ns, "neigh", "show")
                       if "PERMANENT" in n.get("state", []))
        ruleset = netns.run(self.ns, ["nft", "-s", "list", "ruleset"]).stdout

        def files(d: Path, skip: tuple[str, ...] = ()) -> list[str]:
            if not d.exists():
                return []
            return sorted(str(p.relative_to(d)) for p in d.rglob("*")
                          if p.is_file() and p.name not in skip)

        snap = {
            "links": links, "addrs": addrs, "routes": routes, "neigh": neigh,
            "ruleset": ruleset,
            # host-local's bookkeeping files change by design; its per-IP files must not leak
            "ipam": files(self.ipam_dir, ("last_reserved_ip.0", "lock")),
            "cache": files(self.cache_dir), "bind": files(self.bind_dir),
            "ports": self.acquired_ports(), "mounts": self.mounts(),
        }
        for c in containers:
            snap[f"container {c}"] = sorted(
                (l["ifname"], tuple(i["local"] for i in l.get("addr_info", [])))
                for l in ip_json(c, "addr", "show"))
        return snap


def _detach_mounts(root: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f if line.split()[4].startswith(str(root))]
    for point in reversed(points):
        libc.umount2(point.encode(), 2)


@pytest.fixture
def garden_cell(sandbox: Any, tmp_path: Path) -> Iterator[GardenCell]:
    """A cell namespace with a client host on a veth, an adapter.json and Debian's plugins."""
    cell_ns = sandbox.netns("cell")
    client_ns = sandbox.netns("client")
    netns.run(cell_ns, ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
                        "netns", client_ns])
    netns.run(cell_ns, ["ip", "addr", "add", f"{CELL_IP}/24", "dev", "eth0"])
    netns.run(cell_ns, ["ip", "link", "set", "eth0", "up"])
    netns.run(client_ns, ["ip", "addr", "add", f"{CLIENT_IP}/24", "dev", "eth0"])
    netns.run(client_ns, ["ip", "link", "set", "eth0", "up"])
    cell = GardenCell(ns=cell_ns, root=tmp_path)
    cell.client = client_ns  # type: ignore[attr-defined]
    for d in (cell.plugin_dir, cell.conf_dir):
        d.mkdir()
    for plugin in DEBIAN_PLUGINS.iterdir():
        (cell.plugin_dir / plugin.name).symlink_to(plugin)
    cell.write_adapter(
        cni_plugin_dir=str(cell.plugin_dir), cni_config_dir=str(cell.conf_dir),
        bind_mount_dir=str(cell.bind_dir), state_file=str(cell.state_file),
        start_port=61000, total_ports=100, log_prefix="cfnetworking",
        iptables_lock_file=str(tmp_path / "iptables.lock"), proxy_port=15001, proxy_uid=0,
        search_domains=["pivotal.io"], cni_cache_dir=str(cell.cache_dir))
    cell.write_conflist(cell.debian_chain())
    try:
        yield cell
    finally:
        _detach_mounts(tmp_path)


@pytest.fixture
def container(sandbox: Any) -> Callable[[str], str]:
    """Make a container namespace (lo up), named within the sandbox."""
    return lambda suffix: sandbox.netns(suffix)
