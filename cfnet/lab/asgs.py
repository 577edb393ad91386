"""Egress security groups (ASGs) in the lab, where Cloud Controller would normally own them.

The lab keeps its groups in its state and writes the whole list into the policy server's
`security_groups` table (what the ASG syncer does from Cloud Controller), from inside the control
plane, where the lab's database is reachable. The cells' agents run with `enable_asg_syncing`,
poll the internal `security_groups` endpoint every second and rewrite the netout chains of running
containers: nothing is restarted.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from cfnet.lab.deploy import LabError, _database, require
from cfnet.lab.state import DEFAULT_DIR, LabState
from cfnet.net import netns

PROTOCOLS = ("tcp", "udp", "icmp", "all")


def rule(destination: str, protocol: str, ports: str = "") -> dict[str, Any]:
    """One rule in Cloud Controller's shape; refused with a one-line error if invalid."""
    from cfnet.core.asg_rules import AsgRuleError, parse_asg_rules

    if protocol not in PROTOCOLS:
        raise LabError(f"--protocol {protocol!r}: must be one of {', '.join(PROTOCOLS)}")
    entry: dict[str, Any] = {"protocol": protocol, "destination": destination}
    if ports:
        if protocol not in ("tcp", "udp"):
            raise LabError("--ports only goes with --protocol tcp or udp")
        entry["ports"] = ports
    try:
        parse_asg_rules([entry])
    except AsgRuleError as e:
        raise LabError(str(e)) from None
    return entry


def _write(state: LabState) -> None:
    """Make the policy server's table hold exactly the lab's groups (one transaction)."""
    from cfnet.core.policy import SecurityGroup
    from cfnet.store.db import Database
    from cfnet.store.policies import PolicyStore

    groups = [SecurityGroup(guid=g["guid"], name=g["name"], rules=json.dumps(g["rules"]),
                            running_default=g["running_default"],
                            running_spaces=tuple(g["running_spaces"]))
              for g in state.asgs]

    def write() -> None:
        db = Database(_database(state, "policy-server"))
        try:
            PolicyStore(db).replace_security_groups(groups)
        finally:
            db.close()

    try:
        netns.call_in(state.hosts["cp"].ns, write, timeout=60)
    except Exception as e:  # noqa: BLE001 - the database is down, say so in one line
        raise LabError(f"could not write the security groups to the policy server's "
                       f"database: {e}") from None


def add(name: str, destination: str, protocol: str, ports: str = "",
        space_app: str | None = None, running_default: bool = False,
        directory: Path = DEFAULT_DIR) -> dict[str, Any]:
    """Add a group with one rule, bound to an app's space or to every running app."""
    state = require(directory)
    if not name or any(g["name"] == name for g in state.asgs):
        raise LabError(f"security group {name!r} already exists (or the name is empty)")
    if (space_app is None) == (not running_default):
        raise LabError("give exactly one of --space APP and --running-default")
    spaces: list[str] = []
    if space_app is not None:
        if space_app not in state.apps:
            raise LabError(f"no app {space_app!r} in the lab: `cfnet lab push {space_app}` first")
        spaces = [state.apps[space_app]["space_id"]]
    group = {"name": name, "guid": str(uuid.uuid4()), "rules": [rule(destination, protocol, ports)],
             "running_default": running_default, "running_spaces": spaces,
             "bound_to": "running default" if running_default else f"space of {space_app}"}
    state.asgs.append(group)
    _write(state)
    state.save()
    return group


def remove(name: str, directory: Path = DEFAULT_DIR) -> None:
    state = require(directory)
    if not any(g["name"] == name for g in state.asgs):
        raise LabError(f"no security group {name!r} in the lab (see `cfnet lab asg list`)")
    state.asgs = [g for g in state.asgs if g["name"] != name]
    _write(state)
    state.save()


def groups(directory: Path = DEFAULT_DIR) -> list[dict[str, Any]]:
    return require(directory).asgs
