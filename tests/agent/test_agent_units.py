"""Pure parts of the agent: config, c2c planning, ASG selection, strict-mode range arithmetic,
and the CLI's start-up errors (no root needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cfnet.agent import asg
from cfnet.agent.config import load_agent_config
from cfnet.agent.conntrack import Closed, closed_by
from cfnet.agent.planner import LocalContainer, PlanError, local_containers, plan, policy_ids
from cfnet.clients.internal_api import InternalPolicy, SecurityGroup
from cfnet.cni.datastore import Container
from cfnet.core import asg_rules as ar
from cfnet.core.errors import ConfigError
from cfnet.net.cell_table import render_netout

BASE = {"policy_server_url": "https://ps:4003", "cni_datastore_path": "/tmp/x/store.json",
        "ca_cert_file": "ca", "client_cert_file": "c", "client_key_file": "k"}


def write(tmp_path: Path, data: dict, name: str = "agent.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return p


# -- config ------------------------------------------------------------------------------------


def test_config_defaults_and_extensions(tmp_path: Path) -> None:
    cfg = load_agent_config(write(tmp_path, {
        **BASE, "outbound_connections": {"limit": True, "dry_run": True},
        "policy_enforcement_mode": "strict", "deny_networks": {"always": ["10.0.0.0/8"]}}))
    assert (cfg.poll_interval, cfg.asg_poll_interval, cfg.force_policy_poll_cycle_port,
            cfg.debug_server_port) == (5, 60, 8722, 8721)
    assert cfg.outbound_connections.dry_run and cfg.outbound_connections.burst == 1000
    assert cfg.strict and cfg.policy_watch
    toml = tmp_path / "agent.toml"
    toml.write_text('policy_server_url = "https://ps:4003"\ncni_datastore_path = "/s"\n'
                    'ca_cert_file = "a"\nclient_cert_file = "b"\nclient_key_file = "c"\n'
                    'poll_interval = 2\n')
    assert load_agent_config(toml).poll_interval == 2


@pytest.mark.parametrize("change, message", [
    ({"poll_interval": 0}, "key 'poll_interval': 0 is less than 1"),
    ({"policy_enforcement_mode": "harsh"}, "key 'policy_enforcement_mode': 'harsh' is not one of"),
    ({"outbound_connections": {"burst": 0}}, "key 'outbound_connections.burst'"),
    ({"outbound_connections": {"dry_run": "yes"}}, "key 'outbound_connections.dry_run'"),
    ({"underlay_ips": ["nope"]}, "key 'underlay_ips[0]'"),
    ({"deny_networks": {"running": ["x"]}}, "key 'deny_networks.running[0]'"),
    ({"cni_datastore_path": ""}, "key 'cni_datastore_path' must not be empty"),
    ({"bogus": 1}, "unknown key 'bogus'"),
])
def test_config_errors_name_the_key(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_agent_config(write(tmp_path, {**BASE, **change}))


def test_cli_bad_config_is_one_line_exit_1(tmp_path: Path) -> None:
    p = write(tmp_path, {**BASE, "poll_interval": "fast"})
    proc = subprocess.run([sys.executable, "-m", "cfnet", "vxlan-agent", "-config-file", str(p)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr == ("cfnetworking: could not read config file invalid config: key "
                           "'poll_interval': expected an integer, got 'fast'\n")


def test_cli_missing_datastore_directory(tmp_path: Path) -> None:
    p = write(tmp_path, {**BASE, "cni_datastore_path": str(tmp_path / "none" / "store.json")})
    proc = subprocess.run([sys.executable, "-m", "cfnet", "vxlan-agent", "--config-file", str(p)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "datastore-directory-stat" in proc.stderr and proc.stderr.count("\n") == 1


# -- c2c planning ------------------------------------------------------------------------------


def pol(src: str, dst: str, proto: str = "tcp", start: int = 8080, end: int | None = None,
        stag: str = "0001", dtag: str = "0002") -> InternalPolicy:
    return InternalPolicy(src, stag, dst, dtag, proto, start, end if end is not None else start)


def test_local_containers_skip_missing_group_and_sort() -> None:
    entries = {"a": Container("a", "10.255.1.2", {"policy_group_id": "app", "space_id": "s"}),
               "b": Container("b", "10.255.1.3", {"space_id": "s"}),
               "c": Container("c", "10.255.1.4", {"policy_group_id": "app2", "ports": " 81 , 82"})}
    found = local_containers(entries, with_ports=True)
    assert [c.handle for c in found] == ["c", "a"]
    assert found[0].ports == (81, 82)
    assert policy_ids(found) == ["app", "app2", "s"]
    with pytest.raises(PlanError, match='parsing "x": invalid syntax'):
        local_containers({"d": Container("d", "10.255.1.5", {"policy_group_id": "a",
                                                              "ports": "x"})}, with_ports=True)


def test_plan_sources_destinations_ranges_and_ingress() -> None:
    cs = [LocalContainer("h1", "10.255.1.2", "A", "", "app", (8080,)),
          LocalContainer("h2", "10.255.1.3", "B", "", "app")]
    p = plan(cs, [pol("A", "B", "tcp", 8080, 8090), pol("A", "B", "tcp", 8085, 9000),
                  pol("C", "B", "udp", 53, stag="ffff"), pol("A", "X", stag="0001")],
             ingress_tag="6")
    assert p.state.src_tags == {"10.255.1.2": 1}
    assert p.state.allow == {"10.255.1.3 . 0x1 . tcp . 8080-9000",
                             "10.255.1.3 . 0xffff . udp . 53-53",
                             "10.255.1.2 . 0x6 . tcp . 8080-8080"}


def test_plan_150_policies_for_one_app() -> None:
    cs = [LocalContainer("h", "10.255.1.2", "dst", "", "app")]
    policies = [pol(f"src{i}", "dst", "tcp", 10000 + 2 * i, stag=f"{i + 1:04x}")
                for i in range(150)]
    p = plan(cs, policies)
    assert len(p.state.allow) == 150 and p.policies == 150


def test_plan_rejects_tags_that_cannot_cross_gbp() -> None:
    cs = [LocalContainer("h", "10.255.1.2", "A", "", "app")]
    with pytest.raises(PlanError, match="16 bits"):
        plan(cs, [pol("A", "B", stag="10000")])
    with pytest.raises(PlanError, match="not hexadecimal"):
        plan(cs, [pol("A", "B", stag="zz")])


def test_plan_logging_rules() -> None:
    cs = [LocalContainer("h", "10.255.1.3", "B", "", "app")]
    p = plan(cs, [pol("A", "B", "udp", 7000, 8000, stag="000d")], logging=True, udp_logs_per_sec=5)
    assert p.log_rules == ['ip daddr 10.255.1.3 meta mark 0xd meta l4proto udp th dport 7000-8000 '
                           'limit rate 5/second burst 5 packets log prefix "OK_000d_B "']


# -- ASG selection -------------------------------------------------------------------------------


def sg(guid: str, rules: list[dict], staging_default: bool = False, running_default: bool = False,
       staging: tuple[str, ...] = (), running: tuple[str, ...] = ()) -> SecurityGroup:
    return SecurityGroup(guid, guid, json.dumps(rules), staging_default, running_default,
                         list(staging), list(running))


def rule(dest: str, proto: str = "tcp", ports: str = "443") -> dict:
    return {"protocol": proto, "destination": dest, "ports": ports}


GROUPS = [
    sg("global-running", [rule("1.1.1.1")], running_default=True),
    sg("global-staging", [rule("2.2.2.2")], staging_default=True),
    sg("space1-running", [rule("3.3.3.3"), rule("1.1.1.1")], running=("s1",)),
    sg("space1-staging", [rule("4.4.4.4")], staging=("s1",)),
    sg("space2-both", [rule("5.5.5.5")], running=("s2",), staging=("s2",)),
]


def dests(rules: list[ar.EgressRule]) -> list[str]:
    return [r.networks[0][0] for r in rules]


def test_asg_selection_by_lifecycle_space_and_globals() -> None:
    cs = [LocalContainer("run1", "10.255.1.2", "a", "s1", "app"),
          LocalContainer("task1", "10.255.1.3", "a", "s1", "task"),
          LocalContainer("stage1", "10.255.1.4", "a", "s1", "staging"),
          LocalContainer("run2", "10.255.1.5", "b", "s2", "app"),
          LocalContainer("odd", "10.255.1.6", "b", "s2", "weird"),
          LocalContainer("nospace", "10.255.1.7", "b", "", "app")]
    sel = asg.select(cs, GROUPS)
    assert dests(sel.rules["run1"]) == ["1.1.1.1", "3.3.3.3", "1.1.1.1"]
    assert dests(sel.rules["task1"]) == dests(sel.rules["run1"])
    assert dests(sel.rules["stage1"]) == ["2.2.2.2", "4.4.4.4"]
    assert dests(sel.rules["run2"]) == ["1.1.1.1", "5.5.5.5"]
    assert sel.rules["odd"] == []
    assert "nospace" not in sel.rules
    assert asg.space_ids(cs) == ["s1", "s2"]
    # Identical rules from two groups appear once in the chain.
    chains = ar.netout_chains("run1", "app", sel.rules["run1"])
    assert sum("1.1.1.1" in r for r in chains.netout) == 1


def test_asg_bad_group_skips_only_its_containers() -> None:
    bad = sg("bad", [{"protocol": "tcp", "destination": "nonsense", "ports": "1"}], running=("s2",))
    cs = [LocalContainer("run1", "10.255.1.2", "a", "s1", "app"),
          LocalContainer("run2", "10.255.1.5", "b", "s2", "app")]
    sel = asg.select(cs, [*GROUPS, bad])
    assert "run1" in sel.rules and "run2" not in sel.rules
    assert "security group bad" in sel.errors["run2"]


def test_dry_run_logs_instead_of_rejecting() -> None:
    chains = ar.netout_chains("h", "app", [], outbound=ar.OutboundLimits(limit=False, dry_run=True))
    text = render_netout(chains)
    assert "update @rl-h" in text and "jump netout-h-rl-log" in text
    assert chains.rl_log is not None and not any("reject" in r for r in chains.rl_log)


# -- strict mode ---------------------------------------------------------------------------------


def test_closed_ranges() -> None:
    old = ["10.255.1.3 . 0x1 . tcp . 8080-8090", "10.255.1.3 . 0x2 . udp . 53-53"]
    new = ["10.255.1.3 . 0x1 . tcp . 8083-8085"]
    assert closed_by(old, new) == [Closed("10.255.1.3", "tcp", 8080, 8082),
                                   Closed("10.255.1.3", "tcp", 8086, 8090),
                                   Closed("10.255.1.3", "udp", 53, 53)]
    assert closed_by(new, old) == []
