"""`cfnet cni wrapper` (upstream `cni-wrapper-plugin`, spec dataplane 3): the CF wrapper plugin.

ADD, in spec 3.3's order: delegate ADD (silk in-process, anything else exec'd) -> container
metadata datastore add -> force a policy-agent c2c cycle -> one nftables transaction with the
container's structure in the `ip cfnet` table (containers set, netout/overlay chains and their
vmap entries, netin DNAT and ingress-mark elements, masquerade membership through the containers
set, link-local DNS and host services) -> the agent writes the container's ASGs, or (405, or the
agent is down) the wrapper writes the static rules of `runtimeConfig.netOutRules` (deny networks,
rate limit, ASG rules; spec 2.4) -> result with the DNS servers.

Deliberate changes from upstream (docs/cni-wrapper.md):
- Everything is validated before anything is done: a bad netOutRules entry, port mapping or key
  is CNI error 7 naming it, and nothing is half-applied.
- A failure at any later step rolls back every earlier one (nft elements and chains, datastore
  entry, delegate DEL), newest first (upstream has none, Q10).
- Agent calls have a timeout; an unreachable agent is not an error (see cfnet.cni.wrapper_agent):
  when the c2c poll cannot reach it, the static rules go into the one structure transaction.
- DEL removes the nft state by handle before the delegate frees the IP, so a reused IP never
  sees its predecessor's rules; it needs no datastore IP (Q11) and is idempotent.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cfnet.cni import wrapper_delegate as delegate
from cfnet.cni.types import SUPPORTED_VERSIONS, CmdArgs, CNIError, Code, Result
from cfnet.cni.wrapper_agent import DYNAMIC, AgentClient
from cfnet.cni.wrapper_config import WrapperConfig, load

VALID_ATTACHMENTS = "cni.dev/valid-attachments"


# ---- the cell's iptables/nft lock file (shared with the agent) --------------------------------


def _ids(owner: str, group: str) -> tuple[int, int]:
    import grp
    import pwd

    uid = pwd.getpwnam(owner).pw_uid if owner else -1
    gid = grp.getgrnam(group).gr_gid if group else -1
    return uid, gid


def prepare_lock_file(cfg: WrapperConfig) -> None:
    """(Re)create the lock file empty, 0600, owned as configured (spec 3.3 step 2)."""
    path = cfg.iptables_lock_file
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.close(fd)
        if cfg.datastore_file_owner or cfg.datastore_file_group:
            os.chown(path, *_ids(cfg.datastore_file_owner, cfg.datastore_file_group))
    except (OSError, KeyError) as e:
        raise CNIError(Code.INTERNAL, f"set up lock file: {path}: {e}") from None


@contextmanager
def cell_lock(path: str) -> Iterator[None]:
    """The cell-wide flock around "read the table, compute, write" (spec 7.1)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ---- kernel lookups ---------------------------------------------------------------------------


def _primary_addresses() -> dict[str, str]:
    """IPv4 address -> interface name, for each interface's primary address (one ioctl each:
    cheap, no netlink library on the per-container path)."""
    import socket
    import struct

    siocgifaddr = 0x8915
    out: dict[str, str] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _index, name in socket.if_nameindex():
            try:
                req = fcntl.ioctl(s.fileno(), siocgifaddr, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # no IPv4 address
            out.setdefault(socket.inet_ntoa(req[20:24]), name)
    return out


def _all_addresses() -> dict[str, str]:
    """Every IPv4 address (secondary ones too) -> interface name, through netlink."""
    from pyroute2 import IPRoute

    out: dict[str, str] = {}
    with IPRoute() as ipr:
        names = {int(link["index"]): link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for a in ipr.get_addr(family=2):
            addr = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
            if addr and int(a["index"]) in names:
                out.setdefault(addr, names[int(a["index"])])
    return out


def underlay_interfaces(cfg: WrapperConfig) -> list[str]:
    """Names of the interfaces holding `underlay_ips` (or the configured temporary names)."""
    if cfg.temporary_underlay_interface_names:
        return list(cfg.temporary_underlay_interface_names)
    by_ip = _primary_addresses()
    if any(ip not in by_ip for ip in cfg.underlay_ips):
        by_ip = _all_addresses()
    out = []
    for ip in cfg.underlay_ips:
        if ip not in by_ip:
            raise CNIError(Code.INTERNAL,
                           f"looking up interface names: no interface with address {ip}")
        if by_ip[ip] not in out:
            out.append(by_ip[ip])
    return out


def container_ip(result: Result) -> str:
    for ipc in result.ips:
        addr = ipc.address.split("/")[0]
        if addr.count(".") == 3:
            return addr
    raise CNIError(Code.INTERNAL, "delegate result has no IPv4 address")


# ---- the plugin -------------------------------------------------------------------------------


class WrapperPlugin:
    """`cfnet cni wrapper`: the Plugin interface of cfnet.cni.plugin."""

    name = "cni-wrapper-plugin"
    supported_versions = SUPPORTED_VERSIONS

    def __init__(self, log: Any = None) -> None:
        self.log = log

    def _log(self, level: str, event: str, **data: Any) -> None:
        if self.log is not None:
            getattr(self.log, level)(event, **data)

    @staticmethod
    def _handle(args: CmdArgs) -> str:
        from cfnet.core import nft_syntax as nx

        try:
            return nx.handle(args.container_id)
        except nx.NftSyntaxError as e:
            raise CNIError(Code.INVALID_ENV, str(e)) from None

    @staticmethod
    def _datastore(cfg: WrapperConfig) -> Any:
        from cfnet.cni.datastore import Datastore

        return Datastore(cfg.datastore, owner=cfg.datastore_file_owner or None,
                         group=cfg.datastore_file_group or None)

    # -- ADD ------------------------------------------------------------------------------------

    def add(self, conf: dict[str, Any], args: CmdArgs) -> Result:
        cfg = load(conf)
        handle = self._handle(args)
        egress = self._egress(cfg, handle)
        prepare_lock_file(cfg)
        underlay = underlay_interfaces(cfg)
        agent = AgentClient(cfg.policy_agent_force_poll_address, cfg.policy_agent_timeout)
        undo: list[str] = []
        agent_up = False
        try:
            try:
                result = delegate.call("ADD", cfg.delegate, args, self.log)
            except CNIError as e:
                raise CNIError(e.code, f"delegate call: {e.msg}", e.details) from None
            if result is None:
                raise CNIError(Code.INTERNAL, "delegate call: no result")
            undo.append("delegate")
            ip = container_ip(result)

            from cfnet.cni.datastore import DatastoreError

            try:
                self._datastore(cfg).add(handle, ip, cfg.metadata)
            except DatastoreError as e:
                raise CNIError(Code.INTERNAL, f"store add: {e}") from None
            undo.append("store")

            agent_up = agent.force_policy_poll()
            if not agent_up:
                self._log("info", "policy-agent-unreachable", container=handle,
                          address=cfg.policy_agent_force_poll_address,
                          consequence="static netOutRules applied")

            undo.append("nft")
            self._apply_structure(cfg, handle, ip, egress, underlay, static=not agent_up)
            if agent_up and agent.force_asgs(handle) != DYNAMIC:
                self._apply_static(cfg, egress)

            if cfg.dns_servers:
                result.dns = {**result.dns, "nameservers": list(cfg.dns_servers)}
            self._log("info", "add", container=handle, ip=ip, agent=agent_up,
                      port_mappings=len(cfg.port_mappings), netout_rules=len(cfg.netout_rules))
            return result
        except BaseException as e:
            self._rollback(cfg, args, handle, undo, agent if agent_up else None)
            if isinstance(e, CNIError):
                self._log("error", "add-failed", container=handle, msg=e.msg, details=e.details)
                raise
            if isinstance(e, Exception):
                failure = CNIError(Code.INTERNAL, str(e) or type(e).__name__)
                self._log("error", "add-failed", container=handle, msg=failure.msg)
                raise failure from None
            raise

    def _egress(self, cfg: WrapperConfig, handle: str) -> Any:
        """The container's full netout chain list (spec 2.4), rendered before anything is done."""
        from cfnet.core.asg_rules import AsgRuleError, netout_chains

        try:
            return netout_chains(handle, cfg.workload, cfg.netout_rules, cfg.deny_networks,
                                 cfg.iptables_asg_logging, cfg.outbound,
                                 cfg.iptables_denied_logs_per_sec,
                                 cfg.iptables_accepted_udp_logs_per_sec)
        except (AsgRuleError, ValueError) as e:
            raise CNIError(Code.INVALID_CONFIG, f"initialize net out: {e}") from None

    def _apply_structure(self, cfg: WrapperConfig, handle: str, ip: str, egress: Any,
                         underlay: list[str], static: bool) -> None:
        """CNI ADD transaction 1 (spec 7.5), plus the base ruleset if the table is missing."""
        from cfnet.net import cell_table as ct
        from cfnet.net.nft import Nft, NftError

        net = ct.ContainerNet(
            handle=handle, ip=ip, egress=egress, host_ip=cfg.instance_address,
            port_mappings=[(m.host_port, m.container_port) for m in cfg.port_mappings],
            static_rules=static,
            c2c_logging=cfg.iptables_c2c_logging,
            denied_logs_per_sec=cfg.iptables_denied_logs_per_sec, underlay_ifs=underlay,
            host_services=self._host_services(cfg), ingress_mark=cfg.ingress_mark)
        try:
            with cell_lock(cfg.iptables_lock_file), Nft() as nft:
                current = ct.list_cell(nft)
                lines: list[str] = []
                if current is None:
                    lines += ct.base_lines(ct.CellConfig(
                        vtep_name=cfg.vtep_name, no_masquerade_cidr=cfg.no_masquerade_cidr_range,
                        ingress_mark=cfg.ingress_mark))
                lines += ct.container_add_lines(net, current)
                nft.run(ct.script(lines))
        except (NftError, ValueError) as e:
            raise CNIError(Code.INTERNAL, f"initialize net out: {e}") from None

    @staticmethod
    def _host_services(cfg: WrapperConfig) -> list[tuple[str, str, int]]:
        out = []
        for dns in cfg.link_local_dns():
            out += [(dns, "tcp", 53), (dns, "udp", 53)]
        out += [(a, "tcp", p) for a, p in cfg.host_tcp_services]
        out += [(a, "udp", p) for a, p in cfg.host_udp_services]
        return out

    def _apply_static(self, cfg: WrapperConfig, egress: Any) -> None:
        """Transaction 2 (static ASG mode, after the agent's 405): the full netout list."""
        from cfnet.net import cell_table as ct
        from cfnet.net.nft import Nft, NftError

        try:
            with cell_lock(cfg.iptables_lock_file), Nft() as nft:
                nft.run(ct.render_netout(egress))
        except NftError as e:
            raise CNIError(Code.INTERNAL, f"bulk insert: {e}") from None

    def _rollback(self, cfg: WrapperConfig, args: CmdArgs, handle: str, undo: list[str],
                  agent: AgentClient | None) -> None:
        """Undo ADD's steps newest first; keep going past individual failures."""
        for step in reversed(undo):
            try:
                if step == "nft":
                    self._remove_nft(cfg, handle)
                    if agent is not None:
                        agent.cleanup_orphaned_asgs(handle)
                elif step == "store":
                    self._datastore(cfg).delete(handle)
                elif step == "delegate":
                    delegate.call("DEL", cfg.delegate, args, self.log)
            except Exception as e:
                self._log("error", "rollback-failed", container=handle, step=step, error=str(e))

    @staticmethod
    def _remove_nft(cfg: WrapperConfig, handle: str) -> None:
        from cfnet.net import cell_table as ct
        from cfnet.net.nft import Nft

        with cell_lock(cfg.iptables_lock_file), Nft() as nft:
            ct.remove_container(nft, handle)

    # -- DEL ------------------------------------------------------------------------------------

    def delete(self, conf: dict[str, Any], args: CmdArgs) -> None:
        """Spec 3.4, reordered: nft state first (by handle), then the datastore entry, then the
        delegate (which frees the IP), then a c2c cycle and the ASG cleanup on the agent. Best
        effort and idempotent; only a failure to remove the nft state fails DEL (the runtime
        retries it)."""
        cfg = load(conf, runtime=False)
        handle = args.container_id
        prepare_lock_file(cfg)
        nft_error = None
        try:
            self._remove_nft(cfg, self._handle(args))
        except CNIError:
            pass  # a handle ADD refused (e.g. ending in -log) has no nft state to remove
        except Exception as e:
            nft_error = str(e)
            self._log("error", "net-out-cleanup", container=handle, error=nft_error)
        try:
            removed = self._datastore(cfg).delete(handle)
        except Exception as e:
            removed = None
            self._log("error", "store-delete", container=handle, error=str(e))
        try:
            delegate.call("DEL", cfg.delegate, args, self.log)
        except Exception as e:
            self._log("error", "delegate-delete", container=handle, error=str(e))
        agent = AgentClient(cfg.policy_agent_force_poll_address, cfg.policy_agent_timeout)
        # A c2c cycle now drops the container's IP from the agent's allow set and source map
        # (upstream leaves them until some later cycle, Q4). Best effort, like the ASG cleanup.
        try:
            if not agent.force_policy_poll():
                self._log("info", "policy-agent-unreachable", container=handle,
                          address=cfg.policy_agent_force_poll_address)
        except CNIError as e:
            self._log("info", "policy-poll", container=handle, error=e.msg)
        problem = agent.cleanup_orphaned_asgs(handle)
        if problem:
            self._log("info", "asg-cleanup", container=handle, error=problem)
        self._log("info", "del", container=handle, ip=getattr(removed, "ip", ""))
        if nft_error:
            raise CNIError(Code.INTERNAL, f"net out cleanup: {nft_error}")

    # -- CHECK, GC, STATUS ----------------------------------------------------------------------

    def check(self, conf: dict[str, Any], args: CmdArgs) -> None:
        """The delegate's CHECK, then this container's datastore entry and vmap elements."""
        from cfnet.core import nft_syntax as nx
        from cfnet.core.asg_rules import netout_chain, overlay_chain
        from cfnet.net import cell_table as ct
        from cfnet.net.nft import Nft

        cfg = load(conf, runtime=False)
        handle = self._handle(args)
        sub = dict(cfg.delegate)
        if conf.get("prevResult"):
            sub["prevResult"] = conf["prevResult"]
        delegate.call("CHECK", sub, args, self.log)
        entry = self._datastore(cfg).get(handle)
        if entry is None:
            raise CNIError(Code.INTERNAL, "check failed", f"no datastore entry for {handle}")
        with Nft() as nft:
            state = ct.list_cell(nft)
        want = {"netout_v": nx.jump(netout_chain(handle)),
                "overlay_v": nx.jump(overlay_chain(handle))}
        for vmap, target in want.items():
            s = state.sets.get(vmap) if state else None
            if s is None or s.keys.get(entry.ip) != target:
                raise CNIError(Code.INTERNAL, "check failed",
                               f"{vmap} has no element {entry.ip} : {target}")

    def gc(self, conf: dict[str, Any], args: CmdArgs) -> None:
        """The delegate's GC, then remove nft state and datastore entries of every container that
        is not a valid attachment. Keeps going past individual errors."""
        from cfnet.net import cell_table as ct
        from cfnet.net.nft import Nft

        cfg = load(conf, runtime=False)
        raw = conf.get(VALID_ATTACHMENTS)
        if not isinstance(raw, list):
            raise CNIError(Code.INVALID_CONFIG,
                           f"invalid config: key '{VALID_ATTACHMENTS}' must be a list for GC")
        valid = {str(a.get("containerID")) for a in raw if isinstance(a, dict)}
        sub = dict(cfg.delegate)
        sub[VALID_ATTACHMENTS] = raw
        sub["cniVersion"] = cfg.cni_version  # GC needs 1.1.0, which the list's version has
        errors = []
        try:
            delegate.call("GC", sub, args, self.log)
        except CNIError as e:
            errors.append(f"delegate: {e}")
        prepare_lock_file(cfg)
        try:
            with cell_lock(cfg.iptables_lock_file), Nft() as nft:
                state = ct.list_cell(nft)
                if state is not None:
                    stale = (ct.handles_in(state) | ct.referenced_handles(state)) - valid
                    lines: list[str] = []
                    for h in sorted(stale):
                        lines += ct.container_remove_lines(h, state)
                    if lines:
                        nft.run(ct.script(lines))
        except Exception as e:
            errors.append(f"nft: {e}")
        try:
            store = self._datastore(cfg)
            for h in set(store.read_all()) - valid:
                store.delete(h)
        except Exception as e:
            errors.append(f"datastore: {e}")
        if errors:
            raise CNIError(Code.INTERNAL, "gc incomplete", "; ".join(errors))

    def status(self, conf: dict[str, Any], args: CmdArgs) -> None:
        cfg = load(conf, runtime=False)
        delegate.call("STATUS", {**cfg.delegate, "cniVersion": cfg.cni_version}, args, self.log)
