"""nft syntax, pure: names, the one canonical text form of every element shape, and its inverse.

Every element cfnet writes is rendered here, and every element it lists is turned back into the
same text (`json_element`), so "what we wrote" and "what the kernel has" compare as strings and a
diff is a set difference. Canonical forms (nft 1.0.6 accepts each for add *and* delete):

- IPv4 address `10.255.0.2`; interval values as the kernel lists them: a single address for a
  one-address interval, `a.b.c.d/len` when the interval is exactly a prefix, else `a-b`;
- mark `0x%x` (`0x1`, `0xffff`, `0xffff0000`); protocol by name (`tcp`, `udp`, `icmp`);
- port `8080`, but in a concatenated interval set always an explicit range `8080-8080` (deleting
  an element of a `... mark ...` interval concatenation written with a plain last value fails
  with ENOENT on nft 1.0.6);
- interface name and comment as a quoted string; verdict `jump <chain>` / `goto <chain>`;
- concatenation `a . b . c`; map element `key [comment "c"] : data`.

Names: nft 1.0.6 accepts no quoted chain or set names, so "quoting" a name means checking that it
is a plain identifier (a letter first, then letters, digits, `_ . - /`); cfnet's own names always
carry a prefix (`netout-`, `overlay-`, `rl-`, `c2c_`) so they never collide with keywords (`fwd`).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cfnet.core.errors import CfnetError

MAX_NAME = 255
_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_./-]*\Z")
_HANDLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
# Bare words the nft 1.0.6 scanner takes as keywords where a name is expected (not exhaustive:
# cfnet's generated names all contain a '-' or '_' and never hit one).
_KEYWORDS = frozenset("""table chain set map rule element add delete flush list insert replace
create rename reset ip ip6 inet arp bridge netdev fwd dup jump goto return accept drop queue
continue counter limit log reject meta ct tcp udp icmp th type hook priority policy flags
elements timeout size comment define include filter nat route mark""".split())

PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1}
_PROTO_BY_NUMBER = {v: k for k, v in PROTOCOLS.items()}


class NftSyntaxError(CfnetError, ValueError):
    """A value cannot be written as nft syntax (bad name, address, mark, port or protocol)."""


# ---- names and strings ----------------------------------------------------------------------


def name(text: str) -> str:
    """A chain/set/map name as nft 1.0.6 accepts it, or NftSyntaxError."""
    if not _IDENT.match(text) or len(text) > MAX_NAME or text.lower() in _KEYWORDS:
        raise NftSyntaxError(f"invalid nft name {text!r}: must start with a letter and contain "
                             "only letters, digits and _ . - / (at most 255 characters)")
    return text


def handle(text: str) -> str:
    """A container handle usable inside chain and set names."""
    if not isinstance(text, str) or not _HANDLE.match(text) or len(text) > 200:
        raise NftSyntaxError(f"invalid container handle {text!r}: letters, digits and _ . - only")
    if text.endswith("-log"):  # netout-<h>-log would be another handle's log chain
        raise NftSyntaxError(f"invalid container handle {text!r}: may not end in -log")
    return text


def string(text: str) -> str:
    """A double-quoted nft string (comments, log prefixes, interface names)."""
    if any(c in text for c in '"\\\n\r\0'):
        raise NftSyntaxError(
            f"nft string may not contain quotes, backslashes or newlines: {text!r}")
    return f'"{text}"'


def log_prefix(text: str) -> str:
    """Upstream's log prefix: the text cut to 28 characters plus one space, quoted."""
    return string(text[:28] + " ")


# ---- scalar values --------------------------------------------------------------------------


@functools.lru_cache(maxsize=1 << 17)  # a cell renders the same few thousand IPs again and again
def _ipv4(text: str) -> tuple[str, int]:
    try:
        a = ipaddress.IPv4Address(text.strip())
    except ValueError:
        raise NftSyntaxError(f"invalid IPv4 address {text!r}") from None
    return str(a), int(a)


def ipv4(text: str | ipaddress.IPv4Address) -> str:
    return _ipv4(str(text))[0]


def ipv4_key(text: str) -> int:
    """The address as an integer, for numeric sorting."""
    return _ipv4(text)[1]


def ipv4_interval(lo: str | ipaddress.IPv4Address, hi: str | ipaddress.IPv4Address) -> str:
    """An address interval as nft lists it: `a`, `a/len` when exactly a prefix, else `a-b`."""
    a, b = ipaddress.IPv4Address(ipv4(lo)), ipaddress.IPv4Address(ipv4(hi))
    if a > b:
        raise NftSyntaxError(f"invalid address range {a}-{b}: start is after end")
    if a == b:
        return str(a)
    nets = list(ipaddress.summarize_address_range(a, b))
    if len(nets) == 1:
        return str(nets[0])
    return f"{a}-{b}"


def cidr(text: str) -> str:
    """A CIDR in canonical interval form (`10.0.0.0/8`, `1.2.3.4` for a /32); host bits dropped."""
    try:
        net = ipaddress.IPv4Network(text.strip(), strict=False)
    except ValueError:
        raise NftSyntaxError(f"invalid CIDR {text!r}") from None
    return ipv4_interval(net.network_address, net.broadcast_address)


def mark(value: int) -> str:
    if not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
        raise NftSyntaxError(f"invalid mark {value!r}: must be 0..0xffffffff")
    return f"0x{value:x}"


def proto(value: str | int) -> str:
    if isinstance(value, int):
        if value in _PROTO_BY_NUMBER:
            return _PROTO_BY_NUMBER[value]
    elif value in PROTOCOLS:
        return value
    raise NftSyntaxError(f"invalid protocol {value!r}: must be tcp, udp or icmp")


def port(value: int) -> str:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
        raise NftSyntaxError(f"invalid port {value!r}: must be 0..65535")
    return str(value)


def port_range(lo: int, hi: int) -> str:
    """Always `lo-hi`, also for one port (the explicit form concatenated interval sets need)."""
    port(lo), port(hi)
    if lo > hi:
        raise NftSyntaxError(f"invalid port range {lo}-{hi}: start is after end")
    return f"{lo}-{hi}"


def ports(lo: int, hi: int) -> str:
    """A port or port range in a rule or a non-concatenated set: `80` or `80-90`."""
    return port(lo) if lo == hi else port_range(lo, hi)


def jump(chain: str) -> str:
    return f"jump {name(chain)}"


def goto(chain: str) -> str:
    return f"goto {name(chain)}"


def concat(*parts: str) -> str:
    return " . ".join(parts)


def element(key: str, data: str | None = None, comment: str | None = None) -> str:
    """One set/map element: `key [comment "c"] [: data]`."""
    text = key + (f" comment {string(comment)}" if comment is not None else "")
    return text + (f" : {data}" if data is not None else "")


def elements(items: Iterable[str]) -> str:
    """An element list body `{ a, b }`."""
    return "{ " + ", ".join(items) + " }"


def anon_set(items: list[str]) -> str:
    """A value or an anonymous set for a rule: `x` for one item, `{ x, y }` for several."""
    return items[0] if len(items) == 1 else elements(items)


# ---- the c2c allow element and its port-range merging ----------------------------------------


@dataclass(frozen=True, order=True)
class C2CAllow:
    """`dst ip . source tag . proto . port range` in the c2c allow set."""

    ip: str
    tag: int
    proto: str
    lo: int
    hi: int

    def element(self) -> str:
        port_range(self.lo, self.hi)
        return f"{ipv4(self.ip)} . {mark(self.tag)} . {proto(self.proto)} . {self.lo}-{self.hi}"


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping and adjacent ranges merged and sorted: [(80,90),(85,100),(101,101)] ->
    [(80,101)]."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def _merged_groups(
        entries: Iterable[C2CAllow]) -> list[tuple[str, int, str, list[tuple[int, int]]]]:
    groups: dict[tuple[str, int, str], list[tuple[int, int]]] = {}
    for e in entries:
        if not (isinstance(e.lo, int) and isinstance(e.hi, int) and 0 <= e.lo <= e.hi <= 65535):
            port_range(e.lo, e.hi)  # raises the precise error
        if e.proto not in PROTOCOLS:
            proto(e.proto)
        if not (isinstance(e.tag, int) and 0 <= e.tag <= 0xFFFFFFFF):
            mark(e.tag)
        groups.setdefault((ipv4(e.ip), e.tag, e.proto), []).append((e.lo, e.hi))
    return [(ip, tag, pr, rs if len(rs) == 1 else merge_ranges(rs))
            for (ip, tag, pr), rs in sorted(groups.items(), key=lambda kv: (
                ipv4_key(kv[0][0]), kv[0][1], kv[0][2]))]


def merge_c2c(entries: Iterable[C2CAllow]) -> list[C2CAllow]:
    """Merge port ranges per (ip, tag, proto) so the interval set never gets overlapping elements
    (nft rejects them: "File exists"). Deterministic order."""
    return [C2CAllow(ip, tag, pr, lo, hi) for ip, tag, pr, rs in _merged_groups(entries)
            for lo, hi in rs]


def merge_c2c_elements(entries: Iterable[C2CAllow]) -> list[str]:
    """`merge_c2c`, straight to canonical element text (the agent's hot path)."""
    return [f"{ip} . 0x{tag:x} . {pr} . {lo}-{hi}" for ip, tag, pr, rs in _merged_groups(entries)
            for lo, hi in rs]


# ---- listed JSON -> canonical text --------------------------------------------------------------


def _scalar(v: Any, typ: str, ranged: bool) -> str:
    if isinstance(v, dict):
        if "range" in v:
            a, b = v["range"]
            if typ == "ipv4_addr":
                return ipv4_interval(a, b)
            return f"{_scalar(a, typ, False)}-{_scalar(b, typ, False)}"
        if "prefix" in v:
            p = v["prefix"]
            return cidr(f"{p['addr']}/{p['len']}")
        for verdict in ("jump", "goto"):
            if verdict in v:
                return f"{verdict} {v[verdict]['target']}"
        if len(v) == 1 and next(iter(v.values())) is None:  # {"accept": null}
            return next(iter(v))
        raise NftSyntaxError(f"unexpected nft JSON value {v!r}")
    if typ == "mark":
        return mark(int(v))
    if typ == "inet_proto":
        return proto(v if isinstance(v, int) else str(v))
    if typ == "inet_service":
        return f"{int(v)}-{int(v)}" if ranged else str(int(v))
    if typ in ("ifname", "string"):
        return string(str(v))
    return str(v)


def _value(v: Any, types: list[str], interval: bool) -> str:
    if isinstance(v, dict) and "concat" in v:
        parts = v["concat"]
        if len(parts) != len(types):
            raise NftSyntaxError(f"concatenation {parts!r} does not match type {types!r}")
        return concat(*(_scalar(p, t, interval) for p, t in zip(parts, types)))
    return _scalar(v, types[0], interval and len(types) > 1)


def json_element(e: Any, key_types: list[str], interval: bool,
                 data_type: str | None) -> tuple[str, str | None, str | None]:
    """One listed element (libnftables JSON) -> (canonical key, canonical data or None, comment)."""
    data: Any = None
    if data_type is not None:
        e, data = e
    comment = None
    if isinstance(e, dict) and "elem" in e:
        comment = e["elem"].get("comment")
        e = e["elem"]["val"]
    key = _value(e, key_types, interval)
    if data_type is None:
        return key, None, comment
    if data_type == "verdict":
        return key, _scalar(data, "verdict", False), comment
    return key, _value(data, data_type.split(" . "), False), comment
