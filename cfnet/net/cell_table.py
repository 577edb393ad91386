"""The `ip cfnet` table of a cell (spec dataplane 7.3) and its transactions (7.5) as nft text.

Every `render_*` function is pure and returns one script; `Nft.run()` applies it as one kernel
batch. The few functions that read the kernel first (`list_cell`, `remove_container`,
`replace_c2c`) take an `Nft` handle. Ownership follows the spec: the CNI writes per-container
structure, the agent writes the c2c chain, sets and map and the contents of `netout-<handle>`.

Measured on nft 1.0.6 / kernel 6.18 (docs/nftables.md): deleting elements from a large
concatenated interval set is superlinear (100 deletes among 60k elements: 0.1 s, 2,000: 51 s),
while building a new 60k-element set and repointing the rule takes 0.55 s. So a c2c update is a
diff when it deletes few elements and a swap between the two allow sets otherwise; the interval
set is never flushed and refilled. And one `add element` command carrying more than ~1,260
concatenated elements gets the mark of every 1,260th element byte-swapped, so element lists are
always split into commands of at most `CHUNK` elements. Single-port allows live in a hash set
(`c2c_allow_exact`), cheaper to fill than the interval set that holds the real port ranges.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cfnet.core import nft_syntax as nx
from cfnet.core.asg_rules import (NetoutChains, netout_chain, netout_log_chain,
                                  netout_rl_log_chain, overlay_chain, rl_set)
from cfnet.net.nft import Nft, SetState, TableState

FAMILY = "ip"
TABLE = "cfnet"
T = f"{FAMILY} {TABLE}"
INGRESS_MARK = 0xFFFF0000
CHUNK = 500  # elements per `add/delete element` command (see the module docstring)
DIFF_MAX_DELETES = 64  # above this many deletions a c2c update swaps the allow set instead

ALLOW_SETS = ("c2c_allow", "c2c_allow_b")  # port ranges; the live one is referenced by chain c2c
ALLOW_TYPE = "type ipv4_addr . mark . inet_proto . inet_service; flags interval;"
EXACT_SETS = ("c2c_allow_exact", "c2c_allow_exact_b")  # single ports: hash sets, a third
# cheaper to fill than the interval (pipapo) sets; swapped together with them
EXACT_TYPE = "type ipv4_addr . mark . inet_proto . inet_service;"

SETS = {  # shared sets and maps (base ruleset)
    "underlay_ifs": "type ifname;",
    "containers": "type ipv4_addr;",
    "c2c_src_tag": "type ipv4_addr : mark;",
    "netout_v": "type ipv4_addr : verdict;",
    "overlay_v": "type ipv4_addr : verdict;",
    "host_svc": "type ipv4_addr . inet_proto . inet_service;",
    "netin_dnat": "type ipv4_addr . inet_service : ipv4_addr . inet_service;",
    "netin_ports": "type ipv4_addr . inet_service;",
}
BASE_CHAINS = {
    "forward": "type filter hook forward priority filter; policy accept;",
    "input": "type filter hook input priority filter; policy accept;",
    "prerouting_mangle": "type filter hook prerouting priority mangle; policy accept;",
    "prerouting_nat": "type nat hook prerouting priority dstnat; policy accept;",
    "postrouting_nat": "type nat hook postrouting priority srcnat; policy accept;",
}


@dataclass
class CellConfig:
    vtep_name: str = "silk-vtep"
    no_masquerade_cidr: str = "10.255.0.0/16"  # overlay network unless configured otherwise
    ingress_mark: int = INGRESS_MARK


# ---- helpers --------------------------------------------------------------------------------


def element_commands(verb: str, set_name: str, items: Sequence[str]) -> list[str]:
    """`add|delete element` commands for `items`, at most CHUNK elements each."""
    nx.name(set_name)
    return [f"{verb} element {T} {set_name} {nx.elements(items[i:i + CHUNK])}"
            for i in range(0, len(items), CHUNK)]


def _chain_contents(chain: str, rules: Iterable[str], create: str = "") -> list[str]:
    """Ensure chain, flush it, add rules: idempotent whole-chain replacement."""
    out = [f"add chain {T} {nx.name(chain)}" + (f" {{ {create} }}" if create else ""),
           f"flush chain {T} {chain}"]
    out += [f"add rule {T} {chain} {r}" for r in rules]
    return out


def script(lines: Iterable[str]) -> str:
    return "\n".join(lines) + "\n"


# ---- base ruleset ---------------------------------------------------------------------------


def base_lines(cfg: CellConfig | None = None) -> list[str]:
    cfg = cfg or CellConfig()
    vtep = nx.string(cfg.vtep_name)
    nomasq = nx.cidr(cfg.no_masquerade_cidr)
    out = [f"add table {T}"]
    out += [f"add {'map' if ':' in decl else 'set'} {T} {n} {{ {decl} }}"
            for n, decl in SETS.items()]
    out += [f"add chain {T} c2c", f"add chain {T} c2c-log"]  # contents owned by the agent
    out += _chain_contents("container_input", [
        "ct state established,related accept",
        "ip daddr . meta l4proto . th dport @host_svc accept",
        "reject with icmp type port-unreachable"])
    rules = {
        "forward": [
            "jump c2c",
            "oifname @underlay_ifs ip saddr vmap @netout_v",
            f"oifname {vtep} ip saddr @containers meta mark != 0 accept",
            "ip daddr vmap @overlay_v"],
        "input": ["ip saddr @containers jump container_input"],
        "prerouting_mangle": [
            f"iifname @underlay_ifs ip daddr . tcp dport @netin_ports "
            f"meta mark set {nx.mark(cfg.ingress_mark)}"],
        "prerouting_nat": ["dnat ip to ip daddr . tcp dport map @netin_dnat"],
        "postrouting_nat": [
            f"ip saddr @containers ip daddr != {nomasq} oifname != {vtep} masquerade"],
    }
    for chain, decl in BASE_CHAINS.items():
        out += _chain_contents(chain, rules[chain], decl)
    return out


def render_base(cfg: CellConfig | None = None) -> str:
    """The table, its shared sets and maps and its base chains. Idempotent: applying it to a live
    table adds what is missing and rewrites only the base chains' rules; no element is lost and no
    agent- or container-owned chain is touched."""
    return script(base_lines(cfg))


STRICT_CHAIN = "forward_strict"  # the agent's, only while policy_enforcement_mode is strict
STRICT_DECL = "type filter hook forward priority filter - 1; policy accept;"


def strict_lines(cfg: CellConfig | None = None, enabled: bool = True) -> list[str]:
    """Strict mode's own forward chain, or its removal. Once the agent has deleted the conntrack
    entries of a closed flow, a packet the local *server* sends first would be picked up
    mid-stream as a new outgoing connection (`nf_conntrack_tcp_loose`) and accepted, reviving
    the flow; a new TCP connection from a local container towards the overlay must begin with a
    SYN, so anything else is dropped here, before chain forward accepts it."""
    cfg = cfg or CellConfig()
    if not enabled:  # flush first: a chain holding rules cannot be deleted
        return [f"add chain {T} {STRICT_CHAIN} {{ {STRICT_DECL} }}",
                f"flush chain {T} {STRICT_CHAIN}", f"delete chain {T} {STRICT_CHAIN}"]
    return _chain_contents(STRICT_CHAIN, [
        f"oifname {nx.string(cfg.vtep_name)} ip saddr @containers ct state new "
        f"tcp flags & (syn | ack) != syn drop"], STRICT_DECL)


def render_reset(cfg: CellConfig | None = None) -> str:
    """Drop the whole table and build it anew (the pre-start `--reset`; never on a normal start)."""
    return script([f"add table {T}", f"delete table {T}", *base_lines(cfg)])


# ---- per container (CNI) --------------------------------------------------------------------


@dataclass
class ContainerNet:
    """What the CNI's first transaction needs for one container."""

    handle: str
    ip: str
    egress: NetoutChains  # from cfnet.core.asg_rules.netout_chains
    host_ip: str | None = None  # instance_address (DNAT match address)
    port_mappings: list[tuple[int, int]] = field(default_factory=list)  # (host, container port)
    static_rules: bool = False  # write egress.netout now (static ASG mode), else egress.defaults
    c2c_logging: bool = False  # DENY_C2C log in overlay-<handle>
    denied_logs_per_sec: int = 1
    underlay_ifs: list[str] = field(default_factory=list)
    host_services: list[tuple[str, str, int]] = field(default_factory=list)  # (ip, tcp|udp, port)
    ingress_mark: int = INGRESS_MARK  # the wrapper's `ingress_tag`, accepted by overlay-<handle>


def overlay_rules(handle: str, c2c_logging: bool = False, denied_logs_per_sec: int = 1,
                  ingress_mark: int = INGRESS_MARK) -> list[str]:
    out = ["ct state established,related accept", f"meta mark {nx.mark(ingress_mark)} accept"]
    if c2c_logging:
        out.append(f"limit rate {denied_logs_per_sec}/second burst {denied_logs_per_sec} packets "
                   f"log prefix {nx.log_prefix('DENY_C2C_' + handle)}")
    out.append("reject with icmp type port-unreachable")
    return out


def _stale_for(c: ContainerNet, current: TableState) -> list[str]:
    """Deletions of another container's entries that would make this container's adds fail
    (a reused IP or host port whose owner leaked): map keys only take one value."""
    out = []
    ip = nx.ipv4(c.ip)
    for vmap, chain in (("netout_v", netout_chain(c.handle)),
                        ("overlay_v", overlay_chain(c.handle))):
        s = current.sets.get(vmap)
        if s and ip in s.keys and s.keys[ip] != nx.jump(chain):
            out.append(f"delete element {T} {vmap} {{ {ip} }}")
    if c.host_ip:
        dnat = current.sets.get("netin_dnat")
        for hp, _cp in c.port_mappings:
            key = nx.concat(nx.ipv4(c.host_ip), nx.port(hp))
            if dnat and key in dnat.keys and dnat.comments.get(key) != c.handle:
                out.append(f"delete element {T} netin_dnat {{ {key} }}")
                ports = current.sets.get("netin_ports")
                if ports and key in ports.keys:
                    out.append(f"delete element {T} netin_ports {{ {key} }}")
    return out


def container_add_lines(c: ContainerNet, current: TableState | None = None) -> list[str]:
    h = nx.handle(c.handle)
    ip = nx.ipv4(c.ip)
    if c.egress.handle != h:
        raise ValueError(f"egress chains are for {c.egress.handle}, not {h}")
    out = _stale_for(c, current) if current is not None else []
    out.append(f"add element {T} containers {{ {ip} }}")
    if c.egress.rl_set is not None:
        out.append(f"add set {T} {rl_set(h)} {{ {c.egress.rl_set} }}")
    out += _chain_contents(netout_log_chain(h), c.egress.log)
    if c.egress.rl_log is not None:
        out += _chain_contents(netout_rl_log_chain(h), c.egress.rl_log)
    netout = c.egress.netout if c.static_rules else c.egress.defaults
    out += _chain_contents(netout_chain(h), netout)
    out += _chain_contents(overlay_chain(h), overlay_rules(h, c.c2c_logging, c.denied_logs_per_sec,
                                                          c.ingress_mark))
    out.append(f"add element {T} netout_v {{ {ip} : {nx.jump(netout_chain(h))} }}")
    out.append(f"add element {T} overlay_v {{ {ip} : {nx.jump(overlay_chain(h))} }}")
    if c.port_mappings:
        if not c.host_ip:
            raise ValueError("port mappings need the cell's host IP (instance_address)")
        host = nx.ipv4(c.host_ip)
        dnat, ports = [], []
        for hp, cp in c.port_mappings:
            if not 1 <= hp <= 65535 or not 1 <= cp <= 65535:
                raise ValueError(f"invalid port mapping {hp}:{cp}")
            key = nx.concat(host, nx.port(hp))
            dnat.append(nx.element(key, nx.concat(ip, nx.port(cp)), comment=h))
            ports.append(nx.element(key, comment=h))
        out += element_commands("add", "netin_dnat", dnat)
        out += element_commands("add", "netin_ports", ports)
    if c.underlay_ifs:
        out += element_commands("add", "underlay_ifs", [nx.string(i) for i in c.underlay_ifs])
    if c.host_services:
        out += element_commands("add", "host_svc", [
            nx.concat(nx.ipv4(a), nx.proto(p), nx.port(n)) for a, p, n in c.host_services])
    return out


def render_container_add(c: ContainerNet, current: TableState | None = None) -> str:
    """CNI ADD, transaction 1 (7.5): the container's chains, vmap, netin and set elements.
    Idempotent. With `current` (the listed table) it also clears another container's stale map
    entries for the same IP or host ports, so a reused IP never inherits old rules."""
    return script(container_add_lines(c, current))


def render_netout(chains: NetoutChains) -> str:
    """Replace the contents of `netout-<handle>` (static tx 2, and the agent's ASG update)."""
    h = chains.handle
    out = [f"add chain {T} {netout_log_chain(h)}"]
    if chains.rl_set is not None:
        out.append(f"add set {T} {rl_set(h)} {{ {chains.rl_set} }}")
    if chains.rl_log is not None:
        out += _chain_contents(netout_rl_log_chain(h), chains.rl_log)
    out += _chain_contents(netout_chain(h), chains.netout)
    return script(out)


def _handle_chains(h: str) -> list[str]:
    return [netout_chain(h), netout_log_chain(h), netout_rl_log_chain(h), overlay_chain(h)]


def container_remove_lines(handle: str, current: TableState | None) -> list[str]:
    h = nx.handle(handle)
    out: list[str] = []
    ips: set[str] = set()
    if current is not None:
        targets = {"netout_v": nx.jump(netout_chain(h)), "overlay_v": nx.jump(overlay_chain(h))}
        for vmap, target in targets.items():
            s = current.sets.get(vmap)
            keys = [k for k, v in (s.keys.items() if s else []) if v == target]
            ips.update(keys)
            out += element_commands("delete", vmap, keys)
        for name in ("netin_dnat", "netin_ports"):
            s = current.sets.get(name)
            keys = [k for k in (s.keys if s else {}) if s and s.comments.get(k) == h]
            out += element_commands("delete", name, keys)
        for name in ("containers", "c2c_src_tag"):
            s = current.sets.get(name)
            out += element_commands("delete", name,
                                    [ip for ip in sorted(ips) if s and ip in s.keys])
    chains = _handle_chains(h)
    # add+flush first (rules reference each other and the rl set), then delete: never fails.
    for ch in chains:
        out += [f"add chain {T} {ch}", f"flush chain {T} {ch}"]
    out += [f"delete chain {T} {ch}" for ch in chains]
    if current is None or rl_set(h) in current.sets:
        out += [f"add set {T} {rl_set(h)} "
                f"{{ type ipv4_addr . inet_service; flags dynamic,timeout; }}",
                f"delete set {T} {rl_set(h)}"]
    return out


def render_container_remove(handle: str, current: TableState | None) -> str:
    """CNI DEL (7.5): every element, chain and set of the container, found by handle in the
    listed table (no IP needed); the container IP's source mark goes too. Idempotent: removing
    an unknown or already removed handle is a valid no-op transaction."""
    return script(container_remove_lines(handle, current))


# ---- reading the table ----------------------------------------------------------------------


def list_cell(nft: Nft, with_allow: bool = False) -> TableState | None:
    """The cell table without the (large) c2c allow elements unless asked; None if absent."""
    if not nft.table_exists(FAMILY, TABLE):
        return None
    if with_allow:
        return nft.list_table(FAMILY, TABLE)
    objs = []
    for name, decl in SETS.items():
        objs += nft.list_json(f"{'map' if ':' in decl else 'set'} {T} {name}")
    for o in nft.list_json(f"sets {FAMILY}"):  # declarations only: rl-*, c2c_allow*
        if o.get("set", {}).get("table") == TABLE and o["set"]["name"] not in SETS:
            objs.append(o)
    objs += [o for o in nft.list_json(f"chains {FAMILY}") if o["chain"]["table"] == TABLE]
    return TableState.from_json(objs)


def remove_container(nft: Nft, handle: str) -> None:
    """List, then remove one container in one transaction (callers hold the cell's flock).
    Nothing to do when the table does not exist."""
    current = list_cell(nft)
    if current is not None:
        nft.run(render_container_remove(handle, current))


def handles_in(state: TableState) -> set[str]:
    """Handles owning any per-container chain or set (names: spec 7.3)."""
    found = set()
    for ch in state.chains:
        if ch.startswith("overlay-"):
            found.add(ch[len("overlay-"):])
        elif ch.startswith("netout-"):
            body = ch[len("netout-"):]
            for suffix in ("-rl-log", "-log"):
                if body.endswith(suffix):
                    body = body[: -len(suffix)]
                    break
            found.add(body)
    found.update(s[len("rl-"):] for s in state.sets if s.startswith("rl-"))
    return found


def referenced_handles(state: TableState) -> set[str]:
    """Handles whose chains a vmap element still points at."""
    out = set()
    for vmap, prefix in (("netout_v", "jump netout-"), ("overlay_v", "jump overlay-")):
        s = state.sets.get(vmap)
        for v in (s.keys.values() if s else []):
            if v and v.startswith(prefix):
                out.add(v[len(prefix):])
    return out


def find_orphans(state: TableState, live: Iterable[str],
                 include_referenced: bool = False) -> list[str]:
    """Handles with chains or sets in the table but no datastore entry (`live`); by default
    only those no vmap element references any more (spec 7.5)."""
    candidates = handles_in(state) | (referenced_handles(state) if include_referenced else set())
    orphans = candidates - set(live)
    if not include_referenced:
        orphans -= referenced_handles(state)
    return sorted(orphans)


def render_orphans_remove(state: TableState, live: Iterable[str],
                          include_referenced: bool = False) -> str:
    lines: list[str] = []
    for h in find_orphans(state, live, include_referenced):
        lines += container_remove_lines(h, state)
    return script(lines) if lines else ""


# ---- c2c (agent) ----------------------------------------------------------------------------


@dataclass
class C2CState:
    """The c2c content of a cell: source IP -> tag, and the merged allow elements (canonical)."""

    src_tags: dict[str, int] = field(default_factory=dict)
    allow: frozenset[str] = frozenset()

    @classmethod
    def build(cls, src_tags: dict[str, int], allow: Iterable[nx.C2CAllow]) -> C2CState:
        return cls({nx.ipv4(ip): tag for ip, tag in src_tags.items()},
                   frozenset(nx.merge_c2c_elements(allow)))


@dataclass(frozen=True)
class C2CSets:
    """The live allow sets (those chain c2c references). Both are always of one generation
    (`c2c_allow_exact` with `c2c_allow`, `c2c_allow_exact_b` with `c2c_allow_b`)."""

    exact: str = EXACT_SETS[0]
    ranges: str = ALLOW_SETS[0]


@dataclass
class C2CListing:
    """What the kernel holds: the live sets (None: none yet) and the c2c content (None: not
    listed; callers may put the agent's own record of what it last applied there)."""

    allow_set: str | None
    state: C2CState | None
    chain_rules: int = 0
    exact_set: str | None = None


def _c2c_chain(sets: C2CSets, logging: bool, bypass_cidr: str | None) -> list[str]:
    rules = []
    if bypass_cidr:  # disable_container_network_policy
        net = nx.cidr(bypass_cidr)
        rules.append(f"ip saddr {net} ip daddr {net} accept")
    rules.append("meta mark set ip saddr map @c2c_src_tag")
    if logging:
        rules.append("jump c2c-log")
    for name in (sets.exact, sets.ranges):
        rules.append(f"ip daddr . meta mark . meta l4proto . th dport @{nx.name(name)} accept")
    return _chain_contents("c2c", rules)


def split_allow(elements: Iterable[str]) -> tuple[list[str], list[str]]:
    """Canonical allow elements -> (single-port elements in hash-set form `... . 80`, sorted;
    real ranges `... . 80-90`, sorted)."""
    exact, ranges = [], []
    for e in elements:
        head, _, r = e.rpartition(" . ")
        lo, _, hi = r.partition("-")
        if lo == hi:
            exact.append(f"{head} . {lo}")
        else:
            ranges.append(e)
    exact.sort()
    ranges.sort()
    return exact, ranges


def _join_allow(exact: Iterable[str], ranges: Iterable[str]) -> frozenset[str]:
    out = set(ranges)
    for e in exact:
        port = e.rpartition(" . ")[2]
        out.add(f"{e}-{port}")
    return frozenset(out)


@dataclass(frozen=True)
class C2CLogEntry:
    """One destination entry to log (spec 1.7): accepted connections to `ip` from the source
    tag, given as the policy server writes it (hex text, e.g. "0001")."""

    ip: str
    source_tag: str
    proto: str
    lo: int
    hi: int
    dst_guid: str


def c2c_log_rules(entries: Iterable[C2CLogEntry], udp_logs_per_sec: int = 100) -> list[str]:
    """Rule bodies for chain c2c-log (spec 7.4): tcp logs each new connection, udp is rate-limited;
    prefix `OK_<tag>_<dst guid> ` cut as upstream's."""
    out = []
    for e in entries:
        try:
            tag = int(e.source_tag, 16)
        except ValueError:
            raise nx.NftSyntaxError(f"invalid source tag {e.source_tag!r}: must be hex") from None
        head = (f"ip daddr {nx.ipv4(e.ip)} meta mark {nx.mark(tag)} meta l4proto "
                f"{nx.proto(e.proto)} th dport {nx.ports(e.lo, e.hi)}")
        prefix = nx.log_prefix(f"OK_{e.source_tag}_{e.dst_guid}")
        if e.proto == "udp":
            out.append(f"{head} limit rate {udp_logs_per_sec}/second burst {udp_logs_per_sec} "
                       f"packets log prefix {prefix}")
        else:
            out.append(f"{head} ct state invalid,new,untracked log prefix {prefix}")
    return out


def list_c2c(nft: Nft, elements: bool = True) -> C2CListing:
    """The live allow sets (the ones chain c2c references) and, if `elements`, the source map
    and the allow elements (listing 60k elements takes about a second)."""
    if not nft.table_exists(FAMILY, TABLE):
        return C2CListing(None, C2CState())
    chain = [o["rule"] for o in nft.list_json(f"chain {T} c2c") if "rule" in o]
    live = exact = None
    for r in chain:
        for e in r.get("expr", []):
            right = e.get("match", {}).get("right")
            name = right.lstrip("@") if isinstance(right, str) else None
            if name in ALLOW_SETS:
                live = name
            elif name in EXACT_SETS:
                exact = name
    if not elements:
        return C2CListing(live, None, len(chain), exact)
    src = TableState.from_json(nft.list_json(f"map {T} c2c_src_tag")).sets["c2c_src_tag"]
    tags = {k: int(v, 16) for k, v in src.keys.items() if v is not None}
    found: dict[str, Iterable[str]] = {}
    for name in (live, exact):
        if name is not None:
            s: SetState = TableState.from_json(nft.list_json(f"set {T} {name}")).sets[name]
            found[name] = s.keys
    allow = _join_allow(found.get(exact or "", ()), found.get(live or "", ()))
    return C2CListing(live, C2CState(tags, allow), len(chain), exact)


def _swap_in(name: str, decl: str, items: list[str]) -> list[str]:
    """A fresh set `name` (a leftover of an interrupted older layout is dropped) with `items`."""
    return [f"add set {T} {name} {{ {decl} }}", f"delete set {T} {name}",
            f"add set {T} {name} {{ {decl} }}", *element_commands("add", name, items)]


def _diff(name: str, had: list[str], want: list[str]) -> list[str]:
    gone = sorted(set(had) - set(want))
    # add-then-delete: also right when an element is already gone
    return [*element_commands("add", name, gone), *element_commands("delete", name, gone),
            *element_commands("add", name, sorted(set(want) - set(had)))]


def _c2c_replace(desired: C2CState, current: C2CListing, logging_rules: Sequence[str],
                 bypass_cidr: str | None) -> tuple[list[str], C2CSets]:
    lines = [f"flush map {T} c2c_src_tag"]
    lines += element_commands("add", "c2c_src_tag", [
        nx.element(ip, nx.mark(tag)) for ip, tag in sorted(desired.src_tags.items())])
    lines += _chain_contents("c2c-log", logging_rules)
    want_exact, want_ranges = split_allow(desired.allow)
    live = current.allow_set
    gen = ALLOW_SETS.index(live) if live in ALLOW_SETS else None
    in_place = (gen is not None and current.state is not None
                and current.exact_set == EXACT_SETS[gen])
    if in_place:
        assert current.state is not None and gen is not None
        had_exact, had_ranges = split_allow(current.state.allow)
        # Interval set: deletions are superlinear, so only a few are diffed (module docstring);
        # the hash set is diffed unless most of it changes.
        in_place = (len(set(had_ranges) - set(want_ranges)) <= DIFF_MAX_DELETES and
                    len(set(had_exact) - set(want_exact)) <= max(DIFF_MAX_DELETES,
                                                                 len(want_exact) // 2))
    if in_place:
        assert gen is not None
        sets = C2CSets(EXACT_SETS[gen], ALLOW_SETS[gen])
        lines += _diff(sets.exact, had_exact, want_exact) + _diff(sets.ranges, had_ranges,
                                                                  want_ranges)
    else:  # both sets of the other generation are filled and swapped in together
        new_gen = 1 if gen == 0 else 0
        sets = C2CSets(EXACT_SETS[new_gen], ALLOW_SETS[new_gen])
        lines += _swap_in(sets.exact, EXACT_TYPE, want_exact)
        lines += _swap_in(sets.ranges, ALLOW_TYPE, want_ranges)
    lines += _c2c_chain(sets, bool(logging_rules), bypass_cidr)
    for old, new in ((current.exact_set, sets.exact), (current.allow_set, sets.ranges)):
        if old is not None and old != new:
            lines.append(f"delete set {T} {old}")
    return lines, sets


def render_c2c_replace(desired: C2CState, current: C2CListing, logging_rules: Sequence[str] = (),
                       bypass_cidr: str | None = None) -> str:
    """Make the kernel hold `desired`, whatever it holds now (agent start, full resync).

    The hash map of source tags is flushed and refilled (cheap). The allow set gets a diff when
    that deletes at most DIFF_MAX_DELETES elements, otherwise the other allow set is built and
    swapped in by rewriting chain c2c, and the old one deleted, all in this one transaction.
    `logging_rules` are rule bodies for chain c2c-log (empty: logging off); `bypass_cidr` is the
    overlay network when `disable_container_network_policy` is set."""
    return script(_c2c_replace(desired, current, logging_rules, bypass_cidr)[0])


def render_c2c_diff(old: C2CState, new: C2CState, sets: C2CSets | str) -> str:
    """An incremental c2c update from the agent's last applied state to the new one, into the
    live `sets` (or the live interval set's name: its hash set is the one of the same
    generation). Removals use add-then-delete, so an element somebody already removed (a
    container's DEL) does not fail the transaction. Empty string when nothing changed."""
    if isinstance(sets, str):
        sets = C2CSets(EXACT_SETS[ALLOW_SETS.index(sets)], sets)
    lines: list[str] = []
    gone_exact, gone_ranges = split_allow(old.allow - new.allow)
    new_exact, new_ranges = split_allow(new.allow - old.allow)
    for name, gone, added in ((sets.exact, gone_exact, new_exact),
                              (sets.ranges, gone_ranges, new_ranges)):
        lines += element_commands("add", name, gone)
        lines += element_commands("delete", name, gone)
        lines += element_commands("add", name, added)
    changed = [ip for ip in old.src_tags.keys() | new.src_tags.keys()
               if old.src_tags.get(ip) != new.src_tags.get(ip)]
    for ip in sorted(changed, key=nx.ipv4_key):
        was, now = old.src_tags.get(ip), new.src_tags.get(ip)
        if was is not None:
            lines.append(f"add element {T} c2c_src_tag {{ {nx.element(ip, nx.mark(was))} }}")
            lines.append(f"delete element {T} c2c_src_tag {{ {ip} }}")
        if now is not None:
            lines.append(f"add element {T} c2c_src_tag {{ {nx.element(ip, nx.mark(now))} }}")
    return script(lines) if lines else ""


def replace_c2c(nft: Nft, desired: C2CState, logging_rules: Sequence[str] = (),
                bypass_cidr: str | None = None, last: C2CState | None = None,
                list_elements: bool = False) -> C2CSets:
    """Make the kernel's c2c state `desired` in one transaction; returns the live sets.

    The diff-or-swap choice needs the current elements: `last` (what this agent last applied),
    or a listing when `list_elements`; with neither, both allow sets are swapped (about as fast
    as listing them)."""
    current = list_c2c(nft, elements=list_elements and last is None)
    if last is not None:
        current.state = last
    lines, sets = _c2c_replace(desired, current, logging_rules, bypass_cidr)
    nft.run(script(lines))
    return sets
