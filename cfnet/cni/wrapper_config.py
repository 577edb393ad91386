"""The CF wrapper plugin's config (spec dataplane 3.2): upstream keys, upstream error texts.

Everything the wrapper needs is checked here, before ADD touches anything: the plugin keys of
the conflist entry, `runtimeConfig.portMappings` and `runtimeConfig.netOutRules` (Garden's
NetIn and NetOutRule JSON) and `metadata`. Every failure is CNI code 7 with upstream's message
where upstream has one (`missing datastore path`, `invalid DNS server "x", must be valid IP
address`, ...). Pure: no I/O, cheap to import.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from cfnet.cni.types import CNIError, Code
from cfnet.core.asg_rules import (AsgRuleError, DenyNetworks, EgressRule, OutboundLimits,
                                  parse_asg_rule, parse_netout_rule)

DEFAULT_AGENT_TIMEOUT = 5.0  # seconds per agent request (upstream: none, Q9)
DEFAULT_NO_MASQUERADE = "10.255.0.0/16"


def _bad(msg: str) -> CNIError:
    return CNIError(Code.INVALID_CONFIG, msg)


@dataclass
class PortMapping:
    host_port: int
    container_port: int


@dataclass
class WrapperConfig:
    name: str
    cni_version: str
    datastore: str
    iptables_lock_file: str
    delegate: dict[str, Any]
    instance_address: str
    underlay_ips: list[str]
    policy_agent_force_poll_address: str
    datastore_file_owner: str = ""
    datastore_file_group: str = ""
    no_masquerade_cidr_range: str = DEFAULT_NO_MASQUERADE
    dns_servers: list[str] = field(default_factory=list)
    host_tcp_services: list[tuple[str, int]] = field(default_factory=list)
    host_udp_services: list[tuple[str, int]] = field(default_factory=list)
    deny_networks: DenyNetworks = field(default_factory=DenyNetworks)
    temporary_underlay_interface_names: list[str] = field(default_factory=list)
    iptables_asg_logging: bool = False
    iptables_c2c_logging: bool = False
    iptables_denied_logs_per_sec: int = 1
    iptables_accepted_udp_logs_per_sec: int = 100
    ingress_tag: str = "ffff0000"
    vtep_name: str = "silk-vtep"
    outbound: OutboundLimits = field(default_factory=OutboundLimits)
    policy_agent_timeout: float = DEFAULT_AGENT_TIMEOUT
    port_mappings: list[PortMapping] = field(default_factory=list)
    netout_rules: list[EgressRule] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def delegate_type(self) -> str:
        return str(self.delegate["type"])

    @property
    def workload(self) -> str:
        value = self.metadata.get("container_workload")
        return value if isinstance(value, str) else ""

    @property
    def ingress_mark(self) -> int:
        return int(self.ingress_tag, 16)

    def link_local_dns(self) -> list[str]:
        """DNS servers in 169.254.0.0/16: the ones containers reach through the host's INPUT."""
        net = ipaddress.IPv4Network("169.254.0.0/16")
        return [s for s in self.dns_servers
                if isinstance(ipaddress.ip_address(s), ipaddress.IPv4Address)
                and ipaddress.IPv4Address(s) in net]


# ---- typed getters -------------------------------------------------------------------------


def _get(conf: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = conf.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = {int: "an integer", str: "a string", bool: "a boolean", list: "a list",
                 dict: "an object", float: "a number"}
        raise _bad(f"loading wrapper config: key '{key}' must be {names.get(kind, kind.__name__)}")
    return value


def _strings(conf: dict[str, Any], key: str) -> list[str]:
    items = _get(conf, key, list, [])
    if not all(isinstance(i, str) for i in items):
        raise _bad(f"loading wrapper config: key '{key}' must be a list of strings")
    return list(items)


def _host_services(items: list[str], kind: str) -> list[tuple[str, int]]:
    """`ip:port` entries; errors as upstream words them (Go's net.SplitHostPort)."""
    prefix = f"initialize net out: input rules: host {kind} services"
    out = []
    for item in items:
        host, sep, port = item.rpartition(":")
        if not sep:
            raise _bad(f"{prefix}: address {item}: missing port in address")
        try:
            addr = str(ipaddress.IPv4Address(host))
        except ValueError:
            raise _bad(f"{prefix}: invalid IPv4 address {host!r} in {item!r}") from None
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise _bad(f'{prefix}: strconv.Atoi: parsing "{port}": invalid syntax'
                       if not port.isdigit() else f"{prefix}: port {port} out of range in {item!r}")
        out.append((addr, int(port)))
    return out


def _deny_networks(conf: dict[str, Any]) -> DenyNetworks:
    raw = _get(conf, "deny_networks", dict, {})
    out = DenyNetworks()
    for kind in ("always", "running", "staging"):
        items = raw.get(kind) or []
        if not isinstance(items, list):
            raise _bad(f"loading wrapper config: key 'deny_networks.{kind}' must be a list")
        nets = []
        for item in items:
            try:
                nets.append(str(ipaddress.IPv4Network(str(item), strict=False)))
            except ValueError:
                raise _bad(f"initialize net out: deny networks: invalid CIDR address: {item}") \
                    from None
        setattr(out, kind, nets)
    return out


def _outbound(conf: dict[str, Any]) -> OutboundLimits:
    raw = _get(conf, "outbound_connections", dict, {})
    out = OutboundLimits()
    for key in ("limit", "logging", "dry_run"):
        value = raw.get(key, False)
        if not isinstance(value, bool):
            raise _bad(f"loading wrapper config: key 'outbound_connections.{key}' must be a "
                       "boolean")
        setattr(out, key, value)
    # Upstream rejects a missing burst or rate (Go zero values); absent keys take the BOSH
    # defaults here, present ones must be positive.
    for key, attr, msg in (("burst", "burst", "invalid outbound connection burst"),
                           ("rate_per_sec", "rate_per_sec", "invalid outbound connection rate")):
        if key in raw:
            value = raw[key]
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise _bad(msg)
            setattr(out, attr, value)
    return out


def _port_mappings(runtime: dict[str, Any]) -> list[PortMapping]:
    raw = runtime.get("portMappings") or []
    if not isinstance(raw, list):
        raise _bad("loading wrapper config: key 'runtimeConfig.portMappings' must be a list")
    out = []
    for item in raw:
        if not isinstance(item, dict):
            raise _bad(f"invalid port mapping {item!r}: must be an object")
        # Garden's keys; the CNI convention's (`hostPort`, `containerPort`) when they are absent.
        hp = item.get("host_port", item.get("hostPort", 0))
        cp = item.get("container_port", item.get("containerPort", 0))
        for v in (hp, cp):
            if isinstance(v, bool) or not isinstance(v, int):
                raise _bad(f"invalid port mapping {item!r}: ports must be integers")
        if hp <= 0:
            raise _bad(f"cannot allocate port {hp}")
        if hp > 65535 or not 1 <= cp <= 65535:
            raise _bad(f"invalid port mapping {item!r}: ports must be 1-65535")
        out.append(PortMapping(hp, cp))
    return out


def parse_netout_rules(raw: Any) -> list[EgressRule]:
    """`runtimeConfig.netOutRules`: Garden NetOutRules, or (an extension) policy-server ASG rules,
    told apart by the ASG's `destination` key. A bad entry is code 7 naming it."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _bad("runtimeConfig.netOutRules: must be a JSON array")
    out = []
    try:
        for i, entry in enumerate(raw):
            if isinstance(entry, dict) and "destination" in entry:
                rule = parse_asg_rule(entry, i)
                if rule is not None:
                    out.append(rule)
            else:
                out.append(parse_netout_rule(entry, i))
    except AsgRuleError as e:
        raise _bad(f"runtimeConfig.netOutRules: {e}") from None
    return out


def load(conf: dict[str, Any], runtime: bool = True) -> WrapperConfig:
    """The wrapper config from the plugin's conflist entry; CNIError code 7 on any bad value.
    `runtime=False` (DEL, GC, ...) skips `runtimeConfig`, which only ADD uses: a DEL after an
    ADD that failed on a bad netOutRules entry must still succeed."""
    def required(key: str, msg: str) -> str:
        value = _get(conf, key, str, "")
        if not value:
            raise _bad(msg)
        return value

    datastore = required("datastore", "missing datastore path")
    lock_file = required("iptables_lock_file", "missing iptables lock file path")
    instance = required("instance_address", "missing instance address")
    underlay_ips = _strings(conf, "underlay_ips")
    if not underlay_ips:
        raise _bad("missing underlay ips")
    ingress_tag = required("ingress_tag", "missing ingress tag")
    vtep = required("vtep_name", "missing vtep device name")
    denied = _get(conf, "iptables_denied_logs_per_sec", int, 1)
    if denied <= 0:
        raise _bad("invalid denied logs per sec")
    udp = _get(conf, "iptables_accepted_udp_logs_per_sec", int, 100)
    if udp <= 0:
        raise _bad("invalid accepted udp logs per sec")
    delegate = _get(conf, "delegate", dict, None)
    if delegate is None or not isinstance(delegate.get("type"), str) or not delegate["type"]:
        raise _bad("delegate config is missing type")
    delegate = dict(delegate)
    delegate.setdefault("cniVersion", "1.0.0")
    outbound = _outbound(conf)
    agent = _get(conf, "policy_agent_force_poll_address", str, "")
    if not agent:
        raise _bad("validator: PolicyAgentForcePollAddress: zero value")

    try:
        ipaddress.IPv4Address(instance)
    except ValueError:
        raise _bad(f"adding netin rule: invalid ip: {instance}") from None
    try:
        int(ingress_tag, 16)
        if not 0 < int(ingress_tag, 16) <= 0xFFFFFFFF:
            raise ValueError
    except ValueError:
        raise _bad(f"invalid ingress tag {ingress_tag!r}: must be a 32-bit hex mark") from None
    for ip in underlay_ips:
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            raise _bad(f"invalid underlay ip {ip!r}") from None
    dns = _strings(conf, "dns_servers")
    for server in dns:
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise _bad(f'invalid DNS server "{server}", must be valid IP address') from None
    nomasq = _get(conf, "no_masquerade_cidr_range", str, "") or DEFAULT_NO_MASQUERADE
    try:
        nomasq = str(ipaddress.IPv4Network(nomasq, strict=False))
    except ValueError:
        raise _bad(f"invalid no_masquerade_cidr_range {nomasq!r}") from None
    timeout = conf.get("policy_agent_timeout_seconds", DEFAULT_AGENT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise _bad("loading wrapper config: key 'policy_agent_timeout_seconds' must be a "
                   "positive number")

    runtime_config = _get(conf, "runtimeConfig", dict, {}) if runtime else {}
    metadata = _get(conf, "metadata", dict, {}) if runtime else {}
    return WrapperConfig(
        name=str(conf.get("name", "")),
        cni_version=str(conf.get("cniVersion", "")),
        datastore=datastore,
        iptables_lock_file=lock_file,
        delegate=delegate,
        instance_address=instance,
        underlay_ips=underlay_ips,
        policy_agent_force_poll_address=agent,
        datastore_file_owner=_get(conf, "datastore_file_owner", str, ""),
        datastore_file_group=_get(conf, "datastore_file_group", str, ""),
        no_masquerade_cidr_range=nomasq,
        dns_servers=dns,
        host_tcp_services=_host_services(_strings(conf, "host_tcp_services"), "tcp"),
        host_udp_services=_host_services(_strings(conf, "host_udp_services"), "udp"),
        deny_networks=_deny_networks(conf),
        temporary_underlay_interface_names=_strings(conf, "temporary_underlay_interface_names"),
        iptables_asg_logging=_get(conf, "iptables_asg_logging", bool, False),
        iptables_c2c_logging=_get(conf, "iptables_c2c_logging", bool, False),
        iptables_denied_logs_per_sec=denied,
        iptables_accepted_udp_logs_per_sec=udp,
        ingress_tag=ingress_tag,
        vtep_name=vtep,
        outbound=outbound,
        policy_agent_timeout=float(timeout),
        port_mappings=_port_mappings(runtime_config),
        netout_rules=parse_netout_rules(runtime_config.get("netOutRules")),
        metadata=dict(metadata),
    )
