"""The vxlan-agent's work: c2c and ASG state of one cell, from the policy server into nftables.

`Agent` holds the caches and does one cycle at a time (callers serialise it on one thread):

- `start()`: make sure the `ip cfnet` table and its shared objects exist (idempotent adds, never a
  flush: running containers keep their traffic), add the underlay interfaces, adopt the live c2c
  state the kernel holds, then run the first policy cycle.
- `policy_cycle()`: datastore -> local apps -> `policies?id=` -> plan -> one transaction. It
  applies a diff against the last applied state (taking into account that the CNI's DEL removes
  the source tag of the container's IP); it lists the kernel and replaces (diff or swap,
  `cell_table.replace_c2c`) at start, every `resync_interval`, and after a failed diff.
  In strict mode, conntrack entries of connections that lost their allowance are deleted, and a
  strict-only forward chain refuses a mid-stream pickup from the server side
  (`cell_table.strict_lines`).
- `asg_cycle(handles)`: security groups for the local spaces -> per-container netout chains,
  written only for containers whose structure (`netout_v` element) the CNI has created, all in
  one transaction (per container on failure, so one bad container does not block the rest).
- `cleanup_orphans()`: structure of handles with no datastore entry, seen in two consecutive
  passes (so a container between its datastore write and its first transaction is never hit).

Every read-modify-write of the table holds the cell's flock (`iptables_lock_file`), shared with
the CNI, which must not hold it while calling the agent's endpoints.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from cfnet.agent import asg as asg_mod
from cfnet.agent import conntrack
from cfnet.agent.config import AgentConfig
from cfnet.agent.planner import LocalContainer, Plan, local_containers, plan, policy_ids
from cfnet.cni.datastore import Datastore
from cfnet.core import asg_rules as ar
from cfnet.core.errors import CfnetError
from cfnet.core.logs import Logger
from cfnet.net import cell_table as ct
from cfnet.net.nft import Nft, NftError

INGRESS_ROUTER = "INGRESS_ROUTER"


class AgentError(CfnetError):
    pass


class CellLock:
    """The cell's flock on `iptables_lock_file` plus a process mutex, with a deadline."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._mutex = threading.Lock()

    @contextmanager
    def held(self) -> Iterator[None]:
        if not self._mutex.acquire(timeout=self.timeout):
            raise AgentError(f"lock {self.path}: not acquired within {self.timeout:g} s")
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                deadline = time.monotonic() + self.timeout
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise AgentError(f"lock {self.path}: held by another process for "
                                             f"more than {self.timeout:g} s") from None
                        time.sleep(0.005)
                yield
            finally:
                os.close(fd)
        finally:
            self._mutex.release()


class Metrics:
    """Prometheus metrics in a registry of their own (upstream's dropsonde values, renamed)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        p = "cfnet_vxlan_agent"
        r = self.registry = CollectorRegistry()
        self.started = time.time()
        self.sync_duration = Histogram(
            f"{p}_sync_duration_seconds", "Duration of sync cycles (server calls and kernel).",
            ["kind"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.enforce_duration = Histogram(
            f"{p}_enforce_duration_seconds", "Duration of the nftables transactions of a cycle.",
            ["kind"], registry=r, buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5))
        self.failures = Counter(f"{p}_sync_failures", "Sync cycles that failed.", ["kind"],
                                registry=r)
        self.syncs = Counter(f"{p}_syncs", "Sync cycles that succeeded.", ["kind"], registry=r)
        self.last_sync = Gauge(f"{p}_last_sync_timestamp_seconds",
                               "Unix time of the last successful sync cycle.", ["kind"], registry=r)
        self.elements = Gauge(f"{p}_elements", "Elements the agent holds in the cell table.",
                              ["set"], registry=r)
        self.containers = Gauge(f"{p}_containers", "Local containers with a policy group id.",
                                registry=r)
        self.orphans = Counter(f"{p}_orphans_removed", "Orphaned container structures removed.",
                               registry=r)
        self.conntrack = Counter(f"{p}_conntrack_entries_deleted",
                                 "Conntrack entries deleted in strict mode.", registry=r)
        self.uptime = Gauge(f"{p}_uptime_seconds", "Seconds since the process started.",
                            registry=r)
        self.uptime.set_function(lambda: time.time() - self.started)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


@dataclass
class _AsgApplied:
    text: str
    chain_handle: int


@dataclass
class Agent:
    config: AgentConfig
    client: Any  # cfnet.clients.internal_api.InternalClient
    log: Logger
    nft: Nft = field(default_factory=Nft)
    metrics: Metrics = field(default_factory=Metrics)
    underlay_ifs: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.datastore = Datastore(self.config.cni_datastore_path)
        self.lock = CellLock(self.config.iptables_lock_file, self.config.lock_timeout_seconds)
        self.c2c_logging = self.config.iptables_c2c_logging
        self.applied: ct.C2CState | None = None  # what the last c2c transaction left
        self.live_set: str | None = None
        self.applied_version: int | None = None  # datastore version of that plan
        self.applied_owners: dict[str, str] = {}  # container ip -> handle, for that plan
        self.applied_log_rules: list[str] | None = None
        self.last_resync = 0.0
        self.asg_applied: dict[str, _AsgApplied] = {}
        self.last_asg_resync = time.monotonic()
        self.orphan_candidates: set[str] = set()
        self.ready = False
        self._cycle = threading.Lock()

    # -- start ------------------------------------------------------------------------------------

    def cell_config(self) -> ct.CellConfig:
        return ct.CellConfig(vtep_name=self.config.vtep_name,
                             no_masquerade_cidr=self.config.overlay_network)

    def start(self) -> None:
        """Ensure the table (no flush), adopt the live c2c state, run the first cycle."""
        with self.lock.held():
            existed = self.nft.table_exists(ct.FAMILY, ct.TABLE)
            self._ensure_base()
            listing = ct.list_c2c(self.nft)
        state = listing.state or ct.C2CState()
        self.log.info("table-ready", adopted=existed, live_allow_set=listing.allow_set,
                      allow_elements=len(state.allow), source_tags=len(state.src_tags))
        self.policy_cycle(full=True)
        self.ready = True

    def _ensure_base(self) -> None:
        """Add the table, its shared objects and the underlay interfaces (idempotent)."""
        lines = ct.base_lines(self.cell_config())
        if self.underlay_ifs:
            lines += ct.element_commands("add", "underlay_ifs",
                                         [f'"{i}"' for i in self.underlay_ifs])
        lines += ct.strict_lines(self.cell_config(), enabled=self.config.strict)
        self.nft.run(ct.script(lines))

    # -- c2c --------------------------------------------------------------------------------------

    def plan(self) -> tuple[Plan, int, list[LocalContainer]]:
        version = self.datastore.version()
        containers = local_containers(self.datastore.read_all(),
                                      with_ports=self.config.enable_overlay_ingress_rules)
        policies = []
        if containers:
            try:
                policies = self.client.policies(policy_ids(containers))
            except Exception as e:  # noqa: BLE001 - any client failure
                raise AgentError(f"failed to get policies: {e}") from None
        ingress = None
        if self.config.enable_overlay_ingress_rules:
            try:
                ingress = self.client.create_tag(INGRESS_ROUTER, "router").tag
            except Exception as e:  # noqa: BLE001
                raise AgentError(f"failed to get ingress tags: {e}") from None
        p = plan(containers, policies, ingress, self.c2c_logging,
                 self.config.iptables_accepted_udp_logs_per_sec)
        return p, version, containers

    def policy_cycle(self, full: bool = False) -> bool:
        """One c2c cycle; True when the kernel was changed. Raises AgentError."""
        with self._cycle:
            started = time.monotonic()
            try:
                changed = self._policy_cycle(full)
            except Exception as e:
                self.metrics.failures.labels("c2c").inc()
                if isinstance(e, (AgentError, NftError, CfnetError)):
                    raise AgentError(str(e)) from None
                raise AgentError(f"{type(e).__name__}: {e}") from None
            self.metrics.sync_duration.labels("c2c").observe(time.monotonic() - started)
            self.metrics.syncs.labels("c2c").inc()
            self.metrics.last_sync.labels("c2c").set_to_current_time()
            return changed

    def _policy_cycle(self, full: bool) -> bool:
        p, version, containers = self.plan()
        self.metrics.containers.set(len(containers))
        desired = p.state
        bypass = self.config.overlay_network if self.config.disable_container_network_policy \
            else None
        owners = {c.ip: c.handle for c in containers}
        full = (full or self.applied is None or self.live_set is None
                or p.log_rules != self.applied_log_rules
                or time.monotonic() - self.last_resync > self.config.resync_interval)
        old = self.applied
        t0 = time.monotonic()
        changed = False
        with self.lock.held():
            if not full:
                assert self.applied is not None and self.live_set is not None
                text = ct.render_c2c_diff(self._diff_base(owners, desired), desired,
                                          self.live_set)
                if text:
                    try:
                        self.nft.run(text)
                        changed = True
                    except NftError as e:
                        self.log.error("c2c-diff-failed", error=str(e))
                        full = True
            if full:
                if not self.nft.table_exists(ct.FAMILY, ct.TABLE):  # dropped behind our back
                    self.log.error("table-missing", hint="rebuilding the cell table's base")
                    self._ensure_base()
                listing = ct.list_c2c(self.nft)
                old = listing.state
                if (listing.allow_set is None or listing.state != desired
                        or p.log_rules != self.applied_log_rules or listing.chain_rules == 0):
                    # The listing is the kernel's truth: diff against it (or swap, if large).
                    self.live_set = ct.replace_c2c(self.nft, desired, p.log_rules, bypass,
                                                   last=listing.state)
                    changed = True
                else:
                    self.live_set = listing.allow_set
                self.last_resync = time.monotonic()
        self.metrics.enforce_duration.labels("c2c").observe(time.monotonic() - t0)
        self.applied, self.applied_version, self.applied_log_rules = desired, version, p.log_rules
        self.applied_owners = owners
        self.metrics.elements.labels("c2c_allow").set(len(desired.allow))
        self.metrics.elements.labels("c2c_src_tag").set(len(desired.src_tags))
        if changed:
            self.log.info("c2c-updated", full=full, containers=p.containers,
                          policies=p.policies, allow_elements=len(desired.allow),
                          source_tags=len(desired.src_tags))
        if self.config.strict and old is not None:
            closed = conntrack.closed_by(old.allow, desired.allow)
            if closed:
                n = conntrack.delete_closed(closed)
                self.metrics.conntrack.inc(n)
                self.log.info("conntrack-entries-deleted", count=n,
                              closed=[f"{c.ip} {c.proto} {c.lo}-{c.hi}" for c in closed])
        return changed

    def _diff_base(self, owners: dict[str, str], desired: ct.C2CState) -> ct.C2CState:
        """What the kernel holds, as far as the agent knows: the last applied state, except that
        the CNI's DEL of a container removes its IP's source tag. So an IP that changed hands
        since then is re-added when wanted (an `add` of what is there is a no-op), or
        added-then-deleted when not; anything the kernel holds otherwise fails the transaction
        and the cycle falls back to a full resync from a listing."""
        assert self.applied is not None
        tags = dict(self.applied.src_tags)
        for ip in set(tags) | set(owners):
            if self.applied_owners.get(ip) != owners.get(ip) and ip in desired.src_tags:
                tags.pop(ip, None)
        return ct.C2CState(tags, self.applied.allow)

    def datastore_moved(self) -> bool:
        return self.datastore.version() != self.applied_version

    def resync_due(self) -> bool:
        return time.monotonic() - self.last_resync > self.config.resync_interval

    # -- ASGs -------------------------------------------------------------------------------------

    def netout_for(self, c: LocalContainer, rules: Sequence[ar.EgressRule]) -> ar.NetoutChains:
        cfg = self.config
        o = cfg.outbound_connections
        return ar.netout_chains(
            c.handle, c.workload, rules,
            ar.DenyNetworks(list(cfg.deny_networks.always), list(cfg.deny_networks.running),
                            list(cfg.deny_networks.staging)),
            cfg.iptables_asg_logging,
            ar.OutboundLimits(o.limit, o.logging, o.burst, o.rate_per_sec, o.dry_run),
            cfg.iptables_denied_logs_per_sec, cfg.iptables_accepted_udp_logs_per_sec)

    def asg_cycle(self, handle: str | None = None) -> list[str]:
        """Sync the netout chains of every container (or only `handle`, forced: always written,
        and an error when it cannot be). Returns the handles written."""
        with self._cycle:
            started = time.monotonic()
            try:
                written = self._asg_cycle(handle)
            except Exception as e:
                self.metrics.failures.labels("asg").inc()
                if isinstance(e, CfnetError):
                    raise AgentError(str(e)) from None
                raise AgentError(f"{type(e).__name__}: {e}") from None
            self.metrics.sync_duration.labels("asg").observe(time.monotonic() - started)
            self.metrics.syncs.labels("asg").inc()
            self.metrics.last_sync.labels("asg").set_to_current_time()
            return written

    def _asg_cycle(self, handle: str | None) -> list[str]:
        containers = asg_mod.asg_containers(local_containers(self.datastore.read_all()))
        if handle is not None:
            containers = [c for c in containers if c.handle == handle]
        if not containers:
            return []
        try:
            groups = list(self.client.all_security_groups(asg_mod.space_ids(containers)))
        except Exception as e:  # noqa: BLE001
            raise AgentError(f"failed to get security groups: {e}") from None
        sel = asg_mod.select(containers, groups)
        for h, why in sel.errors.items():
            self.log.error("rules-from-security-group-rules", container=h, error=why)
        if handle is not None and handle in sel.errors:
            raise AgentError(sel.errors[handle])
        rendered: dict[str, str] = {}
        for c in containers:
            if c.handle in sel.rules:
                try:
                    rendered[c.handle] = ct.render_netout(self.netout_for(c, sel.rules[c.handle]))
                except (ar.AsgRuleError, ValueError) as e:
                    self.log.error("render-netout", container=c.handle, error=str(e))
                    if handle is not None:
                        raise AgentError(str(e)) from None
        written: list[str] = []
        errors: list[str] = []
        t0 = time.monotonic()
        # Every resync_interval all chains are rewritten, repairing changes made behind our back.
        resync = handle is None and t0 - self.last_asg_resync > self.config.resync_interval
        if resync:
            self.last_asg_resync = t0
        with self.lock.held():
            state = ct.list_cell(self.nft)
            present = self._netout_present(state)
            todo = {}
            for h, text in rendered.items():
                if h not in present:
                    self.log.debug("container-structure-missing", container=h)
                    continue
                chain = state.chains.get(ar.netout_chain(h)) if state else None
                chain_handle = chain.handle if chain else 0
                last = self.asg_applied.get(h)
                if handle is None and not resync and last and last.text == text and \
                        last.chain_handle == chain_handle:
                    continue
                todo[h] = (text, chain_handle)
            if handle is not None and handle not in present:
                raise AgentError("container structure not created yet (no netout_v element)")
            if todo:
                try:
                    self.nft.run("".join(t for t, _ in todo.values()))
                    written = list(todo)
                except NftError:
                    for h, (text, _) in todo.items():  # isolate the failing container
                        try:
                            self.nft.run(text)
                            written.append(h)
                        except NftError as e:
                            errors.append(f"{h}: {e}")
                            self.log.error("enforce-asg", container=h, error=str(e))
                for h in written:
                    self.asg_applied[h] = _AsgApplied(*todo[h])
        self.metrics.enforce_duration.labels("asg").observe(time.monotonic() - t0)
        self.metrics.elements.labels("asg_containers").set(len(self.asg_applied))
        if written:
            self.log.info("asgs-updated", containers=sorted(written))
        if handle is not None and errors:
            raise AgentError("; ".join(errors))
        return written

    @staticmethod
    def _netout_present(state: ct.TableState | None) -> set[str]:
        if state is None:
            return set()
        s = state.sets.get("netout_v")
        prefix = "jump netout-"
        return {v[len(prefix):] for v in (s.keys.values() if s else []) if v and
                v.startswith(prefix)}

    # -- orphans ----------------------------------------------------------------------------------

    def cleanup_orphans(self) -> list[str]:
        """Remove structure of handles absent from the datastore in two consecutive passes."""
        with self._cycle:
            live = set(self.datastore.read_all())
            with self.lock.held():
                state = ct.list_cell(self.nft)
                if state is None:
                    return []
                found = set(ct.find_orphans(state, live, include_referenced=True))
                remove = sorted(found & self.orphan_candidates)
                self.orphan_candidates = found - set(remove)
                if remove:
                    lines: list[str] = []
                    for h in remove:
                        lines += ct.container_remove_lines(h, state)
                    self.nft.run(ct.script(lines))
            for h in remove:
                self.asg_applied.pop(h, None)
            if remove:
                self.metrics.orphans.inc(len(remove))
                self.log.info("orphans-removed", containers=remove)
            return remove

    def cleanup_container(self, handle: str) -> bool:
        """The CNI's DEL notice: forget the handle and remove what is left of it when it has no
        datastore entry any more. True when something was removed."""
        with self._cycle:
            self.asg_applied.pop(handle, None)
            if handle in self.datastore.read_all():
                return False
            with self.lock.held():
                state = ct.list_cell(self.nft)
                if state is None or handle not in (ct.handles_in(state)
                                                   | ct.referenced_handles(state)):
                    return False
                self.nft.run(ct.render_container_remove(handle, state))
            return True
