"""`cfnet cni silk` on a real two-cell Silk deployment, run exactly as a CNI runtime runs it.

One deployment (controller + a daemon per cell, in namespaces of a Sandbox) is shared by the
module; every test makes its own container namespaces and deletes its containers, so the tests
stay independent. The plugin is always executed as a subprocess inside the cell's namespace
(`ip netns exec <cell> python -m cfnet cni silk`, or a `silk-cni` symlink found in CNI_PATH), with
CNI_* environment and the config on stdin.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cfnet.net import netns

pytestmark = pytest.mark.privileged

CFNET = str(Path(sys.executable).with_name("cfnet"))


@dataclass
class CNIRun:
    code: int
    out: dict[str, Any] | None
    stdout: str
    stderr: str


@dataclass
class Env:
    box: Any
    silk: Any
    work: Path
    symlink_dir: Path
    containers: list[str] = field(default_factory=list)

    def cell(self, name: str) -> Any:
        return self.silk.cells[name]

    def conf(self, cell: Any, **changes: Any) -> dict[str, Any]:
        """The silk NetConf a cell's runtime would pass (BOSH shape), with `changes`."""
        conf = {"cniVersion": "1.0.0", "name": "silk", "type": "silk-cni", "daemonPort": 23954,
                "dataDir": str(cell.workdir / "host-local"), "datastore": str(cell.datastore),
                "mtu": 0, "subnetFile": ""}
        conf.update(changes)
        return conf

    def ipam_dir(self, cell: Any, name: str = "silk") -> Path:
        return cell.workdir / "host-local" / "ipam" / name

    def reservations(self, cell: Any) -> dict[str, str]:
        """ip -> raw file content of every host-local reservation of the cell."""
        d = self.ipam_dir(cell)
        if not d.exists():
            return {}
        return {p.name: p.read_bytes().decode() for p in d.iterdir()
                if p.name != "lock" and not p.name.startswith("last_reserved_ip")}

    def container_ns(self, suffix: str) -> str:
        name = self.box.netns(suffix)
        self.containers.append(name)
        return name

    def cni(self, cell: Any, command: str, container_id: str = "", ns: str | None = None,
            conf: dict[str, Any] | None = None, ifname: str = "eth0", symlink: bool = False,
            extra_env: dict[str, str] | None = None) -> CNIRun:
        """Run the plugin inside the cell as a runtime does; the parsed stdout JSON (if any)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env.update(CNI_COMMAND=command, CNI_CONTAINERID=container_id, CNI_IFNAME=ifname,
                   CNI_PATH=f"{self.symlink_dir}:/usr/lib/cni", CFNET_CNI_LOG="stderr")
        if ns is not None:
            env["CNI_NETNS"] = ns if ns.startswith("/") or not ns else netns.path(ns)
        env.update(extra_env or {})
        if symlink:
            argv = [str(self.symlink_dir / "silk-cni")]
        else:
            argv = [sys.executable, "-m", "cfnet", "cni", "silk"]
        body = json.dumps(conf if conf is not None else self.conf(cell))
        proc = subprocess.run(netns.exec_argv(cell.ns, argv), input=body, capture_output=True,
                              text=True, env=env, timeout=60)
        out = json.loads(proc.stdout) if proc.stdout.strip() else None
        return CNIRun(proc.returncode, out, proc.stdout, proc.stderr)

    def add(self, cell: Any, container_id: str, ns: str, **kw: Any) -> str:
        """ADD that must succeed; the container's IP."""
        run = self.cni(cell, "ADD", container_id, ns, **kw)
        assert run.code == 0, (run.stdout, run.stderr)
        assert run.out is not None
        return run.out["ips"][0]["address"].split("/")[0]

    def delete(self, cell: Any, container_id: str, ns: str | None, **kw: Any) -> CNIRun:
        run = self.cni(cell, "DEL", container_id, ns, **kw)
        assert run.code == 0, (run.stdout, run.stderr)
        assert run.stdout == ""
        return run


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    from cfnet.testing.netns import Sandbox
    from cfnet.testing.silk import silk_deployment

    work = tmp_path_factory.mktemp("silkcni")
    links = work / "cni-bin"
    links.mkdir()
    (links / "silk-cni").symlink_to(CFNET)
    with Sandbox("cni") as box, silk_deployment(box.topology(), work, cells=2) as silk:
        silk.wait_converged()
        yield Env(box=box, silk=silk, work=work, symlink_dir=links)


@pytest.fixture
def e(env: Env) -> Iterator[Env]:
    """The shared deployment; container namespaces made by the test are removed after it."""
    env.containers = []
    yield env
    for name in env.containers:
        netns.remove(name)


def links(ns: str) -> dict[str, dict[str, Any]]:
    out = json.loads(netns.run(ns, ["ip", "-j", "-d", "link", "show"]).stdout)
    return {l["ifname"]: l for l in out}


def addrs(ns: str, dev: str) -> list[dict[str, Any]]:
    out = json.loads(netns.run(ns, ["ip", "-j", "addr", "show", "dev", dev]).stdout)
    return [a for a in out[0]["addr_info"] if a["family"] == "inet"]


def routes(ns: str, *args: str) -> list[str]:
    return [" ".join(l.split()) for l in
            netns.run(ns, ["ip", "route", "show", *args]).stdout.strip().splitlines()]


def neighbours(ns: str, dev: str) -> list[str]:
    return [" ".join(l.split()) for l in
            netns.run(ns, ["ip", "neigh", "show", "dev", dev]).stdout.strip().splitlines()]


def sysctl(ns: str, key: str) -> str:
    return netns.run(ns, ["sysctl", "-n", key]).stdout.strip()


def host_veth(ip: str) -> str:
    return "s-" + "".join(f"{int(o):03d}" for o in ip.split("."))


def mac(prefix: str, ip: str) -> str:
    return prefix + "".join(f":{int(o):02x}" for o in ip.split("."))


def silk_links(cell: Any) -> set[str]:
    return {n for n in links(cell.ns) if n.startswith("s-")}


# ---------------------------------------------------------------------------------------------


def test_add_builds_the_data_path_and_del_twice_removes_it(e: Env) -> None:
    cell = e.cell("cell1")
    ns = e.container_ns("add1")
    run = e.cni(cell, "ADD", "add1", ns)
    assert run.code == 0, run.stdout + run.stderr
    ip = run.out["ips"][0]["address"].split("/")[0]  # type: ignore[index]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(cell.overlay_subnet)
    hname = host_veth(ip)
    # The result, as upstream prints it: 4-space indentation, no trailing newline.
    assert run.out == {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": hname, "mac": mac("aa:aa", ip)},
                       {"name": "eth0", "mac": mac("ee:ee", ip), "sandbox": netns.path(ns)}],
        "ips": [{"interface": 1, "address": f"{ip}/32", "gateway": "169.254.0.1"}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.0.1"}],
    }
    assert run.stdout == json.dumps(run.out, indent=4)
    # Logs go to stderr as lager JSON lines, never to stdout.
    log = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    assert [(l["source"], l["message"]) for l in log] == \
        [("cfnetworking.silk-cni", "cfnetworking.silk-cni.add")]
    assert log[0]["data"]["ip"] == ip and len(log[0]["data"]["cni-request-id"]) == 36

    # Host side: NOARP veth with the VTEP's MTU, /32 peer address, permanent neighbour, route.
    host = links(cell.ns)[hname]
    assert host["address"] == mac("aa:aa", ip) and host["mtu"] == cell.mtu
    assert "NOARP" in host["flags"] and "UP" in host["flags"]
    assert [(a["local"], a.get("address"), a["prefixlen"], a["scope"]) for a in addrs(cell.ns, hname)] \
        == [("169.254.0.1", ip, 32, "link")]
    assert f"{ip} lladdr {mac('ee:ee', ip)} PERMANENT" in neighbours(cell.ns, hname)
    assert f"{ip} dev {hname} proto kernel scope link src 169.254.0.1" in routes(cell.ns)
    assert sysctl(cell.ns, f"net.ipv4.conf.{hname}.rp_filter") == "1"
    assert sysctl(cell.ns, f"net.ipv6.conf.{hname}.disable_ipv6") == "1"
    assert sysctl(cell.ns, "net.ipv4.ip_forward") == "1"

    # Container side.
    eth0 = links(ns)["eth0"]
    assert eth0["address"] == mac("ee:ee", ip) and eth0["mtu"] == cell.mtu
    assert "NOARP" in eth0["flags"] and "UP" in eth0["flags"]
    assert [(a["local"], a.get("address"), a["prefixlen"]) for a in addrs(ns, "eth0")] \
        == [(ip, "169.254.0.1", 32)]
    assert f"169.254.0.1 lladdr {mac('aa:aa', ip)} PERMANENT" in neighbours(ns, "eth0")
    assert sorted(routes(ns)) == sorted([
        f"default via 169.254.0.1 dev eth0 src {ip}",
        f"169.254.0.1 dev eth0 proto kernel scope link src {ip}"])
    assert sysctl(ns, "net.ipv4.conf.eth0.rp_filter") == "1"
    assert sysctl(ns, "net.ipv6.conf.eth0.disable_ipv6") == "1"

    # Bookkeeping: the host-local file and the silk store entry keyed by the netns basename.
    assert e.reservations(cell)[ip] == "add1\r\neth0"
    assert (e.ipam_dir(cell) / "last_reserved_ip.0").read_text() == ip
    store = json.loads(cell.datastore.read_text())
    assert store[ns] == {"handle": ns, "ip": ip, "metadata": None}

    for _ in range(2):
        e.delete(cell, "add1", ns)
        assert hname not in links(cell.ns)
        assert "eth0" not in links(ns)
        assert ip not in e.reservations(cell)
        assert ns not in json.loads(cell.datastore.read_text())
        assert not [r for r in routes(cell.ns) if ip in r]


def test_containers_reach_each_other_across_cells_and_on_one_cell(e: Env) -> None:
    c1, c2 = e.cell("cell1"), e.cell("cell2")
    a1, a2, b1 = e.container_ns("a1"), e.container_ns("a2"), e.container_ns("b1")
    ip_a1 = e.add(c1, "a1", a1)
    ip_a2 = e.add(c1, "a2", a2, symlink=True)  # found by type name in CNI_PATH, like a runtime
    ip_b1 = e.add(c2, "b1", b1, symlink=True)
    try:
        for src, dst in ((a1, ip_b1), (b1, ip_a1), (a1, ip_a2), (a2, ip_a1)):
            netns.run(src, ["ping", "-c", "1", "-W", "5", dst])
        assert tcp_echo(b1, ip_b1, a1) == b"hello"  # across the overlay
        assert tcp_echo(a2, ip_a2, a1) == b"hello"  # same cell, plain routing
    finally:
        e.delete(c1, "a1", a1)
        e.delete(c1, "a2", a2)
        e.delete(c2, "b1", b1)


def tcp_echo(server_ns: str, server_ip: str, client_ns: str, port: int = 7070) -> bytes:
    """Start a one-connection echo server in `server_ns`, connect from `client_ns`."""
    server = subprocess.Popen(
        netns.exec_argv(server_ns, [sys.executable, "-c",
                                    "import socket,sys\n"
                                    f"s=socket.create_server(('{server_ip}',{port}))\n"
                                    "print('ready',flush=True)\n"
                                    "c,_=s.accept(); c.sendall(c.recv(64)); c.close()\n"]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        client = netns.run(client_ns, [sys.executable, "-c",
                                       "import socket\n"
                                       f"s=socket.create_connection(('{server_ip}',{port}),5)\n"
                                       "s.sendall(b'hello'); print(s.recv(64).decode())\n"])
        server.wait(10)
        return client.stdout.strip().encode()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_the_source_mark_crosses_the_overlay_as_the_gbp_id(e: Env) -> None:
    """A mark set on cell 1 (as the policy agent sets a tag) is `meta mark` on cell 2."""
    c1, c2 = e.cell("cell1"), e.cell("cell2")
    src, dst = e.container_ns("g1"), e.container_ns("g2")
    ip_src = e.add(c1, "g1", src)
    ip_dst = e.add(c2, "g2", dst)
    # One rule on each cell, as the recipe (recipes/two-cell-gbp.sh) has them.
    netns.run(c1.ns, ["nft", "-f", "-"], input=(
        "table ip tagtest { chain marks { type filter hook forward priority 0;\n"
        f"  ip saddr {ip_src} meta mark set 0x5a5\n}}\n}}\n"))
    netns.run(c2.ns, ["nft", "-f", "-"], input=(
        "table ip tagtest { chain marks { type filter hook forward priority 0;\n"
        f"  iifname \"silk-vtep\" ip daddr {ip_dst} meta mark 0x5a5 counter\n"
        f"  iifname \"silk-vtep\" ip daddr {ip_dst} meta mark != 0x5a5 counter\n}}\n}}\n"))
    try:
        netns.run(src, ["ping", "-c", "3", "-i", "0.2", "-W", "5", ip_dst])
        counters = json.loads(netns.run(c2.ns, ["nft", "-j", "list", "chain", "ip", "tagtest",
                                                "marks"]).stdout)
        packets = [r["rule"]["expr"][-1]["counter"]["packets"]
                   for r in counters["nftables"] if "rule" in r]
        assert packets[0] >= 3 and packets[1] == 0, packets
    finally:
        netns.run(c1.ns, ["nft", "delete table ip tagtest"], check=False)
        netns.run(c2.ns, ["nft", "delete table ip tagtest"], check=False)
        e.delete(c1, "g1", src)
        e.delete(c2, "g2", dst)


def test_a_failed_add_leaves_nothing_and_the_next_add_succeeds(e: Env, tmp_path: Path) -> None:
    cell = e.cell("cell1")
    before_links, before_ips = silk_links(cell), set(e.reservations(cell))

    def nothing_left() -> None:
        assert silk_links(cell) == before_links
        assert set(e.reservations(cell)) == before_ips
        assert ns not in json.loads(cell.datastore.read_text() or "{}")

    # 1. The interface already exists in the container.
    ns = e.container_ns("f1")
    netns.run(ns, ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other0"])
    run = e.cni(cell, "ADD", "f1", ns)
    assert run.code == 1 and run.out is not None
    assert (run.out["code"], run.out["msg"]) == (100, "create veth pair")
    assert "eth0 already exists" in run.out["details"]
    nothing_left()
    netns.run(ns, ["ip", "link", "del", "eth0"])

    # 2. The silk daemon is unreachable.
    run = e.cni(cell, "ADD", "f1", ns, conf=e.conf(cell, daemonPort=1))
    assert run.out == {"cniVersion": "1.0.0", "code": 100, "msg": "discover network info",
                       "details": 'get netinfo: json client do: http client do: Get '
                                  '"http://127.0.0.1:1/": dial tcp 127.0.0.1:1: connect: '
                                  'connection refused'}
    nothing_left()

    # 3. Bad config: each a clear code naming the key, nothing done.
    for changes, code, msg in (
            ({"mtu": -1}, 7, "invalid config: key 'mtu' must be at least 0"),
            ({"daemonPort": "x"}, 7, "invalid config: key 'daemonPort' must be an integer"),
            ({"cniVersion": "0.3.1"}, 1, "incompatible CNI versions"),
            ({"name": ""}, 7, "missing network name")):
        run = e.cni(cell, "ADD", "f1", ns, conf=e.conf(cell, **changes))
        assert run.code == 1 and run.out is not None
        assert (run.out["code"], run.out["msg"]) == (code, msg), run.out
        nothing_left()

    # 4. The last step fails (the silk store cannot be written): veth and address rolled back.
    blocked = tmp_path / "store-is-a-dir"
    blocked.mkdir()
    run = e.cni(cell, "ADD", "f1", ns, conf=e.conf(cell, datastore=str(blocked)))
    assert run.code == 1 and run.out is not None
    assert (run.out["code"], run.out["msg"]) == (100, "write container metadata")
    nothing_left()
    assert "eth0" not in links(ns)

    # 5. The container namespace does not exist.
    run = e.cni(cell, "ADD", "f1", "/run/netns/cfnet-no-such-ns")
    assert run.out is not None and (run.out["code"], run.out["msg"]) == (100, "create config")
    nothing_left()

    # ...and then the same container is created normally.
    ip = e.add(cell, "f1", ns)
    netns.run(ns, ["ping", "-c", "1", "-W", "5", "169.254.0.1"])
    e.delete(cell, "f1", ns)
    nothing_left()


def test_add_fails_cleanly_when_the_pool_is_exhausted(e: Env, tmp_path: Path) -> None:
    """A flannel-style subnet file with a /29: five addresses, all taken (a leftover from before
    a reboot); ADD fails with host-local's message and reserves nothing; GC frees the pool."""
    cell = e.cell("cell1")
    subnet_file = tmp_path / "subnet.env"
    subnet_file.write_text("FLANNEL_NETWORK=10.254.0.0/16\nFLANNEL_SUBNET=10.254.7.0/29\n"
                           "FLANNEL_MTU=1400\n")
    data = tmp_path / "hl"
    conf = e.conf(cell, subnetFile=str(subnet_file), dataDir=str(data), name="tiny")
    pool = data / "ipam" / "tiny"
    pool.mkdir(parents=True)
    for i in range(2, 7):
        (pool / f"10.254.7.{i}").write_bytes(f"gone-{i}\r\neth0".encode())
    ns = e.container_ns("x1")
    run = e.cni(cell, "ADD", "x1", ns, conf=conf)
    assert run.out == {"cniVersion": "1.0.0", "code": 100, "msg": "run ipam plugin",
                       "details": "failed to allocate for range 0: no IP addresses available "
                                  "in range set: 10.254.7.1-10.254.7.6"}
    assert sorted(p.name for p in pool.iterdir() if p.name[0].isdigit()) == \
        [f"10.254.7.{i}" for i in range(2, 7)]
    assert "eth0" not in links(ns)

    gc = e.cni(cell, "GC", conf={**conf, "cniVersion": "1.1.0", "cni.dev/valid-attachments": []})
    assert gc.code == 0, gc.stdout + gc.stderr
    ip = e.add(cell, "x1", ns, conf=conf)
    assert ip == "10.254.7.2"
    assert links(ns)["eth0"]["mtu"] == 1400  # the subnet file's MTU
    e.delete(cell, "x1", ns, conf=conf)


def test_del_succeeds_without_netns_prevresult_or_container(e: Env) -> None:
    cell = e.cell("cell2")
    ns = e.container_ns("d1")
    ip = e.add(cell, "d1", ns)
    # The runtime lost the namespace path: DEL still frees the address and the devices.
    e.delete(cell, "d1", None)
    assert ip not in e.reservations(cell)
    assert host_veth(ip) not in links(cell.ns)
    assert "eth0" not in links(ns)
    assert ip not in [v["ip"] for v in json.loads(cell.datastore.read_text()).values()]
    e.delete(cell, "d1", "")  # empty CNI_NETNS
    e.delete(cell, "never-added", ns)  # unknown container
    e.delete(cell, "d1", "/run/netns/cfnet-gone")  # a namespace that is gone
    # The cell's own namespace is refused (code 8): its eth0 is the cell's uplink.
    for command in ("ADD", "DEL"):
        own = e.cni(cell, command, "d1", cell.ns)
        assert own.code == 1 and own.out is not None and own.out["code"] == 8
    assert "eth0" in links(cell.ns)
    # With the daemon's port closed DEL still works (it never asks the daemon).
    e.delete(cell, "d1", ns, conf=e.conf(cell, daemonPort=1))


def test_gc_after_a_reboot_leaves_the_pool_whole(e: Env) -> None:
    cell = e.cell("cell2")
    keep = e.container_ns("k1")
    ip_keep = e.add(cell, "k1", keep)
    gone = [e.container_ns(f"r{i}") for i in range(3)]
    gone_ips = [e.add(cell, f"r{i}", ns) for i, ns in enumerate(gone)]
    # "Reboot": the containers and their namespaces vanish, the IPAM and store files stay.
    for ns in gone:
        netns.remove(ns)
    assert set(gone_ips) <= set(e.reservations(cell))

    conf = {**e.conf(cell, cniVersion="1.1.0"),
            "cni.dev/valid-attachments": [{"containerID": "k1", "ifname": "eth0"}]}
    run = e.cni(cell, "GC", conf=conf)
    assert run.code == 0 and run.stdout == "", run.stdout + run.stderr
    assert set(e.reservations(cell)) == {ip_keep}
    assert [v["ip"] for v in json.loads(cell.datastore.read_text()).values()] == [ip_keep]
    assert silk_links(cell) == {host_veth(ip_keep)}
    netns.run(keep, ["ping", "-c", "1", "-W", "5", "169.254.0.1"])  # the live container is untouched
    e.delete(cell, "k1", keep)
    assert e.reservations(cell) == {}


def test_concurrent_adds_on_one_cell_get_distinct_addresses(e: Env) -> None:
    cell = e.cell("cell1")
    names = [f"p{i}" for i in range(8)]
    spaces = {n: e.container_ns(n) for n in names}
    with ThreadPoolExecutor(len(names)) as pool:
        runs = list(pool.map(lambda n: e.cni(cell, "ADD", n, spaces[n]), names))
    assert all(r.code == 0 for r in runs), [r.stdout for r in runs if r.code]
    ips = [r.out["ips"][0]["address"] for r in runs]  # type: ignore[index]
    assert len(set(ips)) == len(names)
    assert {f"{ip}/32" for ip in e.reservations(cell)} >= set(ips)
    with ThreadPoolExecutor(len(names)) as pool:
        dels = list(pool.map(lambda n: e.cni(cell, "DEL", n, spaces[n]), names))
    assert all(r.code == 0 for r in dels), [r.stdout for r in dels if r.code]
    assert not {f"{ip}/32" for ip in e.reservations(cell)} & set(ips)


def test_check_status_and_version(e: Env) -> None:
    cell = e.cell("cell1")
    ns = e.container_ns("c1")
    add = e.cni(cell, "ADD", "c1", ns, conf=e.conf(cell, cniVersion="1.1.0"))
    assert add.code == 0
    conf = {**e.conf(cell, cniVersion="1.1.0"), "prevResult": add.out}
    assert e.cni(cell, "CHECK", "c1", ns, conf=conf).code == 0
    netns.run(ns, ["ip", "route", "del", "default"])
    run = e.cni(cell, "CHECK", "c1", ns, conf=conf)
    assert run.code == 1 and run.out is not None and run.out["msg"] == "check failed"
    assert "default route" in run.out["details"]
    e.delete(cell, "c1", ns)

    assert e.cni(cell, "STATUS", conf=e.conf(cell, cniVersion="1.1.0")).code == 0
    down = e.cni(cell, "STATUS", conf=e.conf(cell, cniVersion="1.1.0", daemonPort=1))
    assert down.out is not None and down.out["code"] == 50
    old = e.cni(cell, "STATUS", conf=e.conf(cell))  # 1.0.0 has no STATUS
    assert old.out is not None and old.out["code"] == 1

    version = e.cni(cell, "VERSION", symlink=True)
    assert version.stdout == '{"cniVersion":"1.1.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]}\n'


def test_in_process_calls_from_a_thread_in_the_cell(e: Env) -> None:
    """What garden-hook does: the plugin object called from a thread that entered the cell's
    namespace (the rest of the process stays where it is); same result as the executable."""
    from cfnet.cni.entry import load_plugin
    from cfnet.cni.plugin import invoke
    from cfnet.cni.types import CmdArgs
    from cfnet.testing.silk import call_in_netns

    cell = e.cell("cell2")
    ns = e.container_ns("ip1")
    plugin = load_plugin("silk")
    conf = e.conf(cell, cniVersion="1.1.0")
    args = CmdArgs("ADD", container_id="ip1", netns=netns.path(ns), ifname="eth0")
    result = call_in_netns(cell.ns, lambda: invoke(plugin, "ADD", dict(conf), args))
    out = result.to_dict("1.1.0")  # type: ignore[union-attr]
    ip = out["ips"][0]["address"].split("/")[0]
    assert out["interfaces"][1] == {"name": "eth0", "mac": mac("ee:ee", ip), "mtu": cell.mtu,
                                    "sandbox": netns.path(ns)}
    assert sysctl(cell.ns, f"net.ipv4.conf.{host_veth(ip)}.rp_filter") == "1"
    assert sysctl(ns, "net.ipv4.conf.eth0.rp_filter") == "1"
    netns.run(ns, ["ping", "-c", "1", "-W", "5", "169.254.0.1"])  # over the veth to the cell
    call_in_netns(cell.ns, lambda: invoke(plugin, "DEL", dict(conf),
                                          CmdArgs("DEL", container_id="ip1",
                                                  netns=netns.path(ns), ifname="eth0")))
    assert host_veth(ip) not in links(cell.ns) and ip not in e.reservations(cell)
