"""The wrapper with the real policy agent on the cell (`cfnet vxlan-agent`, talking to a real
policy server in the control-plane host): dynamic ASGs replace the static netOutRules, and the
forced c2c cycle at ADD makes a policy between two containers work the moment ADD returns."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from wrapper_env import Env, deployment

from cfnet.clients.policy_api import make_policy
from cfnet.net import netns
from cfnet.testing import agent as ta

pytestmark = pytest.mark.privileged


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Env, Any, Any]]:
    work = tmp_path_factory.mktemp("wrapper-agent")
    with deployment(work, "wa") as e:
        ps = ta.start_policy_server_in(e.silk, work / "ps")
        conf = e.wrapper_conf("x")
        agent = None
        try:
            agent = ta.start_agent(e.cell, work / "agent", ps, cni_datastore_path=str(e.datastore),
                                   iptables_lock_file=conf["iptables_lock_file"])
            yield e, ps, agent
        finally:
            if agent is not None:
                agent.stop()
            ps.stop()


def write_asgs(ps: Any, groups: list[dict[str, Any]]) -> None:
    from cfnet.core.security_groups import SecurityGroup, rules_json
    from cfnet.store.db import Database
    from cfnet.store.policies import PolicyStore

    db = Database(ps.database)
    try:
        PolicyStore(db).replace_security_groups([SecurityGroup(
            g["guid"], g["guid"], rules_json(g["rules"]), False, False, (),
            tuple(g.get("running", ()))) for g in groups])
    finally:
        db.close()


def test_dynamic_asgs_and_c2c_with_the_real_agent(env: tuple[Env, Any, Any]) -> None:
    e, ps, agent = env
    before = e.snapshot()
    inet = e.internet.ip
    # The space's ASG allows the internet host on 8080 only; the container's static netOutRules
    # (port 80) must be ignored in dynamic mode.
    write_asgs(ps, [{"guid": "asg-1", "running": ["space-1"],
                     "rules": [{"protocol": "tcp", "destination": inet, "ports": "8080"}]}])
    policy = make_policy("app-src", "app-dst", "tcp", "8080")
    ta.policy_client(e.silk, ps)(lambda c: c.create([policy]))
    names = {h: e.container_ns(h) for h in ("src", "dst")}
    try:
        static = [{"protocol": 1, "networks": [{"start": inet}], "ports": [{"start": 80}]}]
        meta = {"space_id": "space-1", "container_workload": "app"}
        dst_ip, _ = e.add("dst", names["dst"], net_out_rules=static,
                          metadata={**meta, "policy_group_id": "app-dst"})
        e.responder(names["dst"], "0.0.0.0", 8080, 9090)
        e.add("src", names["src"], net_out_rules=static,
              metadata={**meta, "policy_group_id": "app-src"})
        # Everything below holds the moment ADD has returned: no waiting.
        got = e.connect(names["src"], f"{inet}:80", f"{inet}:8080", f"{dst_ip}:8080",
                        f"{dst_ip}:9090")
        assert got[f"{inet}:8080"] == ("ok", e.cell.underlay_ip)  # the agent's ASG
        assert got[f"{inet}:80"][0] == "refused"  # the static rule was not applied
        assert got[f"{dst_ip}:8080"][0] == "ok"  # the c2c policy
        assert got[f"{dst_ip}:9090"][0] == "refused"  # nothing else between them
        for h in ("src", "dst"):
            e.delete(h, names[h])
        assert agent.running
        assert e.snapshot()["datastore"] == before["datastore"]
        table = e.table()
        assert "netout-src" not in table and "overlay-dst" not in table
        assert dst_ip not in table
    finally:
        ta.policy_client(e.silk, ps)(lambda c: c.delete([policy]))
        write_asgs(ps, [])
        for name in names.values():
            netns.remove(name)


def test_agent_in_static_mode_answers_405_and_the_wrapper_writes_the_rules(
        env: tuple[Env, Any, Any]) -> None:
    e, ps, agent = env
    inet = e.internet.ip
    agent.stop()
    agent.write_config(enable_asg_syncing=False)
    agent.start()
    ns = e.container_ns("st")
    try:
        static = [{"protocol": 1, "networks": [{"start": inet}], "ports": [{"start": 80}]}]
        run = e.cni("wrapper", "ADD", "st", ns, e.wrapper_conf("st", net_out_rules=static))
        assert run.code == 0, run.stdout + run.stderr
        assert '"agent":true' in run.stderr  # the agent answered: 200 to the poll, 405 to ASGs
        got = e.connect(ns, f"{inet}:80", f"{inet}:8080")
        assert got[f"{inet}:80"] == ("ok", e.cell.underlay_ip)
        assert got[f"{inet}:8080"][0] == "refused"
        e.delete("st", ns)
        assert "netout-st" not in e.table()
    finally:
        agent.stop()
        agent.write_config(enable_asg_syncing=True)
        agent.start()
        netns.remove(ns)
