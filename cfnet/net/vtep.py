"""The Silk VTEP: a VXLAN-GBP device, and the routes, ARP and FDB entries that reach other cells.

The device is built as upstream silk-daemon builds it (spec silk.md 2.3): VNI, UDP port, GBP
(so the low 16 bits of the packet mark cross cells as the group policy id), no learning, the
local underlay address and device, MTU = underlay MTU - 50, a MAC derived from the overlay IP
set at creation, then `<lease base>/<overlay prefix> scope link`. `converge` makes the routes and
permanent neighbour and FDB entries on the device equal to a desired set of remote leases: it
writes what is missing or different, deletes what is no longer wanted, and treats ENOENT/EEXIST
races as success. All functions take an open `pyroute2.IPRoute`, so the caller chooses the
namespace (the daemon runs inside the cell's; tests pass `IPRoute(netns=...)`).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from cfnet.core.errors import CfnetError

VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
MAIN_TABLE = 254
PROTO_BOOT = 3  # what Go's netlink writes; pyroute2 would default to "static"
SCOPE_UNIVERSE = 0
SCOPE_LINK = 253
RTNH_F_ONLINK = 0x04
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
AF_BRIDGE = 7
# Deleting something already gone, or adding something already there, is not a failure.
_GONE = (errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL)


class VtepError(CfnetError):
    """The VTEP could not be built, read or converged; the message names the step."""


class LeaseLike(Protocol):
    """Any lease object: the controller's JSON shape as attributes."""

    underlay_ip: str
    overlay_subnet: str
    overlay_hardware_addr: str


def parse_overlay(network: str) -> list[ipaddress.IPv4Network]:
    """The overlay CIDRs: one CIDR or a comma-separated list (host bits masked, as upstream)."""
    nets = []
    for item in network.split(","):
        try:
            nets.append(ipaddress.IPv4Network(item.strip(), strict=False))
        except ValueError:
            raise VtepError(f"determine overlay network: invalid CIDR address: {item.strip()}") \
                from None
    return nets


def _containing(nets: list[ipaddress.IPv4Network], ip: str) -> ipaddress.IPv4Network | None:
    addr = ipaddress.IPv4Address(ip)
    return next((n for n in nets if addr in n), None)


def mac_for_ip(ip: str, prefix: str = "ee:ee") -> str:
    """`ee:ee:` + the 4 bytes of the IPv4 address (10.255.30.0 -> ee:ee:0a:ff:1e:00)."""
    packed = ipaddress.IPv4Address(ip).packed
    return prefix + "".join(f":{b:02x}" for b in packed)


@dataclass(frozen=True)
class VtepConfig:
    """What the VTEP is made of; `check()` validates it before anything is created."""

    name: str
    vni: int
    port: int
    underlay_ip: str
    overlay_ip: str  # the lease's base IP, e.g. 10.255.30.0
    overlay_network: str  # e.g. 10.255.0.0/16 (or a comma-separated list of CIDRs)
    mac: str
    subnet_prefix_length: int = 24
    underlay_interface: str = ""  # empty: the interface that carries underlay_ip

    def local_network(self) -> ipaddress.IPv4Network:
        """The overlay CIDR that holds this cell's lease: the VTEP address gets its prefix."""
        net = _containing(parse_overlay(self.overlay_network), self.overlay_ip)
        if net is None:
            raise VtepError(f"determine overlay network: {self.overlay_ip} is not in "
                            f"{self.overlay_network}")
        return net

    def check(self) -> None:
        if not self.name:
            raise VtepError("empty vtep name")
        if self.port <= 0:
            raise VtepError("vtep port must be greater than 0")
        for what, ip in (("parse underlay ip", self.underlay_ip),
                         ("determine vtep overlay ip", self.overlay_ip)):
            try:
                ipaddress.IPv4Address(ip)
            except ValueError:
                raise VtepError(f"{what}: {ip}") from None
        if parse_mac(self.mac) is None:
            raise VtepError(f"parsing hardware address: {self.mac}")
        net = self.local_network()
        # With several CIDRs a later one may be exactly one block (the controller allows it).
        single = len(parse_overlay(self.overlay_network)) == 1
        if net.prefixlen > self.subnet_prefix_length or (
                single and net.prefixlen == self.subnet_prefix_length):
            raise VtepError(f"overlay prefix {net.prefixlen} must be smaller than subnet prefix "
                            f"{self.subnet_prefix_length}")


@dataclass(frozen=True)
class VtepInfo:
    """A VTEP as the kernel reports it."""

    index: int
    name: str
    mac: str
    mtu: int
    up: bool
    vni: int | None
    port: int | None
    gbp: bool
    learning: bool
    local: str | None
    link: int | None
    addresses: list[tuple[str, int, int]] = field(default_factory=list)  # (ip, prefixlen, scope)

    @property
    def first_ipv4(self) -> str | None:
        return self.addresses[0][0] if self.addresses else None


def parse_mac(text: str) -> str | None:
    """The MAC in canonical lower-case colon form, or None if it is not 6 hex bytes."""
    parts = text.strip().lower().replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        return None
    try:
        return ":".join(f"{int(p, 16):02x}" for p in parts)
    except ValueError:
        return None


def _netlink_errno(e: BaseException) -> int | None:
    return getattr(e, "code", None)


def _lookup(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def underlay_device(ipr: Any, underlay_ip: str, interface: str = "") -> tuple[int, int]:
    """(ifindex, MTU) of the underlay device: the named one, else the one carrying `underlay_ip`."""
    if interface:
        index = _lookup(ipr, interface)
        if index is None:
            raise VtepError(f"find device from name {interface}: no such network interface")
    else:
        matches = [a["index"] for a in ipr.get_addr(family=socket.AF_INET)
                   if a.get("IFA_ADDRESS") == underlay_ip or a.get("IFA_LOCAL") == underlay_ip]
        if not matches:
            raise VtepError(f"no interface with address {underlay_ip}")
        index = matches[0]
    link = ipr.get_links(index)[0]
    return index, int(link.get("IFLA_MTU"))


def inspect(ipr: Any, name: str) -> VtepInfo | None:
    """The VTEP `name` as the kernel has it, or None if there is no such link."""
    index = _lookup(ipr, name)
    if index is None:
        return None
    link = ipr.get_links(index)[0]
    info = link.get(("IFLA_LINKINFO", "IFLA_INFO_DATA")) or {}
    data = info if hasattr(info, "get") else {}

    def attr(key: str) -> Any:
        return data.get(key) if data else None

    addresses = [(a.get("IFA_ADDRESS"), a["prefixlen"], a["scope"])
                 for a in ipr.get_addr(index=index, family=socket.AF_INET)]
    learning = attr("IFLA_VXLAN_LEARNING")
    return VtepInfo(
        index=index, name=name, mac=link.get("IFLA_ADDRESS"), mtu=int(link.get("IFLA_MTU")),
        up=bool(link["flags"] & 1), vni=attr("IFLA_VXLAN_ID"), port=attr("IFLA_VXLAN_PORT"),
        gbp=bool(attr("IFLA_VXLAN_GBP")), learning=bool(learning) if learning is not None else True,
        local=attr("IFLA_VXLAN_LOCAL"), link=attr("IFLA_VXLAN_LINK"), addresses=addresses,
    )


def delete(ipr: Any, name: str) -> bool:
    """Delete link `name`; True if it existed. Routes and neighbours on it go with it."""
    index = _lookup(ipr, name)
    if index is None:
        return False
    try:
        ipr.link("del", index=index)
    except Exception as e:  # noqa: BLE001 - pyroute2 raises NetlinkError
        if _netlink_errno(e) in _GONE:
            return False
        raise VtepError(f"delete vtep: delete link {name}: {e}") from None
    return True


def create(ipr: Any, cfg: VtepConfig) -> VtepInfo:
    """Build the VTEP from scratch (an existing link of that name is deleted first)."""
    cfg.check()
    underlay_index, underlay_mtu = underlay_device(ipr, cfg.underlay_ip, cfg.underlay_interface)
    prefix = cfg.local_network().prefixlen
    delete(ipr, cfg.name)
    try:
        ipr.link("add", ifname=cfg.name, kind="vxlan", address=parse_mac(cfg.mac),
                 mtu=underlay_mtu - VXLAN_OVERHEAD, vxlan_id=cfg.vni, vxlan_link=underlay_index,
                 vxlan_local=cfg.underlay_ip, vxlan_ttl=0, vxlan_tos=0, vxlan_learning=0,
                 vxlan_proxy=0, vxlan_rsc=0, vxlan_l2miss=0, vxlan_l3miss=0,
                 vxlan_udp_zero_csum6_tx=0, vxlan_udp_zero_csum6_rx=0, vxlan_port=cfg.port,
                 vxlan_gbp=True)
    except Exception as e:  # noqa: BLE001
        raise VtepError(f"create vtep: create link {cfg.name}: {e}") from None
    index = _lookup(ipr, cfg.name)
    try:
        ipr.link("set", index=index, state="up")
        ipr.addr("add", index=index, address=cfg.overlay_ip, prefixlen=prefix, scope=SCOPE_LINK)
    except Exception as e:  # noqa: BLE001
        delete(ipr, cfg.name)  # never leave a half-built device behind
        raise VtepError(f"create vtep: configure {cfg.name}: {e}") from None
    info = inspect(ipr, cfg.name)
    assert info is not None
    return info


# ---- convergence ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Peer:
    subnet: ipaddress.IPv4Network
    base: str
    underlay_ip: str
    mac: str


@dataclass
class ConvergeResult:
    """What one convergence changed (counts), for logs and tests."""

    peers: int = 0
    non_routable: int = 0
    routes_written: int = 0
    routes_deleted: int = 0
    neighbours_written: int = 0
    neighbours_deleted: int = 0

    @property
    def changed(self) -> bool:
        return any((self.routes_written, self.routes_deleted, self.neighbours_written,
                    self.neighbours_deleted))


def _parse_lease(lease: LeaseLike) -> _Peer:
    try:
        subnet = ipaddress.IPv4Network(lease.overlay_subnet, strict=False)
    except ValueError:
        raise VtepError(f"parse lease: invalid CIDR address: {lease.overlay_subnet}") from None
    try:
        ipaddress.IPv4Address(lease.underlay_ip)
    except ValueError:
        raise VtepError(f"parse lease: invalid underlay ip: {lease.underlay_ip}") from None
    mac = parse_mac(lease.overlay_hardware_addr)
    if mac is None:
        raise VtepError(f"parse lease: invalid hardware addr: {lease.overlay_hardware_addr}")
    return _Peer(subnet, str(subnet.network_address), lease.underlay_ip, mac)


def desired_peers(leases: Iterable[LeaseLike], local_subnet: str,
                  overlay_network: str) -> tuple[list[_Peer], int]:
    """The remote peers to program, and how many leases were not routable (outside the overlay).

    Every lease is parsed before anything is written, so one malformed lease changes nothing.
    """
    local = ipaddress.IPv4Network(local_subnet, strict=False)
    overlay = parse_overlay(overlay_network)
    peers: dict[str, _Peer] = {}
    non_routable = 0
    for lease in leases:
        peer = _parse_lease(lease)
        if peer.subnet == local:
            continue
        if _containing(overlay, peer.base) is None:
            non_routable += 1
            continue
        peers[str(peer.subnet)] = peer
    return list(peers.values()), non_routable


def converge(ipr: Any, index: int, local_subnet: str, overlay_network: str,
             leases: Iterable[LeaseLike]) -> ConvergeResult:
    """Make routes, ARP and FDB entries on VTEP `index` match `leases` (spec silk.md 2.4)."""
    peers, non_routable = desired_peers(leases, local_subnet, overlay_network)
    result = ConvergeResult(peers=len(peers), non_routable=non_routable)
    overlay = parse_overlay(overlay_network)
    local_base = str(ipaddress.IPv4Network(local_subnet, strict=False).network_address)
    # Peers in the overlay CIDR holding our own lease are on-link through the VTEP address's
    # connected route (upstream's shape, no flag); with several CIDRs the others need `onlink`.
    local_net = _containing(overlay, local_base)

    def onlink(peer: _Peer) -> int:
        return 0 if local_net is not None and peer.subnet.subnet_of(local_net) else RTNH_F_ONLINK

    # Routes: dst via the peer's base IP, src = our base IP, proto boot, scope universe.
    want_routes = {str(p.subnet): p for p in peers}
    have_routes: list[tuple[str, str, bool]] = []  # (dst, gateway, exactly as we write it)
    for r in ipr.get_routes(family=socket.AF_INET, table=MAIN_TABLE):
        gw = r.get("RTA_GATEWAY")
        if r.get("RTA_OIF") != index or gw is None or _containing(overlay, gw) is None:
            continue  # the kernel's connected route and routes we did not make stay
        dst = f"{r.get('RTA_DST')}/{r['dst_len']}"
        peer = want_routes.get(dst)
        exact = (peer is not None and gw == peer.base and r.get("RTA_PREFSRC") == local_base
                 and r["proto"] == PROTO_BOOT and r["scope"] == SCOPE_UNIVERSE
                 and r["flags"] & RTNH_F_ONLINK == onlink(peer))
        have_routes.append((dst, gw, exact))
    in_place = {dst for dst, _, exact in have_routes if exact}
    for dst, peer in want_routes.items():
        if dst in in_place:
            continue
        # replace, not add: a route to this subnet via an old gateway is overwritten in place
        ipr.route("replace", dst=dst, gateway=peer.base, oif=index, prefsrc=local_base,
                  scope=SCOPE_UNIVERSE, proto=PROTO_BOOT, table=MAIN_TABLE, flags=onlink(peer))
        result.routes_written += 1
    for dst, gw, _ in have_routes:
        if dst in want_routes:
            continue
        if _ignore_gone(lambda: ipr.route("del", dst=dst, gateway=gw, oif=index,
                                          table=MAIN_TABLE)):
            result.routes_deleted += 1

    # ARP: base IP -> peer MAC, permanent.
    want_arp = {(p.base, p.mac) for p in peers}
    have_arp = set()
    for n in ipr.get_neighbours(ifindex=index, family=socket.AF_INET):
        ip, mac = n.get("NDA_DST"), (n.get("NDA_LLADDR") or "").lower()
        if n["state"] == NUD_PERMANENT and (ip, mac) in want_arp:
            have_arp.add((ip, mac))
        elif ip and _ignore_gone(lambda: ipr.neigh("del", dst=ip, ifindex=index)):
            result.neighbours_deleted += 1
    for ip, mac in sorted(want_arp - have_arp):
        ipr.neigh("replace", dst=ip, lladdr=mac, ifindex=index, state=NUD_PERMANENT)
        result.neighbours_written += 1

    # FDB: peer MAC -> peer underlay IP, self, permanent.
    want_fdb = {(p.mac, p.underlay_ip) for p in peers}
    have_fdb = set()
    for n in ipr.get_neighbours(ifindex=index, family=AF_BRIDGE):
        mac, dst = (n.get("NDA_LLADDR") or "").lower(), n.get("NDA_DST")
        if (n["state"] == NUD_PERMANENT and n["flags"] & NTF_SELF and (mac, dst) in want_fdb):
            have_fdb.add((mac, dst))
            continue
        kwargs = {"dst": dst} if dst else {}
        if _ignore_gone(lambda: ipr.fdb("del", ifindex=index, lladdr=mac, **kwargs)):
            result.neighbours_deleted += 1
    for mac, dst in sorted(want_fdb - have_fdb):
        ipr.fdb("replace", ifindex=index, lladdr=mac, dst=dst, state=NUD_PERMANENT, flags=NTF_SELF)
        result.neighbours_written += 1
    return result


def _ignore_gone(op: Any) -> bool:
    """Run a delete; False (not an error) when the object was already gone."""
    try:
        op()
    except Exception as e:  # noqa: BLE001
        if _netlink_errno(e) in _GONE:
            return False
        raise
    return True


# ---- neighbour table size ------------------------------------------------------------------


def arp_thresholds(ipr: Any) -> tuple[int, int, int] | None:
    """The kernel's ARP gc_thresh1..3. They are global, and netlink shows them in any namespace
    (/proc/sys/net/ipv4/neigh/default/ exists only in the initial one)."""
    for table in ipr.get_ntables(family=socket.AF_INET):
        if table.get("NDTA_NAME") == "arp_cache":
            values = (table.get("NDTA_THRESH1"), table.get("NDTA_THRESH2"),
                      table.get("NDTA_THRESH3"))
            if all(isinstance(v, int) for v in values):
                return values  # type: ignore[return-value]
    return None


def permanent_entries_counted(release: str | None = None) -> bool:
    """True on kernels older than 4.20, which count permanent neighbours against gc_thresh3
    (newer ones exempt them: "neighbor: Improve garbage collection")."""
    import os
    import re

    m = re.match(r"(\d+)\.(\d+)", release or os.uname().release)
    return m is not None and (int(m.group(1)), int(m.group(2))) < (4, 20)


def neighbour_table_warning(remote_leases: int, thresholds: tuple[int, int, int] | None,
                            headroom: int = 0, permanent_counted: bool = False) -> str | None:
    """Why the ARP table may be too small for `remote_leases` (+ `headroom`), or None.

    Every remote cell costs a dynamic ARP entry for its underlay address (when on-link), which
    the kernel counts against the global gc_thresh values on every kernel: above gc_thresh2 it
    garbage-collects aggressively, at gc_thresh3 it drops ("neighbour table overflow") and
    encapsulated traffic to some cells stalls. Older kernels also count the permanent overlay
    entry of each remote cell (`permanent_counted`).
    """
    if thresholds is None:
        return None
    _, soft, hard = thresholds
    needed = remote_leases * (2 if permanent_counted else 1) + headroom
    if needed >= hard:
        return f"{needed} neighbour entries needed, gc_thresh3 is {hard}"
    if needed >= soft:
        return f"{needed} neighbour entries needed, gc_thresh2 is {soft}"
    return None
