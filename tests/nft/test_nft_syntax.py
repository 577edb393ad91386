"""Canonical nft element forms, names and port-range merging (pure, no kernel)."""

from __future__ import annotations

import pytest

from cfnet.core import nft_syntax as nx
from cfnet.core.nft_syntax import C2CAllow, NftSyntaxError


def test_scalar_canonical_forms() -> None:
    assert nx.ipv4(" 10.255.0.2 ") == "10.255.0.2"
    assert nx.cidr("10.1.2.3/8") == "10.0.0.0/8"
    assert nx.cidr("1.2.3.4/32") == "1.2.3.4"
    assert nx.ipv4_interval("10.0.0.0", "10.0.0.255") == "10.0.0.0/24"
    assert nx.ipv4_interval("5.5.5.5", "6.6.6.6") == "5.5.5.5-6.6.6.6"
    assert nx.ipv4_interval("0.0.0.0", "255.255.255.255") == "0.0.0.0/0"
    assert nx.mark(1) == "0x1" and nx.mark(0xFFFF) == "0xffff" and nx.mark(0xFFFF0000) == "0xffff0000"
    assert nx.proto(6) == "tcp" and nx.proto("udp") == "udp"
    assert nx.port_range(80, 80) == "80-80" and nx.ports(80, 80) == "80" and nx.ports(1, 2) == "1-2"
    assert nx.jump("netout-abc") == "jump netout-abc"
    assert nx.element("10.10.0.1 . 61000", "10.255.0.2 . 8080", comment="h1") == \
        '10.10.0.1 . 61000 comment "h1" : 10.255.0.2 . 8080'
    assert C2CAllow("10.255.0.2", 0xFFFF, "udp", 1000, 2000).element() == \
        "10.255.0.2 . 0xffff . udp . 1000-2000"
    assert nx.log_prefix("DENY_" + "x" * 40) == '"DENY_' + "x" * 23 + ' "'


@pytest.mark.parametrize("call", [
    lambda: nx.ipv4("10.0.0.256"), lambda: nx.cidr("10.0.0.0/33"), lambda: nx.mark(-1),
    lambda: nx.mark(1 << 32), lambda: nx.proto("sctp"), lambda: nx.port(70000),
    lambda: nx.port_range(90, 80), lambda: nx.ipv4_interval("2.0.0.0", "1.0.0.0"),
    lambda: nx.name("fwd"), lambda: nx.name("1abc"), lambda: nx.name('a"b'),
    lambda: nx.handle("a b"), lambda: nx.handle("x-log"), lambda: nx.string('say "hi"'),
])
def test_bad_values_are_refused(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NftSyntaxError):
        call()


def test_overlapping_and_adjacent_port_ranges_are_merged_per_ip_tag_proto() -> None:
    entries = [
        C2CAllow("10.255.0.2", 5, "tcp", 8080, 8090),
        C2CAllow("10.255.0.2", 5, "tcp", 8085, 9000),
        C2CAllow("10.255.0.2", 5, "tcp", 9001, 9001),  # adjacent
        C2CAllow("10.255.0.2", 5, "tcp", 9100, 9100),
        C2CAllow("10.255.0.2", 5, "udp", 8080, 8080),  # other proto: kept apart
        C2CAllow("10.255.0.2", 6, "tcp", 8080, 8080),  # other tag
        C2CAllow("10.255.0.10", 5, "tcp", 8080, 8080),  # other ip, sorts numerically after .2
        C2CAllow("10.255.0.2", 5, "tcp", 8080, 8090),  # duplicate
    ]
    assert [e.element() for e in nx.merge_c2c(entries)] == [
        "10.255.0.2 . 0x5 . tcp . 8080-9001",
        "10.255.0.2 . 0x5 . tcp . 9100-9100",
        "10.255.0.2 . 0x5 . udp . 8080-8080",
        "10.255.0.2 . 0x6 . tcp . 8080-8080",
        "10.255.0.10 . 0x5 . tcp . 8080-8080",
    ]
    assert nx.merge_ranges([(5, 9), (1, 3), (4, 4), (20, 30), (25, 26)]) == [(1, 9), (20, 30)]


def test_listed_json_turns_back_into_the_canonical_text() -> None:
    c2c = ["ipv4_addr", "mark", "inet_proto", "inet_service"]
    assert nx.json_element({"concat": ["10.255.0.2", 1, "tcp", 80]}, c2c, True, None) == \
        ("10.255.0.2 . 0x1 . tcp . 80-80", None, None)
    assert nx.json_element({"concat": ["10.255.0.2", 65535, "udp", {"range": [1000, 2000]}]},
                           c2c, True, None)[0] == "10.255.0.2 . 0xffff . udp . 1000-2000"
    assert nx.json_element({"prefix": {"addr": "10.0.0.0", "len": 8}}, ["ipv4_addr"], True,
                           None)[0] == "10.0.0.0/8"
    assert nx.json_element(["10.255.0.2", {"jump": {"target": "netout-h"}}], ["ipv4_addr"],
                           False, "verdict") == ("10.255.0.2", "jump netout-h", None)
    dnat = [{"elem": {"val": {"concat": ["10.10.0.1", 61000]}, "comment": "h1"}},
            {"concat": ["10.255.0.2", 8080]}]
    assert nx.json_element(dnat, ["ipv4_addr", "inet_service"], False,
                           "ipv4_addr . inet_service") == \
        ("10.10.0.1 . 61000", "10.255.0.2 . 8080", "h1")
    assert nx.json_element("eth0", ["ifname"], False, None)[0] == '"eth0"'
