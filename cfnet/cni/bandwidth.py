"""`cfnet cni bandwidth`: per-container rate and burst (spec dataplane 5), with pyroute2.

A chained plugin with the upstream `bandwidth` plugin's config keys: `ingressRate`/`egressRate`
in bits per second and `ingressBurst`/`egressBurst` in bits, in the plugin entry or (when the
entry has none of them) in `runtimeConfig.bandwidth`. It runs after the wrapper in the conflist,
as upstream's does after cni-wrapper-plugin, so one config list drives either implementation.

- Traffic *to* the container ("ingress"): a root `tbf` qdisc on the host-side veth.
- Traffic *from* the container ("egress"): an `ingress` qdisc on the host veth with a match-all
  u32 filter whose action redirects every packet to an IFB device, which has the root `tbf`.
- tbf as upstream: rate/8 bytes per second, burst/8 bytes, latency 25 ms (limit = rate x latency
  + burst).
- The IFB is named `bwp` + 12 hex digits of sha512(network name + container ID) (15 bytes, as
  upstream). Each IFB carries the alias `cfnet-bandwidth <network> <container>`, so a name already
  taken by another container's IFB is detected and the next 12 hex digits of the hash are used,
  and DEL finds the device by alias whatever its name.

Checked before anything is made (CNI error 7): rate needs burst and burst needs rate (upstream
texts), burst below 4 GB, and (cfnet) a burst of at least one MTU of the host veth, since tbf
drops every packet larger than its bucket. Any failure removes what this call made. DEL removes
the IFB and the qdiscs (the veth itself is silk's); it is idempotent.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from typing import Any

from cfnet.cni.types import SUPPORTED_VERSIONS, CmdArgs, CNIError, Code, Interface, Result
from cfnet.net.setns import inside

LATENCY_US = 25_000
MAX_IFNAME = 15
IFB_PREFIX = "bwp"
ALIAS_PREFIX = "cfnet-bandwidth"
ROOT_HANDLE = 0x10000  # 1:
TC_H_ROOT = 0xFFFFFFFF
INGRESS_HANDLE = 0xFFFF0000  # ffff:
ETH_P_ALL = 0x0003
VALID_ATTACHMENTS = "cni.dev/valid-attachments"
KEYS = ("ingressRate", "ingressBurst", "egressRate", "egressBurst")


@dataclass
class Limits:
    ingress_rate: int = 0  # bits per second
    ingress_burst: int = 0  # bits
    egress_rate: int = 0
    egress_burst: int = 0

    @property
    def zero(self) -> bool:
        return not (self.ingress_rate or self.ingress_burst or self.egress_rate
                    or self.egress_burst)


def _bad(msg: str) -> CNIError:
    return CNIError(Code.INVALID_CONFIG, msg)


def _validate_pair(rate: int, burst: int) -> None:
    if rate > 0 and burst <= 0:
        raise _bad("if rate is set, burst must also be set")
    if rate <= 0 and burst > 0:
        raise _bad("if burst is set, rate must also be set")
    if burst // 8 >= 2**32 - 1:
        raise _bad("burst cannot be more than 4GB")
    if rate // 8 >= 2**32:
        raise _bad("rate cannot be more than 4GB per second")


def parse_limits(conf: dict[str, Any]) -> Limits:
    """The limits of the plugin entry, else of `runtimeConfig.bandwidth` (upstream's order)."""
    source: Any = conf if any(k in conf for k in KEYS) else None
    if source is None:
        runtime = conf.get("runtimeConfig") or {}
        source = runtime.get("bandwidth") if isinstance(runtime, dict) else None
    if source is None:
        return Limits()
    if not isinstance(source, dict):
        raise _bad("invalid config: key 'runtimeConfig.bandwidth' must be an object")
    values = []
    for key in KEYS:
        v = source.get(key, 0)
        if v is None:
            v = 0
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise _bad(f"invalid config: key '{key}' must be a non-negative integer")
        values.append(v)
    limits = Limits(*values)
    _validate_pair(limits.ingress_rate, limits.ingress_burst)
    _validate_pair(limits.egress_rate, limits.egress_burst)
    return limits


def check_mtu(limits: Limits, mtu: int) -> None:
    """cfnet: a bucket smaller than one packet would drop every full-size packet."""
    for what, burst in (("ingressBurst", limits.ingress_burst),
                        ("egressBurst", limits.egress_burst)):
        if burst and burst // 8 < mtu:
            raise _bad(f"{what} {burst} bits is less than one MTU of the host interface "
                       f"({mtu} bytes = {mtu * 8} bits)")


def ifb_candidates(network: str, container_id: str) -> list[str]:
    """IFB names in order of preference: `bwp` + successive 12-hex-digit slices of the hash."""
    digest = hashlib.sha512((network + container_id).encode()).hexdigest()
    n = MAX_IFNAME - len(IFB_PREFIX)
    return [IFB_PREFIX + digest[i:i + n] for i in range(0, len(digest) - n + 1, n)]


def ifb_alias(network: str, container_id: str) -> str:
    return f"{ALIAS_PREFIX} {network} {container_id}"


def tbf_params(rate_bits: int, burst_bits: int) -> dict[str, Any]:
    """pyroute2 tbf arguments as upstream computes them (bytes, 25 ms latency)."""
    return {"rate": rate_bits // 8, "burst": burst_bits // 8, "latency": LATENCY_US}


# ---- kernel helpers -------------------------------------------------------------------------

class Kernel:
    """pyroute2 sockets of one call: the host's (this namespace) and the container's."""

    def __init__(self) -> None:
        from pyroute2 import IPRoute

        self._cls = IPRoute
        self.host = IPRoute()
        self._opened = [self.host]

    def open_in(self, ns_fd: int) -> Any:
        with inside(ns_fd):
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0)  # NETLINK_ROUTE
        ipr = self._cls(fileno=sock.detach(), groups=0)
        self._opened.append(ipr)
        return ipr

    def close(self) -> None:
        for ipr in self._opened:
            try:
                ipr.close()
            except Exception:
                pass
        self._opened.clear()



def _errno(e: BaseException) -> int | None:
    code = getattr(e, "code", None)
    return code if isinstance(code, int) else getattr(e, "errno", None)


def _links_by_alias(ipr: Any, prefix: str) -> dict[str, tuple[int, str]]:
    """alias -> (index, name) of links whose alias starts with `prefix`."""
    out = {}
    for link in ipr.get_links():
        alias = link.get_attr("IFLA_IFALIAS")
        if alias and alias.startswith(prefix):
            out[alias] = (int(link["index"]), link.get_attr("IFLA_IFNAME"))
    return out


def _link_by_name(ipr: Any, name: str) -> Any | None:
    try:
        links = ipr.link("get", ifname=name)
    except Exception as e:
        if _errno(e) in (19, 2):  # ENODEV, ENOENT
            return None
        raise
    return links[0] if links else None


def _del_qdisc(ipr: Any, kind: str, index: int, handle: int) -> None:
    """Delete the root tbf or the ingress qdisc of a link; one that is gone already is fine.
    (No kind for the root qdisc: pyroute2 would want tbf's rate parameters to delete it.)"""
    try:
        if kind == "ingress":
            ipr.tc("del", "ingress", index=index, handle=handle)
        else:
            ipr.tc("del", index=index, handle=handle, parent=TC_H_ROOT)
    except Exception as e:
        if _errno(e) not in (2, 19, 22):  # gone already
            raise


class BandwidthPlugin:
    """`cfnet cni bandwidth`: the Plugin interface of cfnet.cni.plugin."""

    name = "bandwidth"
    supported_versions = SUPPORTED_VERSIONS

    def __init__(self, log: Any = None) -> None:
        self.log = log

    def _log(self, level: str, event: str, **data: Any) -> None:
        if self.log is not None:
            getattr(self.log, level)(event, **data)

    # -- ADD ----------------------------------------------------------------------------------

    def add(self, conf: dict[str, Any], args: CmdArgs) -> Result:
        limits = parse_limits(conf)
        if not conf.get("prevResult"):
            if limits.zero:
                return Result()
            raise CNIError(Code.INVALID_CONFIG, "must be called as chained plugin")
        result = Result.from_dict(conf["prevResult"])
        if limits.zero:
            return result
        kernel = Kernel()
        made: list[tuple[str, int]] = []
        try:
            host_index, host_name, mtu = self._host_interface(kernel, result, args)
            check_mtu(limits, mtu)
            ipr = kernel.host
            if limits.ingress_rate:
                ipr.tc("add", "tbf", index=host_index, handle=ROOT_HANDLE,
                       **tbf_params(limits.ingress_rate, limits.ingress_burst))
                made.append(("tbf", host_index))
            if limits.egress_rate:
                name = self._ifb_name(ipr, conf["name"], args.container_id)
                ipr.link("add", ifname=name, kind="ifb", mtu=mtu, txqlen=0)
                ifb = _link_by_name(ipr, name)
                ifb_index = int(ifb["index"])
                made.append(("ifb", ifb_index))
                ipr.link("set", index=ifb_index, state="up",
                         IFLA_IFALIAS=ifb_alias(conf["name"], args.container_id))
                ipr.tc("add", "ingress", index=host_index, handle=INGRESS_HANDLE)
                made.append(("ingress", host_index))
                ipr.tc("add-filter", "u32", index=host_index, parent=INGRESS_HANDLE, prio=1,
                       protocol=ETH_P_ALL, target=0x10001, keys=["0x0/0x0+0"],
                       action={"kind": "mirred", "direction": "egress", "action": "redirect",
                               "ifindex": ifb_index})
                ipr.tc("add", "tbf", index=ifb_index, handle=ROOT_HANDLE,
                       **tbf_params(limits.egress_rate, limits.egress_burst))
                result.interfaces.append(Interface(name=name, mac=ifb.get_attr("IFLA_ADDRESS")))
            self._log("info", "add", container=args.container_id, host_interface=host_name,
                      ingress_rate=limits.ingress_rate, egress_rate=limits.egress_rate)
            return result
        except BaseException as e:
            self._undo(kernel, made, args.container_id)
            if isinstance(e, CNIError) or not isinstance(e, Exception):
                raise
            raise CNIError(Code.INTERNAL, f"bandwidth: {e}") from None
        finally:
            kernel.close()

    def _host_interface(self, kernel: Any, result: Result, args: CmdArgs) -> tuple[int, str, int]:
        """(index, name, MTU) of the host end of the container's veth, which must be one of the
        result's interfaces without a sandbox."""
        if not result.interfaces:
            raise CNIError(Code.INTERNAL, "no interfaces provided")
        try:
            fd = os.open(args.netns, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise CNIError(Code.INTERNAL, f"failed to open netns {args.netns!r}: "
                                          f"{e.strerror or e}") from None
        try:
            inner = _link_by_name(kernel.open_in(fd), args.ifname)
        finally:
            os.close(fd)
        peer = inner.get_attr("IFLA_LINK") if inner is not None else None
        if not peer:
            raise CNIError(Code.INTERNAL, f"container interface {args.ifname} is not a veth")
        host = kernel.host.link("get", index=int(peer))[0]
        name = host.get_attr("IFLA_IFNAME")
        if not any(i.name == name and not i.sandbox for i in result.interfaces):
            names = ", ".join(i.name for i in result.interfaces)
            raise CNIError(Code.INTERNAL, f"no host interface found. expected one of "
                                          f"interfaces: [{names}]")
        return int(host["index"]), name, int(host.get_attr("IFLA_MTU"))

    @staticmethod
    def _ifb_name(ipr: Any, network: str, container_id: str) -> str:
        """The first candidate name that is free; a stale IFB of this same container (a crashed
        earlier ADD) is removed and its name reused."""
        alias = ifb_alias(network, container_id)
        for name in ifb_candidates(network, container_id):
            link = _link_by_name(ipr, name)
            if link is None:
                return name
            if link.get_attr("IFLA_IFALIAS") == alias:
                ipr.link("del", index=int(link["index"]))
                return name
        raise CNIError(Code.INTERNAL, f"no free IFB device name for {container_id}")

    def _undo(self, kernel: Any, made: list[tuple[str, int]], container_id: str) -> None:
        for kind, index in reversed(made):
            try:
                if kind == "ifb":
                    kernel.host.link("del", index=index)
                elif kind == "tbf":
                    _del_qdisc(kernel.host, "tbf", index, ROOT_HANDLE)
                elif kind == "ingress":
                    _del_qdisc(kernel.host, "ingress", index, INGRESS_HANDLE)
            except Exception as e:
                if _errno(e) in (2, 19):
                    continue
                self._log("error", "rollback-failed", container=container_id, step=kind,
                          error=str(e))

    # -- DEL ----------------------------------------------------------------------------------

    def delete(self, conf: dict[str, Any], args: CmdArgs) -> None:
        """Remove this container's IFB (found by alias, else by name) and the qdiscs on the host
        veth if it is still there. Missing pieces are fine."""
        kernel = Kernel()
        try:
            ipr = kernel.host
            alias = ifb_alias(conf["name"], args.container_id)
            found = _links_by_alias(ipr, alias)
            targets = [found[alias][0]] if alias in found else []
            if not targets:
                link = _link_by_name(ipr, ifb_candidates(conf["name"], args.container_id)[0])
                if link is not None and not link.get_attr("IFLA_IFALIAS"):
                    targets.append(int(link["index"]))  # an IFB made without an alias
            for index in targets:
                try:
                    ipr.link("del", index=index)
                except Exception as e:
                    if _errno(e) not in (2, 19):
                        raise
            self._clear_host_qdiscs(kernel, conf, args)
        except CNIError:
            raise
        except Exception as e:
            raise CNIError(Code.INTERNAL, f"bandwidth: delete: {e}") from None
        finally:
            kernel.close()
        self._log("info", "del", container=args.container_id)

    def _clear_host_qdiscs(self, kernel: Any, conf: dict[str, Any], args: CmdArgs) -> None:
        if not args.netns:
            return
        try:
            fd = os.open(args.netns, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            inner = _link_by_name(kernel.open_in(fd), args.ifname)
        finally:
            os.close(fd)
        peer = inner.get_attr("IFLA_LINK") if inner is not None else None
        if peer:
            _del_qdisc(kernel.host, "tbf", int(peer), ROOT_HANDLE)
            _del_qdisc(kernel.host, "ingress", int(peer), INGRESS_HANDLE)

    # -- CHECK, GC, STATUS --------------------------------------------------------------------

    def check(self, conf: dict[str, Any], args: CmdArgs) -> None:
        limits = parse_limits(conf)
        if limits.zero:
            return
        if not conf.get("prevResult"):
            raise CNIError(Code.INVALID_CONFIG, "must be called as chained plugin")
        result = Result.from_dict(conf["prevResult"])
        kernel = Kernel()
        try:
            index, name, _mtu = self._host_interface(kernel, result, args)
            kinds = {q.get_attr("TCA_KIND") for q in kernel.host.get_qdiscs(index=index)}
            if limits.ingress_rate and "tbf" not in kinds:
                raise CNIError(Code.INTERNAL, f"check failed: no tbf qdisc on {name}")
            if limits.egress_rate:
                if "ingress" not in kinds:
                    raise CNIError(Code.INTERNAL, f"check failed: no ingress qdisc on {name}")
                alias = ifb_alias(conf["name"], args.container_id)
                if alias not in _links_by_alias(kernel.host, alias):
                    raise CNIError(Code.INTERNAL, f"check failed: no IFB device for "
                                                  f"{args.container_id}")
        finally:
            kernel.close()

    def gc(self, conf: dict[str, Any], args: CmdArgs) -> None:
        """Remove this network's IFBs whose container is not a valid attachment."""
        raw = conf.get(VALID_ATTACHMENTS)
        if not isinstance(raw, list):
            raise CNIError(Code.INVALID_CONFIG,
                           f"invalid config: key '{VALID_ATTACHMENTS}' must be a list for GC")
        valid = {ifb_alias(conf["name"], str(a.get("containerID")))
                 for a in raw if isinstance(a, dict)}
        kernel = Kernel()
        try:
            prefix = f"{ALIAS_PREFIX} {conf['name']} "
            for alias, (index, _name) in _links_by_alias(kernel.host, prefix).items():
                if alias not in valid:
                    kernel.host.link("del", index=index)
        finally:
            kernel.close()

    def status(self, conf: dict[str, Any], args: CmdArgs) -> None:
        parse_limits(conf)
