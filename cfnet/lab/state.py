"""The lab's state: one JSON file in the lab directory, next to its certificates and logs.

Every lab namespace is named `cfnlab-*`, so a lab whose state file was lost can still be found
and removed (`cfnet lab down` removes by prefix as well as by state).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Several labs can run side by side (the tests do) under different prefixes.
PREFIX = os.environ.get("CFNET_LAB_PREFIX", "cfnlab")
DEFAULT_DIR = Path(os.environ.get("CFNET_LAB_DIR", "/var/lib/cfnet/lab"))
OVERLAY = "10.255.0.0/16"
UNDERLAY = "10.10.0.0/24"


@dataclass
class LabHost:
    name: str
    ns: str
    ip: str


@dataclass
class LabContainer:
    handle: str
    app: str
    instance: int
    cell: str
    ns: str
    ip: str
    port: int = 8080
    host_port: int = 0


@dataclass
class LabProcess:
    """One long-running lab process, enough to stop and start it again (`cfnet lab restart`)."""

    name: str  # e.g. "policy-server-1", "cell1/vxlan-agent"
    host: str  # the lab host whose namespace it runs in
    argv: list[str]  # run inside the host's namespace
    log: str
    pid: int = 0
    health: str = ""  # http://... or tcp://HOST:PORT, probed inside the namespace


@dataclass
class LabState:
    directory: str
    database: str = "sqlite"  # "sqlite", "postgres" (the lab's own server) or "url"
    database_url: str = ""  # postgresql://... for "postgres" and "url"
    postgres_dir: str = ""  # the lab's own PostgreSQL cluster (removed by `down`)
    policy_servers: int = 1
    hosts: dict[str, LabHost] = field(default_factory=dict)
    cells: list[str] = field(default_factory=list)
    subnets: dict[str, str] = field(default_factory=dict)
    policy_external_url: str = ""
    policy_internal_url: str = ""
    admin_token: str = ""
    controller_url: str = ""
    apps: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> guid, space, org
    containers: list[LabContainer] = field(default_factory=list)
    processes: dict[str, LabProcess] = field(default_factory=dict)
    asgs: list[dict[str, Any]] = field(default_factory=list)  # name, guid, rules, binding

    @property
    def path(self) -> Path:
        return Path(self.directory) / "state.json"

    @property
    def certs(self) -> Path:
        return Path(self.directory) / "certs"

    @property
    def logs(self) -> Path:
        return Path(self.directory) / "logs"

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(self.path)

    @classmethod
    def load(cls, directory: Path) -> LabState | None:
        path = Path(directory) / "state.json"
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        data["hosts"] = {k: LabHost(**v) for k, v in data.get("hosts", {}).items()}
        data["containers"] = [LabContainer(**c) for c in data.get("containers", [])]
        data["processes"] = {k: LabProcess(**v) for k, v in data.get("processes", {}).items()}
        return cls(**data)

    def containers_of(self, app: str) -> list[LabContainer]:
        return [c for c in self.containers if c.app == app]
