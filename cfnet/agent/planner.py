"""C2C planning (spec dataplane 1.6), pure: local containers + policies -> the cell's c2c state.

The upstream algorithm produced an ordered iptables rule list; here the result is the content of
the `ip cfnet` table's c2c map and allow set (`cfnet.net.cell_table.C2CState`):

- source tags: for each local container whose app is the source of some policy, `ip -> tag`
  (one per IP, first policy wins, as upstream);
- allow elements: for each policy whose destination app has a local container,
  `container ip . source tag . protocol . port range` (ranges of one ip/tag/protocol merged);
- with `enable_overlay_ingress_rules`, `ip . ingress tag . tcp . port` for each declared port.

Containers without `policy_group_id` are ignored (upstream logs and skips them). Policy ids
queried are the local apps' ids and the local space ids, as upstream (Q14: only app ids match).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from cfnet.clients.internal_api import InternalPolicy
from cfnet.cni.datastore import Container
from cfnet.core import nft_syntax as nx
from cfnet.core.errors import CfnetError
from cfnet.net.cell_table import C2CLogEntry, C2CState, c2c_log_rules


class PlanError(CfnetError):
    """The plan cannot be made (bad container metadata or policy data)."""


@dataclass(frozen=True)
class LocalContainer:
    handle: str
    ip: str
    app_id: str
    space_id: str
    workload: str
    ports: tuple[int, ...] = ()


@dataclass
class Plan:
    state: C2CState
    log_rules: list[str] = field(default_factory=list)  # chain c2c-log bodies (logging on)
    containers: int = 0
    policies: int = 0


def parse_ports(text: str) -> tuple[int, ...]:
    """`" 8181 , 9090"` -> (8181, 9090); upstream's error text for a non-integer."""
    out = []
    for part in text.split(","):
        p = part.strip()
        if not p:
            continue
        try:
            out.append(int(p, 10))
        except ValueError:
            raise PlanError("converting container metadata port to int: strconv.Atoi: "
                            f'parsing "{p}": invalid syntax') from None
    return tuple(out)


def local_containers(entries: Mapping[str, Container],
                     with_ports: bool = False) -> list[LocalContainer]:
    """Datastore entries with a `policy_group_id`, sorted by handle descending (upstream)."""
    out = []
    for handle, c in entries.items():
        app = c.meta("policy_group_id")
        if not app:
            continue
        ports = parse_ports(c.meta("ports")) if with_ports else ()
        out.append(LocalContainer(handle, c.ip, app, c.meta("space_id"),
                                  c.meta("container_workload"), ports))
    return sorted(out, key=lambda c: c.handle, reverse=True)


def policy_ids(containers: Iterable[LocalContainer]) -> list[str]:
    """App ids and space ids of the local containers, deduplicated, sorted."""
    ids = set()
    for c in containers:
        ids.add(c.app_id)
        if c.space_id:
            ids.add(c.space_id)
    return sorted(ids)


def parse_tag(text: str) -> int:
    try:
        tag = int(text, 16)
    except (TypeError, ValueError):
        raise PlanError(f"invalid policy tag {text!r}: not hexadecimal") from None
    if not 0 < tag <= 0xFFFF:
        raise PlanError(f"invalid policy tag {text!r}: must be 1..ffff (16 bits cross VXLAN GBP)")
    return tag


def plan(containers: Sequence[LocalContainer], policies: Iterable[InternalPolicy],
         ingress_tag: str | None = None, logging: bool = False,
         udp_logs_per_sec: int = 100) -> Plan:
    """The c2c content for `containers` under `policies` (see the module doc)."""
    by_app: dict[str, list[LocalContainer]] = {}
    for c in containers:
        by_app.setdefault(c.app_id, []).append(c)
    src_tags: dict[str, int] = {}
    allow: list[nx.C2CAllow] = []
    log_entries: list[C2CLogEntry] = []
    count = 0
    for p in policies:
        count += 1
        if p.protocol not in ("tcp", "udp"):
            raise PlanError(f"invalid policy protocol {p.protocol!r}")
        src_tag = parse_tag(p.source_tag)
        for c in by_app.get(p.source, ()):
            src_tags.setdefault(nx.ipv4(c.ip), src_tag)
        for c in by_app.get(p.destination, ()):
            allow.append(nx.C2CAllow(c.ip, src_tag, p.protocol, p.start, p.end))
            if logging:
                log_entries.append(C2CLogEntry(c.ip, p.source_tag, p.protocol, p.start, p.end,
                                               p.destination))
    if ingress_tag is not None:
        tag = parse_tag(ingress_tag)
        for c in containers:
            for port in c.ports:
                allow.append(nx.C2CAllow(c.ip, tag, "tcp", port, port))
    log_rules = sorted(set(c2c_log_rules(log_entries, udp_logs_per_sec)))
    return Plan(C2CState.build(src_tags, allow), log_rules, len(containers), count)

