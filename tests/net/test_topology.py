"""Namespaces and the underlay topology: real namespaces, real traffic, nothing left behind."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cfnet.net import netns
from cfnet.net.topology import Topology, destroy_prefix
from cfnet.testing.netns import Sandbox

pytestmark = pytest.mark.privileged


def test_hosts_on_the_underlay_reach_each_other(sandbox: Sandbox) -> None:
    topo = sandbox.topology()
    a = topo.add_host("a")
    b = topo.add_host("b")
    assert (a.ip, b.ip) == ("10.10.0.1", "10.10.0.2")
    out = netns.run(a.ns, ["ping", "-c1", "-W2", b.ip], check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert netns.run(a.ns, ["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "1"


def test_destroy_removes_namespaces_and_processes() -> None:
    box = Sandbox()
    topo = box.topology()
    topo.add_host("a")
    proc = topo.spawn("a", [sys.executable, "-c", "import time; time.sleep(60)"])
    stray = netns.spawn(topo.hosts["a"].ns, ["sleep", "60"])  # started behind the topology's back
    box.close()
    assert proc.poll() is not None
    assert stray.wait(timeout=10) is not None
    assert not [n for n in netns.names() if n.startswith(box.prefix)]


def test_destroy_prefix_cleans_up_after_a_crash() -> None:
    box = Sandbox()
    topo = Topology(prefix=box.prefix).create()
    topo.add_host("cell")
    # Forget the object, as a crashed process would; only the prefix is known.
    assert sorted(destroy_prefix(box.prefix)) == [f"{box.prefix}-cell", f"{box.prefix}-sw"]
    assert destroy_prefix(box.prefix) == []


def test_duplicate_names_are_refused(sandbox: Sandbox) -> None:
    name = sandbox.netns("x")
    with pytest.raises(FileExistsError):
        netns.create(name)
    topo = sandbox.topology()
    topo.add_host("a")
    with pytest.raises(ValueError):
        topo.add_host("a")


def test_run_reports_failures_with_the_command(sandbox: Sandbox) -> None:
    name = sandbox.netns("x")
    with pytest.raises(RuntimeError, match="false failed"):
        netns.run(name, ["false"])
    assert subprocess.run(["ip", "netns", "list"], capture_output=True).returncode == 0
