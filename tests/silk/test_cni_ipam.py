"""host-local compatible IPAM files, the silk container store, and silk's naming and MTU rules."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from cfnet.silk.cni import SilkConfig, container_mac, container_mtu, host_mac, host_veth_name
from cfnet.silk.ipam import ContainerStore, HostLocal, IPAMError, StoreError, parse_subnet


def test_names_and_macs_follow_upstream() -> None:
    assert host_veth_name("10.255.30.2") == "s-010255030002"
    assert host_mac("10.255.30.2") == "aa:aa:0a:ff:1e:02"
    assert container_mac("10.255.30.2") == "ee:ee:0a:ff:1e:02"
    assert len(host_veth_name("255.255.255.255")) == 14  # fits IFNAMSIZ


def test_mtu_comes_from_the_config_or_else_the_vtep() -> None:
    assert container_mtu(0, 1450) == 1450  # BOSH writes 0 when the operator sets no mtu
    assert container_mtu(8950, 1450) == 8950  # BOSH writes mtu - 50
    assert container_mtu(0, 0) == 0  # nothing known: the kernel's default


def test_silk_config_defaults_and_upstream_keys() -> None:
    cfg = SilkConfig.from_conf({"name": "silk", "cniVersion": "1.0.0"})
    assert (cfg.daemon_port, cfg.data_dir, cfg.datastore, cfg.mtu, cfg.subnet_file) == \
        (23954, "/var/vcap/data/host-local", "", 0, "")
    cfg = SilkConfig.from_conf({"name": "silk", "cniVersion": "1.0.0", "daemonPort": 1234,
                                "dataDir": "/d", "datastore": "/s.json", "mtu": 1400,
                                "subnetFile": "/f"})
    assert (cfg.daemon_port, cfg.data_dir, cfg.datastore, cfg.mtu, cfg.subnet_file) == \
        (1234, "/d", "/s.json", 1400, "/f")


@pytest.mark.parametrize("subnet, msg", [
    ("10.255.30.0/33", "invalid CIDR address: 10.255.30.0/33"),
    ("10.255.30.0", "invalid CIDR address: 10.255.30.0"),
    ("fd00::/64", "invalid CIDR address: fd00::/64"),
    ("10.255.30.1/24", "Network has host bits set. For a subnet mask of length 24 the network "
                       "address is 10.255.30.0"),
    ("10.255.30.0/31", "Network 10.255.30.0/31 too small to allocate from"),
])
def test_bad_subnets(subnet: str, msg: str) -> None:
    with pytest.raises(IPAMError, match="^" + msg.replace(".", r"\.").replace("/", "/") + "$"):
        parse_subnet(subnet)


def files(ipam: HostLocal) -> dict[str, bytes]:
    return {p: Path(ipam.dir, p).read_bytes() for p in sorted(os.listdir(ipam.dir))}


def test_the_first_address_is_subnet_plus_two_in_host_local_files(tmp_path: Path) -> None:
    ipam = HostLocal(str(tmp_path), "silk")
    assert str(ipam.allocate("10.255.30.0/24", "ctr-1", "eth0")) == "10.255.30.2"
    assert files(ipam) == {"10.255.30.2": b"ctr-1\r\neth0",
                           "last_reserved_ip.0": b"10.255.30.2", "lock": b""}
    assert ipam.dir == str(tmp_path / "ipam" / "silk")
    assert stat.S_IMODE(os.stat(Path(ipam.dir, "10.255.30.2")).st_mode) == 0o600


def test_round_robin_skips_the_gateway_and_wraps(tmp_path: Path) -> None:
    ipam = HostLocal(str(tmp_path), "silk")
    got = [str(ipam.allocate("10.0.0.0/29", f"c{i}", "eth0")) for i in range(5)]
    assert got == [f"10.0.0.{i}" for i in range(2, 7)]
    with pytest.raises(IPAMError) as info:
        ipam.allocate("10.0.0.0/29", "c9", "eth0")
    assert str(info.value) == ("failed to allocate for range 0: no IP addresses available in "
                               "range set: 10.0.0.1-10.0.0.6")
    # Freed addresses are reused only after the search wraps past the last one handed out.
    assert ipam.release_attachment("c1", "eth0") == ["10.0.0.3"]
    assert ipam.release_attachment("c3", "eth0") == ["10.0.0.5"]
    assert str(ipam.allocate("10.0.0.0/29", "c10", "eth0")) == "10.0.0.3"
    assert str(ipam.allocate("10.0.0.0/29", "c11", "eth0")) == "10.0.0.5"


def test_duplicate_attachment_is_refused(tmp_path: Path) -> None:
    ipam = HostLocal(str(tmp_path), "silk")
    ipam.allocate("10.0.0.0/24", "c1", "eth0")
    with pytest.raises(IPAMError, match="^10.0.0.2 has been allocated to c1, duplicate "
                                        "allocation is not allowed$"):
        ipam.allocate("10.0.0.0/24", "c1", "eth0")
    assert str(ipam.allocate("10.0.0.0/24", "c1", "eth1")) == "10.0.0.3"


def test_release_only_frees_the_owners_address(tmp_path: Path) -> None:
    ipam = HostLocal(str(tmp_path), "silk")
    ipam.allocate("10.0.0.0/24", "c1", "eth0")
    assert not ipam.release("10.0.0.2", "c2", "eth0")
    assert ipam.release_attachment("c2", "eth0") == []
    assert ipam.allocations() == {"10.0.0.2": ("c1", "eth0")}
    assert ipam.release("10.0.0.2", "c1", "eth0")
    assert ipam.allocations() == {}
    assert ipam.release_attachment("c1", "eth0") == []  # twice is fine


def test_legacy_files_without_ifname_belong_to_the_container(tmp_path: Path) -> None:
    ipam = HostLocal(str(tmp_path), "silk")
    os.makedirs(ipam.dir)
    Path(ipam.dir, "10.0.0.7").write_text("old-ctr")
    assert ipam.find("old-ctr", "eth0") == ["10.0.0.7"]
    assert ipam.release_attachment("old-ctr", "eth0") == ["10.0.0.7"]


def test_gc_frees_everything_but_the_valid_attachments(tmp_path: Path) -> None:
    ipam = HostLocal(str(tmp_path), "silk")
    for cid in ("a", "b", "c"):
        ipam.allocate("10.0.0.0/24", cid, "eth0")
    freed = ipam.release_all_but({("b", "eth0")})
    assert freed == {"10.0.0.2": ("a", "eth0"), "10.0.0.4": ("c", "eth0")}
    assert ipam.allocations() == {"10.0.0.3": ("b", "eth0")}
    assert ipam.free_count("10.0.0.0/24") == 253 - 1


def _allocate_many(args: tuple[str, int]) -> list[str]:
    data_dir, worker = args
    ipam = HostLocal(data_dir, "silk")
    return [str(ipam.allocate("10.1.0.0/24", f"w{worker}-{i}", "eth0")) for i in range(10)]


def test_concurrent_processes_never_share_an_address(tmp_path: Path) -> None:
    with multiprocessing.get_context("fork").Pool(4) as pool:
        got = [ip for ips in pool.map(_allocate_many, [(str(tmp_path), w) for w in range(4)])
               for ip in ips]
    assert len(got) == 40 and len(set(got)) == 40
    assert len(HostLocal(str(tmp_path), "silk").allocations()) == 40


def test_store_add_and_delete_keep_upstreams_shape(tmp_path: Path) -> None:
    path = tmp_path / "silk" / "store.json"
    store = ContainerStore(str(path))
    store.add("container-001", "10.255.30.2")
    store.add("container-002", "10.255.30.3")
    assert path.read_text() == ('{"container-001":{"handle":"container-001","ip":"10.255.30.2",'
                                '"metadata":null},"container-002":{"handle":"container-002",'
                                '"ip":"10.255.30.3","metadata":null}}\n')
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert store.delete("container-001") == ["container-001"]
    assert store.delete("missing") == []
    assert store.delete("", ["10.255.30.3"]) == ["container-002"]
    assert json.loads(path.read_text()) == {}


def test_store_errors_use_upstream_wording(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="^open lock: open : no such file or directory$"):
        ContainerStore("").add("h", "10.0.0.2")
    with pytest.raises(StoreError, match="^invalid handle$"):
        ContainerStore(str(tmp_path / "s.json")).add("", "10.0.0.2")
    with pytest.raises(StoreError, match="^invalid ip: nope$"):
        ContainerStore(str(tmp_path / "s.json")).add("h", "nope")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(StoreError, match="^decoding file: "):
        ContainerStore(str(bad)).read()
    empty = tmp_path / "empty.json"
    empty.write_text("")
    assert ContainerStore(str(empty)).read() == {}
