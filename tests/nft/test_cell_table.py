"""The cell table's transactions against the kernel: container add/remove, orphans, c2c updates."""

from __future__ import annotations

import pytest

from cfnet.core import asg_rules as ar
from cfnet.core import nft_syntax as nx
from cfnet.net import cell_table as ct
from cfnet.net.nft import Nft, NftError, TableState

pytestmark = pytest.mark.privileged

HOST = "10.10.0.1"


def container(handle: str, ip: str, ports: list[tuple[int, int]] | None = None,
              static: bool = False, **limits: object) -> ct.ContainerNet:
    rules = ar.parse_asg_rules([
        {"protocol": "tcp", "destination": "10.0.0.0/8,1.1.1.1-1.1.1.9", "ports": "80, 443, 1000-2000",
         "log": True},
        {"protocol": "udp", "destination": "8.8.8.8", "ports": "53"},
        {"protocol": "icmp", "destination": "0.0.0.0/0", "type": 8, "code": -1},
        {"protocol": "icmp", "destination": "0.0.0.0-9.255.255.255", "type": -1},
        {"protocol": "all", "destination": "192.0.2.0/24"}])
    chains = ar.netout_chains(handle, "app", rules, ar.DenyNetworks(always=["172.16.0.0/12"]),
                              asg_logging=True, outbound=ar.OutboundLimits(**limits))  # type: ignore[arg-type]
    return ct.ContainerNet(handle, ip, chains, HOST, ports or [], static_rules=static,
                           c2c_logging=True, underlay_ifs=["eth0"],
                           host_services=[("169.254.0.2", "udp", 53), ("169.254.0.2", "tcp", 53)])


def listed(nft: Nft) -> TableState:
    state = nft.list_table("ip", "cfnet")
    assert state is not None
    return state


def snapshot(nft: Nft) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Elements of every set and rule count of every chain (handles differ between runs)."""
    state = listed(nft)
    return ({k: sorted(s.elements) for k, s in state.sets.items()},
            {k: len(c.rules) for k, c in state.chains.items()})


@pytest.fixture
def cell(nft: Nft) -> Nft:
    nft.run(ct.render_base())
    return nft


def test_container_add_is_idempotent_and_loads_every_rule_shape(cell: Nft) -> None:
    c = container("h1", "10.255.0.2", [(61000, 8080)], static=True, limit=True, logging=True)
    cell.run(ct.render_container_add(c))
    once = snapshot(cell)
    cell.run(ct.render_container_add(c))
    cell.run(ct.render_container_add(c, ct.list_cell(cell)))
    assert snapshot(cell) == once
    state = listed(cell)
    assert state.sets["netout_v"].elements == ["10.255.0.2 : jump netout-h1"]
    assert state.sets["overlay_v"].elements == ["10.255.0.2 : jump overlay-h1"]
    assert state.sets["netin_dnat"].elements == ['10.10.0.1 . 61000 comment "h1" : 10.255.0.2 . 8080']
    assert state.sets["netin_ports"].elements == ['10.10.0.1 . 61000 comment "h1"']
    assert sorted(state.sets["host_svc"].elements) == ["169.254.0.2 . tcp . 53",
                                                       "169.254.0.2 . udp . 53"]
    assert len(state.chains["netout-h1"].rules) == len(c.egress.netout)
    assert {"netout-h1-log", "netout-h1-rl-log", "overlay-h1"} <= set(state.chains)
    assert "rl-h1" in state.sets


def test_agent_replaces_netout_contents_and_keeps_the_rest(cell: Nft) -> None:
    c = container("h1", "10.255.0.2")  # dynamic mode: tx 1 writes only the default tail
    cell.run(ct.render_container_add(c))
    assert len(listed(cell).chains["netout-h1"].rules) == 2  # DENY log + reject
    update = ar.netout_chains("h1", "app", ar.parse_asg_rules(
        [{"protocol": "udp", "destination": "8.8.8.8", "ports": "53"}]),
        outbound=ar.OutboundLimits(dry_run=True))
    cell.run(ct.render_netout(update))
    cell.run(ct.render_netout(update))
    state = listed(cell)
    assert len(state.chains["netout-h1"].rules) == len(update.netout) == 5
    assert len(state.chains["netout-h1-rl-log"].rules) == 1 and "rl-h1" in state.sets
    assert state.sets["netout_v"].elements == ["10.255.0.2 : jump netout-h1"]
    ct.remove_container(cell, "h1")
    assert ct.handles_in(ct.list_cell(cell) or TableState()) == set()


def test_remove_takes_exactly_that_container_and_is_idempotent(cell: Nft) -> None:
    other = container("h2", "10.255.0.3", [(61001, 8080)])
    cell.run(ct.render_container_add(other))
    only_other = snapshot(cell)
    cell.run(ct.render_container_add(container("h1", "10.255.0.2", [(61000, 8080), (61002, 9090)],
                                               static=True, limit=True, logging=True)))
    cell.run("add element ip cfnet c2c_src_tag { 10.255.0.2 : 0x7 }")
    assert snapshot(cell) != only_other
    ct.remove_container(cell, "h1")
    assert snapshot(cell) == only_other
    ct.remove_container(cell, "h1")  # again
    ct.remove_container(cell, "never-existed")  # unknown handle
    assert snapshot(cell) == only_other
    cell.run(ct.render_container_add(container("h1", "10.255.0.2", [(61000, 8080)])))  # after remove
    assert listed(cell).sets["netout_v"].keys["10.255.0.2"] == "jump netout-h1"


def test_remove_without_a_table_is_a_no_op(nft: Nft) -> None:
    ct.remove_container(nft, "h1")
    assert not nft.table_exists("ip", "cfnet")


def test_a_reused_ip_or_port_does_not_inherit_a_leaked_predecessor(cell: Nft) -> None:
    cell.run(ct.render_container_add(container("old", "10.255.0.2", [(61000, 8080)])))
    new = container("new", "10.255.0.2", [(61000, 9090)])
    with pytest.raises(NftError):  # map keys take one value: blind adds fail, nothing applied
        cell.run(ct.render_container_add(new))
    cell.run(ct.render_container_add(new, ct.list_cell(cell)))
    state = listed(cell)
    assert state.sets["netout_v"].elements == ["10.255.0.2 : jump netout-new"]
    assert state.sets["overlay_v"].elements == ["10.255.0.2 : jump overlay-new"]
    assert state.sets["netin_dnat"].elements == ['10.10.0.1 . 61000 comment "new" : 10.255.0.2 . 9090']
    assert ct.find_orphans(ct.list_cell(cell) or TableState(), live=["new"]) == ["old"]


def test_orphans_are_found_and_removed(cell: Nft) -> None:
    cell.run(ct.render_container_add(container("live", "10.255.0.2")))
    cell.run(ct.render_container_add(container("gone", "10.255.0.3", limit=True)))
    cell.run(ct.render_container_add(container("crashed", "10.255.0.4", limit=True)))
    # a half-made container: chains and a set, no vmap element points at them
    state = ct.list_cell(cell)
    assert state is not None
    cell.run("delete element ip cfnet netout_v { 10.255.0.4 }\n"
             "delete element ip cfnet overlay_v { 10.255.0.4 }\n")
    state = ct.list_cell(cell)
    assert state is not None
    assert ct.find_orphans(state, live=["live"]) == ["crashed"]
    assert ct.find_orphans(state, live=["live"], include_referenced=True) == ["crashed", "gone"]
    cell.run(ct.render_orphans_remove(state, live=["live"], include_referenced=True))
    after = ct.list_cell(cell)
    assert after is not None and ct.handles_in(after) == {"live"}
    assert after.sets["containers"].elements == ["10.255.0.2", "10.255.0.4"]  # listed no owner
    assert ct.render_orphans_remove(after, live=["live"]) == ""


def allow(n: int, tag_base: int = 1, port: int = 8080, width: int = 0) -> list[nx.C2CAllow]:
    return [nx.C2CAllow(f"10.255.{i // 200}.{i % 200 + 2}", tag_base + i % 50, "tcp", port,
                        port + width) for i in range(n)]


def test_c2c_replace_diffs_small_changes_and_swaps_large_ones(cell: Nft) -> None:
    first = ct.C2CState.build({"10.255.0.2": 0x1, "10.255.0.3": 0xFFFF},
                              allow(300) + allow(300, port=100, width=5))
    assert ct.replace_c2c(cell, first).ranges == "c2c_allow"
    assert ct.list_c2c(cell).state == first
    state = listed(cell)
    assert len(state.sets["c2c_allow_exact"].elements) == 300  # single ports: the hash set
    assert len(state.sets["c2c_allow"].elements) == 300  # ranges: the interval set

    small = ct.C2CState.build({"10.255.0.2": 0x2}, allow(250) + allow(290, port=100, width=5))
    # 10 range deletions: diffed in place
    assert ct.replace_c2c(cell, small, list_elements=True).ranges == "c2c_allow"
    assert ct.list_c2c(cell).state == small
    smaller = ct.C2CState.build({"10.255.0.2": 0x2}, allow(250) + allow(280, port=100, width=5))
    # the same from the agent's record instead of a listing
    assert ct.replace_c2c(cell, smaller, last=small).ranges == "c2c_allow"
    assert ct.list_c2c(cell).state == smaller

    large = ct.C2CState.build({"10.255.0.2": 0x2}, allow(200, tag_base=100, port=7, width=1))
    # 280 range deletions: the other set is filled and swapped in
    assert ct.replace_c2c(cell, large, last=smaller).ranges == "c2c_allow_b"
    listing = ct.list_c2c(cell)
    assert listing.allow_set == "c2c_allow_b" and listing.state == large
    assert "c2c_allow" not in listed(cell).sets
    log = ct.c2c_log_rules([
        ct.C2CLogEntry("10.255.0.2", "0005", "tcp", 8080, 8090, "some-very-very-long-app-guid"),
        ct.C2CLogEntry("10.255.0.2", "FFFF", "udp", 53, 53, "dst")], udp_logs_per_sec=7)
    assert log == [
        "ip daddr 10.255.0.2 meta mark 0x5 meta l4proto tcp th dport 8080-8090 ct state "
        'invalid,new,untracked log prefix "OK_0005_some-very-very-long- "',
        "ip daddr 10.255.0.2 meta mark 0xffff meta l4proto udp th dport 53 limit rate 7/second "
        'burst 7 packets log prefix "OK_FFFF_dst "']
    assert ct.replace_c2c(cell, ct.C2CState(), logging_rules=log,
                          bypass_cidr="10.255.0.0/16") == ct.C2CSets("c2c_allow_exact", "c2c_allow")
    state = listed(cell)
    assert len(state.chains["c2c"].rules) == 5 and len(state.chains["c2c-log"].rules) == 2
    assert not {"c2c_allow_b", "c2c_allow_exact_b"} & set(state.sets)  # swapped-out sets gone
    assert ct.list_c2c(cell).state == ct.C2CState()
    assert ct.replace_c2c(cell, first).ranges == "c2c_allow_b"  # no record, no listing: swap
    assert ct.list_c2c(cell).state == first


def test_c2c_diff_survives_elements_removed_behind_its_back(cell: Nft) -> None:
    cell.run(ct.render_container_add(container("h1", "10.255.0.2")))
    old = ct.C2CState.build({"10.255.0.2": 5, "10.255.0.9": 6}, allow(20) + allow(5, port=9, width=9))
    live = ct.replace_c2c(cell, old)
    ct.remove_container(cell, "h1")  # the CNI drops 10.255.0.2's source tag
    assert "10.255.0.2" not in ct.list_c2c(cell).state.src_tags
    new = ct.C2CState.build({"10.255.0.9": 7, "10.255.0.4": 8},
                            allow(10) + allow(3, port=1) + allow(4, port=2, width=3))
    cell.run(ct.render_c2c_diff(old, new, live.ranges))  # the interval set's name suffices
    assert ct.list_c2c(cell).state == new
    assert ct.render_c2c_diff(new, new, live) == ""
