"""The silk CNI plugin: one veth per container on the cell's flat /32-routed overlay subnet.

ADD follows spec silk 3.3 (names, MACs, 169.254.0.1 gateway, NOARP + permanent neighbours, /32
peer addresses, MTU, sysctls, host-local IPAM, the container store) with one deliberate change:
a failure at any step rolls back every earlier step, so a failed ADD leaves no address, device,
file or route behind and the next ADD of the same container succeeds. DEL is idempotent and
needs neither the daemon, nor the namespace, nor a prevResult. CHECK, GC and STATUS are real.

Kernel work goes through one netlink socket per namespace, opened once per call (`Rtnl`, a thin
client over pyroute2's message classes): the host side in the namespace we run in (the cell's),
the container side through a socket created inside CNI_NETNS with setns(2) on this thread (no
helper process). The container's veth end is created directly inside its namespace under its
final name, so a name clash fails the one message that would have made it, before anything
exists.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import socket
import struct
import sys
import types
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
from cfnet.net.setns import inside
from cfnet.silk import netinfo as netinfo_mod
from cfnet.silk.ipam import ContainerStore, HostLocal, IPAMError, StoreError

HOST_IP = "169.254.0.1"
DEFAULT_DAEMON_PORT = 23954
DEFAULT_DATA_DIR = "/var/vcap/data/host-local"
VALID_ATTACHMENTS = "cni.dev/valid-attachments"

IFF_UP = 0x1
IFF_NOARP = 0x80
NUD_PERMANENT = 0x80
RT_SCOPE_LINK = 253
RTPROT_BOOT = 3
RT_TABLE_MAIN = 254
RTN_UNICAST = 1


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
    """The config's `mtu` wins over the VTEP's. It is already the container MTU: the deployment
    writes the operator's underlay MTU minus the 50 bytes of VXLAN there (spec silk 3.2)."""
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
# Netlink: one NETLINK_ROUTE socket per namespace, with pyroute2's message classes to encode and
# decode. pyroute2's IPRoute would pull in asyncio, unittest.mock, tc and every other message
# family (~130 ms per exec'd container); the message classes alone cost ~30 ms. The package is
# loaded without its __init__ (which imports all of pyroute2); the stub completes itself if some
# other code in the process asks it for a name.

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
RTM_NEWNEIGH = 28
NETLINK_ROUTE = 0
CREATE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL


def _pyroute2_stub() -> None:
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("pyroute2 is not installed")
    stub = types.ModuleType("pyroute2")
    stub.__path__ = list(spec.submodule_search_locations)
    stub.__spec__ = spec
    stub.__file__ = spec.origin
    stub.__getattr__ = _complete_pyroute2(stub, spec.origin or "")  # type: ignore[attr-defined]
    sys.modules["pyroute2"] = stub


def _complete_pyroute2(stub: types.ModuleType, origin: str) -> Any:
    def __getattr__(name: str) -> Any:
        if name.startswith("__") or importlib.util.find_spec(f"pyroute2.{name}") is not None:
            raise AttributeError(name)  # dunders and submodules: the import system's business
        del stub.__dict__["__getattr__"]
        with open(origin) as f:
            exec(compile(f.read(), origin, "exec"), stub.__dict__)  # noqa: S102 (pyroute2's own code)
        return getattr(stub, name)

    return __getattr__


_MSG: dict[int, Any] = {}


def _messages() -> dict[int, Any]:
    """Reply type -> pyroute2 message class, imported on first use."""
    if not _MSG:
        _pyroute2_stub()
        from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
        from pyroute2.netlink.rtnl.ndmsg import ndmsg
        from pyroute2.netlink.rtnl.rtmsg import rtmsg

        _MSG.update({RTM_NEWLINK: ifinfmsg, RTM_NEWADDR: ifaddrmsg, RTM_NEWROUTE: rtmsg,
                     RTM_NEWNEIGH: ndmsg})
    return _MSG


class NetlinkError(OSError):
    """A netlink request the kernel refused; str() is the errno text, as Go's netlink prints."""

    def __str__(self) -> str:
        return (self.strerror or "").lower()


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


class Rtnl:
    """A NETLINK_ROUTE socket in one namespace (the caller's, or that of `ns_fd`)."""

    def __init__(self, ns_fd: int | None = None) -> None:
        self.msg = _messages()
        if ns_fd is None:
            self.sock = self._socket()
        else:
            with inside(ns_fd):
                self.sock = self._socket()
        self.seq = 0

    @staticmethod
    def _socket() -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             NETLINK_ROUTE)
        sock.bind((0, 0))
        return sock

    def close(self) -> None:
        self.sock.close()

    def request(self, msg: Any, kind: int, flags: int) -> list[Any]:
        """Send one request; the decoded replies (none for an acknowledged change)."""
        self.seq += 1
        msg["header"]["type"] = kind
        msg["header"]["flags"] = flags
        msg["header"]["sequence_number"] = self.seq
        msg.encode()
        self.sock.send(msg.data)
        dump = flags & NLM_F_DUMP == NLM_F_DUMP
        out: list[Any] = []
        while True:
            data = self.sock.recv(1 << 18)
            off = 0
            while off + 16 <= len(data):
                length, mtype, _, seq, _ = struct.unpack_from("=IHHII", data, off)
                if length < 16:
                    raise NetlinkError(errno.EBADMSG, "bad netlink message")
                chunk, off = data[off:off + length], off + ((length + 3) & ~3)
                if seq != self.seq:
                    continue
                if mtype == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", chunk, 16)[0]
                    if err:
                        raise NetlinkError(err, os.strerror(err))
                    return out
                if mtype == NLMSG_DONE:
                    return out
                cls = self.msg.get(mtype)
                if cls is not None:
                    reply = cls(chunk)
                    reply.decode()
                    out.append(reply)
                if not dump:
                    return out

    # -- links ------------------------------------------------------------------------------

    def link(self, name: str = "", index: int = 0) -> dict[str, Any] | None:
        """{index, mac, mtu, flags} of a link by name or index, or None."""
        msg = self.msg[RTM_NEWLINK]()
        msg["index"] = index
        msg["attrs"] = [["IFLA_IFNAME", name]] if name else []
        try:
            replies = self.request(msg, RTM_GETLINK, NLM_F_REQUEST)
        except NetlinkError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        if not replies:
            return None
        link = replies[0]
        return {"index": int(link["index"]), "mac": link.get_attr("IFLA_ADDRESS"),
                "mtu": link.get_attr("IFLA_MTU"), "flags": int(link["flags"])}

    def add_veth(self, name: str, mac: str, peer: str, peer_mac: str, peer_ns_fd: int,
                 mtu: int, flags: int) -> None:
        """One message: both ends, the peer already in its namespace under its final name."""
        mtu_attr = [["IFLA_MTU", mtu]] if mtu else []
        msg = self.msg[RTM_NEWLINK]()
        msg["flags"] = msg["change"] = flags
        peer_attrs = [["IFLA_IFNAME", peer], ["IFLA_ADDRESS", peer_mac], *mtu_attr,
                      ["IFLA_NET_NS_FD", peer_ns_fd]]
        msg["attrs"] = [["IFLA_IFNAME", name], ["IFLA_ADDRESS", mac], *mtu_attr,
                        ["IFLA_LINKINFO", {"attrs": [
                            ["IFLA_INFO_KIND", "veth"],
                            ["IFLA_INFO_DATA", {"attrs": [["VETH_INFO_PEER",
                                                           {"attrs": peer_attrs}]]}]]}]]
        self.request(msg, RTM_NEWLINK, CREATE)

    def set_link(self, index: int, flags: int = 0, change: int = 0, mac: str = "") -> None:
        msg = self.msg[RTM_NEWLINK]()
        msg["index"], msg["flags"], msg["change"] = index, flags, change
        msg["attrs"] = [["IFLA_ADDRESS", mac]] if mac else []
        self.request(msg, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK)

    def delete_link(self, name: str) -> bool:
        """Delete a link by name; False if there was none."""
        msg = self.msg[RTM_NEWLINK]()
        msg["attrs"] = [["IFLA_IFNAME", name]]
        try:
            self.request(msg, RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK)
        except NetlinkError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return False
            raise
        return True

    # -- addresses, neighbours, routes --------------------------------------------------------

    def add_neigh(self, index: int, ip: str, mac: str) -> None:
        msg = self.msg[RTM_NEWNEIGH]()
        msg["family"], msg["ifindex"], msg["state"] = socket.AF_INET, index, NUD_PERMANENT
        msg["attrs"] = [["NDA_DST", ip], ["NDA_LLADDR", mac]]
        self.request(msg, RTM_NEWNEIGH, CREATE)

    def add_peer_addr(self, index: int, local: str, peer: str) -> None:
        """`local/32 peer peer/32 scope link`: the kernel adds the /32 route to the peer."""
        msg = self.msg[RTM_NEWADDR]()
        msg["family"], msg["prefixlen"], msg["scope"], msg["index"] = \
            socket.AF_INET, 32, RT_SCOPE_LINK, index
        msg["attrs"] = [["IFA_LOCAL", local], ["IFA_ADDRESS", peer]]
        self.request(msg, RTM_NEWADDR, CREATE)

    def add_default_route(self, gateway: str, src: str) -> None:
        msg = self.msg[RTM_NEWROUTE]()
        msg["family"], msg["table"], msg["proto"], msg["type"] = \
            socket.AF_INET, RT_TABLE_MAIN, RTPROT_BOOT, RTN_UNICAST
        msg["attrs"] = [["RTA_TABLE", RT_TABLE_MAIN], ["RTA_GATEWAY", gateway],
                        ["RTA_PREFSRC", src]]
        self.request(msg, RTM_NEWROUTE, CREATE)

    def addresses(self, index: int) -> list[str]:
        """The IPv4 local addresses of a link."""
        msg = self.msg[RTM_NEWADDR]()
        msg["family"] = socket.AF_INET
        return [a.get_attr("IFA_LOCAL") for a in self.request(msg, RTM_GETADDR, NLM_F_REQUEST
                                                                | NLM_F_DUMP)
                if a["index"] == index]

    def default_gateways(self) -> list[str]:
        msg = self.msg[RTM_NEWROUTE]()
        msg["family"] = socket.AF_INET
        return [r.get_attr("RTA_GATEWAY") for r in self.request(msg, RTM_GETROUTE,
                                                                NLM_F_REQUEST | NLM_F_DUMP)
                if r["dst_len"] == 0 and r.get_attr("RTA_TABLE") == RT_TABLE_MAIN]


class Kernel:
    """The netlink sockets of one call: the host's, and one per container namespace."""

    def __init__(self) -> None:
        self._host: Rtnl | None = None
        self._opened: list[Rtnl] = []

    @property
    def host(self) -> Rtnl:
        if self._host is None:
            self._host = Rtnl()
            self._opened.append(self._host)
        return self._host

    def open_in(self, ns_fd: int) -> Rtnl:
        rtnl = Rtnl(ns_fd)
        self._opened.append(rtnl)
        return rtnl

    def close(self) -> None:
        for rtnl in self._opened:
            rtnl.close()
        self._opened.clear()
        self._host = None


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

    def _begin(self) -> None:
        """A new request: upstream tags every log line of one call with a `cni-request-id`."""
        r = os.urandom(16).hex()
        self._request_id = f"{r[:8]}-{r[8:12]}-4{r[13:16]}-{r[16:20]}-{r[20:]}"

    def _log(self, level: str, event: str, **data: Any) -> None:
        if self.log is not None:
            data["cni-request-id"] = getattr(self, "_request_id", "")
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
        self._begin()
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
            try:
                host.add_veth(host_name, hmac, args.ifname, cmac, ns_fd, mtu,
                              flags=IFF_UP | IFF_NOARP)
            except NetlinkError as e:
                if _errno(e) == errno.EEXIST:
                    raise CNIError(Code.PLUGIN, "create veth pair",
                                   self._which_exists(kernel, ns_fd, host_name, args.ifname)) from None
                raise
            link = host.link(host_name)
            if link is None:
                raise CNIError(Code.PLUGIN, "create veth pair", f"{host_name} vanished after creation")
            host_idx = link["index"]
            undo.append(("veth", host_name))

            step.msg = "set up host"
            _ensure_mac(host, host_idx, link["mac"], hmac)
            _write_sysctl(f"/proc/sys/net/ipv6/conf/{host_name}/disable_ipv6", "1", ignore_errors=True)
            _write_sysctl(f"/proc/sys/net/ipv4/conf/{host_name}/rp_filter", "1")
            host.add_neigh(host_idx, ip, cmac)
            host.add_peer_addr(host_idx, HOST_IP, ip)
            _write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")

            step.msg = "set up container"
            with inside(ns_fd):
                _write_sysctl(f"/proc/sys/net/ipv6/conf/{args.ifname}/disable_ipv6", "1",
                              ignore_errors=True)
                _write_sysctl(f"/proc/sys/net/ipv4/conf/{args.ifname}/rp_filter", "1")
            ctr = kernel.open_in(ns_fd)
            peer = ctr.link(args.ifname)
            if peer is None:
                raise CNIError(Code.PLUGIN, "set up container", f"{args.ifname} not found in netns")
            ctr_idx = peer["index"]
            ctr.set_link(ctr_idx, flags=IFF_UP | IFF_NOARP, change=IFF_UP | IFF_NOARP)
            ctr.add_neigh(ctr_idx, HOST_IP, hmac)
            ctr.add_peer_addr(ctr_idx, ip, HOST_IP)
            ctr.add_default_route(HOST_IP, ip)

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
            if kernel.open_in(ns_fd).link(ifname) is not None:
                return f"container interface {ifname} already exists"
            if kernel.host.link(host_name) is not None:
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
                    kernel.host.delete_link(value)  # takes the peer, addresses and routes
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
        self._begin()
        cfg = SilkConfig.from_conf(conf)
        if args.netns:
            _refuse_own_netns(args.netns)  # else "eth0" below would be the cell's own uplink
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
                    removed |= kernel.host.delete_link(host_veth_name(ip))
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
            return kernel.open_in(fd).delete_link(ifname)
        finally:
            os.close(fd)

    # -- CHECK --------------------------------------------------------------------------------

    def check(self, conf: dict[str, Any], args: CmdArgs) -> None:
        self._begin()
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
            host = kernel.host.link(host_veth_name(ip))
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
                link = ctr.link(args.ifname)
                if link is None:
                    raise CNIError(Code.PLUGIN, "check failed",
                                   f"container interface {args.ifname} is missing")
                if link["mac"] != container_mac(ip):
                    raise CNIError(Code.PLUGIN, "check failed",
                                   f"container interface {args.ifname} has MAC {link['mac']}, "
                                   f"expected {container_mac(ip)}")
                if ip not in ctr.addresses(link["index"]):
                    raise CNIError(Code.PLUGIN, "check failed",
                                   f"container interface {args.ifname} lacks {ip}/32")
                if HOST_IP not in ctr.default_gateways():
                    raise CNIError(Code.PLUGIN, "check failed",
                                   f"container has no default route via {HOST_IP}")
            finally:
                os.close(fd)
        finally:
            kernel.close()

    # -- GC and STATUS ------------------------------------------------------------------------

    def gc(self, conf: dict[str, Any], args: CmdArgs) -> None:
        self._begin()
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
                    kernel.host.delete_link(host_veth_name(ip))
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
        self._begin()
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


MAC_ATTEMPTS = 10


def _ensure_mac(rtnl: Rtnl, index: int, current: str | None, wanted: str) -> None:
    """Upstream's guard against udev/systemd-networkd rewriting a new link's MAC: re-set it
    until it sticks (silk PR 26). Normally the first read already matches."""
    for _ in range(MAC_ATTEMPTS):
        if current == wanted:
            return
        rtnl.set_link(index, mac=wanted)
        link = rtnl.link(index=index)
        current = link["mac"] if link else None
    if current != wanted:
        raise CNIError(Code.PLUGIN, "set up host",
                       f"failed to set hardware addr after {MAC_ATTEMPTS} attempts")


def _check_not_own_netns(ns_fd: int) -> None:
    st = os.fstat(ns_fd)
    own = os.stat("/proc/thread-self/ns/net")  # per thread: in-process callers may setns
    if (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino):
        raise CNIError(Code.INVALID_NETNS, "netns must not be the plugin's own network namespace")


def _refuse_own_netns(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return  # a namespace that is gone is fine for DEL
    try:
        _check_not_own_netns(fd)
    finally:
        os.close(fd)


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
