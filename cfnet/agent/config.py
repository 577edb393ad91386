"""`cfnet vxlan-agent` config: vxlan-policy-agent's keys (spec dataplane 1.2), JSON or TOML.

Upstream keys keep their meaning and BOSH defaults. Keys cfnet adds (all optional):

- `outbound_connections.dry_run`: log instead of rejecting connections over the rate (fixes Q1);
- `policy_enforcement_mode`: `upstream` (a deleted policy stops new connections, open ones go on)
  or `strict` (the matching conntrack entries are deleted too, so open connections stop);
- `policy_watch` / `policy_watch_seconds`: long-poll the server's last-updated watch when it
  offers one (falls back to polling every `poll_interval` when it does not);
- `poll_jitter`: fraction of the interval by which polls are spread (upstream polls in lock-step);
- `resync_interval`: seconds between full resyncs from the kernel's state (repairs drift, Q8);
- `vtep_name`: the VTEP device (`silk-vtep`); `lock_timeout_seconds`: how long to wait for the
  cell's flock before a cycle fails.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfnet.core.config import load_config
from cfnet.core.errors import ConfigError

PORT = {"min": 0, "max": 65535}  # 0: pick a free port (logged in `starting-servers`)
REQUIRED = {"required": True}
MODES = ("upstream", "strict")
LEVELS = ("debug", "info", "error", "fatal")


@dataclass
class DenyNetworksConfig:
    always: list[str] = field(default_factory=list)
    running: list[str] = field(default_factory=list)
    staging: list[str] = field(default_factory=list)


@dataclass
class OutboundConnections:
    limit: bool = False
    logging: bool = False
    burst: int = field(default=1000, metadata={"min": 1})
    rate_per_sec: int = field(default=100, metadata={"min": 1})
    dry_run: bool = False


@dataclass
class AgentConfig:
    policy_server_url: str = field(default="", metadata=REQUIRED)
    cni_datastore_path: str = field(default="", metadata=REQUIRED)
    ca_cert_file: str = field(default="", metadata=REQUIRED)
    client_cert_file: str = field(default="", metadata=REQUIRED)
    client_key_file: str = field(default="", metadata=REQUIRED)
    poll_interval: int = field(default=5, metadata={"min": 1})
    enable_asg_syncing: bool = True
    asg_poll_interval: int = field(default=60, metadata={"min": 1})
    vni: int = field(default=1, metadata={"min": 1})
    metron_address: str = "127.0.0.1:3457"  # accepted; metrics are served on /metrics instead
    client_timeout_seconds: int = field(default=5, metadata={"min": 1})
    iptables_lock_file: str = "/var/vcap/data/garden-cni/iptables.lock"
    debug_server_host: str = "127.0.0.1"
    debug_server_port: int = field(default=8721, metadata=PORT)
    log_level: str = field(default="info", metadata={"choices": LEVELS})
    log_prefix: str = "cfnetworking"
    iptables_c2c_logging: bool = False
    iptables_accepted_udp_logs_per_sec: int = field(default=100, metadata={"min": 1})
    enable_overlay_ingress_rules: bool = False
    force_policy_poll_cycle_host: str = "127.0.0.1"
    force_policy_poll_cycle_port: int = field(default=8722, metadata=PORT)
    disable_container_network_policy: bool = False
    overlay_network: str = "10.255.0.0/16"
    underlay_ips: list[str] = field(default_factory=list)
    iptables_asg_logging: bool = False
    iptables_denied_logs_per_sec: int = field(default=1, metadata={"min": 1})
    deny_networks: DenyNetworksConfig = field(default_factory=DenyNetworksConfig)
    outbound_connections: OutboundConnections = field(default_factory=OutboundConnections)
    loggregator: dict[str, Any] = field(default_factory=dict)  # accepted, unused
    # cfnet extensions (see the module doc)
    policy_enforcement_mode: str = field(default="upstream", metadata={"choices": MODES})
    policy_watch: bool = True
    policy_watch_seconds: int = field(default=30, metadata={"min": 1, "max": 3600})
    poll_jitter: float = field(default=0.1, metadata={"min": 0.0, "max": 0.5})
    resync_interval: int = field(default=300, metadata={"min": 1})
    vtep_name: str = "silk-vtep"
    lock_timeout_seconds: int = field(default=30, metadata={"min": 1})

    @property
    def strict(self) -> bool:
        return self.policy_enforcement_mode == "strict"

    def validate(self) -> None:
        for key in ("iptables_lock_file", "log_prefix", "vtep_name", "debug_server_host",
                    "force_policy_poll_cycle_host"):
            if not getattr(self, key):
                raise ConfigError(f"invalid config: key '{key}' must not be empty")
        if not self.policy_server_url.startswith(("https://", "http://")):
            raise ConfigError("invalid config: key 'policy_server_url': must be https://HOST:PORT")
        try:
            ipaddress.IPv4Network(self.overlay_network, strict=False)
        except ValueError:
            raise ConfigError(f"invalid config: key 'overlay_network': {self.overlay_network!r} "
                              "is not an IPv4 CIDR") from None
        for i, ip in enumerate(self.underlay_ips):
            try:
                ipaddress.IPv4Address(ip)
            except ValueError:
                raise ConfigError(f"invalid config: key 'underlay_ips[{i}]': {ip!r} is not an "
                                  "IPv4 address") from None
        for kind in ("always", "running", "staging"):
            for i, cidr in enumerate(getattr(self.deny_networks, kind)):
                try:
                    ipaddress.IPv4Network(cidr, strict=False)
                except ValueError:
                    raise ConfigError(f"invalid config: key 'deny_networks.{kind}[{i}]': {cidr!r} "
                                      "is not an IPv4 CIDR") from None


def load_agent_config(path: str | Path) -> AgentConfig:
    config = load_config(path, AgentConfig)
    config.validate()
    return config


def datastore_dir_exists(config: AgentConfig) -> bool:
    return os.path.isdir(os.path.dirname(os.path.abspath(config.cni_datastore_path)))
