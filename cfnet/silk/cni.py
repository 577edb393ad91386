"""The silk CNI plugin: one veth per container on the cell's flat /32-routed overlay subnet.

ADD follows spec silk 3.3 (names, MACs, 169.254.0.1 gateway, NOARP + permanent neighbours, /32
peer addresses, MTU, sysctls, host-local IPAM, the container store) with one deliberate change:
a failure at any step rolls back every earlier step, so a failed ADD leaves no address, device,
file or route behind and the next ADD of the same container succeeds. DEL is idempotent and
needs neither the daemon, nor the namespace, nor a prevResult. CHECK, GC and STATUS are real.

Kernel work goes through one netlink socket per namespace, opened once per call: the host side
in the namespace we run in (the cell's), the container side through a socket created inside
CNI_NETNS with setns(2) on this thread (no helper process). The container's veth end is created
directly inside its namespace under its final name, so a name clash fails the one message that
would have made it, before anything exists.
"""

from __future__ import annotations

import ctypes
import errno
import importlib.util
import os
import socket
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cfnet.cni.types import (
    SUPPORTED_VERSIONS,
    CmdArgs,
    CNIError,
    Code,
    Interface,
    IPConfig,
    Result,
    Route,
    config_key,
)
from cfnet.silk import netinfo as netinfo_mod
from cfnet.silk.ipam import ContainerStore, HostLocal, IPAMError, StoreError

HOST_IP = "169.254.0.1"
DEFAULT_DAEMON_PORT = 23954
DEFAULT_DATA_DIR = "/var/vcap/data/host-local"
VXLAN_OVERHEAD = 50
VALID_ATTACHMENTS = "cni.dev/valid-attachments"

IFF_UP = 0x1
IFF_NOARP = 0x80
NUD_PERMANENT = 0x80
RT_SCOPE_LINK = 253
RTPROT_BOOT = 3
CLONE_NEWNET = 0x40000000


# ---------------------------------------------------------------------------------------------
# Names and config


def host_veth_name(ip: str) -> str:
    """`s-` + each octet zero-padded: 10.255.30.2 -> s-010255030002."""
    return "s-" + "".join(f"{int(o):03d}" for o in ip.split("."))


def _mac(prefix: str, ip: str) -> str:
    return prefix + "".join(f":{int(o):02x}" for o in ip.split("."))


def host_mac(ip: str) -> str:
    return _mac("aa:aa", ip)


def container_mac(ip: str) -> str:
    return _mac("ee:ee", ip)


def container_mtu(configured: int, daemon_mtu: int) -> int:
    """The config's `mtu` (BOSH writes the underlay MTU minus 50 there) wins over the VTEP's."""
    return configured if configured > 0 else daemon_mtu


@dataclass
class SilkConfig:
    name: str
    cni_version: str
    daemon_port: int = DEFAULT_DAEMON_PORT
    data_dir: str = DEFAULT_DATA_DIR
    datastore: str = ""
    mtu: int = 0
    subnet_file: str = ""

    @classmethod
    def from_conf(cls, conf: dict[str, Any]) -> SilkConfig:
        """The silk NetConf keys (spec silk 3.2); a bad value is code 7 naming the key."""
        return cls(
            name=conf["name"],
            cni_version=str(conf.get("cniVersion", "")),
            daemon_port=config_key(conf, "daemonPort", int, DEFAULT_DAEMON_PORT, minimum=1),
            data_dir=config_key(conf, "dataDir", str, DEFAULT_DATA_DIR) or DEFAULT_DATA_DIR,
            datastore=config_key(conf, "datastore", str, ""),
            mtu=config_key(conf, "mtu", int, 0, minimum=0),
            subnet_file=config_key(conf, "subnetFile", str, ""),
        )


# ---------------------------------------------------------------------------------------------
# Netlink: pyroute2, loaded without its package __init__ (which imports every pyroute2 module and
# costs ~50 ms more per container). The stub completes itself if anyone asks it for a name.


def _load_iproute() -> Any:
    if "pyroute2" not in sys.modules:
        spec = importlib.util.find_spec("pyroute2")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("pyroute2 is not installed")
        stub = types.ModuleType("pyroute2")
        stub.__path__ = list(spec.submodule_search_locations)
        stub.__spec__ = spec
        stub.__file__ = spec.origin
        stub.__getattr__ = _complete_pyroute2(stub, spec.origin or "")  # type: ignore[attr-defined]
        sys.modules["pyroute2"] = stub
    from pyroute2.iproute.linux import IPRoute

    return IPRoute


def _complete_pyroute2(stub: types.ModuleType, origin: str) -> Any:
    def __getattr__(name: str) -> Any:
        if name.startswith("__") or importlib.util.find_spec(f"pyroute2.{name}") is not None:
            raise AttributeError(name)  # dunders and submodules: the import system's business
        del stub.__dict__["__getattr__"]
        with open(origin) as f:
            exec(compile(f.read(), origin, "exec"), stub.__dict__)  # noqa: S102 (pyroute2's own code)
        return getattr(stub, name)

    return __getattr__


_libc: Any = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextmanager
def inside(ns_fd: int) -> Iterator[None]:
    """Run the block with this thread in the namespace (sockets and /proc/sys/net opened in it
    stay bound to it); always come back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _setns(ns_fd)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def _write_sysctl(path: str, value: str, ignore_errors: bool = False) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError:
        if not ignore_errors:
            raise


def _errno(e: BaseException) -> int | None:
    code = getattr(e, "code", None)
    if isinstance(code, int):
        return code
    return getattr(e, "errno", None)


class Kernel:
    """The netlink sockets of one call: the host's, and one per container namespace."""

    def __init__(self) -> None:
        self._host: Any = None
        self._opened: list[Any] = []

    @property
    def host(self) -> Any:
        if self._host is None:
            self._host = _load_iproute()(groups=0)
            self._opened.append(self._host)
        return self._host

    def open_in(self, ns_fd: int) -> Any:
        """An IPRoute whose socket lives in the namespace of `ns_fd`."""
        iproute = _load_iproute()
        with inside(ns_fd):
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0)  # NETLINK_ROUTE
        ipr = iproute(fileno=sock.detach(), groups=0)
        self._opened.append(ipr)
        return ipr

    def close(self) -> None:
        for ipr in self._opened:
            try:
                ipr.close()
            except Exception:
                pass
        self._opened.clear()
        self._host = None


def link_index(ipr: Any, name: str) -> int | None:
    try:
        links = ipr.link("get", ifname=name)
    except Exception as e:
        if _errno(e) in (errno.ENODEV, errno.ENOENT):
            return None
        raise
    return int(links[0]["index"]) if links else None


def link_info(ipr: Any, name: str) -> dict[str, Any] | None:
    try:
        links = ipr.link("get", ifname=name)
    except Exception as e:
        if _errno(e) in (errno.ENODEV, errno.ENOENT):
            return None
        raise
    if not links:
        return None
    link = links[0]
    return {"index": int(link["index"]), "mac": link.get_attr("IFLA_ADDRESS"),
            "mtu": link.get_attr("IFLA_MTU"), "flags": int(link["flags"])}


def delete_link(ipr: Any, name: str) -> bool:
    """Delete a link by name; False if it did not exist."""
    index = link_index(ipr, name)
    if index is None:
        return False
    try:
        ipr.link("del", index=index)
    except Exception as e:
        if _errno(e) in (errno.ENODEV, errno.ENOENT):
            return False
        raise
    return True


# ---------------------------------------------------------------------------------------------
# The plugin


class _Step:
    """Names the ADD step in progress, so a failure is reported as upstream reports it."""

    def __init__(self) -> None:
        self.msg = "discover network info"


class SilkPlugin:
    """`cfnet cni silk`: the Plugin interface of cfnet.cni.plugin."""

    name = "silk-cni"
    supported_versions = SUPPORTED_VERSIONS

    def __init__(self, log: Any = None, netinfo_timeout: float = netinfo_mod.DEFAULT_TIMEOUT) -> None:
        self.log = log
        self.netinfo_timeout = netinfo_timeout

    def _log(self, level: str, event: str, **data: Any) -> None:
        if self.log is not None:
            getattr(self.log, level)(event, **data)

    def netinfo(self, cfg: SilkConfig) -> netinfo_mod.NetInfo:
        try:
            if cfg.subnet_file:
                return netinfo_mod.read_subnet_file(cfg.subnet_file)
            return netinfo_mod.fetch(cfg.daemon_port, timeout=self.netinfo_timeout)
        except netinfo_mod.NetInfoError as e:
            raise CNIError(Code.PLUGIN, "discover network info", f"get netinfo: {e}") from None

    # -- ADD ----------------------------------------------------------------------------------

    def add(self, conf: dict[str, Any], args: CmdArgs) -> Result:
        cfg = SilkConfig.from_conf(conf)
        prev = Result.from_dict(conf["prevResult"]) if conf.get("prevResult") else None
        undo: list[tuple[str, Any]] = []
        kernel = Kernel()
        step = _Step()
        try:
            try:
                ns_fd = os.open(args.netns, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise CNIError(Code.PLUGIN, "create config",
                               f"getting container namespace: failed to Statfs \"{args.netns}\": "
                               f"{(e.strerror or str(e)).lower()}") from None
            undo.append(("close", ns_fd))
            _check_not_own_netns(ns_fd)

            info = self.netinfo(cfg)
            mtu = container_mtu(cfg.mtu, info.mtu)

            step.msg = "run ipam plugin"
            ipam = HostLocal(cfg.data_dir, cfg.name)
            try:
                ip = str(ipam.allocate(info.overlay_subnet, args.container_id, args.ifname))
            except IPAMError as e:
                if str(e).startswith("invalid CIDR"):
                    raise CNIError(Code.PLUGIN, "generate ipam config", f"invalid subnet: {e}") from None
                raise CNIError(Code.PLUGIN, "run ipam plugin", str(e)) from None
            undo.append(("ip", (ipam, ip, args.container_id, args.ifname)))

            host_name = host_veth_name(ip)
            hmac, cmac = host_mac(ip), container_mac(ip)

            step.msg = "create veth pair"
            host = kernel.host
            extra = {"mtu": mtu} if mtu else {}
            try:
                host.link("add", ifname=host_name, kind="veth", address=hmac,
                          flags=IFF_UP | IFF_NOARP, change=IFF_UP | IFF_NOARP, **extra,
                          peer={"ifname": args.ifname, "address": cmac, "net_ns_fd": ns_fd, **extra})
            except Exception as e:
                if _errno(e) == errno.EEXIST:
                    raise CNIError(Code.PLUGIN, "create veth pair",
                                   self._which_exists(kernel, ns_fd, host_name, args.ifname)) from None
                raise
            host_idx = link_index(host, host_name)
            if host_idx is None:
                raise CNIError(Code.PLUGIN, "create veth pair", f"{host_name} vanished after creation")
            undo.append(("veth", host_idx))

            step.msg = "set up host"
            _write_sysctl(f"/proc/sys/net/ipv6/conf/{host_name}/disable_ipv6", "1", ignore_errors=True)
            _write_sysctl(f"/proc/sys/net/ipv4/conf/{host_name}/rp_filter", "1")
            host.neigh("add", dst=ip, lladdr=cmac, ifindex=host_idx, state=NUD_PERMANENT)
            host.addr("add", index=host_idx, local=HOST_IP, address=ip, prefixlen=32,
                      scope=RT_SCOPE_LINK)
            _write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")

            step.msg = "set up container"
            with inside(ns_fd):
                _write_sysctl(f"/proc/sys/net/ipv6/conf/{args.ifname}/disable_ipv6", "1",
                              ignore_errors=True)
                _write_sysctl(f"/proc/sys/net/ipv4/conf/{args.ifname}/rp_filter", "1")
            ctr = kernel.open_in(ns_fd)
            ctr_idx = link_index(ctr, args.ifname)
            if ctr_idx is None:
                raise CNIError(Code.PLUGIN, "set up container", f"{args.ifname} not found in netns")
            ctr.link("set", index=ctr_idx, flags=IFF_UP | IFF_NOARP, change=IFF_UP | IFF_NOARP)
            ctr.neigh("add", dst=HOST_IP, lladdr=hmac, ifindex=ctr_idx, state=NUD_PERMANENT)
            ctr.addr("add", index=ctr_idx, local=ip, address=HOST_IP, prefixlen=32,
                     scope=RT_SCOPE_LINK)
            ctr.route("add", dst="0.0.0.0/0", gateway=HOST_IP, prefsrc=ip, proto=RTPROT_BOOT)

            step.msg = "write container metadata"
            handle = os.path.basename(args.netns)
            try:
                ContainerStore(cfg.datastore).add(handle, ip)
            except StoreError as e:
                raise CNIError(Code.PLUGIN, "write container metadata", str(e)) from None
            undo.append(("store", (cfg.datastore, handle)))

            self._log("info", "add", container=args.container_id, ip=ip, handle=handle)
            return _result(prev, host_name, hmac, args.ifname, cmac, args.netns, ip, mtu)
        except BaseException as e:
            failure = self._as_cni_error(e, step.msg)
            self._rollback(kernel, undo, args.container_id)
            if failure is None:
                raise
            self._log("error", "add-failed", container=args.container_id, msg=failure.msg,
                      details=failure.details)
            raise failure from None
        finally:
            for kind, value in undo:
                if kind == "close":
                    os.close(value)
            kernel.close()

    @staticmethod
    def _as_cni_error(e: BaseException, msg: str) -> CNIError | None:
        if isinstance(e, CNIError):
            return e
        if isinstance(e, Exception):
            return CNIError(Code.PLUGIN, msg, str(e) or type(e).__name__)
        return None  # KeyboardInterrupt and friends: roll back, then let them through

    @staticmethod
    def _which_exists(kernel: Kernel, ns_fd: int, host_name: str, ifname: str) -> str:
        try:
            if link_index(kernel.open_in(ns_fd), ifname) is not None:
                return f"container interface {ifname} already exists"
            if link_index(kernel.host, host_name) is not None:
                return f"host interface {host_name} already exists"
        except Exception:
            pass
        return "file exists"

    def _rollback(self, kernel: Kernel, undo: list[tuple[str, Any]], container_id: str) -> None:
        """Undo what ADD did, newest first; keep going past individual failures."""
        for kind, value in reversed(undo):
            try:
                if kind == "store":
                    path, handle = value
                    ContainerStore(path).delete(handle)
                elif kind == "veth":
                    kernel.host.link("del", index=value)  # takes the peer, addresses and routes
                elif kind == "ip":
                    ipam, ip, cid, ifname = value
                    ipam.release(ip, cid, ifname)
            except Exception as e:
                if _errno(e) in (errno.ENODEV, errno.ENOENT):
                    continue
                self._log("error", "rollback-failed", container=container_id, step=kind,
                          error=str(e))

    # -- DEL ----------------------------------------------------------------------------------

    def delete(self, conf: dict[str, Any], args: CmdArgs) -> None:
        cfg = SilkConfig.from_conf(conf)
        ips: list[str] = []
        try:
            ips = HostLocal(cfg.data_dir, cfg.name).release_attachment(args.container_id, args.ifname)
        except (OSError, IPAMError) as e:
            self._log("error", "ipam-release", container=args.container_id, error=str(e))
        # Only the addresses IPAM says were this attachment's name host devices to delete: a
        # replayed prevResult may name an address that another container holds by now.
        kernel = Kernel()
        try:
            removed = False
            for ip in ips:
                if ip.count(".") == 3:
                    removed |= delete_link(kernel.host, host_veth_name(ip))
            if not removed and args.netns:
                removed = self._delete_in_netns(kernel, args.netns, args.ifname)
        except Exception as e:
            raise CNIError(Code.PLUGIN, "teardown failed", str(e)) from None
        finally:
            kernel.close()
        handle = os.path.basename(args.netns) if args.netns else ""
        try:
            ContainerStore(cfg.datastore).delete(handle, ips)
        except StoreError as e:
            self._log("error", "delete-from-container-metadata", container=args.container_id,
                      error=str(e))
        self._log("info", "del", container=args.container_id, ips=ips)

    def _delete_in_netns(self, kernel: Kernel, netns: str, ifname: str) -> bool:
        try:
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            self._log("info", "open-netns", netns=netns, error=e.strerror or str(e))
            return False
        try:
            return delete_link(kernel.open_in(fd), ifname)
        finally:
            os.close(fd)

    # -- CHECK --------------------------------------------------------------------------------

    def check(self, conf: dict[str, Any], args: CmdArgs) -> None:
        cfg = SilkConfig.from_conf(conf)
        if not conf.get("prevResult"):
            raise CNIError(Code.INVALID_CONFIG, "invalid config: key 'prevResult' is required for CHECK")
        prev = Result.from_dict(conf["prevResult"])
        ip = _our_ip(prev, args.ifname)
        if ip is None:
            raise CNIError(Code.PLUGIN, "check failed", f"prevResult has no address for {args.ifname}")
        owner = HostLocal(cfg.data_dir, cfg.name).allocations().get(ip)
        if owner is None or owner[0] != args.container_id:
            raise CNIError(Code.PLUGIN, "check failed",
                           f"{ip} is not reserved for {args.container_id}")
        kernel = Kernel()
        try:
            host = link_info(kernel.host, host_veth_name(ip))
            if host is None:
                raise CNIError(Code.PLUGIN, "check failed", f"host interface {host_veth_name(ip)} is missing")
            if host["mac"] != host_mac(ip):
                raise CNIError(Code.PLUGIN, "check failed",
                               f"host interface {host_veth_name(ip)} has MAC {host['mac']}, "
                               f"expected {host_mac(ip)}")
            try:
                fd = os.open(args.netns, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise CNIError(Code.PLUGIN, "check failed",
                               f"open netns {args.netns}: {e.strerror or e}") from None
            try:
                ctr = kernel.open_in(fd)
                link = link_info(ctr, args.ifname)
                if link is None:
                    raise CNIError(Code.PLUGIN, "check failed",
                                   f"container interface {args.ifname} is missing")
                if link["mac"] != container_mac(ip):
                    raise CNIError(Code.PLUGIN, "check failed",
                                   f"container interface {args.ifname} has MAC {link['mac']}, "
                                   f"expected {container_mac(ip)}")
                addrs = [a.get_attr("IFA_LOCAL") for a in ctr.get_addr(index=link["index"])]
                if ip not in addrs:
                    raise CNIError(Code.PLUGIN, "check failed",
                                   f"container interface {args.ifname} lacks {ip}/32")
                if not any(r.get_attr("RTA_GATEWAY") == HOST_IP
                           for r in ctr.get_routes(family=socket.AF_INET, table=254)
                           if not r["dst_len"]):
                    raise CNIError(Code.PLUGIN, "check failed",
                                   f"container has no default route via {HOST_IP}")
            finally:
                os.close(fd)
        finally:
            kernel.close()

    # -- GC and STATUS ------------------------------------------------------------------------

    def gc(self, conf: dict[str, Any], args: CmdArgs) -> None:
        cfg = SilkConfig.from_conf(conf)
        raw = conf.get(VALID_ATTACHMENTS)
        if not isinstance(raw, list):
            raise CNIError(Code.INVALID_CONFIG,
                           f"invalid config: key '{VALID_ATTACHMENTS}' must be a list for GC")
        valid = set()
        for item in raw:
            if not isinstance(item, dict) or not isinstance(item.get("containerID"), str):
                raise CNIError(Code.INVALID_CONFIG,
                               f"invalid config: key '{VALID_ATTACHMENTS}' entries need a containerID")
            valid.add((item["containerID"], str(item.get("ifname", ""))))
        try:
            freed = HostLocal(cfg.data_dir, cfg.name).release_all_but(valid)
        except OSError as e:
            raise CNIError(Code.IO_FAILURE, "gc: reading IPAM state", str(e)) from None
        errors = []
        kernel = Kernel()
        try:
            for ip in freed:
                try:
                    delete_link(kernel.host, host_veth_name(ip))
                except Exception as e:
                    errors.append(f"{host_veth_name(ip)}: {e}")
        finally:
            kernel.close()
        if freed:
            try:
                ContainerStore(cfg.datastore).delete("", freed)
            except StoreError as e:
                errors.append(str(e))
        self._log("info", "gc", freed=sorted(freed), errors=errors)
        if errors:
            raise CNIError(Code.PLUGIN, "gc incomplete", "; ".join(errors))

    def status(self, conf: dict[str, Any], args: CmdArgs) -> None:
        cfg = SilkConfig.from_conf(conf)
        try:
            info = self.netinfo(cfg)
        except CNIError as e:
            raise CNIError(Code.PLUGIN_NOT_AVAILABLE, "plugin not available", e.details) from None
        try:
            free = HostLocal(cfg.data_dir, cfg.name).free_count(info.overlay_subnet)
        except (IPAMError, OSError) as e:
            raise CNIError(Code.PLUGIN_NOT_AVAILABLE, "plugin not available", str(e)) from None
        if free == 0:
            raise CNIError(Code.PLUGIN_NOT_AVAILABLE, "plugin not available",
                           f"no IP addresses available in {info.overlay_subnet}")


def _check_not_own_netns(ns_fd: int) -> None:
    st = os.fstat(ns_fd)
    own = os.stat("/proc/self/ns/net")
    if (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino):
        raise CNIError(Code.INVALID_NETNS, "netns must not be the plugin's own network namespace")


def _our_ip(prev: Result, ifname: str) -> str | None:
    for ipc in prev.ips:
        idx = ipc.interface
        if idx is not None and 0 <= idx < len(prev.interfaces) and prev.interfaces[idx].name != ifname:
            continue
        return ipc.address.split("/")[0]
    return None


def _result(prev: Result | None, host_name: str, hmac: str, ifname: str, cmac: str,
            netns: str, ip: str, mtu: int) -> Result:
    """silk's interfaces, address and default route, after those of a prevResult. The MTU is
    reported only in 1.1.0 results (older versions have no such key)."""
    res = prev or Result()
    base = len(res.interfaces)
    extra = {"mtu": mtu} if mtu else {}
    res.interfaces += [Interface(name=host_name, mac=hmac, extra=dict(extra)),
                       Interface(name=ifname, mac=cmac, sandbox=netns, extra=dict(extra))]
    res.ips.append(IPConfig(address=f"{ip}/32", gateway=HOST_IP, interface=base + 1))
    res.routes.append(Route(dst="0.0.0.0/0", gw=HOST_IP))
    return res
