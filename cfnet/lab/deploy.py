"""Bring a lab up and down: the real roles as processes in network namespaces.

Layout on one underlay bridge (10.10.0.0/24):
  cp        policy-server (external :4002, internal mTLS :4003) and silk-controller (:4103)
  cell1..N  silk-daemon and vxlan-agent; containers are made by `cfnet garden-hook` running the
            CNI chain cni-wrapper-plugin -> silk-cni, as Garden would
  router    stands in for the Gorouter: reaches containers through mapped host ports
  internet  a host outside the overlay, for egress (ASG) checks
Processes are started in their own sessions so they outlive the `cfnet lab up` command; `down`
stops them by namespace and unmounts the containers' namespace bind mounts.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cfnet.lab.state import DEFAULT_DIR, OVERLAY, PREFIX, UNDERLAY, LabHost, LabState
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


def _cell_files(state: LabState, cell: Any, agent: Any) -> None:
    """The garden-hook adapter config and the CNI chain of one cell (upstream keys)."""
    work = Path(state.directory) / "cells" / cell.name
    conf_dir, plugin_dir = work / "cni-config", work / "cni-bin"
    conf_dir.mkdir(parents=True, exist_ok=True)
    plugin_dir.mkdir(parents=True, exist_ok=True)
    agent_cfg = agent.config
    silk_cfg = cell.config
    conflist = {
        "name": "cni-wrapper", "cniVersion": "1.0.0",
        "plugins": [{
            "type": "cni-wrapper-plugin",
            "datastore": agent_cfg["cni_datastore_path"],
            "iptables_lock_file": agent_cfg["iptables_lock_file"],
            "instance_address": cell.underlay_ip,
            "underlay_ips": [cell.underlay_ip],
            "no_masquerade_cidr_range": OVERLAY,
            "ingress_tag": "ffff0000",
            "vtep_name": "silk-vtep",
            "dns_servers": [],
            "policy_agent_force_poll_address": "127.0.0.1:8722",
            "policy_agent_timeout_seconds": 10,
            "delegate": {"cniVersion": "1.0.0", "name": "silk", "type": "silk-cni",
                         "daemonPort": 23954, "dataDir": str(work / "host-local"),
                         "datastore": silk_cfg["datastore"]},
            "capabilities": {"portMappings": True, "netOutRules": True},
        }],
    }
    (conf_dir / "30-cni-wrapper.conflist").write_text(json.dumps(conflist, indent=2))
    cfnet_bin = Path(sys.executable).parent / "cfnet"
    for name in ("cni-wrapper-plugin", "silk-cni"):
        link = plugin_dir / name
        if not link.exists():
            link.symlink_to(cfnet_bin)
    adapter = {
        "cni_plugin_dir": str(plugin_dir), "cni_config_dir": str(conf_dir),
        "bind_mount_dir": str(work / "container-netns"),
        "state_file": str(work / "external-networker-state.json"),
        "start_port": 61000, "total_ports": 5000, "log_prefix": "cfnetworking",
        "iptables_lock_file": agent_cfg["iptables_lock_file"], "proxy_port": 15001,
        "proxy_uid": 0, "search_domains": [], "cni_cache_dir": str(work / "cni-cache"),
    }
    (work / "adapter.json").write_text(json.dumps(adapter, indent=2))


def adapter_path(state: LabState, cell: str) -> Path:
    return Path(state.directory) / "cells" / cell / "adapter.json"


def is_up(directory: Path = DEFAULT_DIR) -> bool:
    state = LabState.load(directory)
    return state is not None and all(netns.exists(h.ns) for h in state.hosts.values())


def up(directory: Path = DEFAULT_DIR, cells: int = 2, progress: Progress = print) -> LabState:
    """Build the lab; if one is already up in `directory`, return its state unchanged."""
    from types import SimpleNamespace

    from cfnet.testing.agent import start_agent
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
        silk = SilkDeployment(topo, state.logs, controller, cp,
                              {"poll_interval": 5, "log_level": "info"}, controller_db, {})
        server = SimpleNamespace(internal_url=state.policy_internal_url, client_tls=bundle.client)
        for i in range(cells):
            name = f"cell{i + 1}"
            cell = silk.add_cell(name)
            state.cells.append(name)
            state.subnets[name] = cell.overlay_subnet
            # Upstream's c2c poll interval, plus cfnet's watch: changes arrive at once anyway.
            agent = start_agent(cell, state.logs / name / "agent", server, poll_interval=5,
                                enable_asg_syncing=False, log_level="info")
            _cell_files(state, cell, agent)
            progress(f"{name}: silk-daemon (subnet {cell.overlay_subnet}), vxlan-agent")
        silk.wait_converged(timeout=60)
        for name in ("router", "internet"):
            topo.add_host(name)
        with open(state.logs / "internet.log", "ab") as log:
            topo.spawn("internet", [sys.executable, "-m", "cfnet.lab.responder", "serve",
                                    "internet", "0", "80", "8081"], log=log)
        state.hosts = {name: LabHost(name, h.ns, h.ip) for name, h in topo.hosts.items()}
        state.save()
    except BaseException:
        topo.destroy()
        raise
    return state


def _unmount_below(directory: Path) -> None:
    """Detach the containers' namespace bind mounts a crashed lab may have left."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    root = str(directory.resolve()) + "/"
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f if line.split()[1].startswith(root)]
    for point in sorted(points, reverse=True):
        libc.umount2(point.encode(), 2)  # MNT_DETACH


def down(directory: Path = DEFAULT_DIR, progress: Progress = print) -> list[str]:
    """Stop every lab process and remove every lab namespace and file; safe to repeat."""
    removed = destroy_prefix(PREFIX)
    if directory.exists():
        _unmount_below(directory)
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
