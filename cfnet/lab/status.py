"""`cfnet lab status`: what runs, from the lab state and from the running parts themselves.

Leases come from the silk controller (GET /leases over mutual TLS, from the control plane), the
policy count from the policy server's external API, nftables figures from the kernel of each
cell (`nft -j list ruleset` inside the cell's namespace), and each process's liveness from its
recorded pid.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cfnet.lab import procs
from cfnet.lab.deploy import require
from cfnet.lab.state import DEFAULT_DIR, LabState
from cfnet.net import netns


def leases(state: LabState) -> list[dict[str, str]] | str:
    """The controller's routable leases, or why they could not be read."""
    from cfnet.silk.lease_client import LeaseClient
    from cfnet.web.tls import bundle_paths

    def ask() -> list[dict[str, str]]:
        client = LeaseClient(state.controller_url, bundle_paths(state.certs).client, timeout=5)
        try:
            return [lease.to_json() for lease in client.routable_leases()]
        finally:
            client.close()

    try:
        return netns.call_in(state.hosts["cp"].ns, ask, timeout=20)
    except Exception as e:  # noqa: BLE001 - shown in the status, not fatal
        return f"unavailable: {e}"


def policy_count(state: LabState) -> int | str:
    from cfnet.clients.policy_api import PolicyClient

    def ask() -> int:
        with PolicyClient(state.policy_external_url, state.admin_token) as client:
            return len(client.list())

    try:
        return netns.call_in(state.hosts["cp"].ns, ask, timeout=20)
    except Exception as e:  # noqa: BLE001 - shown in the status, not fatal
        return f"unavailable: {e}"


def nft_counts(ns: str) -> dict[str, Any]:
    """Tables, chains, rules and set elements (per set) in one cell's namespace."""
    proc = netns.run(ns, ["nft", "-j", "list", "ruleset"], check=False)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip()}
    items = json.loads(proc.stdout or '{"nftables": []}').get("nftables", [])
    counts: dict[str, Any] = {"tables": 0, "chains": 0, "rules": 0, "elements": 0, "sets": {}}
    for item in items:
        if "table" in item:
            counts["tables"] += 1
        elif "chain" in item:
            counts["chains"] += 1
        elif "rule" in item:
            counts["rules"] += 1
        elif "set" in item or "map" in item:
            s = item.get("set") or item.get("map")
            n = len(s.get("elem", []))
            counts["sets"][s["name"]] = n
            counts["elements"] += n
    return counts


def collect(directory: Path = DEFAULT_DIR) -> dict[str, Any]:
    """Everything `cfnet lab status` shows, as one JSON-ready document."""
    state = require(directory)
    return {
        "directory": state.directory,
        "database": state.database,
        "policy_servers": state.policy_servers,
        "policy_server": state.policy_external_url,
        "hosts": {n: {"namespace": h.ns, "ip": h.ip, "subnet": state.subnets.get(n, "")}
                  for n, h in state.hosts.items()},
        "processes": {n: {"pid": p.pid, "running": procs.alive(p)}
                      for n, p in state.processes.items()},
        "leases": leases(state),
        "containers": [{"app": c.app, "instance": c.instance, "cell": c.cell, "ip": c.ip,
                        "handle": c.handle, "host_port": c.host_port} for c in state.containers],
        "policies": policy_count(state),
        "asgs": [{"name": g["name"], "rules": g["rules"], "bound_to": g.get("bound_to", "")}
                 for g in state.asgs],
        "nftables": {cell: nft_counts(state.hosts[cell].ns) for cell in state.cells},
    }
