"""`cfnet vxlan-agent` on a real two-cell Silk deployment with a real policy server.

One deployment is shared by the module (Sandbox topology: a control-plane host running the
silk-controller and the policy server, two cells each running a silk-daemon and an agent).
Every test uses its own app ids, containers and policies and removes them, so tests stay
independent. Containers are made as the CNI wrapper will make them (cfnet.testing.agent).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cfnet.clients.policy_api import Policy, make_policy
from cfnet.core import asg_rules as ar
from cfnet.net import cell_table as ct
from cfnet.net import netns
from cfnet.net.nft import Nft
from cfnet.testing import agent as ta

pytestmark = pytest.mark.privileged


@dataclass
class Env:
    box: Any
    silk: Any
    ps: Any
    work: Path
    agents: dict[str, ta.RunningAgent]
    containers: dict[str, ta.Containers]

    def policies(self, fn: Any) -> Any:
        return ta.policy_client(self.silk, self.ps)(fn)

    def add(self, *policies: Policy) -> None:
        self.policies(lambda c: c.create(list(policies)))

    def delete(self, *policies: Policy) -> None:
        self.policies(lambda c: c.delete(list(policies)))

    def table(self, cell: str) -> ct.TableState:
        with Nft(self.silk.cells[cell].ns) as nft:
            state = ct.list_cell(nft, with_allow=True)
        assert state is not None
        return state

    def nft_text(self, cell: str, what: str) -> str:
        with Nft(self.silk.cells[cell].ns) as nft:
            return nft.run(f"list {what}")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    from cfnet.testing.netns import Sandbox
    from cfnet.testing.silk import silk_deployment

    work = tmp_path_factory.mktemp("agent")
    with Sandbox("ag") as box, silk_deployment(box.topology(), work, cells=2) as silk:
        silk.wait_converged()
        ps = ta.start_policy_server_in(silk, work / "ps")
        agents: dict[str, ta.RunningAgent] = {}
        try:
            for name in ("cell1", "cell2"):
                agents[name] = ta.start_agent(silk.cells[name], work / f"agent-{name}", ps)
            yield Env(box, silk, ps, work, agents,
                      {n: ta.Containers(box, a) for n, a in agents.items()})
        finally:
            for a in agents.values():
                a.stop()
            ps.stop()


@pytest.fixture
def cleanup(env: Env) -> Iterator[list[Any]]:
    """Callables run after the test (policies to delete, containers to remove, servers)."""
    todo: list[Any] = []
    yield todo
    for fn in reversed(todo):
        try:
            fn()
        except Exception:  # noqa: BLE001 - best effort; the next assertion names the leftover
            pass


def container(env: Env, cleanup: list[Any], cell: str, handle: str, **kw: Any) -> ta.Container:
    c = env.containers[cell].add(handle, **kw)
    cleanup.append(lambda: env.containers[cell].remove(handle))
    return c


def server(cleanup: list[Any], c: ta.Container, *specs: str) -> None:
    proc = ta.serve(c, *specs)
    cleanup.append(lambda: (proc.kill(), proc.wait()))


def policy(env: Env, cleanup: list[Any], src: str, dst: str, proto: str = "tcp",
           ports: str = "8080") -> Policy:
    p = make_policy(src, dst, proto, ports)
    env.add(p)
    cleanup.append(lambda: env.delete(p))
    return p


def allow_keys(env: Env, cell: str) -> frozenset[str]:
    """The cell's c2c allow elements, canonical (`ip . tag . proto . lo-hi`), as listed."""
    with Nft(env.silk.cells[cell].ns) as nft:
        state = ct.list_c2c(nft).state
    assert state is not None
    return state.allow


# A probe's answer is "ok" or "refused" (an explicit reject) as soon as the packets flow; no test
# waits for a silent drop, so the timeout only bounds a stalled peer. 0.5 s assumed an idle
# machine: under load the echo server's thread may not be scheduled in time, and an "ok" turns
# into "TimeoutError".
PROBE = 5.0


def reach(src: ta.Container, dst: ta.Container, spec: str) -> bool:
    return ta.probe(src, dst.ip, spec, timeout=PROBE)[spec] == "ok"


def refused(src: ta.Container, dst: ta.Container, spec: str) -> bool:
    return ta.probe(src, dst.ip, spec, timeout=PROBE)[spec] == "refused"


# -- c2c -------------------------------------------------------------------------------------------


def test_c2c_needs_a_policy_and_opens_exactly_its_ports_and_protocol(env: Env,
                                                                    cleanup: list) -> None:
    src = container(env, cleanup, "cell1", "t1-src", app_id="t1-a")
    remote = container(env, cleanup, "cell2", "t1-remote", app_id="t1-b")
    local = container(env, cleanup, "cell1", "t1-local", app_id="t1-b")
    specs = ["tcp:8080", "tcp:8081", "tcp:8082", "tcp:9000", "udp:8080", "udp:9000"]
    for dst in (remote, local):
        server(cleanup, dst, *specs)
        assert ta.probe(src, dst.ip, *specs, timeout=PROBE) == {s: "refused" for s in specs}

    p = policy(env, cleanup, "t1-a", "t1-b", "tcp", "8080-8081")
    u = policy(env, cleanup, "t1-a", "t1-b", "udp", "9000")
    for dst in (remote, local):
        ta.wait_for("policy in force", lambda: reach(src, dst, "udp:9000"))
        assert ta.probe(src, dst.ip, *specs, timeout=PROBE) == {
            "tcp:8080": "ok", "tcp:8081": "ok", "tcp:8082": "refused", "tcp:9000": "refused",
            "udp:8080": "refused", "udp:9000": "ok"}
    # A container created now is reachable as soon as its creation returns: the forced cycle
    # answered only once its allow elements were in place.
    late = container(env, cleanup, "cell2", "t1-late", app_id="t1-b")
    server(cleanup, late, "tcp:8080")
    assert reach(src, late, "tcp:8080")
    # Policies have a direction: the destination app may not call the source back.
    server(cleanup, src, "tcp:8080")
    assert refused(remote, src, "tcp:8080")

    env.delete(p, u)
    for dst in (remote, local):
        ta.wait_for("policy removed", lambda: refused(src, dst, "tcp:8080"))
        assert ta.probe(src, dst.ip, "tcp:8081", "udp:9000", timeout=PROBE) == {
            "tcp:8081": "refused", "udp:9000": "refused"}


def test_the_source_tag_crosses_the_wire_as_the_mark(env: Env, cleanup: list) -> None:
    src = container(env, cleanup, "cell1", "t2-src", app_id="t2-a")
    dst = container(env, cleanup, "cell2", "t2-dst", app_id="t2-b")
    server(cleanup, dst, "tcp:8080")
    policy(env, cleanup, "t2-a", "t2-b")
    ta.wait_for("policy in force", lambda: reach(src, dst, "tcp:8080"))
    tag = env.table("cell1").sets["c2c_src_tag"].keys[src.ip]
    # cell2 knows nothing of the source container: no source entry for its IP there...
    assert src.ip not in env.table("cell2").sets["c2c_src_tag"].keys
    assert f"{dst.ip} . {tag} . tcp . 8080-8080" in allow_keys(env, "cell2")
    # ...yet packets arrive from the VTEP carrying the tag as their mark.
    cell2 = env.silk.cells["cell2"].ns
    probe_table = ("table ip t2probe {\n chain probe_fwd {\n"
                   "  type filter hook forward priority -10; policy accept;\n"
                   f"  iifname \"silk-vtep\" ip saddr {src.ip} meta mark {tag} counter\n }}\n}}")
    with Nft(cell2) as nft:
        nft.run(probe_table + "\n")
        cleanup.append(lambda: Nft(cell2).run("delete table ip t2probe\n"))
        assert reach(src, dst, "tcp:8080")
        listing = nft.run("list table ip t2probe")
    packets = int(listing.split("counter packets ")[1].split()[0])
    assert packets > 0


ONE_CONNECTION = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
for line in sys.stdin:
    try:
        s.sendall(b"x"); s.settimeout(float(line)); ok = s.recv(1) == b"x"
        print("ok" if ok else "closed", flush=True)
    except OSError as e:
        print(type(e).__name__, flush=True)
"""


class Connection:
    """One TCP connection held open by a process in `src`; `echo()` sends a byte and reports."""

    def __init__(self, src: ta.Container, dst: ta.Container, port: int) -> None:
        self.proc = subprocess.Popen(
            netns.exec_argv(src.ns, [sys.executable, "-c", ONE_CONNECTION, dst.ip, str(port)]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def echo(self, timeout: float = PROBE) -> str:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(f"{timeout}\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _open_then_delete(env: Env, cleanup: list, prefix: str,
                      watch: ta.RunningAgent | None = None) -> tuple[Connection, list[dict]]:
    """An open connection from cell1 to cell2 whose policy is then deleted. With `watch`, also
    returns that agent's `conntrack-entries-deleted` lines logged after the deletion that name
    the connection's destination (empty when there are none yet)."""
    src = container(env, cleanup, "cell1", f"{prefix}-src", app_id=f"{prefix}-a")
    dst = container(env, cleanup, "cell2", f"{prefix}-dst", app_id=f"{prefix}-b")
    server(cleanup, dst, "tcp:8080")
    p = policy(env, cleanup, f"{prefix}-a", f"{prefix}-b")
    ta.wait_for("policy in force", lambda: reach(src, dst, "tcp:8080"))
    conn = Connection(src, dst, 8080)
    cleanup.append(conn.close)
    assert conn.echo() == "ok"
    seen = len(watch.log_lines("conntrack-entries-deleted")) if watch else 0
    env.delete(p)
    ta.wait_for("new connections refused", lambda: refused(src, dst, "tcp:8080"))

    def deleted() -> list[dict]:
        lines = watch.log_lines("conntrack-entries-deleted")[seen:] if watch else []
        return [l for l in lines if f"{dst.ip} tcp 8080-8080" in l["data"]["closed"]]

    return conn, ta.wait_for("conntrack entries deleted", deleted) if watch else []


def test_deleting_a_policy_keeps_open_connections_by_default(env: Env, cleanup: list) -> None:
    conn, _ = _open_then_delete(env, cleanup, "t3")
    assert conn.echo() == "ok"
    assert ct.STRICT_CHAIN not in env.table("cell2").chains  # upstream mode: no strict chain


def test_strict_mode_also_stops_open_connections(env: Env, cleanup: list) -> None:
    agent = env.agents["cell2"]
    agent.stop()
    agent.write_config(policy_enforcement_mode="strict")

    def restore() -> None:
        agent.stop()
        agent.write_config(policy_enforcement_mode="upstream")
        agent.start()

    cleanup.append(restore)
    agent.start()
    # The entries go right after the transaction that closed the port, in the same cycle; wait
    # for that cycle's line. An earlier line is no proof: the first cycle after the restart
    # deletes entries of allowances that vanished while the agent was down (the previous test's,
    # often for the very IP this test's destination reuses) and logs them with a count >= 1.
    conn, deleted = _open_then_delete(env, cleanup, "t4", watch=agent)
    assert deleted[-1]["data"]["count"] >= 1
    assert conn.echo(timeout=1.5) != "ok"


PUSH_SERVER = r"""
import socket, sys
s = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
c, _ = s.accept()
print("accepted", flush=True)
for line in sys.stdin:  # each line: bytes to send to the client unasked
    c.sendall(line.strip().encode())
    print("sent", flush=True)
"""

LISTENER = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
print("connected", flush=True)
for line in sys.stdin:  # "recv <timeout>" or "send <bytes>"
    cmd, arg = line.split()
    try:
        if cmd == "send":
            s.sendall(arg.encode()); print("sent", flush=True)
        else:
            s.settimeout(float(arg)); print(s.recv(16).decode() or "closed", flush=True)
    except OSError as e:
        print(type(e).__name__, flush=True)
"""


class Piped:
    """A process in a namespace driven line by line over stdin/stdout."""

    def __init__(self, cleanup: list, ns: Any, script: str, *args: str) -> None:
        self.proc = subprocess.Popen(netns.exec_argv(ns, [sys.executable, "-c", script, *args]),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        cleanup.append(lambda: (self.proc.kill(), self.proc.wait()))

    def line(self) -> str:
        assert self.proc.stdout
        return self.proc.stdout.readline().strip()

    def ask(self, command: str) -> str:
        assert self.proc.stdin
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.line()


def test_strict_mode_stops_a_flow_whose_server_speaks_first(env: Env, cleanup: list) -> None:
    """After strict mode dropped a closed flow's conntrack entries, a packet the server sends
    first would be picked up mid-stream as a new outgoing connection on its cell and, with the
    client cell's entry still established, revive the flow. Strict mode's forward chain drops
    it: new TCP from a local container towards the overlay must start with a SYN."""
    agent = env.agents["cell2"]
    agent.stop()
    agent.write_config(policy_enforcement_mode="strict")

    def restore() -> None:
        agent.stop()
        agent.write_config(policy_enforcement_mode="upstream")
        agent.start()

    cleanup.append(restore)
    agent.start()
    assert ct.STRICT_CHAIN in env.table("cell2").chains
    src = container(env, cleanup, "cell1", "t4r-src", app_id="t4r-a")
    dst = container(env, cleanup, "cell2", "t4r-dst", app_id="t4r-b")
    server(cleanup, dst, "tcp:8080")  # probes see the policy in force
    pusher = Piped(cleanup, dst.ns, PUSH_SERVER, dst.ip, "8081")
    assert pusher.line() == "ready"
    p = policy(env, cleanup, "t4r-a", "t4r-b", ports="8080-8081")
    ta.wait_for("policy in force", lambda: reach(src, dst, "tcp:8080"))
    client = Piped(cleanup, src.ns, LISTENER, dst.ip, "8081")
    assert client.line() == "connected" and pusher.line() == "accepted"
    assert pusher.ask("before") == "sent"
    assert client.ask(f"recv {PROBE}") == "before"  # the server can push while allowed
    seen = len(agent.log_lines("conntrack-entries-deleted"))
    env.delete(p)
    ta.wait_for("conntrack entries deleted", lambda: [
        l for l in agent.log_lines("conntrack-entries-deleted")[seen:]
        if f"{dst.ip} tcp 8080-8081" in l["data"]["closed"]])
    assert pusher.ask("after") == "sent"  # into the socket; the kernel drops every transmission
    assert client.ask("recv 1.5") != "after"
    assert client.ask("send more") == "sent"  # the client's next packet is refused too
    assert client.ask("recv 1.5") not in ("after", "more")


def test_agent_restart_adopts_the_table_and_traffic_keeps_flowing(env: Env, cleanup: list) -> None:
    src = container(env, cleanup, "cell1", "t5-src", app_id="t5-a")
    dst = container(env, cleanup, "cell2", "t5-dst", app_id="t5-b")
    server(cleanup, dst, "tcp:8080")
    policy(env, cleanup, "t5-a", "t5-b")
    ta.wait_for("policy in force", lambda: reach(src, dst, "tcp:8080"))
    conn = Connection(src, dst, 8080)
    cleanup.append(conn.close)
    before = {n: env.table(n) for n in ("cell1", "cell2")}
    for name in ("cell1", "cell2"):
        a = env.agents[name]
        assert a.stop() == 0
    assert reach(src, dst, "tcp:8080")  # rules stay while no agent runs
    for name in ("cell1", "cell2"):
        env.agents[name].start()
        assert env.agents[name].log_lines("table-ready")[-1]["data"]["adopted"] is True
        after = env.table(name)
        assert after.sets["c2c_src_tag"].keys == before[name].sets["c2c_src_tag"].keys
    assert reach(src, dst, "tcp:8080") and conn.echo() == "ok"


def test_tag_ffff_and_an_app_with_150_policies(env: Env, cleanup: list) -> None:
    # Tag 0xffff: give an app that tag in the server's database (allocation is sequential),
    # and free rows below it so later allocations are unaffected.
    with sqlite3.connect(env.ps.database.path) as db:
        top = db.execute("SELECT COALESCE(MAX(id), 0) FROM groups").fetchone()[0]
        if top < 0xFFFF:
            db.executemany("INSERT INTO groups (id, guid, type) VALUES (?, NULL, NULL)",
                           [(i,) for i in range(top + 1, top + 400)])
            db.execute("INSERT INTO groups (id, guid, type) VALUES (65535, 't6-ffff', 'app')")
    src = container(env, cleanup, "cell1", "t6-src", app_id="t6-ffff")
    many = container(env, cleanup, "cell1", "t6-many", app_id="t6-many")
    dst = container(env, cleanup, "cell2", "t6-dst", app_id="t6-b")
    server(cleanup, dst, "tcp:8080", "tcp:20000", "tcp:20001", "tcp:20298")
    policy(env, cleanup, "t6-ffff", "t6-b")
    ps = [make_policy("t6-many", "t6-b", "tcp", str(20000 + 2 * i)) for i in range(150)]
    env.add(*ps)
    cleanup.append(lambda: env.delete(*ps))
    ta.wait_for("tag ffff in force", lambda: reach(src, dst, "tcp:8080"))
    assert env.table("cell1").sets["c2c_src_tag"].keys[src.ip] == "0xffff"
    ta.wait_for("150 policies in force", lambda: reach(many, dst, "tcp:20298"))
    assert ta.probe(many, dst.ip, "tcp:20000", "tcp:20001", "tcp:8080", timeout=PROBE) == {
        "tcp:20000": "ok", "tcp:20001": "refused", "tcp:8080": "refused"}
    assert sum(1 for k in allow_keys(env, "cell2") if k.startswith(dst.ip + " ")) == 151


def test_concurrent_creates_and_destroys_while_syncing(env: Env, cleanup: list) -> None:
    k = env.containers["cell1"]
    stop = threading.Event()
    dst = container(env, cleanup, "cell2", "t7-dst", app_id="t7-b")
    flips = [make_policy("t7-a", "t7-b", "tcp", str(9000 + i)) for i in range(3)]

    def churn_policies() -> None:  # keeps the agents syncing in a tight loop
        i = 0
        while not stop.is_set():
            p = flips[i % len(flips)]
            env.add(p)
            env.agents["cell1"].force("/force-policy-poll-cycle")
            env.delete(p)
            i += 1

    def lifecycle(n: int) -> str:
        h = f"t7-c{n}"
        c = k.add(h, app_id="t7-a", space_id="t7-space")
        k.remove(h)
        return c.ip

    churner = threading.Thread(target=churn_policies, daemon=True)
    churner.start()
    try:
        with ThreadPoolExecutor(max_workers=10) as pool:
            ips = list(pool.map(lifecycle, range(50)))  # raises if any create/destroy failed
    finally:
        stop.set()
        churner.join(60)
    assert len(ips) == 50
    gone = {f"t7-c{n}" for n in range(50)}

    def clean() -> bool:
        state = env.table("cell1")
        handles = ct.handles_in(state) | ct.referenced_handles(state)
        tagged = set(state.sets["c2c_src_tag"].keys)
        return not (handles & gone) and not (tagged & set(ips) - {c.ip for c in
                                                                   k.by_handle.values()})

    ta.wait_for("no orphans", clean)
    errors = [l for l in env.agents["cell1"].log_lines() if l["level"] == "error"
              and "t7-" in str(l["data"])]
    assert errors == []


# -- ASGs ------------------------------------------------------------------------------------------


def write_asgs(env: Env, groups: list[dict[str, Any]]) -> None:
    from cfnet.core.security_groups import SecurityGroup, rules_json
    from cfnet.store.db import Database
    from cfnet.store.policies import PolicyStore

    db = Database(env.ps.database)
    try:
        PolicyStore(db).replace_security_groups([SecurityGroup(
            g["guid"], g["guid"], rules_json(g["rules"]), g.get("staging_default", False),
            g.get("running_default", False), tuple(g.get("staging", ())),
            tuple(g.get("running", ()))) for g in groups])
    finally:
        db.close()


def tcp_rule(dest: str, ports: str) -> dict[str, Any]:
    return {"protocol": "tcp", "destination": dest, "ports": ports}


def test_asgs_per_container_lifecycle_space_and_globals(env: Env, cleanup: list) -> None:
    cp = env.silk.controller_host
    target = ta.Container("cp", cp.ip, cp.ns, "")
    server(cleanup, target, "tcp:7000", "tcp:7001", "tcp:7002")
    groups = [
        {"guid": "t8-global", "rules": [tcp_rule(cp.ip, "7002")], "running_default": True},
        {"guid": "t8-s1", "rules": [tcp_rule(cp.ip, "7000"), tcp_rule(cp.ip, "7002")],
         "running": ["t8-s1"]},
        {"guid": "t8-s1-dup", "rules": [tcp_rule(cp.ip, "7000")], "running": ["t8-s1"]},
        {"guid": "t8-stage", "rules": [tcp_rule(cp.ip, "7001")], "staging": ["t8-s1"]},
    ]
    write_asgs(env, groups)
    cleanup.append(lambda: write_asgs(env, []))
    run = container(env, cleanup, "cell1", "t8-run", app_id="t8-a", space_id="t8-s1")
    stage = container(env, cleanup, "cell1", "t8-stage", app_id="t8-a", space_id="t8-s1",
                      workload="staging")
    other = container(env, cleanup, "cell1", "t8-other", app_id="t8-b", space_id="t8-s2")
    specs = ["tcp:7000", "tcp:7001", "tcp:7002"]
    # The force call at create answered only once the rules were in place: no waiting here.
    assert ta.probe(run, cp.ip, *specs, timeout=PROBE) == {
        "tcp:7000": "ok", "tcp:7001": "refused", "tcp:7002": "ok"}
    assert ta.probe(stage, cp.ip, *specs, timeout=PROBE) == {
        "tcp:7000": "refused", "tcp:7001": "ok", "tcp:7002": "refused"}
    assert ta.probe(other, cp.ip, *specs, timeout=PROBE) == {
        "tcp:7000": "refused", "tcp:7001": "refused", "tcp:7002": "ok"}
    chain = env.nft_text("cell1", f"chain ip cfnet {ar.netout_chain('t8-run')}")
    assert chain.count("tcp dport 7000") == 1  # identical rules from two groups: once

    # The periodic sync follows changes (bind space t8-s2 to the staging-only port).
    groups.append({"guid": "t8-s2", "rules": [tcp_rule(cp.ip, "7001")], "running": ["t8-s2"]})
    write_asgs(env, groups)
    ta.wait_for("ASG change applied", lambda: ta.probe(other, cp.ip, "tcp:7001",
                                                        timeout=PROBE)["tcp:7001"] == "ok")


def test_dry_run_logs_over_limit_connections_instead_of_rejecting(env: Env, cleanup: list) -> None:
    agent = env.agents["cell1"]
    agent.stop()
    agent.write_config(outbound_connections={"limit": False, "dry_run": True,
                                             "rate_per_sec": 1, "burst": 1}, resync_interval=1)

    def restore() -> None:
        agent.stop()
        agent.write_config(outbound_connections={}, resync_interval=300)
        agent.start()

    cleanup.append(restore)
    agent.start()
    write_asgs(env, [{"guid": "t9", "rules": [tcp_rule("10.10.0.0/24", "7000")],
                      "running_default": True}])
    cleanup.append(lambda: write_asgs(env, []))
    container(env, cleanup, "cell1", "t9-run", app_id="t9-a", space_id="t9-s")
    netout = env.nft_text("cell1", f"chain ip cfnet {ar.netout_chain('t9-run')}")
    assert "update @rl-t9-run" in netout and "jump netout-t9-run-rl-log" in netout
    rl_log = env.nft_text("cell1", f"chain ip cfnet {ar.netout_rl_log_chain('t9-run')}")
    assert 'log prefix "DENY_ORL_t9-run "' in rl_log and "reject" not in rl_log

    # Drift is repaired by the periodic resync (Q8): a chain emptied behind the agent's back.
    with Nft(env.silk.cells["cell1"].ns) as nft:
        nft.run(f"flush chain ip cfnet {ar.netout_chain('t9-run')}\n")
    ta.wait_for("netout chain rewritten", lambda: "update @rl-t9-run" in env.nft_text(
        "cell1", f"chain ip cfnet {ar.netout_chain('t9-run')}"))
    # Even a dropped table comes back (its shared part; per-container structure is the CNI's).
    with Nft(env.silk.cells["cell1"].ns) as nft:
        nft.run("delete table ip cfnet\n")

    def rebuilt() -> bool:
        with Nft(env.silk.cells["cell1"].ns) as nft:
            return nft.table_exists() and ct.list_c2c(nft).chain_rules > 0

    ta.wait_for("table rebuilt", rebuilt)


# -- orphans, endpoints, start-up ------------------------------------------------------------------


def test_orphaned_structure_is_removed(env: Env, cleanup: list) -> None:
    cell = env.silk.cells["cell1"]
    with Nft(cell.ns) as nft:
        nft.run(ct.render_container_add(ct.ContainerNet(
            "t10-orphan", "10.255.254.9", ar.netout_chains("t10-orphan", "app", []))))
    kept = container(env, cleanup, "cell1", "t10-kept", app_id="t10-a")
    ta.wait_for("orphan removed", lambda: "t10-orphan" not in ct.handles_in(env.table("cell1")))
    state = env.table("cell1")
    assert "10.255.254.9" not in state.sets["netout_v"].keys
    assert kept.handle in ct.handles_in(state)


def test_force_and_debug_endpoints(env: Env, cleanup: list) -> None:
    agent = env.agents["cell1"]
    assert agent.force("/force-asgs-for-container") == (400, "no container specified")
    assert agent.force("/force-orphaned-asgs-cleanup") == (400, "no container specified")
    assert agent.force("/nope")[0] == 404
    assert agent.force("/force-policy-poll-cycle") == (200, "")
    status, body = agent.force("/force-asgs-for-container?container=not-created")
    assert status == 200 and body == "updated container not-created"  # no datastore entry
    assert agent.force("/force-orphaned-asgs-cleanup?container=gone") == (
        200, "cleaned up ASGs for container gone")
    assert agent.debug("/log-level", "POST", b"info")[0] == 200
    assert agent.debug("/health") == (200, '{"healthy":true}')
    status, metrics = agent.debug("/metrics")
    for name in ("cfnet_vxlan_agent_sync_duration_seconds", "cfnet_vxlan_agent_sync_failures_total",
                 "cfnet_vxlan_agent_elements", "cfnet_vxlan_agent_last_sync_timestamp_seconds"):
        assert name in metrics
    assert agent.debug("/iptables-c2c-logging") == (200, '{"enabled":false}')
    assert agent.debug("/iptables-c2c-logging", "PUT", b"nope") == (
        400, '{"error": "decoding request body as json"}')
    assert agent.debug("/iptables-c2c-logging", "PUT", b"{}") == (
        400, "{\"error\": \"missing required key 'enabled'\"}")

    dst = container(env, cleanup, "cell1", "t11-dst", app_id="t11-b")
    policy(env, cleanup, "t11-a", "t11-b", "tcp", "8080")
    ta.wait_for("policy planned", lambda: any(
        k.startswith(dst.ip + " ") for k in allow_keys(env, "cell1")))
    assert agent.debug("/iptables-c2c-logging", "PUT", b'{"enabled": true}') == (
        200, '{"enabled":true}')
    cleanup.append(lambda: agent.debug("/iptables-c2c-logging", "PUT", b'{"enabled": false}'))
    assert f"ip daddr {dst.ip}" in env.nft_text("cell1", "chain ip cfnet c2c-log")  # at once (Q3)


@pytest.mark.parametrize("change, error", [
    ({"policy_server_url": "https://127.0.0.1:1"},
     "cfnetworking: policy-client-get-policies: cannot connect"),
    ({"underlay_ips": ["10.9.9.9"]},
     "cfnetworking: looking up interface names: no interface has address 10.9.9.9"),
])
def test_start_up_failures_are_one_line_exit_1(env: Env, tmp_path: Path, change: dict,
                                               error: str) -> None:
    import json

    cell = env.silk.cells["cell1"]
    cfg = ta.agent_config(cell, tmp_path, env.ps, debug_server_port=0,
                          force_policy_poll_cycle_port=0, **change)
    (tmp_path / "container-metadata").mkdir()
    path = tmp_path / "agent.json"
    path.write_text(json.dumps(cfg))
    proc = netns.run(cell.ns, [sys.executable, "-m", "cfnet", "vxlan-agent", "--config-file",
                               str(path)], check=False, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.startswith(error)
    assert proc.stderr.count("\n") == 1

def test_server_without_watch_is_polled_and_asg_syncing_can_be_disabled(env: Env,
                                                                        cleanup: list) -> None:
    src = container(env, cleanup, "cell1", "t13-src", app_id="t13-a")
    dst = container(env, cleanup, "cell2", "t13-dst", app_id="t13-b")
    server(cleanup, dst, "tcp:8080")
    # A second server on the same store whose watch answers at once, like a server without it.
    plain = ta.start_policy_server_in(env.silk, env.work / "ps-nowatch", database=env.ps.database,
                                      bundle=env.ps.bundle, internal={"watch_max_wait_seconds": 0})
    cleanup.append(plain.stop)
    agent = env.agents["cell2"]
    agent.stop()
    agent.write_config(policy_server_url=plain.internal_url, enable_asg_syncing=False)

    def restore() -> None:
        agent.stop()
        agent.write_config(policy_server_url=env.ps.internal_url, enable_asg_syncing=True)
        agent.start()

    cleanup.append(restore)  # runs before the second server stops and containers go
    agent.start()
    assert agent.force("/force-asgs-for-container?container=t13-dst") == (
        405, "ASG syncing has been disabled administratively")
    assert agent.force("/force-orphaned-asgs-cleanup?container=t13-dst")[0] == 405
    ta.wait_for("fallback to polling", lambda: agent.log_lines("policy-watch-unsupported"))
    policy(env, cleanup, "t13-a", "t13-b")
    ta.wait_for("policy in force by polling", lambda: reach(src, dst, "tcp:8080"))


def test_containers_without_structure_are_skipped_not_created(env: Env, cleanup: list) -> None:
    from cfnet.cni.datastore import Datastore

    agent = env.agents["cell1"]
    store = Datastore(agent.datastore_path)
    # Between the wrapper's datastore write and its first transaction.
    store.add("t14-early", "10.255.254.20", {"policy_group_id": "t14-a", "space_id": "t14-s",
                                              "container_workload": "app"})
    cleanup.append(lambda: store.delete("t14-early"))
    status, body = agent.force("/force-asgs-for-container?container=t14-early")
    assert status == 500
    assert body == ("failed to update asgs for container t14-early: container structure not "
                    "created yet (no netout_v element)")
    # A periodic ASG cycle passes (interval 2 s) without creating the container's chains.
    probe = container(env, cleanup, "cell1", "t14-other", app_id="t14-b", space_id="t14-s")
    runs = len(agent.log_lines("asgs-updated"))
    write_asgs(env, [{"guid": "t14", "rules": [tcp_rule("10.10.0.1", "7000")],
                      "running_default": True}])
    cleanup.append(lambda: write_asgs(env, []))
    ta.wait_for("a periodic ASG cycle", lambda: len(agent.log_lines("asgs-updated")) > runs)
    assert "10.10.0.1" in env.nft_text("cell1", f"chain ip cfnet {ar.netout_chain(probe.handle)}")
    assert "t14-early" not in ct.handles_in(env.table("cell1"))
