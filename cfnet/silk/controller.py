"""`cfnet silk-controller`: the subnet lease API (mutual TLS), health and debug listeners.

Upstream paths, JSON shapes, status codes and error texts are kept byte for byte (spec silk.md
§1.3). Request bodies are decoded the way Go's encoding/json decodes into a struct: keys match
case-insensitively, unknown keys are ignored, missing keys are zero values, and a body that is
not JSON gets Go's error text.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from cfnet.cli.exit_codes import ExitCode
from cfnet.core.config import load_config
from cfnet.core.errors import CfnetError, ConfigError
from cfnet.core.leases import CIDRPool, Lease, LeaseError, parse_networks
from cfnet.core.logs import Logger, setup_logging
from cfnet.silk.controller_store import LeaseStore, LeaseStoreError, NonRetriableError
from cfnet.store.db import Database, DatabaseConfig, is_network_error  # noqa: F401 - re-exported
from cfnet.web.router import Handler, Route, Router, error_response, json_response

SERVICE = "silk-controller"
DEFAULT_PREFIX = "cfnetworking"


# -- config ---------------------------------------------------------------------------------------


@dataclass
class ControllerConfig:
    """The upstream config keys (the JSON the BOSH job renders), plus two cfnet extras.

    `network` is one CIDR, a comma-separated list or a list of non-overlapping CIDRs. A port of 0
    picks a free port (the chosen ports are logged in `starting-servers`), for tests and the lab.
    """

    ca_cert_file: str = field(default="", metadata={"required": True})
    server_cert_file: str = field(default="", metadata={"required": True})
    server_key_file: str = field(default="", metadata={"required": True})
    network: Any = "10.255.0.0/16"
    subnet_prefix_length: int = field(default=24, metadata={"min": 1, "max": 30})
    database: DatabaseConfig = field(default_factory=DatabaseConfig, metadata={"required": True})
    listen_host: str = "0.0.0.0"
    listen_port: int = field(default=4103, metadata={"min": 0, "max": 65535})
    debug_server_port: int = field(default=46455, metadata={"min": 0, "max": 65535})
    health_check_port: int = field(default=19683, metadata={"min": 0, "max": 65535})
    lease_expiration_seconds: int = field(default=604800, metadata={"min": 1})
    metron_port: int = field(default=3457, metadata={"min": 1, "max": 65535})  # accepted, unused
    metrics_emit_seconds: int = field(default=30, metadata={"min": 1})
    staleness_threshold_seconds: int = field(default=3600, metadata={"min": 1})
    log_prefix: str = DEFAULT_PREFIX
    max_idle_connections: int = field(default=10, metadata={"min": 0})  # accepted, unused
    max_open_connections: int = field(default=200, metadata={"min": 0})
    connections_max_lifetime_seconds: int = field(default=3600, metadata={"min": 0})  # unused
    # cfnet extras: upstream binds health and debug to 127.0.0.1 only; inside a lab namespace the
    # harness needs them on the namespace's address.
    health_check_host: str = "127.0.0.1"
    debug_server_host: str = "127.0.0.1"

    def pool(self) -> CIDRPool:
        """The allocation pools, or a ConfigError naming the key at fault."""
        try:
            parse_networks(self.network)
        except LeaseError as e:
            raise ConfigError(f"invalid config: key 'network': {e}") from None
        try:
            return CIDRPool(self.network, self.subnet_prefix_length)
        except LeaseError as e:
            raise ConfigError(f"invalid config: key 'subnet_prefix_length': {e}") from None


def load_controller_config(path: str | Path) -> ControllerConfig:
    config = load_config(path, ControllerConfig)
    for key in ("listen_host", "log_prefix", "health_check_host", "debug_server_host"):
        if not getattr(config, key):
            raise ConfigError(f"invalid config: key '{key}' must not be empty")
    config.pool()
    config.database.validate()
    return config


def check_controller_tls(config: ControllerConfig) -> None:
    """A ConfigError naming the key when a TLS file is unreadable, not PEM, or mismatched."""
    from cfnet.web.tls import TLSFileError, TLSFiles, check_tls_files

    keys = {"ca": "ca_cert_file", "cert": "server_cert_file", "key": "server_key_file"}
    try:
        check_tls_files(TLSFiles(Path(config.server_cert_file), Path(config.server_key_file),
                                 Path(config.ca_cert_file)))
    except TLSFileError as e:
        raise ConfigError(f"invalid config: key '{keys[e.which]}': {e.problem}") from None


# -- Go-style request decoding --------------------------------------------------------------------


class BadRequest(Exception):
    """A body Go's decoder would reject; the message is Go's error text."""


_GO_KINDS = {str: "string", bool: "bool", int: "number", float: "number", list: "array",
             dict: "object"}


def decode_struct(body: bytes, fields: dict[str, type], struct: str, go_type: str) -> dict[str, Any]:
    """Decode `body` as Go decodes into a struct named `struct` (type `go_type`, json tags as keys)."""
    text = body.decode("utf-8", errors="replace")
    if not text.strip():
        raise BadRequest("unexpected end of JSON input")
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise BadRequest(_go_syntax_error(text, e)) from None
    except ValueError as e:
        raise BadRequest(str(e)) from None
    values: dict[str, Any] = {name: tp() for name, tp in fields.items()}
    if obj is None:
        return values
    if not isinstance(obj, dict):
        raise BadRequest(f"json: cannot unmarshal {_go_kind(obj)} into Go value of type {go_type}")
    # Go prefers an exact key match, then a case-insensitive one; later duplicates win.
    for key, value in obj.items():
        name = key if key in fields else key.lower()
        if name not in fields or value is None:
            continue
        tp = fields[name]
        if type(value) is not tp:
            raise BadRequest(f"json: cannot unmarshal {_go_kind(value)} into Go struct field "
                             f"{struct}.{name} of type {_GO_KINDS[tp]}")
        values[name] = value
    return values


def _go_kind(value: Any) -> str:
    return _GO_KINDS.get(type(value), "value")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid character '{name[0]}' looking for beginning of value")


def _go_syntax_error(text: str, e: json.JSONDecodeError) -> str:
    rest = text[e.pos:]
    if not rest.strip():
        return "unexpected end of JSON input"
    ch = rest[0]
    for literal in ("null", "true", "false"):
        if ch == literal[0] and e.msg.startswith("Expecting value"):
            for got, want in zip(rest, literal):
                if got != want:
                    return f"invalid character '{got}' in literal {literal} (expecting '{want}')"
            return "unexpected end of JSON input"
    if e.msg == "Extra data":
        return f"invalid character '{ch}' after top-level value"
    if e.msg.startswith("Expecting property name"):
        return f"invalid character '{ch}' looking for beginning of object key string"
    if e.msg.startswith("Expecting ':'"):
        return f"invalid character '{ch}' after object key"
    if e.msg.startswith("Expecting ','"):
        return f"invalid character '{ch}' after object key:value pair"
    return f"invalid character '{ch}' looking for beginning of value"


# (fields, struct name in field errors, Go type in value errors) of upstream's request payloads
_ACQUIRE = ({"underlay_ip": str, "single_overlay_ip": bool}, "",
            'struct { UnderlayIP string "json:\\"underlay_ip\\""; '
            'SingleOverlayIP bool "json:\\"single_overlay_ip\\"" }')
_RELEASE = ({"underlay_ip": str}, "", 'struct { UnderlayIP string "json:\\"underlay_ip\\"" }')
_LEASE = ({"underlay_ip": str, "overlay_subnet": str, "overlay_hardware_addr": str}, "Lease",
          "controller.Lease")


# -- metrics --------------------------------------------------------------------------------------


class Metrics:
    """Prometheus metrics; handler labels keep upstream's metric names (LeasesAcquire, ...)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        p = "cfnet_silk_controller_"
        self.requests = Counter(p + "requests", "Requests served, by handler", ["handler"],
                                registry=self.registry)
        self.duration = Histogram(p + "request_duration_seconds", "Request time, by handler",
                                  ["handler"], registry=self.registry,
                                  buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))
        self.http_errors = Counter(p + "http_errors", "Error responses (upstream http_error)",
                                   registry=self.registry)
        self.leases_total = Gauge(p + "leases_total", "Lease rows (upstream totalLeases)",
                                  registry=self.registry)
        self.leases_free = Gauge(p + "leases_free", "Blocks of the pool no lease holds "
                                 "(upstream freeLeases)", registry=self.registry)
        self.leases_stale = Gauge(p + "leases_stale", "Leases not renewed within "
                                  "staleness_threshold_seconds (upstream staleLeases)",
                                  registry=self.registry)
        started = time.monotonic()
        Gauge(p + "uptime_seconds", "Seconds since start (upstream uptime)",
              registry=self.registry).set_function(lambda: time.monotonic() - started)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# -- the application ------------------------------------------------------------------------------


class Controller:
    """The three ASGI apps (API, health, debug) over one lease store."""

    def __init__(self, store: LeaseStore, log: Logger, metrics: Metrics | None = None) -> None:
        self.store = store
        self.log = log
        self.metrics = metrics or Metrics()

    def _wrap(self, name: str, session: str, handler: Callable[[Request], Awaitable[Response]]) -> Handler:
        async def wrapped(request: Request) -> Response:
            start = time.perf_counter()
            self.log.debug(f"request.{session}.serving", method=request.method,
                           request=request.url.path)
            try:
                response = await handler(request)
            except _Fail as f:
                self.log.error(f"request.{session}.{f.description}", error=f.cause)
                response = error_response(f.status, f.description)
            except Exception as e:  # noqa: BLE001 - a bug must still answer, not drop the connection
                self.log.exception(f"request.{session}.unexpected-error")
                response = error_response(500, str(e))
            if response.status_code >= 400:
                self.metrics.http_errors.inc()
            self.metrics.requests.labels(name).inc()
            self.metrics.duration.labels(name).observe(time.perf_counter() - start)
            return response

        return wrapped

    def api_app(self) -> Router:
        return Router([
            Route("GET", "/leases", self._wrap("LeasesIndex", "leases-index", self.leases_index)),
            Route("PUT", "/leases/acquire", self._wrap("LeasesAcquire", "leases-acquire", self.acquire)),
            Route("PUT", "/leases/release", self._wrap("LeasesRelease", "leases-release", self.release)),
            Route("PUT", "/leases/renew", self._wrap("LeasesRenew", "leases-renew", self.renew)),
        ])

    def health_app(self) -> Router:
        return Router([Route("GET", "/health", self._wrap("Health", "health", self.health))])

    def debug_app(self) -> Router:
        from prometheus_client import CONTENT_TYPE_LATEST

        from cfnet.web.debug import debug_app

        return debug_app(self.log.set_level, self.log, self.metrics.render,
                         content_type=CONTENT_TYPE_LATEST)

    # -- handlers --------------------------------------------------------------------------------

    async def leases_index(self, request: Request) -> Response:
        try:
            leases = await run_in_threadpool(self.store.routable)
        except LeaseStoreError as e:
            raise _Fail(500, f"all-routable-leases: {e}", e) from None
        return json_response({"leases": [lease.to_json() for lease in leases]})

    async def acquire(self, request: Request) -> Response:
        values = await _read(request, *_ACQUIRE)
        try:
            lease = await run_in_threadpool(self.store.acquire, values["underlay_ip"],
                                            values["single_overlay_ip"])
        except LeaseStoreError as e:
            raise _Fail(500, str(e), e) from None
        if lease is None:
            raise _Fail(409, "no lease available", "no lease available")
        return json_response(lease.to_json())

    async def renew(self, request: Request) -> Response:
        values = await _read(request, *_LEASE)
        lease = Lease(values["underlay_ip"], values["overlay_subnet"], values["overlay_hardware_addr"])
        try:
            await run_in_threadpool(self.store.renew, lease)
        except NonRetriableError as e:
            raise _Fail(409, f"renew-subnet-lease: {e}", e) from None
        except LeaseStoreError as e:
            raise _Fail(500, f"renew-subnet-lease: {e}", e) from None
        return Response(b"{}", media_type="application/json")

    async def release(self, request: Request) -> Response:
        values = await _read(request, *_RELEASE)
        try:
            await run_in_threadpool(self.store.release, values["underlay_ip"])
        except LeaseStoreError as e:
            raise _Fail(500, str(e), e) from None
        return Response(b"{}", media_type="application/json")

    async def health(self, request: Request) -> Response:
        try:
            await run_in_threadpool(self.store.ping)
        except CfnetError as e:
            raise _Fail(500, "check database failed", e) from None
        return Response(b"")

    async def emit_lease_metrics(self, interval: float, staleness_threshold_seconds: int) -> None:
        """Refresh the lease gauges now and every `interval` seconds (upstream's metrics emitter)."""
        while True:
            try:
                counts = await asyncio.to_thread(self.store.counts, staleness_threshold_seconds)
                self.metrics.leases_total.set(counts.total)
                self.metrics.leases_free.set(counts.free)
                self.metrics.leases_stale.set(counts.stale)
            except CfnetError as e:
                self.log.error("metrics-emitter.counting-leases-failed", error=str(e))
            await asyncio.sleep(interval)


class _Fail(Exception):
    """An error response: status, the description the body carries, and the cause for the log."""

    def __init__(self, status: int, description: str, cause: object) -> None:
        super().__init__(description)
        self.status, self.description, self.cause = status, description, str(cause)


async def _read(request: Request, fields: dict[str, type], struct: str, go_type: str) -> dict[str, Any]:
    try:
        body = await request.body()
    except Exception as e:  # noqa: BLE001 - the client went away mid-body
        raise _Fail(400, f"read-body: {e}", e) from None
    try:
        return decode_struct(body, fields, struct, go_type)
    except BadRequest as e:
        raise _Fail(400, f"unmarshal-request: {e}", e) from None


# -- the process ----------------------------------------------------------------------------------


def _fatal(source: str, message: str, code: int) -> int:
    print(f"{source} error: {message}", file=sys.stderr)
    return code


def connect_database(db: Database, log: Logger, attempts: int = 10,
                     interval_s: float = 3.0) -> None:
    """Ping until it works: network errors up to `attempts` times, `interval_s` apart (upstream);
    any other error (authentication, missing database, TLS required) fails at once."""
    db.connect(lambda attempt, error, retry: log.error("db-connect-failed", attempt=attempt,
                                                        error=error, retrying=retry),
               attempts=attempts, interval_s=interval_s)


def _migrate(store: LeaseStore, attempts: int = 5) -> int:
    """Run the migrations, retrying as upstream does (5 attempts, 1 s apart)."""
    for attempt in range(attempts):
        try:
            return store.migrate()
        except CfnetError as e:
            if attempt == attempts - 1:
                raise CfnetError(f"migrating database: {e}") from None
            time.sleep(1)
    return 0


def run(config_path: str | Path) -> int:
    """Run the controller until SIGTERM/SIGINT; the process exit code."""
    from cfnet.web.serve import Listener, run as serve
    from cfnet.web.tls import TLSFiles, server_context

    source = f"{DEFAULT_PREFIX}.{SERVICE}"
    try:
        config = load_controller_config(config_path)
    except ConfigError as e:
        return _fatal(source, f"load config: {e}", ExitCode.CONFIG)
    source = f"{config.log_prefix}.{SERVICE}"
    try:
        check_controller_tls(config)  # before any database work: one line naming the key
    except ConfigError as e:
        return _fatal(source, f"load config: {e}", ExitCode.CONFIG)
    log = setup_logging(source)
    log.info("starting")
    pool = config.pool()
    log.info("parsed-config", network=[str(n) for n in pool.networks],
             subnet_prefix_length=config.subnet_prefix_length, database=config.database.type,
             block_pool_size=pool.block_pool_size)
    db = Database(config.database, max_open_connections=config.max_open_connections)
    try:
        connect_database(db, log)
        store = LeaseStore(db, pool, config.lease_expiration_seconds, log)
        log.info("db-migration-complete", **{"num-applied": _migrate(store)})
        controller = Controller(store, log)
        tls = server_context(TLSFiles(Path(config.server_cert_file), Path(config.server_key_file),
                                      Path(config.ca_cert_file)))
        listeners = [
            Listener("api", controller.api_app(), config.listen_host, config.listen_port, ssl=tls),
            Listener("health", controller.health_app(), config.health_check_host,
                     config.health_check_port),
            Listener("debug", controller.debug_app(), config.debug_server_host,
                     config.debug_server_port),
        ]
        for listener in listeners:
            listener.bind()
        log.info("starting-servers", **{l.name: f"{l.host}:{l.port}" for l in listeners})

        async def lease_metrics() -> None:
            await controller.emit_lease_metrics(config.metrics_emit_seconds,
                                                config.staleness_threshold_seconds)

        serve(listeners, background=[lease_metrics], on_ready=lambda: log.info("running"))
    except (CfnetError, OSError) as e:  # OSError: a port in use, unreadable cert, bad key
        log.error("fatal", error=str(e))
        return _fatal(source, str(e), ExitCode.ERROR)
    finally:
        db.close()
    log.info("exited")
    return ExitCode.OK
