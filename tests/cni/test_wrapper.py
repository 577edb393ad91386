"""`cfnet cni wrapper` on a real Silk cell, run exactly as a CNI runtime runs it.

One deployment is shared by the module: a silk-controller, one cell with its silk-daemon, and two
more hosts on the underlay, a "router" (reaches containers through mapped host ports) and an
"internet" host (egress destination, with two addresses). No policy agent runs on the cell, so
the documented agent-down behaviour applies (static netOutRules) unless a test starts something
on the agent's address. Every test removes its containers; `snapshot()` before and after proves
the cell is back as it was.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from wrapper_env import CELL_DNS, HOST_SVC_PORT, INTERNET_IP2, Env, deployment, wait_listening

from cfnet.net import netns
from cfnet.net.topology import stop_process

pytestmark = pytest.mark.privileged


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with deployment(tmp_path_factory.mktemp("wrapper"), "wr") as e:
        yield e


@pytest.fixture
def e(env: Env) -> Iterator[Env]:
    env.containers = []
    yield env
    for name in env.containers:
        netns.remove(name)


def serve_in_container(e: Env, ns: str, port: int) -> None:
    e.responder(ns, "0.0.0.0", port)


def allow_internet_80(e: Env) -> list[dict[str, object]]:
    """Garden NetOutRules: tcp to the internet host's first address, port 80 only."""
    ip = e.internet.ip
    return [{"protocol": 1, "networks": [{"start": ip, "end": ip}],
             "ports": [{"start": 80, "end": 80}]}]


# ---------------------------------------------------------------------------------------------


def test_netin_netout_dns_host_services_and_datastore(e: Env) -> None:
    before = e.snapshot()
    ns = e.container_ns("c1")
    ip, out = e.add("c1", ns, port_mappings=[{"host_port": 61001, "container_port": 8080}],
                    net_out_rules=allow_internet_80(e))
    # The result: silk's, plus every configured DNS server.
    assert out["dns"] == {"nameservers": [CELL_DNS, "8.8.8.8"]}
    assert out["interfaces"][1]["sandbox"] == netns.path(ns)

    # The datastore entry, upstream shape.
    store = json.loads(e.datastore.read_text())
    assert store["c1"] == {"handle": "c1", "ip": ip, "metadata": {
        "policy_group_id": "app-c1", "space_id": "space-1", "container_workload": "app"}}

    # netin: the router reaches the container's 8080 through the cell's host port 61001.
    serve_in_container(e, ns, 8080)
    cell_ip = e.cell.underlay_ip
    got = e.connect(e.router.ns, f"{cell_ip}:61001")
    assert got[f"{cell_ip}:61001"] == ("ok", e.router.ip)  # the container saw the router
    # ...but not the container directly on a port nobody mapped.
    assert e.connect(e.router.ns, f"{cell_ip}:61002")[f"{cell_ip}:61002"][0] == "refused"

    # netout: allowed by address and port, masqueraded to the cell's address; the rest rejected.
    ip1, ip2 = e.internet.ip, INTERNET_IP2
    got = e.connect(ns, f"{ip1}:80", f"{ip1}:8080", f"{ip2}:80")
    assert got[f"{ip1}:80"] == ("ok", cell_ip)
    assert got[f"{ip1}:8080"][0] == "refused"
    assert got[f"{ip2}:80"][0] == "refused"

    # DNS on the link-local server and the configured host service; other host ports rejected.
    got = e.connect(ns, f"{CELL_DNS}:53", f"{CELL_DNS}:54", f"{cell_ip}:{HOST_SVC_PORT}",
                    f"{cell_ip}:{HOST_SVC_PORT + 1}")
    assert got[f"{CELL_DNS}:53"] == ("ok", ip)
    assert got[f"{CELL_DNS}:54"][0] == "refused"
    assert got[f"{cell_ip}:{HOST_SVC_PORT}"] == ("ok", ip)
    assert got[f"{cell_ip}:{HOST_SVC_PORT + 1}"][0] == "refused"

    table = e.table()
    assert "chain netout-c1 {" in table and "chain overlay-c1 {" in table
    assert f"{cell_ip} . 61001 comment \"c1\" : {ip} . 8080" in table

    e.delete("c1", ns)
    assert "c1" not in json.loads(e.datastore.read_text())
    assert e.snapshot() == before
    # The router no longer reaches anything through the old host port.
    assert e.connect(e.router.ns, f"{cell_ip}:61001")[f"{cell_ip}:61001"][0] != "ok"


def test_del_removes_exactly_one_container_twice_and_unknown(e: Env) -> None:
    ns_a, ns_b = e.container_ns("da"), e.container_ns("db")
    ip_b, _ = e.add("db", ns_b, port_mappings=[{"host_port": 61010, "container_port": 8080}],
                    net_out_rules=allow_internet_80(e))
    with_b = e.snapshot()
    ip_a, _ = e.add("da", ns_a, port_mappings=[{"host_port": 61011, "container_port": 8080}],
                    net_out_rules=allow_internet_80(e))
    assert "netout-da" in e.table()
    e.delete("da", ns_a)
    assert e.snapshot() == with_b  # exactly A's elements, chains and entries are gone
    e.delete("da", ns_a)  # twice
    e.delete("da", None)  # without a namespace
    e.delete("never-created", None)  # unknown container
    refused = e.cni("wrapper", "ADD", "refused-by-add-log", ns_a,
                    e.wrapper_conf("refused-by-add-log"))
    assert refused.code == 1 and refused.out is not None and refused.out["code"] == 4
    e.delete("refused-by-add-log", None)  # ...and DEL of that handle still succeeds
    assert e.snapshot() == with_b
    assert "netout-db" in e.table() and ip_b in e.table()
    # B still works after A is gone.
    got = e.connect(ns_b, f"{e.internet.ip}:80")
    assert got[f"{e.internet.ip}:80"] == ("ok", e.cell.underlay_ip)
    e.delete("db", ns_b)
    assert ip_a not in e.table() and ip_b not in e.table()


def _hand_out_again(e: Env, ip: str) -> None:
    """Make host-local's next allocation `ip` (it continues after the last address handed out)."""
    import ipaddress

    last = e.cell.workdir / "host-local" / "ipam" / "silk" / "last_reserved_ip.0"
    last.write_text(str(ipaddress.IPv4Address(ip) - 1))


@pytest.mark.parametrize("predecessor_del", ["wrapper", "delegate-only"])
def test_reused_ip_does_not_inherit_rules(e: Env, predecessor_del: str) -> None:
    ns1 = e.container_ns("r1")
    ip1, _ = e.add("r1", ns1, port_mappings=[{"host_port": 61030, "container_port": 8080}],
                   net_out_rules=allow_internet_80(e))
    if predecessor_del == "wrapper":
        e.delete("r1", ns1)
    else:  # the predecessor's wrapper state leaked: only silk released its address
        run = e.cni("silk", "DEL", "r1", ns1, e.silk_conf())
        assert run.code == 0, run.stdout + run.stderr
    _hand_out_again(e, ip1)
    ns2 = e.container_ns("r2")
    ip2, _ = e.add("r2", ns2)  # no egress rules, no port mappings
    assert ip2 == ip1
    got = e.connect(ns2, f"{e.internet.ip}:80")
    assert got[f"{e.internet.ip}:80"][0] == "refused"
    table = e.table()
    assert f"{ip1} : jump netout-r2" in table and "jump netout-r1" not in table
    e.delete("r2", ns2)
    e.delete("r1", ns1)  # whatever the predecessor left (its chains) goes with its own DEL
    table = e.table()
    assert "-r1" not in table and "-r2" not in table and ip1 not in table


@pytest.mark.parametrize("entry, names", [
    ({"protocol": "tcp", "destination": "10.0.0.0/8", "ports": "80,,443"}, "80,,443"),
    ({"protocol": 1, "networks": [{"start": "10.0.0.1"}], "ports": [{"start": 0}]}, "port 0"),
    ({"protocol": 1, "networks": [{"start": "10.0.0.1"}], "ports": [{"start": 70000}]},
     "port 70000"),
    ({"protocol": "all", "destination": "10.0.0.0/33"}, "10.0.0.0/33"),
    ({"protocol": 0, "networks": [{"start": "10.0.0.300"}]}, "10.0.0.300"),
    ({"protocol": 3, "networks": [{"start": "10.0.0.1"}], "icmps": {"code": 0}},
     "code given without a type"),
])
def test_bad_netout_rule_is_error_7_naming_the_entry_and_changes_nothing(
        e: Env, entry: dict[str, object], names: str) -> None:
    before = e.snapshot()
    ns = e.container_ns("bad")
    rules = [*allow_internet_80(e), entry]
    run = e.cni("wrapper", "ADD", "bad", ns, e.wrapper_conf("bad", net_out_rules=rules))
    assert run.code == 1 and run.out is not None
    assert run.out["code"] == 7
    assert "runtimeConfig.netOutRules" in run.out["msg"] and "egress rule 1" in run.out["msg"]
    assert names in run.out["msg"]
    assert e.snapshot() == before
    # Garden calls down after a failed up, with the same config: DEL must still succeed.
    run = e.cni("wrapper", "DEL", "bad", ns, e.wrapper_conf("bad", net_out_rules=rules))
    assert (run.code, run.stdout) == (0, ""), run.stdout
    assert e.snapshot() == before


def test_config_errors_use_upstream_texts(e: Env) -> None:
    ns = e.container_ns("cfg")
    before = e.snapshot()
    cases = {
        "datastore": "missing datastore path",
        "iptables_lock_file": "missing iptables lock file path",
        "instance_address": "missing instance address",
        "underlay_ips": "missing underlay ips",
        "ingress_tag": "missing ingress tag",
        "vtep_name": "missing vtep device name",
        "delegate": "delegate config is missing type",
    }
    for key, msg in cases.items():
        conf = e.wrapper_conf("cfg")
        del conf[key]
        run = e.cni("wrapper", "ADD", "cfg", ns, conf)
        assert run.code == 1 and run.out is not None
        assert (run.out["code"], run.out["msg"]) == (7, msg), key
    conf = e.wrapper_conf("cfg", dns_servers=["banana"])
    run = e.cni("wrapper", "ADD", "cfg", ns, conf)
    assert run.out is not None
    assert run.out["msg"] == 'invalid DNS server "banana", must be valid IP address'
    conf = e.wrapper_conf("cfg", deny_networks={"always": ["10.0.0.0/40"]})
    run = e.cni("wrapper", "ADD", "cfg", ns, conf)
    assert run.out is not None
    assert run.out["msg"] == \
        "initialize net out: deny networks: invalid CIDR address: 10.0.0.0/40"
    run = e.cni("wrapper", "ADD", "cfg", ns, e.wrapper_conf(
        "cfg", port_mappings=[{"host_port": 0, "container_port": 8080}]))
    assert run.out["msg"] == "cannot allocate port 0"  # type: ignore[index]
    assert e.snapshot() == before


# ---- failure points of ADD: each leaves the cell as it was -----------------------------------


def _fails(e: Env, handle: str, conf: dict[str, object]) -> dict[str, object]:
    before = e.snapshot()
    ns = e.container_ns(handle)
    run = e.cni("wrapper", "ADD", handle, ns, conf)
    assert run.code == 1 and run.out is not None, (run.stdout, run.stderr)
    assert e.snapshot() == before, run.stderr
    # ...and the same container can then be created for real.
    ip, _ = e.add(handle, ns)
    e.delete(handle, ns)
    assert e.snapshot()["links"] == before["links"]
    return run.out


def test_failure_delegate(e: Env) -> None:
    out = _fails(e, "f1", e.wrapper_conf("f1", delegate=e.silk_conf(daemonPort=1)))
    assert out["msg"].startswith("delegate call: discover network info")


def test_failure_datastore(e: Env, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    out = _fails(e, "f2", e.wrapper_conf("f2", datastore=str(blocker / "store.json")))
    assert out["msg"].startswith("store add: ")


def _agent_dir(tmp_path: Path, *files: str) -> Path:
    d = tmp_path / "agent"
    d.mkdir()
    for f in files:
        (d / f).write_text("")
    return d


def _static_server(e: Env, directory: Path, port: int) -> subprocess.Popen[bytes]:
    """Python's own static file server inside the cell: 200 for the files that exist, 404 else."""
    proc = netns.spawn(e.cell.ns, [sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                                   "--directory", str(directory), str(port)])
    wait_listening(e.cell.ns, [port])
    return proc


def test_failure_policy_poll_answer(e: Env, tmp_path: Path) -> None:
    proc = _static_server(e, _agent_dir(tmp_path), 18721)  # 404 for every path
    try:
        out = _fails(e, "f3", e.wrapper_conf(
            "f3", policy_agent_force_poll_address="127.0.0.1:18721"))
    finally:
        stop_process(proc)
    assert out["msg"].startswith("vpa response code: 404 with message: ")


def test_failure_asg_sync_answer_rolls_back_nft(e: Env, tmp_path: Path) -> None:
    proc = _static_server(e, _agent_dir(tmp_path, "force-policy-poll-cycle"), 18722)
    try:
        out = _fails(e, "f4", e.wrapper_conf(
            "f4", policy_agent_force_poll_address="127.0.0.1:18722",
            port_mappings=[{"host_port": 61020, "container_port": 8080}]))
    finally:
        stop_process(proc)
    assert out["msg"].startswith("asg sync returned 404 with message: ")


def test_failure_nft_transaction(e: Env) -> None:
    # A cell table that cannot take the container (a set of the wrong type): the transaction fails
    # as a whole and everything before it is rolled back.
    saved = e.table()
    assert "containers" in saved or saved == ""
    netns.run(e.cell.ns, ["nft", "add table ip cfnet; delete table ip cfnet; add table ip cfnet; "
                                 "add set ip cfnet containers { type ifname; }"])
    try:
        before = e.snapshot()
        ns = e.container_ns("f5")
        run = e.cni("wrapper", "ADD", "f5", ns, e.wrapper_conf("f5"))
        assert run.code == 1 and run.out is not None
        assert run.out["msg"].startswith("initialize net out: nft: ")
        assert e.snapshot() == before
    finally:
        netns.run(e.cell.ns, ["nft", "delete table ip cfnet"])
        e.write_base()


def test_add_makes_the_base_ruleset_when_no_agent_made_it(e: Env) -> None:
    netns.run(e.cell.ns, ["nft", "delete table ip cfnet"])
    try:
        ns = e.container_ns("nobase")
        e.add("nobase", ns, net_out_rules=allow_internet_80(e))
        got = e.connect(ns, f"{e.internet.ip}:80", f"{e.internet.ip}:8080")
        assert got[f"{e.internet.ip}:80"] == ("ok", e.cell.underlay_ip)
        assert got[f"{e.internet.ip}:8080"][0] == "refused"
        e.delete("nobase", ns)
        table = e.table()
        assert "chain forward" in table and "nobase" not in table
    finally:
        netns.run(e.cell.ns, ["nft", "add table ip cfnet; delete table ip cfnet"])
        e.write_base()


def test_agent_answering_200_owns_egress(e: Env, tmp_path: Path) -> None:
    """Dynamic ASG mode: the CNI leaves netout-<h> at its defaults for the agent to fill."""
    proc = _static_server(e, _agent_dir(tmp_path, "force-policy-poll-cycle",
                                        "force-asgs-for-container"), 18723)
    try:
        ns = e.container_ns("dyn")
        e.add("dyn", ns, net_out_rules=allow_internet_80(e),
              policy_agent_force_poll_address="127.0.0.1:18723")
        chain = netns.run(e.cell.ns, ["nft", "list", "chain", "ip", "cfnet", "netout-dyn"]).stdout
        rules = [l.strip() for l in chain.splitlines()[2:-2] if l.strip()]
        assert rules == ["reject"]
        got = e.connect(ns, f"{e.internet.ip}:80")
        assert got[f"{e.internet.ip}:80"][0] == "refused"
        e.delete("dyn", ns, policy_agent_force_poll_address="127.0.0.1:18723")
    finally:
        stop_process(proc)


def test_hung_agent_times_out_to_static_rules(e: Env) -> None:
    # Something accepts connections on the agent's address but never answers.
    never_answers = ("import socket\ns = socket.create_server(('127.0.0.1', 18724))\nc = []\n"
                     "while True: c.append(s.accept())")
    hang = netns.spawn(e.cell.ns, [sys.executable, "-c", never_answers])
    try:
        wait_listening(e.cell.ns, [18724])
        ns = e.container_ns("hung")
        e.add("hung", ns, net_out_rules=allow_internet_80(e),
              policy_agent_force_poll_address="127.0.0.1:18724", policy_agent_timeout_seconds=1)
        got = e.connect(ns, f"{e.internet.ip}:80")
        assert got[f"{e.internet.ip}:80"] == ("ok", e.cell.underlay_ip)
        e.delete("hung", ns, policy_agent_force_poll_address="127.0.0.1:18724",
                 policy_agent_timeout_seconds=1)
    finally:
        stop_process(hang)


# ---- other delegates, the symlink, CHECK and GC ------------------------------------------------


def test_exec_delegate_from_cni_path_and_runtime_symlink(e: Env, tmp_path: Path) -> None:
    """Any delegate other than silk is exec'd from CNI_PATH (here Debian's ptp + host-local), and
    the wrapper itself runs as a runtime finds it: a `cni-wrapper-plugin` symlink to cfnet."""
    links = tmp_path / "bin"
    links.mkdir()
    (links / "cni-wrapper-plugin").symlink_to(Path(sys.executable).with_name("cfnet"))
    argv = [str(links / "cni-wrapper-plugin")]
    before = e.snapshot()
    ptp = {"cniVersion": "1.0.0", "name": "ptpnet", "type": "ptp",
           "ipam": {"type": "host-local", "subnet": "10.254.1.0/24",
                    "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(tmp_path / "ptp-ipam")}}
    conf = e.wrapper_conf("px", delegate=ptp, net_out_rules=allow_internet_80(e))
    ns = e.container_ns("px")
    run = e.cni("wrapper", "ADD", "px", ns, conf, argv=argv)
    assert run.code == 0, run.stdout + run.stderr
    ip = run.out["ips"][0]["address"].split("/")[0]  # type: ignore[index]
    assert ip.startswith("10.254.1.")
    assert json.loads(e.datastore.read_text())["px"]["ip"] == ip
    got = e.connect(ns, f"{e.internet.ip}:80", f"{e.internet.ip}:8080")
    assert got[f"{e.internet.ip}:80"] == ("ok", e.cell.underlay_ip)
    assert got[f"{e.internet.ip}:8080"][0] == "refused"
    run = e.cni("wrapper", "DEL", "px", ns, conf, argv=argv)
    assert (run.code, run.stdout) == (0, ""), run.stderr
    assert e.snapshot() == before

    missing = e.wrapper_conf("px", delegate={"cniVersion": "1.0.0", "name": "x", "type": "nope"})
    run = e.cni("wrapper", "ADD", "px", ns, missing, argv=argv)
    assert run.code == 1 and run.out is not None
    assert run.out["msg"] == 'delegate call: failed to find plugin "nope" in path [/usr/lib/cni]'
    assert e.snapshot() == before


def test_check(e: Env) -> None:
    ns = e.container_ns("ck")
    ip, out = e.add("ck", ns)
    conf = {**e.wrapper_conf("ck"), "prevResult": out}
    run = e.cni("wrapper", "CHECK", "ck", ns, conf)
    assert run.code == 0, run.stdout + run.stderr
    netns.run(e.cell.ns, ["nft", f"delete element ip cfnet netout_v {{ {ip} }}"])
    run = e.cni("wrapper", "CHECK", "ck", ns, conf)
    assert run.code == 1 and run.out is not None
    assert run.out["details"] == f"netout_v has no element {ip} : jump netout-ck"
    e.delete("ck", ns)


def test_gc_removes_every_container_that_is_not_a_valid_attachment(e: Env) -> None:
    before = e.snapshot()
    ns1, ns2 = e.container_ns("g1"), e.container_ns("g2")
    ip1, _ = e.add("g1", ns1, port_mappings=[{"host_port": 61040, "container_port": 8080}])
    e.add("g2", ns2)
    conf = {**e.wrapper_conf("g1"), "cniVersion": "1.1.0",
            "cni.dev/valid-attachments": [{"containerID": "g2", "ifname": "eth0"}]}
    run = e.cni("wrapper", "GC", "", None, conf)
    assert run.code == 0, run.stdout + run.stderr
    table = e.table()
    assert "-g1" not in table and ip1 not in table and "netout-g2" in table
    assert set(json.loads(e.datastore.read_text())) == {"g2"}
    with_g2 = e.snapshot()
    assert len(with_g2["links"]) == len(before["links"]) + 1  # g1's veth went with silk's GC
    e.delete("g2", ns2)
    e.delete("g1", ns1)  # DEL after GC: nothing left to do, still fine
    assert e.snapshot() == before


def test_concurrent_adds_and_dels_leave_nothing_behind(e: Env) -> None:
    """Twelve containers created at once, then deleted at once: distinct IPs, every one in the
    table and the datastore, and afterwards the cell exactly as before (the flock serialises the
    table's read-modify-write; the datastore and IPAM have their own locks)."""
    from concurrent.futures import ThreadPoolExecutor

    before = e.snapshot()
    handles = [f"cc{i}" for i in range(12)]
    spaces = {h: e.container_ns(h) for h in handles}

    def add(h: str) -> str:
        return e.add(h, spaces[h], net_out_rules=allow_internet_80(e),
                     port_mappings=[{"host_port": 61100 + int(h[2:]), "container_port": 8080}])[0]

    with ThreadPoolExecutor(6) as pool:
        ips = list(pool.map(add, handles))
    assert len(set(ips)) == len(handles)
    table = e.table()
    assert all(f"{ip} : jump netout-{h}" in table for h, ip in zip(handles, ips))
    assert set(json.loads(e.datastore.read_text())) == set(handles)
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda h: e.delete(h, spaces[h]), handles))
    assert e.snapshot() == before


def test_deny_networks_and_outbound_connection_limit(e: Env) -> None:
    """Static rules, spec 2.4 order: deny networks win over an allow-everything rule, and new
    TCP connections beyond the burst are rejected by the per-destination rate limit."""
    ns = e.container_ns("dn")
    allow_all = [{"protocol": 0, "networks": [{"start": "0.0.0.0", "end": "255.255.255.255"}]}]
    e.add("dn", ns, net_out_rules=allow_all,
          deny_networks={"always": [], "running": [f"{INTERNET_IP2}/32"], "staging": []},
          outbound_connections={"limit": True, "logging": False, "burst": 2, "rate_per_sec": 1,
                                "dry_run": False})
    ip1 = e.internet.ip
    got = e.connect(ns, f"{ip1}:8080", f"{INTERNET_IP2}:80")
    assert got[f"{ip1}:8080"][0] == "ok"
    assert got[f"{INTERNET_IP2}:80"][0] == "refused"  # denied network of a running app
    # Six new connections to one destination in one quick burst: the first two pass (burst 2),
    # later ones are over 1/second and rejected.
    outcomes = e.connect_each(ns, *[f"{ip1}:80"] * 6)
    assert outcomes[:2] == ["ok", "ok"] and "refused" in outcomes[2:]
    e.delete("dn", ns)


def test_owner_and_group_of_lock_and_datastore_files(e: Env) -> None:
    import os
    import pwd

    ns = e.container_ns("own")
    conf = {"datastore_file_owner": "nobody", "datastore_file_group": "nogroup"}
    e.add("own", ns, **conf)
    nobody = pwd.getpwnam("nobody").pw_uid
    lock = Path(e.wrapper_conf("own")["iptables_lock_file"])
    files = (lock, e.datastore, Path(f"{e.datastore}_version"), Path(f"{e.datastore}_lock"))
    for path in files:
        assert os.stat(path).st_uid == nobody, path
    assert oct(os.stat(lock).st_mode & 0o777) == "0o600"
    e.delete("own", ns, **conf)
    for path in files:
        os.chown(path, 0, 0)


def test_icmp_rules(e: Env) -> None:
    """An ICMP echo rule to one address (Garden form, type 8, any code): ping works there and
    nowhere else; an ASG-form rule with type -1 means any ICMP."""
    ns = e.container_ns("ic")
    ip1 = e.internet.ip
    e.add("ic", ns, net_out_rules=[{"protocol": 3, "networks": [{"start": ip1}],
                                    "icmps": {"type": 8, "code": -1}}])

    def ping(ns: str, ip: str) -> bool:
        return netns.run(ns, ["ping", "-c", "1", "-W", "2", ip], check=False).returncode == 0

    assert ping(ns, ip1) and not ping(ns, INTERNET_IP2)
    e.delete("ic", ns)
    e.add("ic", ns, net_out_rules=[{"protocol": "icmp", "destination": INTERNET_IP2,
                                    "type": -1, "code": -1}])
    assert ping(ns, INTERNET_IP2) and not ping(ns, ip1)
    e.delete("ic", ns)


UDP_ECHO = """
import socket, sys, threading
def serve(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], port))
    while True:
        data, peer = s.recvfrom(100)
        s.sendto(peer[0].encode(), peer)
for p in sys.argv[2:]:
    threading.Thread(target=serve, args=(int(p),), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""
UDP_CLIENT = """
import socket, sys
for port in sys.argv[2:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
    s.connect((sys.argv[1], int(port)))
    try:
        s.send(b"q"); print(port, "ok", s.recv(100).decode())
    except ConnectionRefusedError:
        print(port, "refused", "-")
    except OSError as e:
        print(port, "error", e.__class__.__name__)
"""


def test_udp_dns_on_the_link_local_server_only(e: Env) -> None:
    server = subprocess.Popen(netns.exec_argv(e.cell.ns, [sys.executable, "-c", UDP_ECHO,
                                                          CELL_DNS, "53", "54"]),
                              stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
        ns = e.container_ns("udp")
        ip, _ = e.add("udp", ns)
        out = netns.run(ns, [sys.executable, "-c", UDP_CLIENT, CELL_DNS, "53", "54"]).stdout
        got = {line.split()[0]: line.split()[1:] for line in out.splitlines()}
        assert got["53"] == ["ok", ip]
        assert got["54"][0] == "refused"
        e.delete("udp", ns)
    finally:
        stop_process(server)
