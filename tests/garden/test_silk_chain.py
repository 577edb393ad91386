"""The hook on a Silk cell: a silk-only conflist, the silk plugin called in-process.

One deployment (controller + silk-daemon, in a Sandbox) is shared by the module. The plugin
directory holds no `silk-cni` executable, so an `up` that works proves the plugin ran inside the
hook's process rather than being exec'd.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cfnet.net import netns
from tests.garden.conftest import GardenCell, Responder, tcp_get
from tests.garden.test_up_rollback import FAIL

pytestmark = pytest.mark.privileged


@pytest.fixture(scope="module")
def silk_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    from cfnet.testing.netns import Sandbox
    from cfnet.testing.silk import silk_deployment

    work = tmp_path_factory.mktemp("gardensilk")
    with Sandbox("gh") as box, silk_deployment(box.topology(), work, cells=1) as silk:
        yield box, silk


@pytest.fixture
def silk_cell(silk_env: tuple[Any, Any], tmp_path: Path) -> Iterator[GardenCell]:
    box, silk = silk_env
    cell = silk.cells["cell1"]
    gc = GardenCell(ns=cell.ns, root=tmp_path)
    gc.plugin_dir.mkdir()
    gc.conf_dir.mkdir()
    gc.write_adapter(
        cni_plugin_dir=str(gc.plugin_dir), cni_config_dir=str(gc.conf_dir),
        bind_mount_dir=str(gc.bind_dir), state_file=str(gc.state_file), start_port=61000,
        total_ports=100, log_prefix="cfnetworking", iptables_lock_file=str(tmp_path / "lock"),
        proxy_port=15001, proxy_uid=0, cni_cache_dir=str(gc.cache_dir))
    gc.silk_plugin = {"type": "silk-cni", "daemonPort": 23954,  # type: ignore[attr-defined]
                      "dataDir": str(gc.ipam_dir), "datastore": str(tmp_path / "store.json"),
                      "mtu": 0}
    gc.overlay_subnet = cell.overlay_subnet  # type: ignore[attr-defined]
    gc.write_conflist([gc.silk_plugin], name="cf")  # type: ignore[attr-defined]
    made: list[str] = []
    gc.make_container = lambda s: (made.append(box.netns(s)) or made[-1])  # type: ignore[attr-defined]
    try:
        yield gc
    finally:
        from tests.garden.conftest import _detach_mounts

        _detach_mounts(tmp_path)
        for name in made:
            netns.remove(name)


def test_up_and_down_with_silk(silk_cell: GardenCell) -> None:
    cell = silk_cell
    c1 = cell.make_container("s1")  # type: ignore[attr-defined]
    before = cell.snapshot((c1,))
    assert not list(cell.plugin_dir.iterdir())  # nothing to exec: silk runs in-process

    res = cell.up("h1", c1, netin=[{"host_port": 0, "container_port": 8080}])
    assert res.rc == 0, res.stderr
    props = res.json["properties"]
    ip = props["garden.network.container-ip"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(cell.overlay_subnet)  # type: ignore[attr-defined]
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


def test_a_failure_after_silk_rolls_silk_back(silk_cell: GardenCell) -> None:
    cell = silk_cell
    cell.add_script_plugin("fail", FAIL)
    cell.write_conflist([cell.silk_plugin, {"type": "fail", "record": str(cell.root / "calls")}],  # type: ignore[attr-defined]
                        name="cf")
    c1 = cell.make_container("s2")  # type: ignore[attr-defined]
    before = cell.snapshot((c1,))
    res = cell.up("h2", c1, netin=[{"host_port": 0, "container_port": 8080}])
    assert (res.rc, res.stdout) == (1, "")
    assert res.stderr.splitlines()[-1] == ('cfnetworking: cni up failed: add network list failed: '
                                           'plugin type="fail" failed (add): boom; on purpose')
    assert cell.snapshot((c1,)) == before


def test_down_after_the_container_namespace_is_gone(silk_cell: GardenCell) -> None:
    import ctypes

    cell = silk_cell
    before = cell.snapshot()
    c1 = cell.make_container("s3")  # type: ignore[attr-defined]
    assert cell.up("h3", c1).rc == 0
    netns.remove(c1)
    for point in cell.mounts():
        ctypes.CDLL(None).umount2(point.encode(), 2)
    res = cell.down("h3")
    assert res.rc == 0, res.stderr
    assert cell.snapshot() == before
