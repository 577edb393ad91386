"""Strict policy enforcement: drop the conntrack entries of connections a policy change closed.

Upstream keeps established connections after a policy is deleted (the overlay chain accepts
`ct state established,related`). In `strict` mode the agent also deletes, in the cell's own
namespace, every conntrack entry whose original direction goes to a local container IP on a
protocol and destination port that just lost its allowance. The next packet of such a flow is
then tracked anew, fails the allow set and is rejected by the container's overlay chain.

Entries cannot be narrowed by source tag (the kernel does not keep `skb->mark` in conntrack), so
a flow from another app to the same port is also forgotten; its next packet is picked up again
(`nf_conntrack_tcp_loose`), still matches its own allow element and goes on. A closed flow whose
*server* sends first would be picked up mid-stream the same way, from the server's side, and
revive; the strict-only forward chain (`cell_table.strict_lines`) drops new non-SYN TCP from
local containers towards the overlay, so it cannot.

The `conntrack` tool (Debian package conntrack) is used: it lists and deletes by exact tuple.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

from cfnet.core import nft_syntax as nx
from cfnet.core.errors import CfnetError

CONNTRACK = "conntrack"
_FIELD = re.compile(r"(\w+)=(\S+)")


class ConntrackError(CfnetError):
    pass


@dataclass(frozen=True)
class Closed:
    """A (destination ip, protocol, port range) that lost its allowance for some tag."""

    ip: str
    proto: str
    lo: int
    hi: int


def _ranges(elements: Iterable[str]) -> dict[tuple[str, int, str], list[tuple[int, int]]]:
    out: dict[tuple[str, int, str], list[tuple[int, int]]] = {}
    for e in elements:
        ip, tag, proto, ports = (p.strip() for p in e.split(" . "))
        lo, _, hi = ports.partition("-")
        out.setdefault((ip, int(tag, 16), proto), []).append((int(lo), int(hi or lo)))
    return out


def closed_by(old_allow: Iterable[str], new_allow: Iterable[str]) -> list[Closed]:
    """Port ranges allowed by `old_allow` but not by `new_allow` (canonical c2c elements), per
    destination ip and protocol."""
    old, new = _ranges(old_allow), _ranges(new_allow)
    out: set[Closed] = set()
    for (ip, tag, proto), ranges in old.items():
        keep = nx.merge_ranges(new.get((ip, tag, proto), []))
        for lo, hi in nx.merge_ranges(ranges):
            for a, b in _subtract((lo, hi), keep):
                out.add(Closed(ip, proto, a, b))
    return sorted(out, key=lambda c: (c.ip, c.proto, c.lo))


def _subtract(r: tuple[int, int], keep: list[tuple[int, int]]) -> list[tuple[int, int]]:
    lo, hi = r
    out = []
    for a, b in keep:
        if b < lo or a > hi:
            continue
        if a > lo:
            out.append((lo, a - 1))
        lo = max(lo, b + 1)
        if lo > hi:
            return out
    if lo <= hi:
        out.append((lo, hi))
    return out


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([CONNTRACK, *args], capture_output=True, text=True, timeout=10)
    except FileNotFoundError:
        raise ConntrackError("conntrack tool not found (install the conntrack package)") from None
    except subprocess.TimeoutExpired:
        raise ConntrackError(f"conntrack {' '.join(args)} timed out") from None


def delete_closed(closed: Iterable[Closed]) -> int:
    """Delete the conntrack entries of every closed (ip, proto, port range); returns how many."""
    by_target: dict[tuple[str, str], list[Closed]] = {}
    for c in closed:
        by_target.setdefault((c.ip, c.proto), []).append(c)
    deleted = 0
    for (ip, proto), ranges in by_target.items():
        listing = _run(["-L", "-p", proto, "--orig-dst", ip])
        if listing.returncode != 0 and "0 flow entries" not in listing.stderr:
            raise ConntrackError(f"conntrack -L: {listing.stderr.strip()}")
        for line in listing.stdout.splitlines():
            fields: dict[str, str] = {}
            for k, v in _FIELD.findall(line):
                fields.setdefault(k, v)  # the first occurrence is the original direction
            try:
                dport, sport = int(fields["dport"]), int(fields["sport"])
            except (KeyError, ValueError):
                continue
            if fields.get("dst") != ip or not any(c.lo <= dport <= c.hi for c in ranges):
                continue
            result = _run(["-D", "-p", proto, "--orig-src", fields["src"], "--orig-dst", ip,
                           "--orig-port-src", str(sport), "--orig-port-dst", str(dport)])
            if result.returncode == 0:
                deleted += 1
    return deleted
