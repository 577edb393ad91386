"""End to end through `cfnet lab`, on one two-cell lab (SQLite) shared by the module.

Each test uses apps of its own (unique names), so tests stay independent of each other and of
their order; a test that stops a process starts it again before it ends, and the `lab` fixture
brings the lab back (`cfnet lab up` is idempotent) if a test left it down.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cfnet.net import netns
from tests.lab.lab_driver import Lab, app_name, connect, echo, reaches, wait_for

pytestmark = pytest.mark.privileged

APP_PORT, ECHO_PORT = 8080, 7007


@pytest.fixture(scope="module")
def module_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = Lab(tmp_path_factory.mktemp("lab-e2e") / "lab", ("--cells", "2"))
    lab.up()
    try:
        yield lab
    finally:
        lab.down()
        assert lab.namespaces() == []


@pytest.fixture
def lab(module_lab: Lab) -> Lab:
    module_lab.up()  # restarts whatever a failed test left stopped; a no-op otherwise
    return module_lab


def two_apps(lab: Lab, port: int = APP_PORT) -> tuple[dict, dict, str, str]:
    """src (1 instance) and dst (2 instances, one per cell), a policy src -> dst on `port`;
    returns src's container, dst's container on the other cell, and both app names."""
    src_app, dst_app = app_name("src"), app_name("dst")
    lab.push(dst_app, 2)
    src = lab.push(src_app)[0]
    dst = next(c for c in lab.containers(dst_app) if c["cell"] != src["cell"])
    lab.run("policy", "add", src_app, dst_app, "--port", str(port))
    wait_for("policy in effect", lambda: reaches(src, dst["ip"], port))
    return src, dst, src_app, dst_app


def test_status_reports_cells_leases_containers_policies_and_rules(lab: Lab) -> None:
    src, dst, src_app, dst_app = two_apps(lab)
    doc = lab.status()
    state = lab.state()
    leases = {lease["underlay_ip"]: lease["overlay_subnet"] for lease in doc["leases"]}
    assert leases == {state["hosts"][c]["ip"]: state["subnets"][c] for c in state["cells"]}
    assert {c["handle"] for c in doc["containers"]} >= {src["handle"], dst["handle"]}
    assert isinstance(doc["policies"], int) and doc["policies"] >= 1
    assert all(p["running"] for p in doc["processes"].values()), doc["processes"]
    for cell in state["cells"]:
        assert doc["nftables"][cell]["elements"] > 0, doc["nftables"]
    text = lab.run("status").stdout
    assert "leases" in text and src_app in text and "nftables" in text


def test_asg_add_and_remove_apply_to_running_containers(lab: Lab) -> None:
    app = app_name("egress")
    other = app_name("noasg")
    c = lab.push(app)[0]
    o = lab.push(other)[0]
    internet = lab.host("internet")["ip"]
    assert not reaches(c, internet, 80)
    group = app_name("asg")
    lab.run("asg", "add", group, "--destination", internet, "--protocol", "tcp", "--ports", "80",
            "--space", app)
    assert group in lab.run("asg", "list").stdout
    wait_for("ASG applied to the running container", lambda: reaches(c, internet, 80))
    assert not reaches(c, internet, 8081)  # not in the rule
    assert not reaches(o, internet, 80)  # another space
    lab.run("asg", "remove", group)
    wait_for("ASG removal applied", lambda: not reaches(c, internet, 80))
    # bad input: one clear line, nothing written
    bad = lab.run("asg", "add", app_name("bad"), "--destination", "not-an-ip", "--ports", "80",
                  "--running-default", check=False)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and bad.stderr.strip()
    bad = lab.run("asg", "add", app_name("bad"), "--destination", internet, check=False)
    assert bad.returncode != 0 and "--space" in bad.stderr
    assert lab.run("asg", "remove", "nope", check=False).returncode != 0


def test_agent_restart_keeps_open_connections_and_new_ones_work(lab: Lab) -> None:
    src, dst, _, _ = two_apps(lab, port=ECHO_PORT)
    sock = connect(src, dst["ip"], ECHO_PORT)
    try:
        assert echo(sock, b"before")
        for cell in sorted({src["cell"], dst["cell"]}):
            lab.run("stop", f"{cell}/vxlan-agent")
        # Agents down: the kernel state stays, traffic goes on.
        assert echo(sock, b"while the agents are down")
        assert reaches(src, dst["ip"], APP_PORT) is False  # the policy names 7007 only
        new = connect(src, dst["ip"], ECHO_PORT)
        assert echo(new, b"new while down")
        new.close()
        for cell in sorted({src["cell"], dst["cell"]}):
            lab.run("start", f"{cell}/vxlan-agent")
        assert echo(sock, b"after the restart")
        for _ in range(5):  # across the agents' first full cycles
            new = connect(src, dst["ip"], ECHO_PORT)
            assert echo(new, b"new after")
            new.close()
            time.sleep(0.2)
        assert echo(sock, b"still open")
    finally:
        sock.close()


def test_silk_daemon_restart_keeps_its_lease(lab: Lab) -> None:
    src, dst, _, _ = two_apps(lab)
    before = {lease["underlay_ip"]: lease["overlay_subnet"] for lease in lab.status()["leases"]}
    cell = dst["cell"]
    lab.run("restart", f"{cell}/silk-daemon")
    after = {lease["underlay_ip"]: lease["overlay_subnet"] for lease in lab.status()["leases"]}
    assert after == before
    assert lab.state()["subnets"][cell] == before[lab.host(cell)["ip"]]
    wait_for("cross-cell traffic after the daemon restart",
             lambda: reaches(src, dst["ip"], APP_PORT))


def test_policy_server_crash_keeps_policies_and_agents_reconnect(lab: Lab) -> None:
    src, dst, src_app, dst_app = two_apps(lab)
    lab.run("restart", "policy-server", "--kill")
    listed = lab.run("policy", "list").stdout.split()
    assert src_app in listed and dst_app in listed
    assert reaches(src, dst["ip"], APP_PORT)
    # A policy made after the restart reaches the agents (their watch reconnected).
    lab.run("policy", "add", src_app, dst_app, "--port", "9090")
    wait_for("new policy after the restart", lambda: reaches(src, dst["ip"], 9090))


def test_killed_container_is_cleaned_up_by_gc(lab: Lab) -> None:
    app = app_name("doomed")
    c = lab.push(app)[0]
    cell_dir = Path(lab.state()["directory"]) / "cells" / c["cell"]
    store = Path(json.loads((Path(lab.state()["directory"]) / "logs" / c["cell"] / "agent" /
                             "vxlan-agent.json").read_text())["cni_datastore_path"])
    ipam = list((cell_dir / "host-local").rglob(c["ip"]))
    assert ipam and c["handle"] in store.read_text()

    lab.run("kill", f"{app}/0")
    assert not any(n.endswith(c["handle"]) for n in lab.namespaces())
    assert c["handle"] in store.read_text()  # nobody has cleaned up yet

    out = lab.run("gc").stdout
    assert c["handle"] in out and "1 dead container" in out
    assert c["handle"] not in store.read_text()
    assert not any(p.exists() for p in ipam)
    ports = json.loads((cell_dir / "external-networker-state.json").read_text())
    assert c["handle"] not in json.dumps(ports)
    ruleset = lab.status()["nftables"][c["cell"]]
    assert "error" not in ruleset
    assert c["ip"] not in netns.run(lab.host(c["cell"])["ns"], ["nft", "list", "ruleset"]).stdout
    assert all(x["handle"] != c["handle"] for x in lab.state()["containers"])
    assert "0 dead" in lab.run("gc").stdout  # nothing left to do


def test_up_again_restarts_crashed_processes(lab: Lab) -> None:
    lab.run("stop", "cell2/vxlan-agent", "--kill")
    assert not lab.status()["processes"]["cell2/vxlan-agent"]["running"]
    for args in (("status",), ("status", "--json")):  # a dead process is a failed status
        proc = lab.run(*args, check=False)
        assert proc.returncode != 0, proc.stdout
    assert "not running: cell2/vxlan-agent" in lab.run("status", check=False).stderr
    out = lab.run("up").stdout
    assert "restarted cell2/vxlan-agent" in out and "already up" in out
    assert lab.status()["processes"]["cell2/vxlan-agent"]["running"]
    assert lab.run("status", check=False).returncode == 0
    bad = lab.run("stop", "nope", check=False)
    assert bad.returncode != 0 and "no process 'nope'" in bad.stderr
