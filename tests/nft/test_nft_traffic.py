"""Real packets through a cell table: a c2c allow element lets one port through, the rest is
rejected by the destination container's overlay chain. Namespaces: a cell routing between two
containers (veth pairs, /32 routes, link-local gateway, as silk builds them)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from cfnet.core import asg_rules as ar
from cfnet.core import nft_syntax as nx
from cfnet.net import cell_table as ct
from cfnet.net import netns
from cfnet.net.nft import Nft
from cfnet.testing.netns import Sandbox

pytestmark = pytest.mark.privileged

SRC_IP, DST_IP = "10.255.1.2", "10.255.1.3"
ALLOWED, RANGED, DENIED = 8080, 8555, 9000
SERVER = """
import socket, sys, threading
def serve(port):
    s = socket.create_server((sys.argv[1], port))
    while True:
        s.accept()[0].close()
for p in sys.argv[2:]:
    threading.Thread(target=serve, args=(int(p),), daemon=True).start()
threading.Event().wait()
"""
CLIENT = """
import socket, sys
for port in sys.argv[2:]:
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect((sys.argv[1], int(port))); print(port, "ok")
    except ConnectionRefusedError:
        print(port, "refused")
    except OSError as e:
        print(port, "error", e.__class__.__name__)
    finally:
        s.close()
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def plug(cell: str, ct_ns: str, host_if: str, addr: str) -> None:
    ip("link", "add", host_if, "netns", cell, "type", "veth", "peer", "name", "eth0", "netns", ct_ns)
    ip("-n", cell, "addr", "add", "169.254.0.1/32", "dev", host_if, "scope", "link")
    ip("-n", cell, "link", "set", host_if, "up")
    ip("-n", cell, "route", "add", f"{addr}/32", "dev", host_if)
    ip("-n", ct_ns, "addr", "add", f"{addr}/32", "dev", "eth0")
    ip("-n", ct_ns, "link", "set", "eth0", "up")
    ip("-n", ct_ns, "route", "add", "169.254.0.1", "dev", "eth0", "scope", "link")
    ip("-n", ct_ns, "route", "add", "default", "via", "169.254.0.1", "dev", "eth0", "src", addr)


def wait_listening(ns: str, ports: list[int], deadline: float = 10) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        out = netns.run(ns, ["ss", "-Htln"]).stdout
        if all(f":{p} " in out for p in ports):
            return
        time.sleep(0.05)
    raise AssertionError(f"listeners {ports} did not come up in {ns}")


def connect(ns: str, ports: list[int]) -> dict[int, str]:
    out = netns.run(ns, [sys.executable, "-c", CLIENT, DST_IP, *map(str, ports)]).stdout
    return {int(line.split()[0]): line.split(None, 1)[1] for line in out.splitlines()}


def test_c2c_element_allows_one_port_and_the_overlay_chain_rejects_the_rest(sandbox: Sandbox) -> None:
    cell, src, dst = sandbox.netns("cell"), sandbox.netns("src"), sandbox.netns("dst")
    netns.sysctl(cell, "net.ipv4.ip_forward", 1)
    plug(cell, src, "s-src", SRC_IP)
    plug(cell, dst, "s-dst", DST_IP)
    ports = [ALLOWED, RANGED, DENIED]
    server = netns.spawn(dst, [sys.executable, "-c", SERVER, DST_IP, *map(str, ports)])
    nft = Nft(cell)
    try:
        wait_listening(dst, ports)
        assert connect(src, ports) == {ALLOWED: "ok", RANGED: "ok", DENIED: "ok"}  # no table yet

        nft.run(ct.render_base())
        for handle, addr in (("src", SRC_IP), ("dst", DST_IP)):
            nft.run(ct.render_container_add(ct.ContainerNet(
                handle, addr, ar.netout_chains(handle, "app", []))))
        assert connect(src, ports) == {ALLOWED: "refused", RANGED: "refused", DENIED: "refused"}

        tag = 0xFFFF
        live = ct.replace_c2c(nft, ct.C2CState.build(
            {SRC_IP: tag}, [nx.C2CAllow(DST_IP, tag, "tcp", ALLOWED, ALLOWED),  # exact set
                            nx.C2CAllow(DST_IP, tag, "tcp", 8500, 8600),  # interval set
                            nx.C2CAllow(DST_IP, tag, "udp", DENIED, DENIED)]))  # other proto
        assert connect(src, ports) == {ALLOWED: "ok", RANGED: "ok", DENIED: "refused"}

        # the element is what allows: a different tag on the source closes the port again
        before = ct.list_c2c(nft).state
        after = ct.C2CState(src_tags={SRC_IP: 0x1}, allow=before.allow)
        nft.run(ct.render_c2c_diff(before, after, live))
        assert connect(src, [ALLOWED, RANGED]) == {ALLOWED: "refused", RANGED: "refused"}
    finally:
        nft.close()
        server.kill()
        server.wait()
