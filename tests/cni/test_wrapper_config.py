"""The wrapper's config (spec dataplane 3.2) without root: upstream keys and texts, code 7."""

from __future__ import annotations

from typing import Any

import pytest

from cfnet.cni.types import CNIError
from cfnet.cni.wrapper_config import DEFAULT_AGENT_TIMEOUT, load, parse_netout_rules


def conf(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "cniVersion": "1.0.0", "name": "cni-wrapper", "type": "cni-wrapper-plugin",
        "datastore": "/var/vcap/data/container-metadata/store.json",
        "iptables_lock_file": "/var/vcap/data/garden-cni/iptables.lock",
        "instance_address": "10.0.16.5", "underlay_ips": ["10.0.16.5"],
        "ingress_tag": "ffff0000", "vtep_name": "silk-vtep",
        "policy_agent_force_poll_address": "127.0.0.1:8722",
        "delegate": {"name": "silk", "type": "silk-cni"},
        "iptables_denied_logs_per_sec": 1, "iptables_accepted_udp_logs_per_sec": 100,
    }
    base.update(changes)
    return base


def error(c: dict[str, Any]) -> tuple[int, str]:
    with pytest.raises(CNIError) as err:
        load(c)
    return err.value.code, err.value.msg


def test_minimal_config_and_defaults() -> None:
    cfg = load(conf())
    assert cfg.delegate == {"name": "silk", "type": "silk-cni", "cniVersion": "1.0.0"}
    assert cfg.no_masquerade_cidr_range == "10.255.0.0/16"
    assert cfg.outbound.burst == 1000 and cfg.outbound.rate_per_sec == 100
    assert cfg.policy_agent_timeout == DEFAULT_AGENT_TIMEOUT
    assert cfg.port_mappings == [] and cfg.netout_rules == [] and cfg.metadata == {}
    assert cfg.ingress_mark == 0xFFFF0000


def test_delegate_version_is_kept_when_given() -> None:
    cfg = load(conf(delegate={"type": "silk-cni", "cniVersion": "0.4.0"}))
    assert cfg.delegate["cniVersion"] == "0.4.0"


@pytest.mark.parametrize("key, msg", [
    ("datastore", "missing datastore path"),
    ("iptables_lock_file", "missing iptables lock file path"),
    ("instance_address", "missing instance address"),
    ("underlay_ips", "missing underlay ips"),
    ("ingress_tag", "missing ingress tag"),
    ("vtep_name", "missing vtep device name"),
    ("delegate", "delegate config is missing type"),
    ("policy_agent_force_poll_address", "validator: PolicyAgentForcePollAddress: zero value"),
])
def test_missing_keys(key: str, msg: str) -> None:
    c = conf()
    del c[key]
    assert error(c) == (7, msg)


@pytest.mark.parametrize("changes, msg", [
    ({"iptables_denied_logs_per_sec": 0}, "invalid denied logs per sec"),
    ({"iptables_accepted_udp_logs_per_sec": -1}, "invalid accepted udp logs per sec"),
    ({"outbound_connections": {"burst": 0}}, "invalid outbound connection burst"),
    ({"outbound_connections": {"rate_per_sec": -5}}, "invalid outbound connection rate"),
    ({"dns_servers": ["8.8.8.8", "x"]}, 'invalid DNS server "x", must be valid IP address'),
    ({"deny_networks": {"running": ["192.168.0.0/33"]}},
     "initialize net out: deny networks: invalid CIDR address: 192.168.0.0/33"),
    ({"host_tcp_services": ["10.0.0.1"]},
     "initialize net out: input rules: host tcp services: address 10.0.0.1: missing port in "
     "address"),
    ({"host_udp_services": ["10.0.0.1:x"]},
     'initialize net out: input rules: host udp services: strconv.Atoi: parsing "x": invalid '
     'syntax'),
    ({"instance_address": "banana"}, "adding netin rule: invalid ip: banana"),
    ({"runtimeConfig": {"portMappings": [{"host_port": 0, "container_port": 8080}]}},
     "cannot allocate port 0"),
    ({"runtimeConfig": {"portMappings": [{"host_port": 61000, "container_port": 70000}]}},
     "invalid port mapping {'host_port': 61000, 'container_port': 70000}: ports must be 1-65535"),
    ({"delegate": {"type": 5}}, "delegate config is missing type"),
    ({"underlay_ips": "10.0.16.5"}, "loading wrapper config: key 'underlay_ips' must be a list"),
    ({"metadata": []}, "loading wrapper config: key 'metadata' must be an object"),
    ({"policy_agent_timeout_seconds": 0},
     "loading wrapper config: key 'policy_agent_timeout_seconds' must be a positive number"),
])
def test_bad_values(changes: dict[str, Any], msg: str) -> None:
    assert error(conf(**changes)) == (7, msg)


def test_deny_networks_are_normalised_and_dns_split() -> None:
    cfg = load(conf(deny_networks={"always": ["10.1.2.3/8"]},
                    dns_servers=["169.254.0.2", "8.8.8.8", "169.254.1.1"]))
    assert cfg.deny_networks.always == ["10.0.0.0/8"]
    assert cfg.link_local_dns() == ["169.254.0.2", "169.254.1.1"]


def test_netout_rules_in_both_shapes() -> None:
    rules = parse_netout_rules([
        {"protocol": 1, "networks": [{"start": "8.8.8.8", "end": "9.9.9.9"}],
         "ports": [{"start": 53, "end": 54}], "log": True},
        {"protocol": 3, "networks": [{"start": "10.0.0.1"}], "icmps": {"type": 8, "code": 0}},
        {"networks": [{"start": "10.0.0.1"}]},  # Garden: no protocol means all
        {"protocol": "udp", "destination": "10.0.0.0/8", "ports": "53, 1000 - 2000"},  # ASG
        {"protocol": "icmpv6", "destination": "10.0.0.0/8"},  # nothing to do in IPv4
    ])
    assert [r.protocol for r in rules] == ["tcp", "icmp", "all", "udp"]
    assert rules[0].networks == (("8.8.8.8", "9.9.9.9"),) and rules[0].log
    assert rules[3].ports == ((53, 53), (1000, 2000))


@pytest.mark.parametrize("entry, names", [
    ({"protocol": "tcp", "destination": "10.0.0.0/8", "ports": "80,,443"}, "80,,443"),
    ({"protocol": 1, "networks": [{"start": "1.2.3.4"}], "ports": [{"start": 0}]}, "port 0"),
    ({"protocol": 2, "networks": [{"start": "1.2.3.4"}], "ports": [{"start": 70000}]},
     "port 70000"),
    ({"protocol": "all", "destination": "1.2.3.0/40"}, "1.2.3.0/40"),
    ({"protocol": 3, "networks": [{"start": "1.2.3.4"}], "icmps": {"code": 3}},
     "code given without a type"),
    ({"protocol": 1, "networks": [{"start": "1.2.3.4"}]}, "tcp rule must specify ports"),
    ({"protocol": 0}, "missing networks"),
])
def test_bad_netout_rule_names_the_entry(entry: dict[str, Any], names: str) -> None:
    c = conf(runtimeConfig={"netOutRules": [
        {"protocol": 0, "networks": [{"start": "1.1.1.1"}]}, entry]})
    code, msg = error(c)
    assert code == 7
    assert msg.startswith("runtimeConfig.netOutRules: invalid egress rule 1 ")
    assert names in msg


def test_the_example_conflist_loads() -> None:
    import json
    from pathlib import Path

    from cfnet.cni.bandwidth import parse_limits

    path = Path(__file__).parents[2] / "examples" / "cni" / "cni-wrapper.conflist"
    conflist = json.loads(path.read_text())
    wrapper, bandwidth = conflist["plugins"]
    injected = {"name": conflist["name"], "cniVersion": conflist["cniVersion"]}
    cfg = load({**wrapper, **injected})
    assert cfg.delegate_type == "silk-cni" and cfg.dns_servers == ["169.254.0.2"]
    assert not parse_limits({**bandwidth, **injected}).zero


def test_del_ignores_runtime_config() -> None:
    bad = conf(runtimeConfig={"netOutRules": [{"protocol": "tcp", "destination": "x"}],
                              "portMappings": [{"host_port": 0}]}, metadata=[])
    with pytest.raises(CNIError):
        load(bad)
    cfg = load(bad, runtime=False)
    assert cfg.netout_rules == [] and cfg.port_mappings == [] and cfg.metadata == {}


def test_port_mappings_in_garden_and_cni_keys() -> None:
    cfg = load(conf(runtimeConfig={"portMappings": [
        {"host_port": 61000, "container_port": 8080, "hostPort": 61000, "containerPort": 8080,
         "protocol": "tcp"},
        {"hostPort": 61001, "containerPort": 9090, "protocol": "tcp"}]}))
    assert [(m.host_port, m.container_port) for m in cfg.port_mappings] == [(61000, 8080),
                                                                           (61001, 9090)]
