"""Silk subnet leases and the overlay address pools they are drawn from. Pure: no I/O.

The overlay network is one or several non-overlapping IPv4 CIDRs, cut into blocks of
`subnet_prefix_length` bits, one block per cell. As upstream, the first block of the first CIDR
is kept back for single-IP leases (`/32`, for cells that run one container), so a /16 with /24
blocks gives 255 cells. Further CIDRs give all of their blocks.

Pools are computed arithmetically rather than materialised, so a /8 cut into /30 blocks costs
nothing; membership is, as upstream, an exact match of the canonical string
(`10.255.30.0/24` is a member, `10.255.30.10/24` and `10.255.30.0/20` are not).
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from cfnet.core.errors import CfnetError

MAX_SUBNET_PREFIX = 30  # a /31 or /32 block leaves no room for containers
_LOOKUP_MAX = 1 << 16  # pools up to this size get a string -> index dict


class LeaseError(CfnetError):
    """A lease or pool definition is invalid."""


@dataclass(frozen=True)
class Lease:
    """One cell's lease: JSON field order as upstream emits it."""

    underlay_ip: str
    overlay_subnet: str
    overlay_hardware_addr: str

    def to_json(self) -> dict[str, str]:
        return {
            "underlay_ip": self.underlay_ip,
            "overlay_subnet": self.overlay_subnet,
            "overlay_hardware_addr": self.overlay_hardware_addr,
        }

    @classmethod
    def from_json(cls, obj: dict[str, object]) -> Lease:
        """Build from decoded JSON, matching keys case-insensitively; missing keys are ''."""
        low = {str(k).lower(): v for k, v in obj.items()}

        def text(key: str) -> str:
            v = low.get(key)
            return v if isinstance(v, str) else ""

        return cls(text("underlay_ip"), text("overlay_subnet"), text("overlay_hardware_addr"))

    @property
    def is_single_ip(self) -> bool:
        return self.overlay_subnet.endswith("/32")


def hardware_addr(base_ip: str) -> str:
    """The VTEP MAC of a lease: `ee:ee:` + the 4 bytes of its base IP (10.255.30.0 -> ee:ee:0a:ff:1e:00)."""
    packed = ipaddress.IPv4Address(base_ip).packed
    return "ee:ee:" + ":".join(f"{b:02x}" for b in packed)


def parse_ipv4(text: str) -> ipaddress.IPv4Address | None:
    """The address, or None unless `text` is a dotted-quad IPv4 address."""
    try:
        return ipaddress.IPv4Address(text)
    except (ipaddress.AddressValueError, ValueError):
        return None


def validate_lease(lease: Lease) -> None:
    """Check a lease sent for renewal, with upstream's messages (Go net.ParseIP/ParseCIDR/ParseMAC)."""
    try:
        ipaddress.ip_address(lease.underlay_ip)
    except ValueError:
        raise LeaseError(f"invalid underlay ip: {lease.underlay_ip}") from None
    try:
        ipaddress.ip_interface(lease.overlay_subnet)
        if "/" not in lease.overlay_subnet:
            raise ValueError
    except ValueError:
        raise LeaseError(f"invalid CIDR address: {lease.overlay_subnet}") from None
    if not _is_mac(lease.overlay_hardware_addr):
        raise LeaseError(f"address {lease.overlay_hardware_addr}: invalid MAC address")


def _is_mac(text: str) -> bool:
    # Go's net.ParseMAC: 6, 8 or 20 octets separated by ':' or '-', or dotted groups of 4 hex digits.
    for sep in (":", "-"):
        parts = text.split(sep)
        if len(parts) in (6, 8, 20) and all(len(p) == 2 and _hex(p) for p in parts):
            return True
    parts = text.split(".")
    return len(parts) in (3, 4, 10) and all(len(p) == 4 and _hex(p) for p in parts)


def _hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


@dataclass(frozen=True)
class _Range:
    """`count` consecutive items of `size` addresses each, the first at integer address `start`."""

    start: int
    count: int
    size: int


def parse_networks(network: str | Sequence[str]) -> list[ipaddress.IPv4Network]:
    """The overlay CIDRs from the `network` config value: one CIDR, a comma-separated list, or a list.

    Host bits are masked as upstream does (`10.255.255.255/12` -> `10.240.0.0/12`).
    """
    if isinstance(network, str):
        items: list[object] = list(network.split(","))
    elif isinstance(network, (list, tuple)):
        items = list(network)
    else:
        raise LeaseError(f"{network!r} is not a CIDR or a list of CIDRs")
    items = [i.strip() if isinstance(i, str) else i for i in items]
    if not items or items == [""]:
        raise LeaseError("network must not be empty")
    nets = []
    for item in items:
        if not isinstance(item, str) or "/" not in item:
            raise LeaseError(f"{item!r} is not an IPv4 CIDR")
        try:
            nets.append(ipaddress.IPv4Network(item, strict=False))
        except ValueError:
            raise LeaseError(f"{item!r} is not an IPv4 CIDR") from None
    for i, a in enumerate(nets):
        for b in nets[i + 1:]:
            if a.overlaps(b):
                raise LeaseError(f"CIDRs {a} and {b} overlap")
    return nets


class CIDRPool:
    """The block pool (one block per cell) and the single-IP pool of an overlay network."""

    def __init__(self, network: str | Sequence[str], subnet_prefix_length: int) -> None:
        nets = parse_networks(network)
        s = subnet_prefix_length
        if not 1 <= s <= MAX_SUBNET_PREFIX:
            raise LeaseError(f"subnet prefix length {s} is not between 1 and {MAX_SUBNET_PREFIX}")
        first = nets[0]
        if s <= first.prefixlen:
            raise LeaseError(f"subnet prefix length /{s} must be longer than the prefix of "
                             f"{first} (its first block is kept for single-IP leases)")
        for net in nets[1:]:
            if s < net.prefixlen:
                raise LeaseError(f"{net} is smaller than one /{s} block")
        self.networks = nets
        self.subnet_prefix_length = s
        block = 1 << (32 - s)
        first_base = int(first.network_address)
        self._blocks = [_Range(first_base + block, (first.num_addresses // block) - 1, block)]
        self._blocks += [_Range(int(n.network_address), n.num_addresses // block, block)
                         for n in nets[1:]]
        self._singles = _Range(first_base + 1, block - 1, 1)
        # Acquire maps every taken subnet to its index: a dict is ~40x faster than parsing, and
        # cheap for pools of realistic size; huge pools fall back to arithmetic.
        self._block_lookup: dict[str, int] | None = None
        self._single_lookup: dict[str, int] | None = None

    # -- sizes and members -----------------------------------------------------------------------

    @property
    def block_pool_size(self) -> int:
        return sum(r.count for r in self._blocks)

    @property
    def single_pool_size(self) -> int:
        return self._singles.count

    def block(self, index: int) -> str:
        """The index-th block of the block pool, in address order of the configured CIDRs."""
        for r in self._blocks:
            if index < r.count:
                return f"{ipaddress.IPv4Address(r.start + index * r.size)}/{self.subnet_prefix_length}"
            index -= r.count
        raise IndexError("block index out of range")

    def single(self, index: int) -> str:
        if not 0 <= index < self._singles.count:
            raise IndexError("single-IP index out of range")
        return f"{ipaddress.IPv4Address(self._singles.start + index)}/32"

    def blocks(self) -> Iterable[str]:
        return (self.block(i) for i in range(self.block_pool_size))

    def singles(self) -> Iterable[str]:
        return (self.single(i) for i in range(self.single_pool_size))

    def block_index(self, subnet: str) -> int | None:
        """The position of `subnet` in the block pool, or None when it is not a member."""
        if self._block_lookup is None and self.block_pool_size <= _LOOKUP_MAX:
            self._block_lookup = {b: i for i, b in enumerate(self.blocks())}
        if self._block_lookup is not None:
            return self._block_lookup.get(subnet)
        base = _canonical(subnet, self.subnet_prefix_length)
        if base is None:
            return None
        offset = 0
        for r in self._blocks:
            if r.start <= base < r.start + r.count * r.size and (base - r.start) % r.size == 0:
                return offset + (base - r.start) // r.size
            offset += r.count
        return None

    def single_index(self, subnet: str) -> int | None:
        if self._single_lookup is None and self.single_pool_size <= _LOOKUP_MAX:
            self._single_lookup = {b: i for i, b in enumerate(self.singles())}
        if self._single_lookup is not None:
            return self._single_lookup.get(subnet)
        base = _canonical(subnet, 32)
        r = self._singles
        return base - r.start if base is not None and r.start <= base < r.start + r.count else None

    def is_block_member(self, subnet: str) -> bool:
        return self.block_index(subnet) is not None

    def is_single_member(self, subnet: str) -> bool:
        return self.single_index(subnet) is not None

    def is_member(self, subnet: str) -> bool:
        """Exact string membership of either pool, as upstream's `IsMember`."""
        return self.is_block_member(subnet) or self.is_single_member(subnet)

    # -- choosing a free subnet ------------------------------------------------------------------

    def free_block(self, taken: Iterable[str], rng: random.Random | None = None) -> str | None:
        """A block not in `taken`, uniformly at random; None when every block is taken."""
        return _pick(self.block_pool_size, self.block, self.block_index, taken, rng)

    def free_single(self, taken: Iterable[str], rng: random.Random | None = None) -> str | None:
        return _pick(self.single_pool_size, self.single, self.single_index, taken, rng)


def _canonical(subnet: str, prefix: int) -> int | None:
    """The base address of `subnet` as an integer, if it is written exactly `a.b.c.d/prefix`."""
    ip, sep, bits = subnet.partition("/")
    if not sep or bits != str(prefix):
        return None
    parts = ip.split(".")
    if len(parts) != 4:
        return None
    value = 0
    for part in parts:
        # Canonical decimal only: no sign, no leading zero, no spaces, at most 255.
        if not (part.isascii() and part.isdigit()) or (len(part) > 1 and part[0] == "0"):
            return None
        octet = int(part)
        if octet > 255:
            return None
        value = value << 8 | octet
    return value


def _pick(size: int, at: Callable[[int], str], index_of: Callable[[str], int | None],
          taken: Iterable[str], rng: random.Random | None) -> str | None:
    rng = rng or random.SystemRandom()
    used = {i for i in map(index_of, taken) if i is not None}
    free = size - len(used)
    if free <= 0:
        return None
    if free * 2 >= size:
        # Mostly free: draw until a free one comes up (expected < 2 draws), never enumerating a
        # pool that may hold millions of blocks.
        while True:
            index = rng.randrange(size)
            if index not in used:
                return at(index)
    # Mostly taken: the pool is at most twice the number of rows, so listing the free ones is cheap.
    return at(rng.choice([i for i in range(size) if i not in used]))
