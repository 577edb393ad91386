"""The hook on a Silk cell: a silk-only conflist, the silk plugin called in-process.

One deployment (controller + silk-daemon, in a Sandbox) is shared by the module. The plugin
directory holds no `silk-cni` executable, so an `up` that works proves the plugin ran inside the
hook's process rather than being exec'd.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cfnet.net import netns
from tests.garden.conftest import GardenCell, Responder, _detach_mounts, tcp_get
from tests.garden.test_up_rollback import FAIL

pytestmark = pytest.mark.privileged


@pytest.fixture(scope="module")
def silk_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    from cfnet.testing.netns import Sandbox
    from cfnet.testing.silk import silk_deployment

    work = tmp_path_factory.mktemp("gardensilk")
    with Sandbox("gh") as box, silk_deployment(box.topology(), work, cells=1) as silk:
        yield box, silk


@dataclass
class SilkCell(GardenCell):
    overlay_subnet: str = ""
    silk_plugin: dict[str, Any] = field(default_factory=dict)
    make_container: Callable[[str], str] = str


@pytest.fixture
def silk_cell(silk_env: tuple[Any, Any], tmp_path: Path) -> Iterator[SilkCell]:
    box, silk = silk_env
    cell = silk.cells["cell1"]
    made: list[str] = []

    def make_container(suffix: str) -> str:
        made.append(box.netns(suffix))
        return made[-1]

    gc = SilkCell(ns=cell.ns, root=tmp_path, overlay_subnet=cell.overlay_subnet,
                  make_container=make_container)
    gc.plugin_dir.mkdir()
    gc.conf_dir.mkdir()
    gc.write_adapter(
        cni_plugin_dir=str(gc.plugin_dir), cni_config_dir=str(gc.conf_dir),
        bind_mount_dir=str(gc.bind_dir), state_file=str(gc.state_file), start_port=61000,
        total_ports=100, log_prefix="cfnetworking", iptables_lock_file=str(tmp_path / "lock"),
        proxy_port=15001, proxy_uid=0, cni_cache_dir=str(gc.cache_dir))
    gc.silk_plugin = {"type": "silk-cni", "daemonPort": 23954, "dataDir": str(gc.ipam_dir),
                      "datastore": str(tmp_path / "store.json"), "mtu": 0}
    gc.write_conflist([gc.silk_plugin], name="cf")
    try:
        yield gc
    finally:
        _detach_mounts(tmp_path)
        for name in made:
            netns.remove(name)


def test_up_and_down_with_silk(silk_cell: SilkCell) -> None:
    cell = silk_cell
    c1 = cell.make_container("s1")
    before = cell.snapshot((c1,))
    assert not list(cell.plugin_dir.iterdir())  # nothing to exec: silk runs in-process

    res = cell.up("h1", c1, netin=[{"host_port": 0, "container_port": 8080}])
    assert res.rc == 0, res.stderr
    props = res.json["properties"]
    ip = props["garden.network.container-ip"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(cell.overlay_subnet)
    assert props["garden.network.interface"] == "eth0"
    assert json.loads(props["garden.network.mapped-ports"]) == [
        {"HostPort": 61000, "ContainerPort": 8080}]
    # the silk data path: the cell reaches the container on its overlay address
    responder = Responder(c1, 8080, b"silk")
    try:
        assert tcp_get(cell.ns, ip, 8080) == b"silk"
    finally:
        responder.close()
    cached = json.loads((cell.cache_dir / "results" / "cf-h1-eth0").read_text())
    assert cached["result"]["ips"][0]["address"] == f"{ip}/32"

    assert cell.down("h1").rc == 0
    assert cell.snapshot((c1,)) == before
    assert cell.down("h1").rc == 0
    assert cell.snapshot((c1,)) == before


def test_a_failure_after_silk_rolls_silk_back(silk_cell: SilkCell) -> None:
    cell = silk_cell
    cell.add_script_plugin("fail", FAIL)
    fail = {"type": "fail", "record": str(cell.root / "calls")}
    cell.write_conflist([cell.silk_plugin, fail], name="cf")
    c1 = cell.make_container("s2")
    before = cell.snapshot((c1,))
    res = cell.up("h2", c1, netin=[{"host_port": 0, "container_port": 8080}])
    assert (res.rc, res.stdout) == (1, "")
    assert res.stderr.splitlines()[-1] == ('cfnetworking: cni up failed: add network list failed: '
                                           'plugin type="fail" failed (add): boom; on purpose')
    assert cell.snapshot((c1,)) == before


def test_down_after_the_container_namespace_is_gone(silk_cell: SilkCell) -> None:
    import ctypes

    cell = silk_cell
    before = cell.snapshot()
    c1 = cell.make_container("s3")
    assert cell.up("h3", c1).rc == 0
    netns.remove(c1)
    for point in cell.mounts():
        ctypes.CDLL(None).umount2(point.encode(), 2)
    res = cell.down("h3")
    assert res.rc == 0, res.stderr
    assert cell.snapshot() == before


def test_fifty_concurrent_containers_on_silk(silk_cell: SilkCell) -> None:
    cell = silk_cell
    before = cell.snapshot()
    names = [cell.make_container(f"k{i}") for i in range(50)]
    netin = [{"host_port": 0, "container_port": 8080}]
    with ThreadPoolExecutor(max_workers=8) as pool:
        ups = list(pool.map(lambda i: cell.up(f"k{i}", names[i], netin=netin), range(50)))
    assert [u.stderr for u in ups if u.rc != 0] == []
    ips = {u.json["properties"]["garden.network.container-ip"] for u in ups}
    ports = {json.loads(u.json["properties"]["garden.network.mapped-ports"])[0]["HostPort"]
             for u in ups}
    assert len(ips) == 50 and ports == set(range(61000, 61050))
    with ThreadPoolExecutor(max_workers=8) as pool:
        downs = list(pool.map(lambda i: cell.down(f"k{i}"), range(50)))
    assert [d.stderr for d in downs if d.rc != 0] == []
    assert cell.snapshot() == before
