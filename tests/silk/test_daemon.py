"""silk-daemon end to end: a real controller and real daemons, each in its own namespace.

Every test builds its own underlay (sandbox) with a control-plane host and cell hosts; the
daemons are real `cfnet silk-daemon` processes, polling every second.
"""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from cfnet.net import netns
from cfnet.testing.netns import Sandbox
from cfnet.testing.silk import Cell, SilkDeployment, silk_deployment

pytestmark = pytest.mark.privileged

Deploy = Callable[..., SilkDeployment]


@pytest.fixture
def deploy(sandbox: Sandbox, tmp_path: Path) -> Iterator[Deploy]:
    with ExitStack() as stack:
        def make(**kwargs: Any) -> SilkDeployment:
            return stack.enter_context(silk_deployment(sandbox.topology(), tmp_path, **kwargs))

        yield make


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.05)


def base(subnet: str) -> str:
    return subnet.split("/")[0]


def mac(subnet: str) -> str:
    return "ee:ee:" + ":".join(f"{int(o):02x}" for o in base(subnet).split("."))


def peers_programmed(cell: Cell) -> dict[str, tuple[str, str]]:
    """subnet -> (ARP MAC of its base IP, FDB underlay of that MAC), as the kernel has it."""
    with IPRoute(netns=cell.ns) as ipr:
        index = ipr.link_lookup(ifname="silk-vtep")[0]
        arp = {n.get("NDA_DST"): n.get("NDA_LLADDR")
               for n in ipr.get_neighbours(ifindex=index, family=socket.AF_INET)
               if n["state"] == 0x80}
        fdb = {n.get("NDA_LLADDR"): n.get("NDA_DST")
               for n in ipr.get_neighbours(ifindex=index, family=7) if n["state"] == 0x80}
        routes = {f"{r.get('RTA_DST')}/{r['dst_len']}": r
                  for r in ipr.get_routes(family=socket.AF_INET, table=254)
                  if r.get("RTA_OIF") == index and r.get("RTA_GATEWAY")}
    out = {}
    for dst, r in routes.items():
        assert r.get("RTA_GATEWAY") == base(dst) and r["proto"] == 3
        assert r.get("RTA_PREFSRC") == base(cell.overlay_subnet)
        out[dst] = (arp.get(base(dst)), fdb.get(arp.get(base(dst))))
    return out


def metric(cell: Cell, name: str) -> float:
    status, body = cell.debug("/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_three_cells_get_distinct_subnets_and_program_each_other(deploy: Deploy) -> None:
    silk = deploy(cells=3)
    cells = list(silk.cells.values())
    subnets = {c.overlay_subnet for c in cells}
    assert len(subnets) == 3
    silk.wait_converged()
    for cell in cells:
        others = {o.overlay_subnet: (mac(o.overlay_subnet), o.underlay_ip)
                  for o in cells if o is not cell}
        assert peers_programmed(cell) == others
        info = cell.vtep()
        assert info.addresses == [(base(cell.overlay_subnet), 16, 253)]
        assert (info.mac, info.mtu, info.gbp, info.learning) == (mac(cell.overlay_subnet), 1450,
                                                                 True, False)
    # The leases as the controller sees them, and traffic over the overlay between VTEPs.
    assert {(l.underlay_ip, l.overlay_subnet) for l in silk.routable_leases()} == {
        (c.underlay_ip, c.overlay_subnet) for c in cells}
    a, b, c = cells
    for src, dst in ((a, b), (b, c), (c, a)):
        out = netns.run(src.ns, ["ping", "-c1", "-W2", base(dst.overlay_subnet)], check=False)
        assert out.returncode == 0, out.stdout + out.stderr


def test_netinfo_debug_endpoints_and_metrics(deploy: Deploy) -> None:
    silk = deploy(cells=2)
    silk.wait_converged()
    cell = silk.cells["cell1"]
    expected = {"overlay_subnet": cell.overlay_subnet, "mtu": 1450}
    for path in ("/", "/health", "/ping"):
        assert cell.netinfo(path) == expected
    from cfnet.testing.silk import NETINFO_PORT, http_in_netns

    status, body = http_in_netns(cell.ns, f"http://127.0.0.1:{NETINFO_PORT}/x", method="POST",
                                 body=b"{}")
    assert (status, json.loads(body)) == (200, expected)
    assert body == b'{"overlay_subnet":"%s","mtu":1450}' % cell.overlay_subnet.encode()

    wait_for(lambda: metric(cell, "cfnet_silk_daemon_converge_success_total") >= 1)
    assert metric(cell, "cfnet_silk_daemon_renew_success_total") >= 1
    assert metric(cell, "cfnet_silk_daemon_leases") == 2
    assert metric(cell, "cfnet_silk_daemon_renew_failure_total") == 0
    assert metric(cell, "cfnet_silk_daemon_neighbour_table_too_small") == 0

    assert cell.debug("/log-level", "POST", b"i")[0] == 200
    wait_for(lambda: cell.log_lines("log-level-changed"))
    assert cell.log_lines("log-level-changed")[-1]["data"] == {"level": "info"}
    assert cell.debug("/log-level", "POST", b"nonsense")[0] == 200
    assert cell.debug("/debug/pprof")[0] == 200  # urllib follows the 301
    assert cell.debug("/nope")[0] == 404


def test_sigterm_keeps_lease_and_vtep_and_a_restart_recovers_the_same_lease(
        deploy: Deploy) -> None:
    silk = deploy(cells=2)
    silk.wait_converged()
    a, b = silk.cells["cell1"], silk.cells["cell2"]
    subnet, programmed = a.overlay_subnet, peers_programmed(a)

    assert silk.stop_daemon(a) == 0
    assert a.log_lines("exited")
    # The data plane and the lease stay: containers keep their network while the cell drains.
    assert a.vtep() is not None and a.vtep().up
    assert peers_programmed(a) == programmed
    assert subnet in {l.overlay_subnet for l in silk.routable_leases()}

    silk.start_daemon(a)
    assert a.overlay_subnet == subnet
    assert a.log_lines("renewed-lease")[0]["data"]["lease"] == {
        "underlay_ip": a.underlay_ip, "overlay_subnet": subnet,
        "overlay_hardware_addr": mac(subnet)}
    assert not a.log_lines("acquired-lease") and not a.log_lines("vtep-created")
    silk.wait_converged()
    assert peers_programmed(b) == {subnet: (mac(subnet), a.underlay_ip)}


def test_controller_going_away_keeps_the_data_plane(deploy: Deploy) -> None:
    silk = deploy(cells=["steady", "short"])
    short = silk.cells["short"]
    short.write_config(partition_tolerance_seconds=5)
    assert silk.stop_daemon(short) == 0
    silk.start_daemon(short)
    silk.wait_converged()
    steady = silk.cells["steady"]
    programmed = {c.name: peers_programmed(c) for c in (steady, short)}

    silk.controller.stop()

    def renew_failures(cell: Cell) -> list[dict[str, Any]]:
        return [l for l in cell.log_lines("poll-cycle")
                if l["data"].get("error", "").startswith("renew lease: ")]

    wait_for(lambda: len(renew_failures(steady)) >= 2, what="failed renewals")
    assert steady.running
    assert steady.netinfo() == {"overlay_subnet": steady.overlay_subnet, "mtu": 1450}
    assert metric(steady, "cfnet_silk_daemon_renew_failure_total") >= 2
    assert peers_programmed(steady) == programmed["steady"]

    # Past partition_tolerance_seconds the daemon gives up (exit 1) but leaves the data plane.
    assert silk.wait_exit(short) == 1
    tolerated = [l["data"]["seconds-since-last-renew"] for l in renew_failures(short)]
    assert tolerated and max(tolerated) < 5
    assert 'This cell must be restarted (run "bosh restart silk-daemon"): fatal: renew lease: ' \
        in short.output()
    assert short.vtep() is not None
    assert peers_programmed(short) == programmed["short"]

    # The controller comes back: the surviving daemon renews again, as if nothing happened.
    successes = metric(steady, "cfnet_silk_daemon_renew_success_total")
    silk.restart_controller()
    wait_for(lambda: metric(steady, "cfnet_silk_daemon_renew_success_total") > successes,
             what="renewal after the partition")
    assert steady.running and steady.overlay_subnet in {
        l.overlay_subnet for l in silk.routable_leases()}


def test_a_deleted_vtep_is_rebuilt_and_the_neighbour_table_is_checked(deploy: Deploy) -> None:
    # A headroom larger than any gc_thresh3 makes the table "too small" without touching the
    # machine's (global) neighbour table settings.
    silk = deploy(cells=2, daemon_defaults={"neighbour_table_headroom": 1 << 30})
    silk.wait_converged()
    a = silk.cells["cell1"]
    warning = wait_for(lambda: [l for l in a.log_lines("neighbour-table-too-small")
                                if l["data"]["remote-leases"] == 1])[0]
    assert warning["level"] == "error"
    assert "gc_thresh3 is" in warning["data"]["error"]
    assert metric(a, "cfnet_silk_daemon_neighbour_table_too_small") == 1

    netns.run(a.ns, ["ip", "link", "del", "silk-vtep"])
    wait_for(lambda: a.log_lines("vtep-missing"), what="the daemon noticing")
    wait_for(lambda: a.vtep() is not None and a.routed_subnets() == {
        silk.cells["cell2"].overlay_subnet}, what="VTEP and routes rebuilt")
    assert a.vtep().addresses == [(base(a.overlay_subnet), 16, 253)]
    assert a.running


def test_single_ip_cells_get_a_32_and_keep_it_across_restarts(deploy: Deploy) -> None:
    silk = deploy(cells=1)
    solo = silk.add_cell("solo", single_ip_only=True)
    assert solo.overlay_subnet.endswith("/32") and solo.overlay_subnet.startswith("10.255.0.")
    ip = base(solo.overlay_subnet)
    assert solo.vtep().addresses == [(ip, 16, 253)]
    assert solo.vtep().mac == mac(solo.overlay_subnet)
    silk.wait_converged()
    assert peers_programmed(silk.cells["cell1"]) == {
        solo.overlay_subnet: (mac(solo.overlay_subnet), solo.underlay_ip)}
    # Upstream rebuilt the lease as /24 after a restart and had to re-acquire; cfnet renews it.
    assert silk.stop_daemon(solo) == 0
    silk.start_daemon(solo)
    assert solo.overlay_subnet == f"{ip}/32"
    assert solo.log_lines("renewed-lease") and not solo.log_lines("acquired-lease")


def test_an_expired_lease_taken_by_another_cell_is_refused(deploy: Deploy) -> None:
    # One block in the pool (10.255.1.0/24), leases expire after 2 s without renewal.
    silk = deploy(cells=["a"], network="10.255.0.0/23", lease_expiration_seconds=2,
                  daemon_defaults={"overlay_network": "10.255.0.0/23"})
    a = silk.cells["a"]
    assert a.overlay_subnet == "10.255.1.0/24"
    cp = silk.controller_host.ip
    # Partition cell a from the controller; its lease expires while the daemon tolerates it.
    netns.run(a.ns, ["ip", "route", "add", "blackhole", f"{cp}/32"])
    wait_for(lambda: not silk.routable_leases(), what="lease expiry")
    b = silk.add_cell("b")
    assert b.overlay_subnet == "10.255.1.0/24"  # the oldest expired lease is reclaimed
    assert a.running

    # Back on the network: the renewal is refused (409) and the daemon stops, keeping the VTEP.
    netns.run(a.ns, ["ip", "route", "del", "blackhole", f"{cp}/32"])
    assert silk.wait_exit(a) == 1
    assert "fatal: renew lease: non-retriable: renew-subnet-lease: " in a.output()
    assert a.vtep() is not None

    # Restarted with a container on the cell: refuses to take the network away from it.
    a.datastore.write_text('{"c1":{"handle":"c1","ip":"10.255.1.2","metadata":null}}\n')
    silk.start_daemon(a, wait=False)
    assert silk.wait_exit(a) == 1
    assert a.log_lines("renew-lease")[0]["level"] == "error"
    assert "renew subnet lease with containers: 1" in a.output()
    assert a.vtep() is not None

    # Without containers: drops the VTEP and asks for a new lease, but the pool is full.
    a.datastore.write_text("{}\n")
    silk.start_daemon(a, wait=False)
    assert silk.wait_exit(a) == 1
    assert "acquire subnet lease: http status 409: no lease available" in a.output()
    assert a.vtep() is None
    assert b.running
    # (b renews every second against a 2 s expiry: under load its lease may blink, so wait)
    wait_for(lambda: [l.underlay_ip for l in silk.routable_leases()] == [b.underlay_ip])


def test_teardown_releases_the_lease_and_removes_everything(deploy: Deploy) -> None:
    silk = deploy(cells=2)
    silk.wait_converged()
    a, b = silk.cells["cell1"], silk.cells["cell2"]
    assert silk.stop_daemon(a) == 0
    done = silk.teardown(a)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cfnetworking.silk-teardown.complete" in done.stdout
    assert a.vtep() is None
    assert a.routed_subnets() == set()
    with IPRoute(netns=a.ns) as ipr:  # nothing of the overlay is left in the cell
        assert not [r for r in ipr.get_routes(family=socket.AF_INET, table=254)
                    if (r.get("RTA_DST") or "").startswith("10.255.")]
    assert [l.underlay_ip for l in silk.routable_leases()] == [b.underlay_ip]
    # The other cell forgets the released cell on its next cycle.
    wait_for(lambda: peers_programmed(b) == {}, what="cell2 dropping cell1")

    again = silk.teardown(a)
    assert again.returncode == 1
    assert again.stderr.strip() == ("silk-teardown error: 1 error occurred: * delete vtep: find "
                                    "link silk-vtep: Link not found")


def test_without_the_controller_start_fails_and_teardown_still_removes_the_vtep(
        deploy: Deploy) -> None:
    silk = deploy(cells=1)
    a = silk.cells["cell1"]
    assert silk.stop_daemon(a, signal.SIGINT) == 0
    silk.controller.stop()
    # No lease to recover and no controller: nothing to run on (upstream crash-loops here too).
    fresh = silk.add_cell("fresh", start=False)
    silk.start_daemon(fresh, wait=False)
    assert silk.wait_exit(fresh) == 1
    assert "cfnetworking.silk-daemon error: acquire subnet lease: http client do: " in fresh.output()
    assert fresh.vtep() is None

    done = silk.teardown(a)
    assert done.returncode == 1
    assert done.stderr.startswith("silk-teardown error: 1 error occurred: * release subnet lease: ")
    assert a.vtep() is None


def test_a_lease_outside_the_overlay_network_is_not_given_up_under_containers(
        deploy: Deploy) -> None:
    silk = deploy(cells=1)
    a = silk.cells["cell1"]
    assert silk.stop_daemon(a) == 0
    a.write_config(overlay_network="10.254.0.0/16")
    a.datastore.write_text('{"c1":{"handle":"c1","ip":"10.255.1.2","metadata":null}}\n')
    silk.start_daemon(a, wait=False)
    assert silk.wait_exit(a) == 1
    assert a.log_lines("network-contains-lease")
    assert ("discovered lease is not in overlay network and has containers: 1" in a.output())
    assert a.vtep() is not None


def test_a_vtep_of_another_shape_is_rebuilt_for_the_same_lease(sandbox: Sandbox,
                                                              tmp_path: Path) -> None:
    with silk_deployment(sandbox, tmp_path, cells=1) as silk:
        _vtep_of_another_shape(silk)


def _vtep_of_another_shape(silk: SilkDeployment) -> None:
    a = silk.cells["cell1"]
    subnet = a.overlay_subnet
    assert silk.stop_daemon(a) == 0
    # The operator changed the VXLAN port: the lease is kept, the device rebuilt.
    a.write_config(vtep_port=4790)
    silk.start_daemon(a)
    assert a.overlay_subnet == subnet
    assert a.log_lines("vtep-rebuilt")
    assert a.vtep().port == 4790


def test_the_packet_mark_crosses_the_overlay_as_the_gbp_policy_id(deploy: Deploy) -> None:
    silk = deploy(cells=2)
    silk.wait_converged()
    a, b = silk.cells["cell1"], silk.cells["cell2"]
    dst = base(b.overlay_subnet)
    netns.run(a.ns, ["nft", "-f", "-"], input=(
        "table ip t { chain out { type route hook output priority 0; "
        f"ip daddr {dst} icmp type echo-request meta mark set 0x5; }}\n}}\n"))
    netns.run(b.ns, ["nft", "-f", "-"], input=(
        "table ip t { chain in { type filter hook input priority 0; "
        'iifname "silk-vtep" icmp type echo-request meta mark 0x5 counter; '
        'iifname "silk-vtep" icmp type echo-request counter; }\n}\n'))
    out = netns.run(a.ns, ["ping", "-c2", "-W2", dst], check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    counters = netns.run(b.ns, ["nft", "list", "chain", "ip", "t", "in"]).stdout
    assert counters.count("counter packets 2 ") == 2, counters  # marked ones == all of them
