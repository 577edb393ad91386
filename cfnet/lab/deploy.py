"""Bring a lab up and down: the real roles as processes in network namespaces.

Layout on one underlay bridge (10.10.0.0/24):
  cp        policy-server (external :4002, internal mTLS :4003) and silk-controller (:4103)
  cell1..N  silk-daemon (and the policy agent once a cell runs one)
  router    stands in for the Gorouter: reaches containers through mapped host ports
  internet  a host outside the overlay, for egress (ASG) checks
Processes are started in their own sessions so they outlive the `cfnet lab up` command; `down`
stops them by namespace.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cfnet.lab.state import DEFAULT_DIR, PREFIX, UNDERLAY, LabHost, LabState
from cfnet.net import netns
from cfnet.net.topology import Host, Topology, destroy_prefix
from cfnet.store.db import DatabaseConfig

POLICY_EXTERNAL_PORT = 4002
POLICY_INTERNAL_PORT = 4003
POLICY_HEALTH_PORT = 31946

Progress = Callable[[str], None]


class LabError(RuntimeError):
    """The lab could not be brought up or used; the message says what to do."""


def _python() -> list[str]:
    return [sys.executable, "-m", "cfnet"]


def _wait_http(ns: str, url: str, what: str, timeout: float = 60.0,
               process: Any = None, log: Path | None = None) -> None:
    from cfnet.testing.silk import http_in_netns

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if http_in_netns(ns, url, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        if process is not None and process.poll() is not None:
            tail = log.read_text(errors="replace")[-800:] if log else ""
            raise LabError(f"{what} exited during start-up: {tail}")
        time.sleep(0.1)
    raise LabError(f"{what} did not become healthy within {timeout:.0f} s")


def _start_policy_server(topo: Topology, cp: Host, state: LabState, bundle: Any) -> None:
    from cfnet.testing.policy_server import ADMIN_TOKEN, policy_server_configs, write_tokens

    work = Path(state.directory)
    db = DatabaseConfig(type="sqlite", path=str(work / "policy-server.db"), timeout=10)
    tokens = write_tokens(work / "tokens.json")
    external, internal = policy_server_configs(bundle, db, tokens, listen_host=cp.ip)
    external.update(listen_port=POLICY_EXTERNAL_PORT, debug_server_port=31821)
    internal.update(internal_listen_port=POLICY_INTERNAL_PORT,
                    health_check_port=POLICY_HEALTH_PORT, debug_server_port=31945)
    (work / "policy-server.json").write_text(json.dumps(external, indent=2))
    (work / "policy-server-internal.json").write_text(json.dumps(internal, indent=2))
    log = state.logs / "policy-server.log"
    with open(log, "ab") as out:
        proc = topo.spawn("cp", [*_python(), "policy-server", "serve",
                                 "--config-file", str(work / "policy-server.json"),
                                 "--internal-config-file", str(work / "policy-server-internal.json")],
                          log=out)
    _wait_http(cp.ns, f"http://{cp.ip}:{POLICY_HEALTH_PORT}/health", "policy-server",
               process=proc, log=log)
    state.policy_external_url = f"http://{cp.ip}:{POLICY_EXTERNAL_PORT}"
    state.policy_internal_url = f"https://{cp.ip}:{POLICY_INTERNAL_PORT}"
    state.admin_token = ADMIN_TOKEN


def is_up(directory: Path = DEFAULT_DIR) -> bool:
    state = LabState.load(directory)
    return state is not None and all(netns.exists(h.ns) for h in state.hosts.values())


def up(directory: Path = DEFAULT_DIR, cells: int = 2, progress: Progress = print) -> LabState:
    """Build the lab; if one is already up in `directory`, return its state unchanged."""
    from cfnet.testing.silk import SilkDeployment, start_controller_in
    from cfnet.web.tls import generate_bundle

    if cells < 1:
        raise LabError("--cells must be at least 1")
    existing = LabState.load(directory)
    if existing is not None and is_up(directory):
        progress(f"lab already up in {directory}")
        return existing
    down(directory, progress=lambda _msg: None)  # whatever a crashed run left
    directory.mkdir(parents=True, exist_ok=True)
    state = LabState(directory=str(directory))
    state.logs.mkdir(parents=True, exist_ok=True)
    topo = Topology(prefix=PREFIX, network=UNDERLAY)
    try:
        progress("underlay bridge and control plane")
        topo.create()
        cp = topo.add_host("cp")
        bundle = generate_bundle(state.certs, server_names=[cp.ip, "localhost", "127.0.0.1"])
        _start_policy_server(topo, cp, state, bundle)
        progress(f"policy-server on {state.policy_external_url}")
        controller_db = DatabaseConfig(type="sqlite", path=str(directory / "silk-controller.db"),
                                       timeout=10)
        controller = start_controller_in(topo, cp, state.logs / "silk-controller", controller_db,
                                         bundle=bundle)
        state.controller_url = controller.url
        progress(f"silk-controller on {controller.url}")
        silk = SilkDeployment(topo, state.logs, controller, cp, {"poll_interval": 5}, controller_db, {})
        for i in range(cells):
            name = f"cell{i + 1}"
            cell = silk.add_cell(name)
            state.cells.append(name)
            state.subnets[name] = cell.overlay_subnet
            progress(f"{name}: silk-daemon, subnet {cell.overlay_subnet}")
        silk.wait_converged(timeout=60)
        for name in ("router", "internet"):
            topo.add_host(name)
        state.hosts = {name: LabHost(name, h.ns, h.ip) for name, h in topo.hosts.items()}
        state.save()
    except BaseException:
        topo.destroy()
        raise
    return state


def down(directory: Path = DEFAULT_DIR, progress: Progress = print) -> list[str]:
    """Stop every lab process and remove every lab namespace and file; safe to repeat."""
    removed = destroy_prefix(PREFIX)
    for name in removed:
        progress(f"removed namespace {name}")
    if directory.exists():
        shutil.rmtree(directory)
        progress(f"removed {directory}")
    return removed


def require(directory: Path = DEFAULT_DIR) -> LabState:
    state = LabState.load(directory)
    if state is None or not is_up(directory):
        raise LabError(f"no lab is up in {directory}: run `cfnet lab up` first")
    return state
