"""Every failure point of `up` leaves the cell (and the container) as it was.

Each test warms the cell up once (a bridge and portmap's shared chains exist from then on, as on
any cell that has run a container), takes a snapshot of everything a container's network can
leave behind, makes `up` fail at one point, and compares. Failing plugins are small executables
in the plugin directory, exec'd like any third-party plugin.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cfnet.net import netns
from tests.garden.conftest import GardenCell

pytestmark = pytest.mark.privileged

# Records every call (command, and the config it got) to the file named in its config.
_RECORD = """
import json, os, sys
conf = json.load(sys.stdin)
with open(conf["record"], "a") as f:
    f.write(json.dumps({"command": os.environ["CNI_COMMAND"], "conf": conf}) + "\\n")
"""
FAIL = _RECORD + """
if os.environ["CNI_COMMAND"] == "ADD":
    print(json.dumps({"cniVersion": conf["cniVersion"], "code": 100, "msg": "boom",
                      "details": "on purpose"}))
    sys.exit(1)
"""
NO_IPV4 = _RECORD + """
if os.environ["CNI_COMMAND"] == "ADD":
    result = conf["prevResult"]
    result.pop("ips", None)
    print(json.dumps(result))
"""
BAD_INTERFACE = _RECORD + """
if os.environ["CNI_COMMAND"] == "ADD":
    result = conf["prevResult"]
    result["ips"][0]["interface"] = 7
    print(json.dumps(result))
"""


@pytest.fixture
def warm(garden_cell: GardenCell, container: Any) -> GardenCell:
    garden_cell.warm_up(container("warm"))
    for name, body in (("fail", FAIL), ("noip", NO_IPV4), ("badif", BAD_INTERFACE)):
        garden_cell.add_script_plugin(name, body)
    return garden_cell


def _calls(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["command"] for line in path.read_text().splitlines()]


def _fails_cleanly(cell: GardenCell, c: str, expected: str, netin: Any = None,
                   **stdin: Any) -> None:
    before = cell.snapshot((c,))
    res = cell.up("h1", c, netin=netin if netin is not None else
                  [{"host_port": 0, "container_port": 8080}], **stdin)
    assert (res.rc, res.stdout) == (1, "")
    assert res.stderr.splitlines()[-1] == f"cfnetworking: {expected}"
    assert cell.snapshot((c,)) == before
    # and the same container comes up fine afterwards: nothing half-made is in the way
    cell.write_conflist(cell.debian_chain())
    cell.write_adapter(total_ports=100, proxy_redirect_cidr="")
    ok = cell.up("h1", c, netin=[{"host_port": 0, "container_port": 8080}])
    assert ok.rc == 0, ok.stderr
    assert cell.down("h1").rc == 0
    assert cell.snapshot((c,)) == before


def test_bind_mount_fails(warm: GardenCell, container: Any) -> None:
    c = container("c")
    pid = 4194305  # above the kernel's largest pid_max: no such process
    before = warm.snapshot((c,))
    res = warm.hook("up", "h1", {"Pid": pid, "netin": [{"host_port": 0, "container_port": 1}]})
    assert (res.rc, res.stdout) == (1, "")
    assert res.stderr == (f"cfnetworking: failed mounting /proc/{pid}/ns/net to "
                          f"{warm.bind_dir}/h1: no such file or directory\n")
    assert warm.snapshot((c,)) == before


def test_port_pool_exhausted(warm: GardenCell, container: Any) -> None:
    warm.write_adapter(total_ports=1)
    _fails_cleanly(warm, container("c"), "allocating port: acquire port: port pool exhausted",
                   netin=[{"host_port": 0, "container_port": 8080},
                          {"host_port": 0, "container_port": 2222}])


@pytest.mark.parametrize("position", [0, 1, 2])
def test_a_plugin_fails(warm: GardenCell, container: Any, position: int) -> None:
    record = warm.root / "fail.calls"
    chain = warm.debian_chain()
    chain.insert(position, {"type": "fail", "record": str(record)})
    warm.write_conflist(chain)
    _fails_cleanly(warm, container("c"), 'cni up failed: add network list failed: '
                   'plugin type="fail" failed (add): boom; on purpose')
    assert _calls(record) == ["ADD", "DEL"]  # the failed plugin is asked to clean up too


def test_a_plugin_is_missing(warm: GardenCell, container: Any) -> None:
    warm.write_conflist(warm.debian_chain(extra=[{"type": "nowhere"}]))
    _fails_cleanly(warm, container("c"), 'cni up failed: add network list failed: plugin '
                   f'type="nowhere" failed (add): failed to find plugin "nowhere" in path '
                   f'[{warm.plugin_dir}]')


def test_no_ipv4_address_in_the_result(warm: GardenCell, container: Any) -> None:
    record = warm.root / "noip.calls"
    warm.write_conflist(warm.debian_chain(extra=[{"type": "noip", "record": str(record)}]))
    _fails_cleanly(warm, container("c"), "expected an IPv4 address in the CNI result")
    calls = [json.loads(line) for line in record.read_text().splitlines()][:2]
    assert [c["command"] for c in calls] == ["ADD", "DEL"]
    # DEL got the cached result and the runtimeConfig of ADD
    assert "ips" not in calls[1]["conf"]["prevResult"]
    assert calls[1]["conf"]["runtimeConfig"]["portMappings"][0]["containerPort"] == 8080


def test_interface_index_out_of_range(warm: GardenCell, container: Any) -> None:
    badif = {"type": "badif", "record": str(warm.root / "r")}
    warm.write_conflist(warm.debian_chain(extra=[badif]))
    _fails_cleanly(warm, container("c"), "no corresponding interface found, interface index: 7, "
                   "number of interfaces: 3")


def test_result_cache_cannot_be_written(warm: GardenCell, container: Any) -> None:
    blocker = warm.root / "blocker"
    blocker.write_text("a file where the cache directory should be")
    warm.write_adapter(cni_cache_dir=str(blocker / "cni"))
    c = container("c")
    before = warm.snapshot((c,))
    res = warm.up("h1", c, netin=[{"host_port": 0, "container_port": 8080}])
    assert (res.rc, res.stdout) == (1, "")
    assert res.stderr.splitlines()[-1].startswith(
        'cfnetworking: cni up failed: add network list failed: failed to set network '
        '"cfnet-test" cached result: not a directory')
    assert warm.snapshot((c,)) == before


def test_proxy_redirect_fails(warm: GardenCell, container: Any) -> None:
    warm.write_adapter(proxy_redirect_cidr="10.0.0.0/33")
    c = container("c")
    before = warm.snapshot((c,))
    res = warm.up("h1", c, netin=[{"host_port": 0, "container_port": 8080}])
    assert (res.rc, res.stdout) == (1, "")
    assert res.stderr.splitlines()[-1].startswith("cfnetworking: proxy redirect apply: nft: ")
    assert warm.snapshot((c,)) == before
    assert netns.run(c, ["nft", "list", "ruleset"]).stdout == ""


def test_proxy_redirect_rules_in_the_container(warm: GardenCell, container: Any) -> None:
    warm.write_adapter(proxy_redirect_cidr="10.255.0.0/16", enable_ingress_proxy_redirect=True)
    c = container("c")
    res = warm.up("h1", c)
    assert res.rc == 0, res.stderr
    ruleset = netns.run(c, ["nft", "list", "ruleset"]).stdout
    assert "ip daddr 10.255.0.0/16 meta l4proto tcp redirect to :15001" in ruleset
    assert "hook prerouting" in ruleset
    assert warm.down("h1").rc == 0


SLOW = _RECORD + """
import time
if os.environ["CNI_COMMAND"] == "ADD":
    with open(conf["record"] + ".started", "w") as f:
        f.write(str(os.getpid()))
    time.sleep(120)
"""


def _start_slow_up(warm: GardenCell, c: str) -> tuple[Any, Path]:
    """`up` of h1 through a chain ending in the slow plugin; returns once that plugin runs."""
    import os
    import subprocess
    import sys
    import time

    record = warm.root / "slow.calls"
    warm.add_script_plugin("slow", SLOW)
    warm.write_conflist(warm.debian_chain(extra=[{"type": "slow", "record": str(record)}]))
    fd = os.open(netns.path(c), os.O_RDONLY)
    try:
        proc = subprocess.Popen(
            ["nsenter", f"--net={netns.path(warm.ns)}", sys.executable, "-m", "cfnet",
             "garden-hook", f"--configFile={warm.config_path}", "--action", "up", "--handle", "h1"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(fd, 3), preexec_fn=lambda: os.dup2(fd, 3))
    finally:
        os.close(fd)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps({"Pid": 0, "netin": [{"host_port": 0, "container_port": 1}]})
                     .encode())
    proc.stdin.close()
    proc.stdin = None
    started = Path(str(record) + ".started")
    deadline = time.monotonic() + 60
    while not (started.exists() and started.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    return proc, record


def test_terminated_while_a_plugin_runs(warm: GardenCell, container: Any) -> None:
    """Garden gives up on a hung plugin and sends SIGTERM: `up` still undoes everything."""
    import signal

    c = container("c")
    before = warm.snapshot((c,))
    proc, record = _start_slow_up(warm, c)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out) == (1, b"")
    assert err.decode().splitlines()[-1] == "cfnetworking: terminated by signal 15"
    assert _calls(record) == ["ADD", "DEL"]
    assert warm.snapshot((c,)) == before


def test_killed_mid_up_then_down_cleans_up(warm: GardenCell, container: Any) -> None:
    """SIGKILL leaves no chance to unwind: the next `down` (Garden's) must clean up, including
    portmap's rules, which it finds through the pending cache entry written before ADD."""
    import os
    import signal

    c = container("c")
    before = warm.snapshot((c,))
    proc, record = _start_slow_up(warm, c)
    proc.kill()
    proc.communicate(timeout=60)
    os.kill(int(Path(str(record) + ".started").read_text()), signal.SIGKILL)  # the orphan
    assert warm.acquired_ports() == {"h1": [61000]}
    assert "CNI-DN-" in warm.snapshot()["ruleset"]  # portmap had done its part
    res = warm.down("h1")
    assert res.rc == 0, res.stderr
    assert _calls(record) == ["ADD", "DEL"]
    assert warm.snapshot((c,)) == before
