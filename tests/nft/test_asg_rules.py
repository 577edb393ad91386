"""ASG / netOutRules parsing and the per-container netout rule list (spec dataplane 2.3, 2.4)."""

from __future__ import annotations

import json

import pytest

from cfnet.core import asg_rules as ar
from cfnet.core.asg_rules import AsgRuleError, EgressRule


def test_policy_server_rules_in_every_valid_shape() -> None:
    rules = ar.parse_asg_rules(json.dumps([
        {"protocol": "tcp", "destination": "10.0.0.0/8, 1.2.3.4,5.5.5.5-6.6.6.6",
         "ports": "80, 443 , 1000 - 2000", "type": 0, "code": 0, "log": True},
        {"protocol": "udp", "destination": "8.8.8.8", "ports": "53"},
        {"protocol": "icmp", "destination": "0.0.0.0/0", "type": 8, "code": 0},
        {"protocol": "icmp", "destination": "0.0.0.0/0", "type": -1, "code": -1},
        {"protocol": "icmp", "destination": "0.0.0.0/0", "type": 3, "code": 255},
        {"protocol": "icmp", "destination": "0.0.0.0/0", "type": 255},
        {"protocol": "all", "destination": "0.0.0.0-9.255.255.255", "ports": ""},
        {"protocol": "icmpv6", "destination": "::/0"},
    ]))
    assert rules == [
        EgressRule("tcp", (("1.2.3.4", "1.2.3.4"), ("5.5.5.5", "6.6.6.6"),
                           ("10.0.0.0", "10.255.255.255")), ((80, 80), (443, 443), (1000, 2000)),
                   log=True),
        EgressRule("udp", (("8.8.8.8", "8.8.8.8"),), ((53, 53),)),
        EgressRule("icmp", (("0.0.0.0", "255.255.255.255"),), (), 8, 0),
        EgressRule("icmp", (("0.0.0.0", "255.255.255.255"),), (), None, None),
        EgressRule("icmp", (("0.0.0.0", "255.255.255.255"),), (), 3, None),
        EgressRule("icmp", (("0.0.0.0", "255.255.255.255"),), (), None, None),
        EgressRule("all", (("0.0.0.0", "9.255.255.255"),)),
    ]  # icmpv6 skipped: nothing to enforce in an IPv4 table


def test_garden_netout_rules() -> None:
    rules = ar.parse_netout_rules([
        {"protocol": 1, "networks": [{"start": "8.8.8.8", "end": "9.9.9.9"}],
         "ports": [{"start": 53, "end": 54}, {"start": 80}], "log": True},
        {"protocol": 3, "networks": [{"start": "0.0.0.0", "end": "255.255.255.255"}],
         "icmps": {"type": 255, "code": 1}},
        {"networks": [{"start": "10.0.0.1"}]},
    ])
    assert rules == [
        EgressRule("tcp", (("8.8.8.8", "9.9.9.9"),), ((53, 54), (80, 80)), log=True),
        EgressRule("icmp", (("0.0.0.0", "255.255.255.255"),), (), None, None),
        EgressRule("all", (("10.0.0.1", "10.0.0.1"),)),
    ]


@pytest.mark.parametrize("entry,why", [
    ({"protocol": "tcp", "destination": "10.0.0.0/8", "ports": "80,,443"}, "empty port in '80,,443'"),
    ({"protocol": "tcp", "destination": "10.0.0.0/8", "ports": "0"}, "port 0 out of range"),
    ({"protocol": "udp", "destination": "10.0.0.0/8", "ports": "70000"}, "port 70000 out of range"),
    ({"protocol": "tcp", "destination": "10.0.0.0/8", "ports": "90-80"}, "start is after end"),
    ({"protocol": "tcp", "destination": "10.0.0.0/8", "ports": "http"}, "invalid port 'http'"),
    ({"protocol": "tcp", "destination": "10.0.0.0/33", "ports": "80"}, "invalid CIDR '10.0.0.0/33'"),
    ({"protocol": "all", "destination": "10.0.0.300"}, "invalid IPv4 address '10.0.0.300'"),
    ({"protocol": "all", "destination": "2.0.0.0-1.0.0.0"}, "start is after end"),
    ({"protocol": "all", "destination": ""}, "missing destination"),
    ({"protocol": "icmp", "destination": "0.0.0.0/0", "code": 0}, "ICMP code given without a type"),
    ({"protocol": "icmp", "destination": "0.0.0.0/0"}, "must specify an ICMP type"),
    ({"protocol": "icmp", "destination": "0.0.0.0/0", "type": 300}, "invalid ICMP type 300"),
    ({"protocol": "tcp", "destination": "10.0.0.0/8"}, "tcp rule must specify ports"),
    ({"protocol": "all", "destination": "10.0.0.0/8", "ports": "80"}, "must not specify ports"),
    ({"protocol": "sctp", "destination": "10.0.0.0/8"}, "unknown protocol 'sctp'"),
    ({"protocol": "all", "destination": "10.0.0.0/8", "log": "yes"}, "log must be true or false"),
])
def test_bad_policy_server_rules_name_the_entry(entry: dict, why: str) -> None:
    good = {"protocol": "all", "destination": "1.1.1.1"}
    with pytest.raises(AsgRuleError) as e:
        ar.parse_asg_rules([good, entry])
    msg = str(e.value)
    assert msg.startswith("invalid egress rule 1 ") and json.dumps(entry, sort_keys=True) in msg
    assert why in msg and "\n" not in msg


@pytest.mark.parametrize("entry,why", [
    ({"protocol": 1, "networks": [{"start": "1.1.1.1"}], "ports": [{"start": 0}]}, "port 0 out"),
    ({"protocol": 1, "networks": [{"start": "1.1.1.1"}], "ports": [{"start": 70000}]}, "70000"),
    ({"protocol": 3, "networks": [{"start": "1.1.1.1"}], "icmps": {"code": 0}}, "without a type"),
    ({"protocol": 0, "networks": [{"start": "1.1.1"}]}, "invalid IPv4 address"),
    ({"protocol": 7, "networks": [{"start": "1.1.1.1"}]}, "unknown protocol 7"),
    ({"protocol": 1, "networks": []}, "missing networks"),
])
def test_bad_garden_rules_name_the_entry(entry: dict, why: str) -> None:
    with pytest.raises(AsgRuleError, match="invalid egress rule 0 ") as e:
        ar.parse_netout_rules([entry])
    assert why in str(e.value)


def test_netout_chain_order_deny_networks_and_logging() -> None:
    rules = ar.parse_asg_rules([
        {"protocol": "tcp", "destination": "10.0.11.0/24", "ports": "443", "log": True},
        {"protocol": "all", "destination": "0.0.0.0-9.255.255.255"},
        {"protocol": "icmp", "destination": "5.5.5.5-6.6.6.6", "type": 8, "code": 0},
        {"protocol": "all", "destination": "0.0.0.0-9.255.255.255"},  # duplicate: once
    ])
    deny = ar.DenyNetworks(always=["172.16.0.0/12", "10.1.0.0/16"], running=["192.168.0.0/16"],
                           staging=["100.64.0.0/10"])
    ch = ar.netout_chains("h1", "app", rules, deny, asg_logging=False)
    assert ch.netout == [
        "ct state established,related accept",
        "meta l4proto tcp ct state invalid drop",
        "ip daddr 192.168.0.0/16 reject with icmp type port-unreachable",
        "ip daddr 10.1.0.0/16 reject with icmp type port-unreachable",
        "ip daddr 172.16.0.0/12 reject with icmp type port-unreachable",
        "ip daddr 5.5.5.5-6.6.6.6 icmp type 8 icmp code 0 accept",
        "ip daddr 0.0.0.0-9.255.255.255 accept",
        "ip daddr 10.0.11.0/24 tcp dport 443 goto netout-h1-log",
        "reject with icmp type port-unreachable",
    ]
    assert ch.rl_log is None and ch.rl_set is None
    staging = ar.netout_chains("h1", "staging", [], deny)
    assert "ip daddr 100.64.0.0/10 reject with icmp type port-unreachable" in staging.netout
    assert not any("192.168" in r for r in staging.netout)
    logged = ar.netout_chains("h1", "task", rules[1:2], asg_logging=True, denied_logs_per_sec=3)
    assert logged.netout[-3:] == [
        "ip daddr 0.0.0.0-9.255.255.255 goto netout-h1-log",
        'limit rate 3/second burst 3 packets log prefix "DENY_h1 "',
        "reject with icmp type port-unreachable"]


def test_rate_limit_and_dry_run() -> None:
    limited = ar.netout_chains("h", "app", [], outbound=ar.OutboundLimits(
        limit=True, logging=False, burst=1000, rate_per_sec=100))
    assert limited.netout[2] == ("meta l4proto tcp ct state new update @rl-h { ip daddr . tcp "
                                 "dport limit rate over 100/second burst 1000 packets } reject "
                                 "with icmp type port-unreachable")
    assert limited.rl_set is not None and "timeout 10s" in limited.rl_set
    assert limited.rl_log is None
    dry = ar.netout_chains("h", "app", [], outbound=ar.OutboundLimits(dry_run=True, burst=5,
                                                                      rate_per_sec=2))
    assert dry.netout[2].endswith("jump netout-h-rl-log") and "timeout 3s" in (dry.rl_set or "")
    assert dry.rl_log == ['limit rate 1/second burst 1 packets log prefix "DENY_ORL_h "']
