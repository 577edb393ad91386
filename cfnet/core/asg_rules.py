"""Egress rules (ASGs): parse and validate both upstream shapes; build a container's netout chain.

Two shapes reach a cell:

- dynamic ASGs from the policy server (spec dataplane 1.5): `{"protocol": "tcp", "destination":
  "10.0.0.0/8,1.2.3.4,5.5.5.5-6.6.6.6", "ports": "80, 443, 1000 - 2000", "type": 8, "code": 0,
  "log": true}`;
- Garden NetOutRules from the runtime config (spec dataplane 3.2): `{"protocol": 1, "networks":
  [{"start": "8.8.8.8", "end": "9.9.9.9"}], "ports": [{"start": 53, "end": 54}], "icmps": {"type":
  8, "code": 0}, "log": true}`.

Both become `EgressRule`s; any bad entry raises `AsgRuleError` naming the entry (upstream dropped
unparsable port parts silently). Decisions where upstream is odd (spec section 10):
- ICMP type or code -1 or 255 means "any" (Q6: upstream's code 255 matched only code 255);
  an ICMP rule must give a type; a code without a type is an error; a missing code means any code.
- `icmpv6` is skipped (nothing to enforce in an IPv4 table); other unknown protocols are errors.
- tcp/udp need ports; all/icmp must have none.

`netout_chains()` renders spec 2.4's effective chain, top-down, as nft rule bodies for the
`netout-<handle>` chain of the cell table (plus the `-log` and `-rl-log` chains and the rate-limit
set). Later ASG entries come first (upstream's order, Q19), identical rules appear once.
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cfnet.core import nft_syntax as nx
from cfnet.core.errors import CfnetError

ANY = None  # icmp_type / icmp_code value meaning "any"
_GARDEN_PROTOCOLS = {0: "all", 1: "tcp", 2: "udp", 3: "icmp"}


class AsgRuleError(CfnetError, ValueError):
    """An egress rule entry is malformed; the message names the entry."""


@dataclass(frozen=True)
class EgressRule:
    protocol: str  # all | tcp | udp | icmp
    networks: tuple[tuple[str, str], ...]  # (first, last) IPv4 addresses, merged and sorted
    ports: tuple[tuple[int, int], ...] = ()  # tcp/udp only, merged and sorted
    icmp_type: int | None = ANY
    icmp_code: int | None = ANY
    log: bool = False


# ---- names in the cell table --------------------------------------------------------------------


def netout_chain(handle: str) -> str:
    return f"netout-{nx.handle(handle)}"


def netout_log_chain(handle: str) -> str:
    return f"netout-{nx.handle(handle)}-log"


def netout_rl_log_chain(handle: str) -> str:
    return f"netout-{nx.handle(handle)}-rl-log"


def overlay_chain(handle: str) -> str:
    return f"overlay-{nx.handle(handle)}"


def rl_set(handle: str) -> str:
    return f"rl-{nx.handle(handle)}"


# ---- parsing --------------------------------------------------------------------------------


def _describe(entry: Any) -> str:
    try:
        return json.dumps(entry, sort_keys=True)
    except (TypeError, ValueError):
        return repr(entry)


def _fail(index: int, entry: Any, why: str) -> AsgRuleError:
    return AsgRuleError(f"invalid egress rule {index} {_describe(entry)}: {why}")


def _merge_networks(ranges: Iterable[tuple[int, int]]) -> tuple[tuple[str, str], ...]:
    from cfnet.core.nft_syntax import merge_ranges

    return tuple((str(ipaddress.IPv4Address(a)), str(ipaddress.IPv4Address(b)))
                 for a, b in merge_ranges(ranges))


def _address(text: str) -> int:
    try:
        return int(ipaddress.IPv4Address(text.strip()))
    except ValueError:
        raise ValueError(f"invalid IPv4 address {text.strip()!r}") from None


def parse_destinations(text: str) -> tuple[tuple[str, str], ...]:
    """`"10.0.0.0/8, 1.2.3.4,5.5.5.5-6.6.6.6"` -> merged (first, last) address pairs."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("missing destination")
    out = []
    for part in text.split(","):
        p = part.strip()
        if not p:
            raise ValueError(f"empty destination in {text!r}")
        if "/" in p:
            try:
                net = ipaddress.IPv4Network(p, strict=False)
            except ValueError:
                raise ValueError(f"invalid CIDR {p!r}") from None
            out.append((int(net.network_address), int(net.broadcast_address)))
        elif "-" in p:
            a, _, b = p.partition("-")
            lo, hi = _address(a), _address(b)
            if lo > hi:
                raise ValueError(f"invalid address range {p!r}: start is after end")
            out.append((lo, hi))
        else:
            ip = _address(p)
            out.append((ip, ip))
    return _merge_networks(out)


def _port(text: str, whole: str) -> int:
    t = text.strip()
    if not t.isdigit():
        raise ValueError(f"invalid port {t!r} in {whole!r}" if t else f"empty port in {whole!r}")
    n = int(t)
    if not 1 <= n <= 65535:
        raise ValueError(f"port {n} out of range 1-65535")
    return n


def parse_ports(text: str) -> tuple[tuple[int, int], ...]:
    """`"80, 443 , 1000 - 2000"` -> merged (lo, hi) ranges. Ports are 1..65535."""
    if not isinstance(text, str):
        raise ValueError(f"ports must be a string, not {text!r}")
    out = []
    for part in text.split(","):
        if "-" in part:
            a, _, b = part.partition("-")
            lo, hi = _port(a, text), _port(b, text)
            if lo > hi:
                raise ValueError(f"invalid port range {part.strip()!r}: start is after end")
            out.append((lo, hi))
        else:
            n = _port(part, text)
            out.append((n, n))
    return tuple(nx.merge_ranges(out))


def _icmp_value(v: Any, what: str) -> int | None:
    if isinstance(v, bool) or not isinstance(v, int) or not -1 <= v <= 255:
        raise ValueError(f"invalid ICMP {what} {v!r}: must be -1..255")
    return ANY if v in (-1, 255) else v


def _check_icmp(icmp: dict[str, Any]) -> tuple[int | None, int | None]:
    if icmp.get("code") is not None and icmp.get("type") is None:
        raise ValueError("ICMP code given without a type")
    if icmp.get("type") is None:
        raise ValueError("ICMP rule must specify an ICMP type (-1 for any)")
    t = _icmp_value(icmp["type"], "type")
    c = ANY if icmp.get("code") is None else _icmp_value(icmp["code"], "code")
    return t, (ANY if t is ANY else c)


def _finish(protocol: str, networks: tuple[tuple[str, str], ...],
            ports: tuple[tuple[int, int], ...], icmp: dict[str, Any] | None,
            log: Any) -> EgressRule:
    if not isinstance(log, bool):
        raise ValueError(f"log must be true or false, not {log!r}")
    if protocol in ("tcp", "udp"):
        if not ports:
            raise ValueError(f"{protocol} rule must specify ports")
        return EgressRule(protocol, networks, ports, log=log)
    if ports:
        raise ValueError(f"{protocol} rule must not specify ports")
    if protocol == "icmp":
        t, c = _check_icmp(icmp or {})
        return EgressRule("icmp", networks, (), t, c, log)
    return EgressRule("all", networks, (), log=log)


def parse_asg_rule(entry: Any, index: int = 0) -> EgressRule | None:
    """One policy-server ASG rule; None for an IPv6-only protocol (icmpv6)."""
    try:
        if not isinstance(entry, dict):
            raise ValueError("must be a JSON object")
        protocol = entry.get("protocol")
        if protocol == "icmpv6":
            return None
        if protocol not in ("all", "tcp", "udp", "icmp"):
            raise ValueError(f"unknown protocol {protocol!r}: must be tcp, udp, icmp or all")
        networks = parse_destinations(entry.get("destination", ""))
        raw_ports = entry.get("ports") or ""
        if not isinstance(raw_ports, str):
            raise ValueError(f"ports must be a string like \"80,443,1000-2000\", not {raw_ports!r}")
        ports = parse_ports(raw_ports) if raw_ports.strip() else ()
        icmp = None
        if protocol == "icmp":
            icmp = {k: entry[k] for k in ("type", "code") if k in entry}
        elif "code" in entry and "type" not in entry:
            raise ValueError("ICMP code given without a type")
        return _finish(protocol, networks, ports, icmp, entry.get("log", False))
    except AsgRuleError:
        raise
    except (ValueError, TypeError, AttributeError, nx.NftSyntaxError) as e:
        raise _fail(index, entry, str(e)) from None


def parse_asg_rules(entries: Sequence[Any] | str) -> list[EgressRule]:
    """A policy-server `rules` list (or its JSON text, as the API sends it)."""
    if isinstance(entries, str):
        try:
            entries = json.loads(entries)
        except ValueError as e:
            raise AsgRuleError(f"invalid security group rules JSON: {e}") from None
    if not isinstance(entries, list):
        raise AsgRuleError(f"security group rules must be a JSON array, not {_describe(entries)}")
    out = [parse_asg_rule(e, i) for i, e in enumerate(entries)]
    return [r for r in out if r is not None]


def _garden_range(item: Any, what: str, parse: Any) -> tuple[Any, Any]:
    if not isinstance(item, dict) or "start" not in item:
        raise ValueError(f"each {what} needs a start, not {item!r}")
    lo = parse(item["start"])
    hi = parse(item["end"]) if item.get("end") not in (None, "", 0) else lo
    if lo > hi:
        raise ValueError(f"invalid {what} range {item!r}: start is after end")
    return lo, hi


def _garden_port(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
        raise ValueError(f"port {v!r} out of range 1-65535")
    return v


def parse_netout_rule(entry: Any, index: int = 0) -> EgressRule:
    """One Garden NetOutRule (`runtimeConfig.netOutRules` entry)."""
    try:
        if not isinstance(entry, dict):
            raise ValueError("must be a JSON object")
        p = entry.get("protocol", 0)
        if isinstance(p, bool) or p not in _GARDEN_PROTOCOLS:
            raise ValueError(
                f"unknown protocol {p!r}: must be 0 (all), 1 (tcp), 2 (udp) or 3 (icmp)")
        protocol = _GARDEN_PROTOCOLS[p]
        nets = entry.get("networks") or []
        if not isinstance(nets, list) or not nets:
            raise ValueError("missing networks")
        networks = _merge_networks(_garden_range(n, "network", _address) for n in nets)
        ports_in = entry.get("ports") or []
        if not isinstance(ports_in, list):
            raise ValueError(f"ports must be a list, not {ports_in!r}")
        ports = tuple(nx.merge_ranges(_garden_range(x, "port", _garden_port) for x in ports_in))
        icmps = entry.get("icmps")
        if icmps is not None and not isinstance(icmps, dict):
            raise ValueError(f"icmps must be an object, not {icmps!r}")
        if (protocol != "icmp" and icmps and icmps.get("code") is not None
                and icmps.get("type") is None):
            raise ValueError("ICMP code given without a type")
        return _finish(protocol, networks, ports, icmps, entry.get("log", False))
    except (ValueError, TypeError, nx.NftSyntaxError) as e:
        raise _fail(index, entry, str(e)) from None


def parse_netout_rules(entries: Any) -> list[EgressRule]:
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise AsgRuleError(f"netOutRules must be a JSON array, not {_describe(entries)}")
    return [parse_netout_rule(e, i) for i, e in enumerate(entries)]


# ---- the netout chain of one container (spec 2.4) --------------------------------------------


@dataclass
class OutboundLimits:
    """`outbound_connections`: new-TCP-connection rate limit per (destination ip, port)."""

    limit: bool = False
    logging: bool = False
    burst: int = 1000
    rate_per_sec: int = 100
    dry_run: bool = False


@dataclass
class DenyNetworks:
    always: list[str] = field(default_factory=list)
    running: list[str] = field(default_factory=list)
    staging: list[str] = field(default_factory=list)


@dataclass
class NetoutChains:
    """Contents of one container's egress chains, rule bodies top-down."""

    handle: str
    netout: list[str]
    log: list[str]
    rl_log: list[str] | None = None  # None: chain not needed
    rl_set: str | None = None  # set body for rl-<handle>, None: not needed
    defaults: list[str] = field(default_factory=list)  # the tail alone (before rules arrive)


def egress_rule(rule: EgressRule, verdict: str) -> str:
    """One EgressRule as one nft rule body (anonymous sets for several networks or ports)."""
    dst = nx.anon_set([nx.ipv4_interval(a, b) for a, b in rule.networks])
    head = f"ip daddr {dst}"
    if rule.protocol in ("tcp", "udp"):
        ports = nx.anon_set([nx.ports(lo, hi) for lo, hi in rule.ports])
        return f"{head} {rule.protocol} dport {ports} {verdict}"
    if rule.protocol == "icmp":
        if rule.icmp_type is ANY:
            return f"{head} meta l4proto icmp {verdict}"
        code = "" if rule.icmp_code is ANY else f" icmp code {rule.icmp_code}"
        return f"{head} icmp type {rule.icmp_type}{code} {verdict}"
    return f"{head} {verdict}"


def default_netout(handle: str, asg_logging: bool = False,
                   denied_logs_per_sec: int = 1) -> list[str]:
    """The tail every netout chain ends with (and all it holds before rules arrive)."""
    out = []
    if asg_logging:
        out.append(f"limit rate {denied_logs_per_sec}/second burst {denied_logs_per_sec} packets "
                   f"log prefix {nx.log_prefix('DENY_' + handle)}")
    out.append("reject with icmp type port-unreachable")
    return out


def netout_chains(handle: str, workload: str, rules: Sequence[EgressRule],
                  deny: DenyNetworks | None = None, asg_logging: bool = False,
                  outbound: OutboundLimits | None = None, denied_logs_per_sec: int = 1,
                  accepted_udp_logs_per_sec: int = 100) -> NetoutChains:
    nx.handle(handle)
    deny = deny or DenyNetworks()
    outbound = outbound or OutboundLimits()
    log_chain = netout_log_chain(handle)

    asg: list[str] = []
    for r in rules:
        text = egress_rule(r, nx.goto(log_chain) if (r.log or asg_logging) else "accept")
        if text not in asg:
            asg.append(text)

    workload_deny = (deny.running if workload in ("app", "task")
                     else deny.staging if workload == "staging" else [])
    deny_rules = [f"ip daddr {nx.cidr(c)} reject with icmp type port-unreachable"
                  for c in [*reversed(workload_deny), *reversed(deny.always)]]

    rl_rules: list[str] = []
    rl_log = None
    rl_body = None
    if outbound.limit or outbound.dry_run:
        if outbound.rate_per_sec <= 0 or outbound.burst <= 0:
            raise AsgRuleError("outbound connection rate and burst must be positive")
        to_log = outbound.logging or outbound.dry_run
        target = nx.jump(netout_rl_log_chain(handle)) if to_log else \
            "reject with icmp type port-unreachable"
        rl_rules.append(
            f"meta l4proto tcp ct state new update @{rl_set(handle)} "
            f"{{ ip daddr . tcp dport limit rate over {outbound.rate_per_sec}/second "
            f"burst {outbound.burst} packets }} {target}")
        expire = math.ceil(outbound.burst / outbound.rate_per_sec)
        rl_body = (f"type ipv4_addr . inet_service; flags dynamic,timeout; timeout {expire}s; "
                  "size 65535;")
    if (outbound.limit and outbound.logging) or outbound.dry_run:
        rl_log = []
        if outbound.logging or outbound.dry_run:
            rl_log.append(f"limit rate {denied_logs_per_sec}/second burst {denied_logs_per_sec} "
                          f"packets log prefix {nx.log_prefix('DENY_ORL_' + handle)}")
        if not outbound.dry_run:
            rl_log.append("reject with icmp type port-unreachable")

    defaults = default_netout(handle, asg_logging, denied_logs_per_sec)
    netout = ["ct state established,related accept", "meta l4proto tcp ct state invalid drop",
              *rl_rules, *deny_rules, *reversed(asg), *defaults]
    log = [f"meta l4proto != udp ct state invalid,new,untracked log prefix "
           f"{nx.log_prefix('OK_' + handle)}",
           f"meta l4proto udp limit rate {accepted_udp_logs_per_sec}/second burst "
           f"{accepted_udp_logs_per_sec} packets log prefix {nx.log_prefix('OK_' + handle)}",
           "accept"]
    return NetoutChains(handle, netout, log, rl_log, rl_body, defaults)

