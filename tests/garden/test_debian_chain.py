"""The "swappable" promise: the hook drives Debian's Go bridge + host-local + portmap chain."""

from __future__ import annotations

import ctypes
import ipaddress
import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cfnet.net import netns
from tests.garden.conftest import SUBNET, GardenCell, Responder, tcp_get

pytestmark = pytest.mark.privileged


def test_up_connects_a_mapped_port_and_down_removes_everything(garden_cell: GardenCell,
                                                               container) -> None:
    cell = garden_cell
    c1 = container("c1")
    cell.warm_up(container("warm"))
    before = cell.snapshot((c1,))

    res = cell.up("h1", c1, netin=[{"host_port": 0, "container_port": 8080},
                                   {"host_port": 0, "container_port": 2222}])
    assert res.rc == 0, res.stderr
    assert res.stdout.endswith("\n") and res.stdout.count("\n") == 1
    out = res.json
    props = out["properties"]
    ip = props["garden.network.container-ip"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(SUBNET)
    assert props["garden.network.host-ip"] == "255.255.255.255"
    assert props["garden.network.interface"] == "eth0"
    assert json.loads(props["garden.network.mapped-ports"]) == [
        {"HostPort": 61000, "ContainerPort": 8080}, {"HostPort": 61001, "ContainerPort": 2222}]
    assert out["search_domains"] == ["pivotal.io"]
    assert "dns_servers" not in out  # bridge reports none: Garden uses the host's resolv.conf
    assert list(out) == ["properties", "search_domains"]
    assert cell.acquired_ports() == {"h1": [61000, 61001]}

    # The container really has the address, and the mapped host port reaches it from outside.
    addrs = json.loads(netns.run(c1, ["ip", "-j", "addr", "show", "eth0"]).stdout)
    assert ip in [a["local"] for a in addrs[0]["addr_info"]]
    responder = Responder(c1, 8080)
    try:
        assert tcp_get(cell.client, "192.168.231.1", 61000) == b"hello from the container"
    finally:
        responder.close()

    assert cell.down("h1").rc == 0
    assert cell.snapshot((c1,)) == before
    assert not any("CNI-DN" in line for line in before["ruleset"].splitlines())
    again = cell.down("h1")  # down twice
    assert (again.rc, again.stdout) == (0, "")
    assert cell.snapshot((c1,)) == before


def test_down_works_after_the_container_is_gone(garden_cell: GardenCell, container) -> None:
    cell = garden_cell
    cell.warm_up(container("warm"))
    before = cell.snapshot()
    c1 = container("gone")
    assert cell.up("h1", c1, netin=[{"host_port": 0, "container_port": 8080}]).rc == 0
    # The container's namespace dies and someone removes the bind mount: down still cleans up.
    netns.remove(c1)
    for point in cell.mounts():
        ctypes.CDLL(None).umount2(point.encode(), 2)
    assert cell.mounts() == []
    res = cell.down("h1")
    assert res.rc == 0, res.stderr
    assert cell.snapshot() == before


def test_down_without_cache_state_or_mount_succeeds(garden_cell: GardenCell) -> None:
    res = garden_cell.down("never-created")
    assert (res.rc, res.stdout, res.stderr) == (0, "", "")


def test_upstream_and_cfnet_spellings_and_pid(garden_cell: GardenCell, container) -> None:
    """`up --handle H --configFile F` and a real process's pid instead of fd 3."""
    cell = garden_cell
    c1 = container("pid")
    proc = subprocess.Popen(netns.exec_argv(c1, ["sleep", "300"]))
    try:
        # `ip netns exec` execs sleep in place: the process in c1 is the container's
        deadline = time.monotonic() + 10
        while not (pids := netns.pids_in(c1)) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pids == [proc.pid]
        res = cell.hook("up", "h1", {"pid": pids[0], "NETIN": [{"HOST_PORT": 0,
                                                                 "container_port": 80}]},
                        args=["up", "--handle", "h1", "--configFile", str(cell.config_path)])
        assert res.rc == 0, res.stderr
        assert json.loads(res.json["properties"]["garden.network.mapped-ports"]) == [
            {"HostPort": 61000, "ContainerPort": 80}]
        addrs = json.loads(netns.run(c1, ["ip", "-j", "addr", "show", "eth0"]).stdout)
        assert addrs[0]["addr_info"][0]["local"] == res.json["properties"][
            "garden.network.container-ip"]
        res = cell.hook("down", "h1", args=["down", "-handle=h1",
                                            f"-configFile={cell.config_path}"])
        assert res.rc == 0, res.stderr
        assert cell.acquired_ports() == {}
    finally:
        proc.kill()
        proc.wait()


def test_fifty_concurrent_up_down_pairs(garden_cell: GardenCell, container) -> None:
    cell = garden_cell
    cell.warm_up(container("warm"))
    before = cell.snapshot()
    names = [container(f"p{i}") for i in range(50)]

    def pair(i: int) -> tuple[int, int, str]:
        up = cell.up(f"h{i}", names[i], netin=[{"host_port": 0, "container_port": 8080}])
        if up.rc != 0:
            return -1, -1, up.stderr
        port = json.loads(up.json["properties"]["garden.network.mapped-ports"])[0]["HostPort"]
        down = cell.down(f"h{i}")
        return port, down.rc, down.stderr

    # First all ups at once (ports must be unique while they are all held), then all downs.
    with ThreadPoolExecutor(max_workers=8) as pool:
        ups = list(pool.map(lambda i: cell.up(f"h{i}", names[i],
                                              netin=[{"host_port": 0, "container_port": 8080}]),
                            range(50)))
    assert [u.stderr for u in ups if u.rc != 0] == []
    ports = [json.loads(u.json["properties"]["garden.network.mapped-ports"])[0]["HostPort"]
             for u in ups]
    ips = [u.json["properties"]["garden.network.container-ip"] for u in ups]
    assert len(set(ports)) == 50 and len(set(ips)) == 50
    assert sorted(ports) == list(range(61000, 61050))
    with ThreadPoolExecutor(max_workers=8) as pool:
        downs = list(pool.map(lambda i: cell.down(f"h{i}"), range(50)))
    assert [d.stderr for d in downs if d.rc != 0] == []
    assert cell.snapshot() == before

    # Then interleaved pairs (ups racing downs of others), eight at a time.
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(pair, range(20)))
    assert [r for r in results if r[1] != 0] == []
    assert cell.snapshot() == before


PASS_THROUGH = """
import json, os, sys
conf = json.load(sys.stdin)
with open(conf["record"], "a") as f:
    f.write(json.dumps({"command": os.environ["CNI_COMMAND"], "conf": conf,
                        "netns": os.environ.get("CNI_NETNS")}) + "\\n")
if os.environ["CNI_COMMAND"] == "ADD":
    result = conf["prevResult"]
    if conf.get("nameservers"):
        result["dns"] = {"nameservers": conf["nameservers"]}
    print(json.dumps(result))
"""


def test_what_every_plugin_is_given(garden_cell: GardenCell, container) -> None:
    """GEN's injections (metadata, runtimeConfig) on ADD; the cached result and the same
    runtimeConfig on DEL; Garden's netout rules in Garden's own JSON shape."""
    cell = garden_cell
    record = cell.root / "calls"
    cell.add_script_plugin("recorder", PASS_THROUGH)
    recorder = {"type": "recorder", "record": str(record), "nameservers": ["169.254.0.2"]}
    cell.write_conflist(cell.debian_chain(extra=[recorder]), name="injected")
    c1 = container("c1")
    stdin = {
        "Pid": 0,
        "Properties": {"app_id": "a1", "policy_group_id": "g1", "ports": "8080"},
        "netout_rules": [
            {"protocol": 1, "networks": [{"start": "10.0.0.1", "end": "10.0.0.9"}],
             "ports": [{"start": 80, "end": 443}], "log": True},
            {"protocol": 3, "networks": [{"start": "0.0.0.0", "end": "255.255.255.255"}],
             "icmps": {"type": 255, "code": 1}},
        ],
        "netin": [{"host_port": 0, "container_port": 8080},
                  {"host_port": 62000, "container_port": 2222}],
    }
    res = cell.hook("up", "inj", stdin, container=c1)
    assert res.rc == 0, res.stderr
    ip = res.json["properties"]["garden.network.container-ip"]
    assert res.stdout == (  # Go's encoder: struct field order, compact, one line
        '{"properties":{"garden.network.container-ip":"' + ip + '",'
        '"garden.network.host-ip":"255.255.255.255","garden.network.mapped-ports":'
        '"[{\\"HostPort\\":61000,\\"ContainerPort\\":8080},'
        '{\\"HostPort\\":62000,\\"ContainerPort\\":2222}]",'
        '"garden.network.interface":"eth0"},"dns_servers":["169.254.0.2"],'
        '"search_domains":["pivotal.io"]}\n')
    assert json.loads(res.json["properties"]["garden.network.mapped-ports"]) == [
        {"HostPort": 61000, "ContainerPort": 8080}, {"HostPort": 62000, "ContainerPort": 2222}]
    assert cell.acquired_ports() == {"inj": [61000]}  # explicit host ports bypass the pool
    add = json.loads(record.read_text().splitlines()[0])
    assert add["command"] == "ADD" and add["netns"] == str(cell.bind_dir / "inj")
    conf = add["conf"]
    assert (conf["name"], conf["cniVersion"]) == ("injected", "1.0.0")
    assert conf["metadata"] == stdin["Properties"]
    assert conf["runtimeConfig"] == {
        "portMappings": [
            {"host_port": 61000, "container_port": 8080, "hostPort": 61000,
             "containerPort": 8080, "protocol": "tcp"},
            {"host_port": 62000, "container_port": 2222, "hostPort": 62000,
             "containerPort": 2222, "protocol": "tcp"}],
        "netOutRules": stdin["netout_rules"],
    }
    assert conf["prevResult"]["ips"][0]["address"].startswith("10.99.0.")

    assert cell.down("inj").rc == 0
    delete = json.loads(record.read_text().splitlines()[1])
    assert delete["command"] == "DEL" and delete["netns"] == str(cell.bind_dir / "inj")
    assert "metadata" not in delete["conf"]
    # the cached result of the whole list (the recorder's own, with its DNS servers)
    assert delete["conf"]["prevResult"] == {**conf["prevResult"],
                                            "dns": {"nameservers": ["169.254.0.2"]}}
    assert delete["conf"]["runtimeConfig"] == conf["runtimeConfig"]
    assert cell.acquired_ports() == {}
