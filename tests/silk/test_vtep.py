"""The VTEP and its convergence, on real kernel objects inside sandbox namespaces."""

from __future__ import annotations

import socket
from dataclasses import dataclass

import pytest
from pyroute2 import IPRoute

from cfnet.net import netns, vtep
from cfnet.net.vtep import VtepConfig, VtepError
from cfnet.testing.netns import Sandbox


@dataclass(frozen=True)
class L:
    underlay_ip: str
    overlay_subnet: str
    overlay_hardware_addr: str


def lease(underlay: str, subnet: str) -> L:
    return L(underlay, subnet, vtep.mac_for_ip(subnet.split("/")[0]))


LOCAL = "10.255.30.0/24"
CFG = dict(name="silk-vtep", vni=1, port=4789, overlay_ip="10.255.30.0",
           overlay_network="10.255.0.0/16", mac="ee:ee:0a:ff:1e:00")


def test_mac_and_thresholds_are_computed_as_upstream() -> None:
    assert vtep.mac_for_ip("10.255.30.0") == "ee:ee:0a:ff:1e:00"
    assert vtep.parse_mac("EE-EE-0A-FF-1E-00") == "ee:ee:0a:ff:1e:00"
    assert vtep.parse_mac("ee:ee:0a:ff:1e") is None
    assert vtep.neighbour_table_warning(10, (128, 512, 1024)) is None
    assert "gc_thresh2 is 512" in (vtep.neighbour_table_warning(600, (128, 512, 1024)) or "")
    assert "gc_thresh3 is 1024" in (vtep.neighbour_table_warning(1024, (128, 512, 1024)) or "")
    assert "1200 neighbour entries needed, gc_thresh3" in (vtep.neighbour_table_warning(
        600, (128, 512, 1024), permanent_counted=True) or "")
    assert vtep.neighbour_table_warning(10, (128, 512, 1024), headroom=1000) is not None
    assert vtep.permanent_entries_counted("4.19.0-25-amd64")
    assert not vtep.permanent_entries_counted("6.18.44-fc-v1147")


@pytest.mark.parametrize("change, error", [
    (dict(name=""), "empty vtep name"),
    (dict(port=0), "vtep port must be greater than 0"),
    (dict(underlay_ip="foo"), "parse underlay ip: foo"),
    (dict(mac="nope"), "parsing hardware address: nope"),
    (dict(subnet_prefix_length=16), "overlay prefix 16 must be smaller than subnet prefix 16"),
    (dict(overlay_network="10.0.0.0/16"), "determine overlay network: 10.255.30.0 is not in"),
])
def test_bad_config_is_refused_before_anything_is_made(change: dict, error: str) -> None:
    cfg = VtepConfig(**{**CFG, "underlay_ip": "10.10.0.1", **change})
    with pytest.raises(VtepError, match=error):
        cfg.check()




@pytest.fixture
def cell(sandbox: Sandbox):  # type: ignore[no-untyped-def]
    topo = sandbox.topology()
    host = topo.add_host("cell")
    with IPRoute(netns=host.ns) as ipr:
        yield host, ipr


def ip(ns: str, *args: str) -> str:
    return netns.run(ns, ["ip", *args]).stdout


@pytest.mark.privileged
def test_create_builds_the_vtep_of_the_spec(cell) -> None:  # type: ignore[no-untyped-def]
    host, ipr = cell
    info = vtep.create(ipr, VtepConfig(**CFG, underlay_ip=host.ip))
    eth0 = ipr.link_lookup(ifname="eth0")[0]
    assert (info.vni, info.port, info.gbp, info.learning) == (1, 4789, True, False)
    assert (info.local, info.link, info.mtu, info.mac, info.up) == (
        host.ip, eth0, 1450, "ee:ee:0a:ff:1e:00", True)
    assert info.addresses == [("10.255.30.0", 16, 253)]
    assert vtep.inspect(ipr, "silk-vtep") == info
    details = ip(host.ns, "-d", "link", "show", "silk-vtep")
    for token in ("vxlan id 1", f"local {host.ip}", "dev eth0", "dstport 4789", "nolearning",
                  "gbp", "mtu 1450", "ee:ee:0a:ff:1e:00"):
        assert token in details
    assert "10.255.0.0/16 dev silk-vtep proto kernel scope link src 10.255.30.0" in ip(
        host.ns, "route")
    # A second create (e.g. a VTEP left without an address) starts from scratch.
    again = vtep.create(ipr, VtepConfig(**{**CFG, "overlay_ip": "10.255.31.0",
                                          "mac": "ee:ee:0a:ff:1f:00"}, underlay_ip=host.ip))
    assert again.addresses == [("10.255.31.0", 16, 253)] and again.mac == "ee:ee:0a:ff:1f:00"
    assert vtep.delete(ipr, "silk-vtep") is True
    assert vtep.inspect(ipr, "silk-vtep") is None
    assert vtep.delete(ipr, "silk-vtep") is False


@pytest.mark.privileged
def test_create_uses_the_named_interface_and_the_single_ip_shape(cell) -> None:  # type: ignore[no-untyped-def]
    host, ipr = cell
    cfg = VtepConfig(**{**CFG, "overlay_ip": "10.255.0.32", "mac": "ee:ee:0a:ff:00:20"},
                     underlay_ip=host.ip, underlay_interface="lo")
    info = vtep.create(ipr, cfg)
    assert info.link == ipr.link_lookup(ifname="lo")[0]
    assert info.mtu == 65536 - 50
    assert info.addresses == [("10.255.0.32", 16, 253)]


@pytest.mark.privileged
def test_create_failures_name_the_cause_and_leave_nothing(cell) -> None:  # type: ignore[no-untyped-def]
    host, ipr = cell
    with pytest.raises(VtepError, match="no interface with address 10.10.0.99"):
        vtep.create(ipr, VtepConfig(**CFG, underlay_ip="10.10.0.99"))
    with pytest.raises(VtepError, match="find device from name eth9: no such network interface"):
        vtep.create(ipr, VtepConfig(**CFG, underlay_ip=host.ip, underlay_interface="eth9"))
    assert vtep.inspect(ipr, "silk-vtep") is None


def kernel_state(ipr: IPRoute, index: int) -> tuple[set, set, set]:
    routes = {(f"{r.get('RTA_DST')}/{r['dst_len']}", r.get("RTA_GATEWAY"), r.get("RTA_PREFSRC"),
               r["proto"], r["scope"], r["flags"] & 4)
              for r in ipr.get_routes(family=socket.AF_INET, table=254)
              if r.get("RTA_OIF") == index}
    arp = {(n.get("NDA_DST"), n.get("NDA_LLADDR"), n["state"], n["ndm_type"])
           for n in ipr.get_neighbours(ifindex=index, family=socket.AF_INET)}
    fdb = {(n.get("NDA_LLADDR"), n.get("NDA_DST"), n["state"], n["flags"] & 2)
           for n in ipr.get_neighbours(ifindex=index, family=7)}
    return routes, arp, fdb


@pytest.mark.privileged
def test_converge_adds_what_is_missing_and_removes_what_is_gone(cell) -> None:  # type: ignore[no-untyped-def]
    host, ipr = cell
    index = vtep.create(ipr, VtepConfig(**CFG, underlay_ip=host.ip)).index
    connected = ("10.255.0.0/16", None, "10.255.30.0", 2, 253, 0)
    # Something the daemon did not make: a route whose gateway is outside the overlay.
    ipr.route("add", dst="192.168.7.0/24", gateway="10.10.0.200", oif=ipr.link_lookup(
        ifname="eth0")[0], proto=3)
    # A stale ARP entry on the VTEP, as the kernel makes for unknown destinations.
    ipr.neigh("add", dst="10.255.99.0", lladdr="02:00:00:00:00:01", ifindex=index, state=0x04)

    leases = [lease(host.ip, LOCAL), lease("10.10.0.5", "10.255.40.0/24"),
              lease("10.10.0.6", "10.255.50.0/24"), lease("10.10.0.7", "10.254.1.0/24")]
    result = vtep.converge(ipr, index, LOCAL, "10.255.0.0/16", leases)
    assert (result.peers, result.non_routable) == (2, 1)
    routes, arp, fdb = kernel_state(ipr, index)
    assert routes == {connected,
                      ("10.255.40.0/24", "10.255.40.0", "10.255.30.0", 3, 0, 0),
                      ("10.255.50.0/24", "10.255.50.0", "10.255.30.0", 3, 0, 0)}
    assert arp == {("10.255.40.0", "ee:ee:0a:ff:28:00", 0x80, 1),
                   ("10.255.50.0", "ee:ee:0a:ff:32:00", 0x80, 1)}
    assert fdb == {("ee:ee:0a:ff:28:00", "10.10.0.5", 0x80, 2),
                   ("ee:ee:0a:ff:32:00", "10.10.0.6", 0x80, 2)}
    text = ip(host.ns, "route")
    assert "10.255.40.0/24 via 10.255.40.0 dev silk-vtep src 10.255.30.0 \n" in text
    assert "10.255.40.0 dev silk-vtep lladdr ee:ee:0a:ff:28:00 PERMANENT" in ip(host.ns, "neigh")
    assert "ee:ee:0a:ff:28:00 dst 10.10.0.5 self permanent" in netns.run(
        host.ns, ["bridge", "fdb", "show", "dev", "silk-vtep"]).stdout

    # Nothing to do the second time.
    assert not vtep.converge(ipr, index, LOCAL, "10.255.0.0/16", leases).changed

    # 10.255.50.0 went away, 10.255.40.0 moved to another cell, 10.255.60.0 arrived.
    leases = [lease("10.10.0.8", "10.255.40.0/24"), lease("10.10.0.9", "10.255.60.0/24")]
    result = vtep.converge(ipr, index, LOCAL, "10.255.0.0/16", leases)
    assert result.routes_deleted == 1 and result.neighbours_deleted == 3
    routes, arp, fdb = kernel_state(ipr, index)
    assert routes == {connected,
                      ("10.255.40.0/24", "10.255.40.0", "10.255.30.0", 3, 0, 0),
                      ("10.255.60.0/24", "10.255.60.0", "10.255.30.0", 3, 0, 0)}
    assert arp == {("10.255.40.0", "ee:ee:0a:ff:28:00", 0x80, 1),
                   ("10.255.60.0", "ee:ee:0a:ff:3c:00", 0x80, 1)}
    assert fdb == {("ee:ee:0a:ff:28:00", "10.10.0.8", 0x80, 2),
                   ("ee:ee:0a:ff:3c:00", "10.10.0.9", 0x80, 2)}
    assert "192.168.7.0/24 via 10.10.0.200 dev eth0" in ip(host.ns, "route")

    # A malformed lease changes nothing; an empty list removes every peer.
    for bad, error in ((L("10.10.0.9", "10.255.70.0/99", "ee:ee:0a:ff:46:00"), "invalid CIDR"),
                       (L("nope", "10.255.70.0/24", "ee:ee:0a:ff:46:00"), "invalid underlay ip"),
                       (L("10.10.0.9", "10.255.70.0/24", "zz"), "invalid hardware addr")):
        with pytest.raises(VtepError, match=f"parse lease: {error}"):
            vtep.converge(ipr, index, LOCAL, "10.255.0.0/16", [*leases, bad])
        assert kernel_state(ipr, index) == (routes, arp, fdb)
    vtep.converge(ipr, index, LOCAL, "10.255.0.0/16", [])
    assert kernel_state(ipr, index) == ({connected}, set(), set())


@pytest.mark.privileged
def test_converge_deletes_races_tolerated_and_rewrites_foreign_shapes(cell) -> None:  # type: ignore[no-untyped-def]
    host, ipr = cell
    index = vtep.create(ipr, VtepConfig(**CFG, underlay_ip=host.ip)).index
    leases = [lease("10.10.0.5", "10.255.40.0/24")]
    # A route to a peer subnet in the wrong shape (proto static, no src) is rewritten in place.
    ipr.route("add", dst="10.255.40.0/24", gateway="10.255.40.0", oif=index)
    result = vtep.converge(ipr, index, LOCAL, "10.255.0.0/16", leases)
    assert result.routes_written == 1
    routes, _, _ = kernel_state(ipr, index)
    assert ("10.255.40.0/24", "10.255.40.0", "10.255.30.0", 3, 0, 0) in routes
    assert len(routes) == 2
    # Someone deletes our entries behind our back: the next cycle puts them back.
    ipr.route("del", dst="10.255.40.0/24", gateway="10.255.40.0", oif=index)
    ipr.neigh("del", dst="10.255.40.0", ifindex=index)
    result = vtep.converge(ipr, index, LOCAL, "10.255.0.0/16", leases)
    assert (result.routes_written, result.neighbours_written) == (1, 1)


@pytest.mark.privileged
def test_converge_across_several_overlay_cidrs_uses_onlink(cell) -> None:  # type: ignore[no-untyped-def]
    host, ipr = cell
    overlay = "10.255.0.0/16, 10.250.0.0/16"
    index = vtep.create(ipr, VtepConfig(**{**CFG, "overlay_network": overlay},
                                        underlay_ip=host.ip)).index
    vtep.converge(ipr, index, LOCAL, overlay, [lease("10.10.0.5", "10.255.40.0/24"),
                                               lease("10.10.0.6", "10.250.3.0/24")])
    routes, _, _ = kernel_state(ipr, index)
    assert ("10.255.40.0/24", "10.255.40.0", "10.255.30.0", 3, 0, 0) in routes
    assert ("10.250.3.0/24", "10.250.3.0", "10.255.30.0", 3, 0, 4) in routes
    assert "10.250.3.0/24 via 10.250.3.0 dev silk-vtep src 10.255.30.0 onlink" in ip(
        host.ns, "route")
