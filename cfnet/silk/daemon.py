"""`cfnet silk-daemon`: wires a cell into the Silk overlay (spec silk.md 2).

Start-up (2.2): the lease is recovered from the VTEP the kernel already has (there is no lease
file), renewed, and kept; when there is no VTEP, or the renewal is refused and no container runs
on the cell, a new lease is acquired and the VTEP built (cfnet/net/vtep.py). Then, every
`poll_interval` seconds (first cycle at once): renew the lease, fetch the routable leases, and
converge routes, ARP and FDB entries to them. While the controller is unreachable the data plane
stays as last converged and the netinfo endpoint keeps answering; only a renewal refused with 409,
or `partition_tolerance_seconds` without a successful renewal, is fatal (exit 1). SIGTERM exits 0
and leaves the lease and the VTEP alone: containers keep their network while a cell drains;
`cfnet silk-daemon teardown` is the explicit way to give both up.

Listeners: the netinfo/health endpoint the CNI plugin reads (`127.0.0.1:health_check_port`, any
path and method, `{"overlay_subnet":..,"mtu":..}`), and the debug listener
(`127.0.0.1:debug_server_port`: `/log-level`, `/metrics`, `/debug/pprof`).

Netlink and controller calls are blocking; they run one at a time on a single worker thread, so
the listeners answer while a renewal waits for its timeout.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cfnet.cli.exit_codes import ExitCode
from cfnet.core.config import load_config
from cfnet.core.errors import CfnetError, ConfigError
from cfnet.core.leases import Lease
from cfnet.core.logs import Logger, setup_logging
from cfnet.net import vtep
from cfnet.net.vtep import VtepConfig, VtepError, VtepInfo

SERVICE = "silk-daemon"
DEFAULT_PREFIX = "cfnetworking"
PORT = {"min": 0, "max": 65535}  # 0 picks a free port (logged in `starting-servers`)
LOG_LEVELS = ("debug", "info", "error", "fatal")
RESTART_HINT = 'This cell must be restarted (run "bosh restart silk-daemon"): '


# -- config ---------------------------------------------------------------------------------------


@dataclass
class DaemonConfig:
    """The upstream keys (what the BOSH job renders), with the BOSH values as defaults.

    cfnet extras: `overlay_network` may list several CIDRs (comma-separated or a list), as the
    controller's `network`; a port of 0 picks a free one; `poll_jitter` spreads the polls of many
    cells (upstream polls in lock-step); `health_check_host`/`debug_server_host` for labs;
    `neighbour_table_headroom`: ARP entries to keep free beyond one per remote lease when
    checking the kernel's gc_thresh values.
    """

    underlay_ip: str = field(default="", metadata={"required": True})
    connectivity_server_url: str = field(default="", metadata={"required": True})
    ca_cert_file: str = field(default="", metadata={"required": True})
    client_cert_file: str = field(default="", metadata={"required": True})
    client_key_file: str = field(default="", metadata={"required": True})
    subnet_prefix_length: int = field(default=24, metadata={"min": 1, "max": 32})
    overlay_network: Any = "10.255.0.0/16"
    health_check_port: int = field(default=23954, metadata=PORT)
    vtep_name: str = "silk-vtep"
    vni: int = field(default=1, metadata={"min": 1, "max": 16777215})
    vtep_port: int = field(default=4789, metadata={"min": 1, "max": 65535})
    poll_interval: int = field(default=30, metadata={"min": 1})
    debug_server_port: int = field(default=22233, metadata=PORT)
    datastore: str = "/var/vcap/data/silk/store.json"
    partition_tolerance_seconds: int = field(default=604800, metadata={"min": 1})
    client_timeout_seconds: int = field(default=5, metadata={"min": 1})
    metron_port: int = field(default=3457, metadata={"min": 1, "max": 65535})  # accepted, unused
    log_prefix: str = DEFAULT_PREFIX
    log_level: str = field(default="info", metadata={"choices": LOG_LEVELS})
    vxlan_interface_name: str = ""
    single_ip_only: bool = False
    poll_jitter: float = field(default=0.1, metadata={"min": 0.0, "max": 0.5})
    neighbour_table_headroom: int = field(default=0, metadata={"min": 0})
    health_check_host: str = "127.0.0.1"
    debug_server_host: str = "127.0.0.1"

    @property
    def overlay(self) -> str:
        """`overlay_network` as one comma-separated string."""
        value = self.overlay_network
        return ",".join(value) if isinstance(value, list) else str(value)

    def validate(self) -> None:
        for key in ("vtep_name", "datastore", "log_prefix", "health_check_host",
                    "debug_server_host"):
            if not getattr(self, key):
                raise ConfigError(f"invalid config: key '{key}' must not be empty")
        try:
            ipaddress.IPv4Address(self.underlay_ip)
        except ValueError:
            raise ConfigError(f"invalid config: key 'underlay_ip': {self.underlay_ip!r} is not an "
                              "IPv4 address") from None
        if isinstance(self.overlay_network, list) and not all(
                isinstance(v, str) for v in self.overlay_network):
            raise ConfigError("invalid config: key 'overlay_network': expected CIDR strings")
        try:
            nets = vtep.parse_overlay(self.overlay)
        except VtepError as e:
            raise ConfigError(f"invalid config: key 'overlay_network': {e}") from None
        if not self.single_ip_only and nets[0].prefixlen >= self.subnet_prefix_length:
            raise ConfigError(
                f"invalid config: key 'subnet_prefix_length': {self.subnet_prefix_length} must be "
                f"longer than the overlay prefix {nets[0].prefixlen}")
        if not self.connectivity_server_url.startswith("https://"):
            raise ConfigError("invalid config: key 'connectivity_server_url': must be "
                              "https://HOST:PORT")


def load_daemon_config(path: str | Path) -> DaemonConfig:
    config = load_config(path, DaemonConfig)
    config.validate()
    return config


# -- the controller, as the daemon sees it --------------------------------------------------------


class LeaseAPI(Protocol):
    """What the daemon needs from cfnet.silk.lease_client.LeaseClient."""

    def acquire(self, underlay_ip: str, single_overlay_ip: bool = False) -> Lease: ...
    def renew(self, lease: Lease) -> None: ...
    def release(self, underlay_ip: str) -> None: ...
    def routable_leases(self) -> list[Lease]: ...


def lease_client(config: DaemonConfig, timeout: float | None = None) -> Any:
    """The mTLS lease client of `config` (a ConfigError when the TLS files are unusable)."""
    import ssl

    from cfnet.silk.lease_client import LeaseClient
    from cfnet.web.tls import TLSFileError, TLSFiles, check_tls_files

    files = TLSFiles(Path(config.client_cert_file), Path(config.client_key_file),
                     Path(config.ca_cert_file))
    keys = {"ca": "ca_cert_file", "cert": "client_cert_file", "key": "client_key_file"}
    try:
        check_tls_files(files)  # so the error names the key, not just an OpenSSL reason
    except TLSFileError as e:
        raise ConfigError(f"create tls config: invalid config: key '{keys[e.which]}': "
                          f"{e.problem}") from None
    try:
        return LeaseClient(config.connectivity_server_url, files,
                           timeout=timeout or config.client_timeout_seconds)
    except (OSError, ssl.SSLError, ValueError) as e:
        raise ConfigError(f"create tls config: {e}") from None


def _non_retriable(error: BaseException) -> bool:
    from cfnet.silk.lease_client import NonRetriableError

    return isinstance(error, NonRetriableError)


# -- errors and metrics ---------------------------------------------------------------------------


class DaemonError(CfnetError):
    """Start-up failed; the daemon exits 1 with this message."""


class FatalError(DaemonError):
    """The poller cannot go on (lease refused, or partitioned for too long)."""


class Metrics:
    """Upstream's counters and values as Prometheus metrics, in a registry of their own.

    renewSuccess/renewFailure -> cfnet_silk_daemon_renew_{success,failure}_total,
    convergeSuccess/convergeFailure -> cfnet_silk_daemon_converge_{success,failure}_total,
    numberLeases -> cfnet_silk_daemon_leases, uptime -> cfnet_silk_daemon_uptime_seconds.
    """

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        p = "cfnet_silk_daemon"
        r = self.registry = CollectorRegistry()
        self.started = time.time()
        self.renew_success = Counter(f"{p}_renew_success", "Lease renewals that succeeded.",
                                     registry=r)
        self.renew_failure = Counter(f"{p}_renew_failure", "Lease renewals that failed.",
                                     registry=r)
        self.converge_success = Counter(f"{p}_converge_success", "Convergences that succeeded.",
                                        registry=r)
        self.converge_failure = Counter(f"{p}_converge_failure", "Convergences that failed.",
                                        registry=r)
        self.leases = Gauge(f"{p}_leases", "Leases the controller reported routable.", registry=r)
        self.last_renew = Gauge(f"{p}_last_renew_timestamp_seconds",
                                "Unix time of the last successful renewal.", registry=r)
        self.neighbour_table_small = Gauge(
            f"{p}_neighbour_table_too_small",
            "1 when the kernel's ARP gc_thresh values are too small for the remote leases.",
            registry=r)
        self.uptime = Gauge(f"{p}_uptime_seconds", "Seconds since the process started.",
                            registry=r)
        self.uptime.set_function(lambda: time.time() - self.started)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# -- the daemon -----------------------------------------------------------------------------------


def count_containers(path: str) -> int:
    """Entries in the silk CNI datastore (missing or empty file: none)."""
    try:
        text = Path(path).read_bytes()
    except FileNotFoundError:
        return 0
    except OSError as e:
        raise DaemonError(f"read datastore: open {path}: {e.strerror or e}") from None
    if not text.strip():
        return 0
    try:
        data = json.loads(text)
    except ValueError as e:
        raise DaemonError(f"read datastore: decoding file: {e}") from None
    if not isinstance(data, dict):
        raise DaemonError("read datastore: decoding file: not a JSON object")
    return len(data)


class Daemon:
    """One cell's silk-daemon: `start()`, then `poll()` every interval (see the module doc)."""

    def __init__(self, config: DaemonConfig, client: LeaseAPI, log: Logger,
                 metrics: Metrics | None = None) -> None:
        self.config = config
        self.client = client
        self.log = log
        self.metrics = metrics or Metrics()
        self.lease: Lease | None = None
        self.vtep: VtepInfo | None = None
        self.last_renew = time.monotonic()  # upstream starts the partition clock at start-up
        self.fatal: str | None = None
        self._ipr: Any = None
        self._small_table: str | None = None

    @property
    def ipr(self) -> Any:
        if self._ipr is None:
            from pyroute2 import IPRoute

            self._ipr = IPRoute()
        return self._ipr

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    # -- start-up ---------------------------------------------------------------------------------

    def discover(self) -> Lease | None:
        """The lease the existing VTEP stands for, or None (no VTEP, or no IPv4 address on it)."""
        info = vtep.inspect(self.ipr, self.config.vtep_name)
        if info is None or info.first_ipv4 is None:
            return None
        # A single-IP lease is a /32 (upstream rebuilt it with the block prefix, so its first
        # renewal after every restart failed and it always re-acquired).
        prefix = 32 if self.config.single_ip_only else self.config.subnet_prefix_length
        subnet = ipaddress.IPv4Network(f"{info.first_ipv4}/{prefix}", strict=False)
        return Lease(self.config.underlay_ip, str(subnet), info.mac)

    def start(self) -> None:
        """Recover or acquire the lease and make sure the VTEP stands for it (spec 2.2)."""
        cfg = self.config
        lease = self.discover()
        if lease is not None:
            lease = self._keep_discovered(lease)
        if lease is None:
            try:
                lease = self.client.acquire(cfg.underlay_ip, cfg.single_ip_only)
            except Exception as e:  # noqa: BLE001 - any client failure ends the start-up
                raise DaemonError(f"acquire subnet lease: {e}") from None
            self.log.info("acquired-lease", lease=lease.to_json())
            self.vtep = self._create_vtep(lease)
        else:
            self.vtep = self._adopt_vtep(lease)
        self.lease = lease
        self.last_renew = time.monotonic()

    def _keep_discovered(self, lease: Lease) -> Lease | None:
        """The discovered lease if the controller renews it; None when it must be given up."""
        base = lease.overlay_subnet.split("/")[0]
        nets = vtep.parse_overlay(self.config.overlay)
        if not any(ipaddress.IPv4Address(base) in n for n in nets):
            self.log.error("network-contains-lease", lease=lease.to_json(),
                           error="discovered lease is not in overlay network")
            containers = count_containers(self.config.datastore)
            if containers:
                raise DaemonError("discovered lease is not in overlay network and has "
                                  f"containers: {containers}")
            self._delete_vtep()
            return None
        try:
            self.client.renew(lease)
        except Exception as e:  # noqa: BLE001 - 404, 409, 500 and network errors alike
            self.log.error("renew-lease", error=str(e), lease=lease.to_json())
            containers = count_containers(self.config.datastore)
            if containers:
                raise DaemonError(f"renew subnet lease with containers: {containers}") from None
            self._delete_vtep()
            return None
        self.metrics.renew_success.inc()
        self.metrics.last_renew.set_to_current_time()
        self.log.info("renewed-lease", lease=lease.to_json())
        return lease

    def _vtep_config(self, lease: Lease) -> VtepConfig:
        return VtepConfig(
            name=self.config.vtep_name, vni=self.config.vni, port=self.config.vtep_port,
            underlay_ip=self.config.underlay_ip, overlay_ip=lease.overlay_subnet.split("/")[0],
            overlay_network=self.config.overlay, mac=lease.overlay_hardware_addr,
            subnet_prefix_length=int(lease.overlay_subnet.split("/")[1]),
            underlay_interface=self.config.vxlan_interface_name,
        )

    def _create_vtep(self, lease: Lease) -> VtepInfo:
        try:
            vcfg = self._vtep_config(lease)
            vcfg.check()
        except VtepError as e:
            raise DaemonError(f"create vtep config: {e}") from None
        except (ValueError, IndexError):
            raise DaemonError(f"create vtep config: invalid lease {lease.to_json()}") from None
        try:
            info = vtep.create(self.ipr, vcfg)
        except VtepError as e:
            raise DaemonError(str(e) if str(e).startswith("create vtep") else
                              f"create vtep config: {e}") from None
        self.log.info("vtep-created", name=info.name, index=info.index, mtu=info.mtu,
                      mac=info.mac)
        return info

    def _adopt_vtep(self, lease: Lease) -> VtepInfo:
        """Keep the existing VTEP, or rebuild it for the same lease when its shape is not ours
        (made by hand, or before a config change of vni, port or underlay)."""
        info = vtep.inspect(self.ipr, self.config.vtep_name)
        assert info is not None
        try:
            _, underlay_mtu = vtep.underlay_device(self.ipr, self.config.underlay_ip,
                                                   self.config.vxlan_interface_name)
        except VtepError as e:
            raise DaemonError(f"create vtep config: {e}") from None
        expected = (self.config.vni, self.config.vtep_port, True, False, self.config.underlay_ip,
                    underlay_mtu - vtep.VXLAN_OVERHEAD, True)
        actual = (info.vni, info.port, info.gbp, info.learning, info.local, info.mtu, info.up)
        if actual == expected:
            return info
        self.log.info("vtep-rebuilt", expected=list(expected), actual=list(actual))
        return self._create_vtep(lease)

    def _delete_vtep(self) -> None:
        try:
            vtep.delete(self.ipr, self.config.vtep_name)
        except VtepError as e:
            raise DaemonError(str(e)) from None

    def netinfo(self) -> dict[str, Any]:
        """The netinfo document the CNI plugin reads (computed once, at start-up)."""
        assert self.lease is not None and self.vtep is not None
        return {"overlay_subnet": self.lease.overlay_subnet, "mtu": self.vtep.mtu}

    # -- the poll cycle ---------------------------------------------------------------------------

    def poll(self) -> None:
        """One cycle (spec 2.4): renew, list leases, converge. Raises FatalError."""
        assert self.lease is not None and self.vtep is not None
        try:
            self.client.renew(self.lease)
        except Exception as e:  # noqa: BLE001
            self.metrics.renew_failure.inc()
            partitioned = time.monotonic() - self.last_renew
            if _non_retriable(e) or partitioned >= self.config.partition_tolerance_seconds:
                raise FatalError(f"fatal: renew lease: {e}") from None
            self.log.error("poll-cycle", error=f"renew lease: {e}",
                           **{"seconds-since-last-renew": round(partitioned, 1)})
            return
        self.last_renew = time.monotonic()
        self.metrics.renew_success.inc()
        self.metrics.last_renew.set_to_current_time()
        self.log.debug("renew-lease", lease=self.lease.to_json())

        try:
            leases = self.client.routable_leases()
        except Exception as e:  # noqa: BLE001 - never fatal: keep what is programmed
            self.log.error("poll-cycle", error=f"get routable leases: {e}")
            return
        self.metrics.leases.set(len(leases))
        self.converge(leases)

    def ensure_vtep(self) -> None:
        """Rebuild the VTEP for our lease if someone deleted it (upstream would fail every
        convergence until restarted)."""
        assert self.lease is not None and self.vtep is not None
        current = vtep.inspect(self.ipr, self.config.vtep_name)
        if current is not None and current.index == self.vtep.index and current.addresses:
            return
        self.log.error("vtep-missing", name=self.config.vtep_name)
        self.vtep = self._create_vtep(self.lease)

    def converge(self, leases: Sequence[Lease]) -> None:
        assert self.lease is not None and self.vtep is not None
        try:
            self.ensure_vtep()
            result = vtep.converge(self.ipr, self.vtep.index, self.lease.overlay_subnet,
                                   self.config.overlay, leases)
        except Exception as e:  # noqa: BLE001 - a bad lease or a netlink failure
            self.metrics.converge_failure.inc()
            self.log.error("poll-cycle", error=f"converge leases: {e}")
            return
        self.metrics.converge_success.inc()
        self.log.debug("converge-leases", leases=[lease.to_json() for lease in leases])
        if result.changed:
            self.log.info("converged", peers=result.peers,
                          **{"routes-written": result.routes_written,
                             "routes-deleted": result.routes_deleted,
                             "neighbours-written": result.neighbours_written,
                             "neighbours-deleted": result.neighbours_deleted})
        if result.non_routable:
            self.log.info("converger", **{"non-routable-lease-count": result.non_routable})
        self.check_neighbour_table(result.peers)

    def check_neighbour_table(self, remote_leases: int) -> None:
        """Warn (once per change) when the ARP table thresholds are too small for the peers."""
        try:
            thresholds = vtep.arp_thresholds(self.ipr)
        except Exception:  # noqa: BLE001 - a kernel without the table dump: nothing to check
            return
        warning = vtep.neighbour_table_warning(remote_leases, thresholds,
                                               self.config.neighbour_table_headroom,
                                               vtep.permanent_entries_counted())
        self.metrics.neighbour_table_small.set(1 if warning else 0)
        if warning and warning != self._small_table:
            assert thresholds is not None
            self.log.error("neighbour-table-too-small", error=warning,
                           **{"remote-leases": remote_leases, "gc_thresh1": thresholds[0],
                              "gc_thresh2": thresholds[1], "gc_thresh3": thresholds[2],
                              "hint": "raise net.ipv4.neigh.default.gc_thresh2/3 on the host"})
        self._small_table = warning

    # -- listeners --------------------------------------------------------------------------------

    def netinfo_app(self) -> Any:
        """Any method, any path: 200 with the netinfo document, as upstream."""
        body = json.dumps(self.netinfo(), separators=(",", ":")).encode()

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        return app

    def debug_app(self) -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST

        from cfnet.web.debug import debug_app

        return debug_app(self.log.set_level, self.log, self.metrics.render,
                         content_type=CONTENT_TYPE_LATEST)

    async def poller(self, worker: ThreadPoolExecutor, stop: asyncio.Event) -> None:
        """Poll until stopped; a fatal error stops the whole process."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                await loop.run_in_executor(worker, self.poll)
            except FatalError as e:
                self.fatal = str(e)
                self.log.error("poll-cycle", error=str(e))
                stop.set()
                return
            except Exception as e:  # noqa: BLE001 - a bug must not silently end the polling
                self.log.error("poll-cycle", error=f"unexpected: {type(e).__name__}: {e}")
            spread = self.config.poll_interval * self.config.poll_jitter
            await asyncio.sleep(self.config.poll_interval + random.uniform(-spread, spread))


# -- the process ----------------------------------------------------------------------------------


def _fail(source: str, message: str, code: int = ExitCode.ERROR) -> int:
    print(f"{source} error: {message}", file=sys.stderr, flush=True)
    return code


def run(config_path: str | Path) -> int:
    """Run the daemon until SIGTERM/SIGINT (exit 0) or a fatal error (exit 1)."""
    source = f"{DEFAULT_PREFIX}.{SERVICE}"
    try:
        config = load_daemon_config(config_path)
    except ConfigError as e:
        return _fail(source, f"load config file: {e}")
    source = f"{config.log_prefix}.{SERVICE}"
    log = setup_logging(source, config.log_level)
    try:
        client = lease_client(config)
    except ConfigError as e:
        return _fail(source, str(e))
    daemon = Daemon(config, client, log)
    try:
        return asyncio.run(_main(daemon))
    except (CfnetError, OSError) as e:
        log.error("fatal", error=str(e))
        return _fail(source, str(e))
    finally:
        daemon.close()
        client.close()


async def _main(daemon: Daemon) -> int:
    from cfnet.web.serve import Listener, serve

    cfg, log = daemon.config, daemon.log
    log.info("starting", underlay_ip=cfg.underlay_ip, vtep_name=cfg.vtep_name)
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="silk-daemon")
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(worker, daemon.start)
        log.info("vtep-ready", lease=daemon.lease.to_json() if daemon.lease else None,
                 **daemon.netinfo())
        listeners = [
            Listener("netinfo", daemon.netinfo_app(), cfg.health_check_host, cfg.health_check_port),
            Listener("debug", daemon.debug_app(), cfg.debug_server_host, cfg.debug_server_port),
        ]
        for listener in listeners:
            listener.bind()
        log.info("starting-servers", **{l.name: f"{l.host}:{l.port}" for l in listeners})
        stop = asyncio.Event()

        async def poller() -> None:
            await daemon.poller(worker, stop)

        await serve(listeners, background=[poller], stop=stop, grace=2.0,
                    on_ready=lambda: log.info("running"))
    finally:
        worker.shutdown(wait=False, cancel_futures=True)
    if daemon.fatal:
        raise FatalError(RESTART_HINT + daemon.fatal)
    log.info("exited")
    return ExitCode.OK
