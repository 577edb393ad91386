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
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cfnet.lab import ownership, procs
from cfnet.lab.state import DEFAULT_DIR, OVERLAY, PREFIX, UNDERLAY, LabHost, LabProcess, \
    LabState
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


def _database(state: LabState, role: str) -> DatabaseConfig:
    """A role's database block: SQLite in the lab directory, the lab's PostgreSQL, or --db URL."""
    from cfnet.lab import postgres

    if state.database == "sqlite":
        return DatabaseConfig(type="sqlite", path=str(Path(state.directory) / f"{role}.db"),
                              timeout=10)
    if state.database == "postgres":
        return postgres.role_database(role)
    return postgres.from_url(state.database_url)


def _start_postgres(state: LabState, cp: Host) -> None:
    from cfnet.lab import postgres

    data = postgres.cluster_dir(Path(state.directory), PREFIX)
    state.postgres_dir = str(data)
    state.save()  # so that `down` finds the cluster even if what follows fails
    postgres.init(data)
    procs.start(state, LabProcess("postgres", "cp", postgres.server_argv(data),
                                  str(state.logs / "postgres.log"),
                                  health=f"tcp://127.0.0.1:{postgres.PORT}"))
    postgres.create_databases(cp.ns)
    state.database_url = f"postgresql://{postgres.USER}@127.0.0.1:{postgres.PORT}"


def _replica_ports(n: int, replicas: int) -> dict[str, int]:
    """Listener ports of policy-server replica `n` (1-based); one replica keeps the usual ones."""
    if replicas == 1:
        return {"external": POLICY_EXTERNAL_PORT, "internal": POLICY_INTERNAL_PORT,
                "health": POLICY_HEALTH_PORT, "debug": 31821, "internal_debug": 31945}
    return {"external": 4010 + n, "internal": 4020 + n, "health": POLICY_HEALTH_PORT + n,
            "debug": 31830 + n, "internal_debug": 31950 + n}


def _start_policy_servers(cp: Host, state: LabState, bundle: Any) -> None:
    """One policy server, or `state.policy_servers` replicas behind the lab's balancer."""
    from cfnet.testing.policy_server import ADMIN_TOKEN, policy_server_configs, write_tokens

    work = Path(state.directory)
    tokens = write_tokens(work / "tokens.json")
    db = _database(state, "policy-server")
    backends: dict[str, list[str]] = {"external": [], "internal": []}
    for n in range(1, state.policy_servers + 1):
        ports = _replica_ports(n, state.policy_servers)
        external, internal = policy_server_configs(bundle, db, tokens, listen_host=cp.ip)
        external.update(listen_port=ports["external"], debug_server_port=ports["debug"])
        internal.update(internal_listen_port=ports["internal"], health_check_port=ports["health"],
                        debug_server_port=ports["internal_debug"])
        name = "policy-server" if state.policy_servers == 1 else f"policy-server-{n}"
        ext_path, int_path = work / f"{name}.json", work / f"{name}-internal.json"
        ext_path.write_text(json.dumps(external, indent=2))
        int_path.write_text(json.dumps(internal, indent=2))
        procs.start(state, LabProcess(
            name, "cp", [*_python(), "policy-server", "serve", "--config-file", str(ext_path),
                         "--internal-config-file", str(int_path)],
            str(state.logs / f"{name}.log"),
            health=f"http://{cp.ip}:{ports['health']}/health"))
        for kind in backends:
            backends[kind].append(f"{cp.ip}:{ports[kind]}")
    if state.policy_servers > 1:
        specs = [f"{cp.ip}:{POLICY_EXTERNAL_PORT}={','.join(backends['external'])}",
                 f"{cp.ip}:{POLICY_INTERNAL_PORT}={','.join(backends['internal'])}"]
        procs.start(state, LabProcess("balancer", "cp", [sys.executable, "-m",
                                                         "cfnet.lab.balancer", *specs],
                                      str(state.logs / "balancer.log"),
                                      health=f"tcp://{cp.ip}:{POLICY_EXTERNAL_PORT}"))
    state.policy_external_url = f"http://{cp.ip}:{POLICY_EXTERNAL_PORT}"
    state.policy_internal_url = f"https://{cp.ip}:{POLICY_INTERNAL_PORT}"
    state.admin_token = ADMIN_TOKEN


def replica_external_url(state: LabState, n: int) -> str:
    """The external API of replica `n` itself, bypassing the balancer."""
    ip = state.hosts["cp"].ip
    return f"http://{ip}:{_replica_ports(n, state.policy_servers)['external']}"


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


def up(directory: Path = DEFAULT_DIR, cells: int = 2, progress: Progress = print,
       db: str = "sqlite", policy_servers: int = 1) -> LabState:
    """Build the lab; if one is already up in `directory`, restart any of its processes that is
    not running and return its state.

    `db` is "sqlite", "postgres" (a PostgreSQL server of the lab's own in the control plane) or
    a postgresql:// URL reachable from the control-plane namespace (whose data `down` leaves in
    place: it is not the lab's). Several policy servers need
    PostgreSQL; they share the database and sit behind a TCP balancer on the usual ports.
    """
    from types import SimpleNamespace

    from cfnet.lab import postgres
    from cfnet.testing.agent import start_agent
    from cfnet.testing.silk import SilkDeployment, start_controller_in
    from cfnet.web.tls import generate_bundle

    if cells < 1:
        raise LabError("--cells must be at least 1")
    if policy_servers < 1:
        raise LabError("--policy-servers must be at least 1")
    kind = db if db in ("sqlite", "postgres") else "url"
    if kind == "url":
        try:
            postgres.from_url(db)
        except postgres.PostgresError as e:
            raise LabError(str(e)) from None
    if policy_servers > 1 and kind == "sqlite":
        raise LabError("--policy-servers above 1 needs a shared database: add --db postgres")
    try:  # nothing is changed before these checks
        if directory.exists() and (not directory.is_dir() or (
                any(directory.iterdir()) and not ownership.is_lab_dir(directory))):
            ownership.claim_dir(directory)  # raises the one-line reason
        _check_prefix(directory)
    except (ValueError, OSError) as e:
        raise LabError(str(e)) from None
    existing = LabState.load(directory)
    if existing is not None and is_up(directory):
        for proc in existing.processes.values():  # a crashed or stopped process comes back
            if not procs.alive(proc):
                try:
                    procs.start(existing, proc)
                except procs.ProcessError as e:
                    raise LabError(str(e)) from None
                progress(f"restarted {proc.name}")
        progress(f"lab already up in {directory}")
        return existing
    down(directory, progress=lambda _msg: None)  # whatever a crashed run of this lab left
    try:
        ownership.claim_dir(directory)
        ownership.claim_prefix(PREFIX, directory)
    except (ValueError, OSError) as e:
        raise LabError(str(e)) from None
    state = LabState(directory=str(directory), database=kind,
                     database_url=db if kind == "url" else "", policy_servers=policy_servers)
    state.logs.mkdir(parents=True, exist_ok=True)
    topo = Topology(prefix=PREFIX, network=UNDERLAY)
    try:
        progress("underlay bridge and control plane")
        topo.create()
        cp = topo.add_host("cp")
        state.hosts["cp"] = LabHost("cp", cp.ns, cp.ip)
        bundle = generate_bundle(state.certs, server_names=[cp.ip, "localhost", "127.0.0.1"])
        if kind == "postgres":
            _start_postgres(state, cp)
            progress(f"PostgreSQL in the control plane ({state.postgres_dir})")
        _start_policy_servers(cp, state, bundle)
        replicas = f", {policy_servers} replicas behind a balancer" if policy_servers > 1 else ""
        progress(f"policy-server on {state.policy_external_url} ({kind}{replicas})")
        controller_db = _database(state, "silk-controller")
        controller = start_controller_in(topo, cp, state.logs / "silk-controller", controller_db,
                                         bundle=bundle)
        procs.record(state, "silk-controller", "cp", [*_python(), "silk-controller",
                                                      "--config-file", str(controller.config_path)],
                     controller.stdout_path, controller.process.pid, controller.health_url)
        state.controller_url = controller.url
        progress(f"silk-controller on {controller.url}")
        silk = SilkDeployment(topo, state.logs, controller, cp,
                              {"poll_interval": 5, "log_level": "info"}, controller_db, {})
        server = SimpleNamespace(internal_url=state.policy_internal_url, client_tls=bundle.client)
        for i in range(cells):
            name = f"cell{i + 1}"
            cell = silk.add_cell(name)
            state.hosts[name] = LabHost(name, cell.ns, cell.underlay_ip)
            state.cells.append(name)
            state.subnets[name] = cell.overlay_subnet
            procs.record(state, f"{name}/silk-daemon", name,
                         [*_python(), "silk-daemon", "run", "--config-file", str(cell.config_path)],
                         cell.output_path, cell.process.pid,
                         "http://127.0.0.1:23954/")
            # Upstream's c2c poll interval, plus cfnet's watch: changes arrive at once anyway.
            # ASGs come from the policy server (`cfnet lab asg`), polled every second.
            agent = start_agent(cell, state.logs / name / "agent", server, poll_interval=5,
                                enable_asg_syncing=True, asg_poll_interval=1, log_level="info")
            procs.record(state, f"{name}/vxlan-agent", name,
                         [*_python(), "vxlan-agent", "--config-file", str(agent.config_path)],
                         agent.output_path, agent.process.pid, "http://127.0.0.1:8721/health")
            _cell_files(state, cell, agent)
            progress(f"{name}: silk-daemon (subnet {cell.overlay_subnet}), vxlan-agent")
        silk.wait_converged(timeout=60)
        for name in ("router", "internet"):
            topo.add_host(name)
        state.hosts = {name: LabHost(name, h.ns, h.ip) for name, h in topo.hosts.items()}
        procs.start(state, LabProcess(
            "internet", "internet", [sys.executable, "-m", "cfnet.lab.responder", "serve",
                                     "internet", "0", "80", "8081"],
            str(state.logs / "internet.log"), health=f"tcp://{state.hosts['internet'].ip}:80"))
        state.save()
    except BaseException as e:
        _stop_postgres(state)
        topo.destroy()
        ownership.release_prefix(PREFIX, directory)
        from cfnet.testing.silk import DeploymentFailed

        if isinstance(e, (postgres.PostgresError, procs.ProcessError, DeploymentFailed)):
            raise LabError(str(e)) from None  # one line for the user; logs are in the lab dir
        raise
    return state


def _stop_postgres(state: LabState) -> None:
    from cfnet.lab import postgres

    proc = state.processes.get("postgres")
    if proc is not None:
        try:
            procs.stop(proc)
        except procs.ProcessError:
            pass
    if state.postgres_dir:
        postgres.remove(Path(state.postgres_dir))
    postgres.remove(postgres.fallback_dir(PREFIX))


def _unmount_below(directory: Path) -> None:
    """Detach the containers' namespace bind mounts a crashed lab may have left."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    root = str(directory.resolve()) + "/"
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f if line.split()[1].startswith(root)]
    for point in sorted(points, reverse=True):
        libc.umount2(point.encode(), 2)  # MNT_DETACH


def _check_prefix(directory: Path) -> None:
    """Refuse when namespaces of the prefix belong to a lab in another directory."""
    other = ownership.other_owner(PREFIX, directory)
    if other is None and ownership.owner(PREFIX) is None and ownership.live_namespaces(PREFIX) \
            and LabState.load(directory) is None:
        raise ValueError(f"namespaces of the prefix {PREFIX!r} exist and no lab directory owns "
                         "them: remove them with `cfnet lab down --force-prefix`, or set "
                         "CFNET_LAB_PREFIX to another prefix")
    if other is not None:
        ownership.claim_prefix(PREFIX, directory)  # raises, naming the owner


def down(directory: Path = DEFAULT_DIR, progress: Progress = print,
         force_prefix: bool = False) -> list[str]:
    """Stop the lab's processes and remove its namespaces and files; safe to repeat.

    Only a lab directory (one holding the lab's marker or state) is touched, and only the
    namespaces of a prefix this directory owns; `force_prefix` removes every namespace of the
    prefix whoever owns it (after a crash that lost the state and the owner record).
    """
    from cfnet.lab import postgres

    if directory.exists() and not ownership.is_lab_dir(directory):
        progress(f"{directory} holds no lab: nothing removed there")
        removed = destroy_prefix(PREFIX) if force_prefix else []
        for name in removed:
            progress(f"removed namespace {name}")
        return removed
    state = LabState.load(directory) if directory.exists() else None
    if state is not None:
        # Gracefully first, PostgreSQL last, so that it shuts down cleanly (no shared memory or
        # half-written cluster left behind); whatever remains is killed with its namespace.
        for name, proc in state.processes.items():
            if name != "postgres":
                try:
                    procs.stop(proc, timeout=5)
                except procs.ProcessError:
                    pass
        _stop_postgres(state)
    owner = ownership.owner(PREFIX)
    mine = owner == directory.resolve() or (owner is None and state is not None)
    removed: list[str] = []
    if force_prefix or mine:
        removed = destroy_prefix(PREFIX)
        postgres.remove(postgres.fallback_dir(PREFIX))
        ownership.release_prefix(PREFIX, owner or directory)
    elif ownership.live_namespaces(PREFIX):
        progress(f"namespaces of {PREFIX!r} belong to the lab in {owner}: left alone")
    if directory.exists():
        _unmount_below(directory)
    for name in removed:
        progress(f"removed namespace {name}")
    if directory.exists():
        ownership.remove_lab_files(directory)
        progress(f"removed the lab's files in {directory}")
    return removed


def require(directory: Path = DEFAULT_DIR) -> LabState:
    state = LabState.load(directory)
    if state is None or not is_up(directory):
        raise LabError(f"no lab is up in {directory}: run `cfnet lab up` first")
    return state
