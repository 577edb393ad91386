"""The operator guide's steps, run for real (without systemd): example configs start their roles.

Control plane: certificates from `cfnet certs generate` as the guide writes them, the example
config with its /etc/cfnet and /var/lib/cfnet paths moved into a temporary directory, its ports
moved to free ones and its listeners to 127.0.0.1, started with the command line of the example
systemd unit. The policy server must answer the example admin token, the silk controller must
hand out a lease over mutual TLS; both must stop with exit 0 on SIGTERM.

Cell: the silk daemon runs, as its unit runs it, with uid 0 and only CAP_NET_ADMIN and
CAP_NET_RAW, inside namespaces the test makes, reading a root-owned mode-0600 silk store.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[1]
EXAMPLES = ROOT / "examples"
CFNET = Path(sys.executable).with_name("cfnet")
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
PORT_KEYS = ("listen_port", "internal_listen_port", "health_check_port", "debug_server_port")
HOST_KEYS = ("listen_host", "health_check_host", "debug_server_host")


def moved(value: Any, root: Path) -> Any:
    """The example with its install paths under `root`, free ports and loopback listeners."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k in PORT_KEYS:
                out[k] = 0
            elif k in HOST_KEYS:
                out[k] = "127.0.0.1"
            else:
                out[k] = moved(v, root)
        return out
    if isinstance(value, str):
        for prefix, where in (("/etc/cfnet", "etc"), ("/var/lib/cfnet", "state")):
            if value.startswith(prefix + "/"):
                return str(root / where / value[len(prefix) + 1:])
    return value


def unit_argv(unit: str, config: Path) -> list[str]:
    """ExecStart of the example unit, with the venv's cfnet and the moved config."""
    text = (EXAMPLES / "systemd" / unit).read_text()
    (line,) = [l for l in text.splitlines() if l.startswith("ExecStart=")]
    argv = shlex.split(line.removeprefix("ExecStart="))
    argv[argv.index("--config-file") + 1] = str(config)
    return [str(CFNET), *argv[1:]]


def install_control_plane(tmp_path: Path) -> Path:
    """The guide's control-plane steps under tmp_path: certificates, tokens, state directory."""
    etc = tmp_path / "etc"
    run = subprocess.run([str(CFNET), "certs", "generate", "--dir", str(etc / "certs"),
                          "--server-name", "127.0.0.1"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    (etc / "policy-server-tokens.json").write_text(
        (EXAMPLES / "policy-server-tokens.json").read_text())
    (tmp_path / "state").mkdir()
    return etc


@contextmanager
def running(argv: list[str], log: Path) -> Iterator[dict[str, str]]:
    """Start the role; yield its listeners (name -> host:port) from `starting-servers`; on exit
    SIGTERM and require exit code 0."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        listeners: dict[str, str] = {}
        while not listeners:
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith("{") and "starting-servers" in line:
                    listeners = json.loads(line)["data"]
            if proc.poll() is not None:
                pytest.fail(f"exited with {proc.returncode}: {log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no starting-servers line: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield listeners
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def http(url: str, token: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"bearer {token}"} if token else {})
    with _OPENER.open(req, timeout=10) as response:
        return response.status, response.read()


def listener(listeners: dict[str, str], word: str) -> str:
    (address,) = [a for name, a in listeners.items() if word in name]
    return address


def test_policy_server_example_runs_as_the_guide_says(tmp_path: Path) -> None:
    etc = install_control_plane(tmp_path)
    config = etc / "policy-server.json"
    config.write_text(json.dumps(moved(json.loads(
        (EXAMPLES / "policy-server.json").read_text()), tmp_path)))
    argv = unit_argv("cfnet-policy-server.service", config)
    with running(argv, tmp_path / "policy-server.log") as listeners:
        status, _ = http(f"http://{listener(listeners, 'health')}/health")
        assert status == 200
        status, body = http(f"http://{listener(listeners, 'external')}/networking/v1/external/"
                            "policies", token="change-me-admin")
        assert status == 200 and json.loads(body) == {"total_policies": 0, "policies": []}
        openapi = f"http://{listener(listeners, 'external')}/networking/v1/external/openapi.json"
        assert http(openapi)[0] == 200
    assert (tmp_path / "state" / "policy-server.db").exists()  # database.path, moved


def test_silk_controller_example_runs_as_the_guide_says(tmp_path: Path) -> None:
    from cfnet.silk.lease_client import LeaseClient
    from cfnet.web.tls import TLSFiles

    etc = install_control_plane(tmp_path)
    config = etc / "silk-controller.json"
    config.write_text(json.dumps(moved(json.loads(
        (EXAMPLES / "silk-controller" / "silk-controller.json").read_text()), tmp_path)))
    argv = unit_argv("cfnet-silk-controller.service", config)
    with running(argv, tmp_path / "silk-controller.log") as listeners:
        assert http(f"http://{listener(listeners, 'health')}/health")[0] == 200
        certs = etc / "certs"
        client = LeaseClient(f"https://{listener(listeners, 'api')}",
                             TLSFiles(certs / "client.crt", certs / "client.key", certs / "ca.crt"))
        try:
            lease = client.acquire("10.0.16.11")
        finally:
            client.close()
        assert lease.overlay_subnet.startswith("10.255.") and lease.overlay_subnet.endswith("/24")
    assert (tmp_path / "state" / "silk-controller.db").exists()


UNIT_CAPS = "-all,+net_admin,+net_raw"


def start_restricted(silk: Any, cell: Any, label: str) -> None:
    """Start the cell's daemon as the unit does: uid 0, only the unit's capabilities."""
    cell.runs += 1
    cell.output_path = cell.workdir / f"silk-daemon-{label}.log"
    argv = ["setpriv", "--bounding-set", UNIT_CAPS, "--inh-caps", "-all", "--no-new-privs",
            sys.executable, "-m", "cfnet", "silk-daemon", "run", "--config-file",
            str(cell.config_path)]
    with open(cell.output_path, "wb") as out:
        cell.process = silk.topology.spawn(cell.host.name, argv, log=out,
                                           env=dict(os.environ, PYTHONUNBUFFERED="1"))


@pytest.mark.privileged
def test_silk_daemon_runs_with_only_the_units_capabilities(sandbox: Any, tmp_path: Path) -> None:
    """cfnet-silk-daemon.service: uid 0, bounding set CAP_NET_ADMIN CAP_NET_RAW, no new
    privileges. The daemon leases, builds its VTEP and converges with another cell; restarted
    with a lease it must not keep, it reads the root-owned 0600 silk store to count containers."""
    from cfnet.testing.silk import silk_deployment

    with silk_deployment(sandbox, tmp_path, cells=["cell1"]) as silk:
        cell = silk.add_cell("cell2", start=False)
        store = Path(cell.config["datastore"])
        store.write_text(json.dumps({"c1": {"handle": "c1", "ip": "10.255.9.2", "metadata": None}}))
        os.chmod(store, 0o600)
        start_restricted(silk, cell, "restricted")
        silk.wait_ready(cell)
        silk.wait_converged()
        status = Path(f"/proc/{cell.process.pid}/status").read_text()
        (eff,) = [l.split()[1] for l in status.splitlines() if l.startswith("CapEff:")]
        assert int(eff, 16) == (1 << 12) | (1 << 13)  # CAP_NET_ADMIN | CAP_NET_RAW
        assert silk.stop_daemon(cell) == 0

        # The VTEP's lease now lies outside the overlay network: the daemon must count the
        # containers in the store before giving the lease up, and keep it because there is one.
        cell.write_config(overlay_network="10.254.0.0/16")
        start_restricted(silk, cell, "store")
        assert cell.process.wait(60) == 1
        assert "is not in overlay network and has containers: 1" in cell.output(), cell.output()


@pytest.mark.privileged
def test_vxlan_agent_runs_with_only_the_units_capabilities(sandbox: Any, tmp_path: Path) -> None:
    """cfnet-vxlan-agent.service: uid 0, only CAP_NET_ADMIN and CAP_NET_RAW. The agent takes the
    cell's lock, reads the container-metadata store (0600) and programs its nftables table for a
    new container when the wrapper's force endpoints ask it to."""
    from cfnet.net import netns
    from cfnet.testing.agent import Containers, start_agent, start_policy_server_in
    from cfnet.testing.silk import silk_deployment

    with silk_deployment(sandbox, tmp_path, cells=["cell1"]) as silk:
        ps = start_policy_server_in(silk, tmp_path / "ps")
        try:
            agent = start_agent(silk.cells["cell1"], tmp_path / "agent", ps, start=False)
            agent.runs += 1
            agent.output_path = agent.workdir / "vxlan-agent-restricted.log"
            argv = ["setpriv", "--bounding-set", UNIT_CAPS, "--inh-caps", "-all",
                    "--no-new-privs", sys.executable, "-m", "cfnet", "vxlan-agent",
                    "--config-file", str(agent.config_path)]
            with open(agent.output_path, "wb") as out:
                agent.process = netns.spawn(agent.ns, argv, log=out,
                                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
            try:
                agent.wait_ready()
                container = Containers(sandbox, agent).add("h1", app_id="app-a")
                assert oct(os.stat(agent.datastore_path).st_mode & 0o777) == "0o600"
                status = Path(f"/proc/{agent.process.pid}/status").read_text()
                (eff,) = [l.split()[1] for l in status.splitlines() if l.startswith("CapEff:")]
                assert int(eff, 16) == (1 << 12) | (1 << 13)  # CAP_NET_ADMIN | CAP_NET_RAW
                assert agent.debug("/health")[0] == 200
                assert container.ip
            finally:
                assert agent.stop() == 0, agent.output()[-2000:]
        finally:
            ps.stop()


@pytest.mark.privileged
def test_iptables_logger_runs_with_no_capabilities(tmp_path: Path) -> None:
    """cfnet-iptables-logger.service: uid 0 with an empty capability set reads the root-owned
    kernel log (0640) and container-metadata store (0600) and writes its output."""
    from cfnet.cni.datastore import Datastore

    kern, out = tmp_path / "kern.log", tmp_path / "log" / "iptables.log"
    kern.write_text("")
    os.chmod(kern, 0o640)
    store = Datastore(str(tmp_path / "store.json"))
    store.add("handle-b", "10.255.2.2", {"app_id": "app-b", "space_id": "s", "org_id": "o"})
    os.chmod(store.path, 0o600)
    example = json.loads((EXAMPLES / "iptables-logger" / "iptables-logger.json").read_text())
    config = tmp_path / "iptables-logger.json"
    config.write_text(json.dumps({**example, "kernel_log_file": str(kern),
                                  "container_metadata_file": store.path,
                                  "output_log_file": str(out)}))
    argv = unit_argv("cfnet-iptables-logger.service", config)
    proc = subprocess.Popen(["setpriv", "--bounding-set", "-all", "--inh-caps", "-all",
                             "--no-new-privs", *argv], stderr=subprocess.PIPE, text=True)
    line = ("Dec  3 17:00:00 cell1 kernel: [ 812.345] OK_0001_app-b IN=silk-vtep "
            "OUT=s-010255002002 SRC=10.255.1.2 DST=10.255.2.2 LEN=60 PROTO=TCP SPT=40000 "
            "DPT=8080 SYN MARK=0x1\n")
    try:
        deadline = time.monotonic() + 30
        while not (out.exists() and out.stat().st_size):  # it reads from the end: keep writing
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "no output"
            with kern.open("a") as f:
                f.write(line)
            time.sleep(0.1)
        first = json.loads(out.read_text().splitlines()[0])
        assert first["data"]["destination"]["app_guid"] == "app-b"
        status = Path(f"/proc/{proc.pid}/status").read_text()
        (eff,) = [l.split()[1] for l in status.splitlines() if l.startswith("CapEff:")]
        assert int(eff, 16) == 0
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.returncode == 0
