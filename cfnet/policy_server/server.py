"""The policy server process: external, internal, health and debug listeners plus background tasks.

`run(config, roles)` is what every `cfnet policy-server` subcommand calls. It connects to the
store (retrying as upstream), migrates, binds every listener (port 0 picks a free port; the
chosen addresses are logged in `starting-servers`), serves until SIGTERM/SIGINT, and returns the
process exit code. Failures before serving are one line on stderr, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfnet.cli.exit_codes import ExitCode
from cfnet.core.errors import CfnetError, ConfigError
from cfnet.core.logs import Logger, setup_logging
from cfnet.policy_server.config import (ExternalConfig, InternalConfig, ServeConfig, SyncerConfig,
                                        check_files, load_static_tokens)
from cfnet.policy_server.metrics import Metrics
from cfnet.store.db import Database, DatabaseConfig

EXTERNAL, INTERNAL, SYNCER = "external", "internal", "asg-syncer"
JOBS = {EXTERNAL: "policy-server", INTERNAL: "policy-server-internal",
        SYNCER: "policy-server-asg-syncer"}
METRICS_INTERVAL = 30.0  # upstream emits totalPolicies and friends every 30 s


def config_error_line(prefix: str, job: str, error: Exception) -> str:
    return f"{prefix}.{job}: could not read config file: {error}"


@dataclass
class Process:
    """Everything one process serves, assembled from its configs."""

    config: ServeConfig
    roles: tuple[str, ...]
    metrics: Metrics = field(default_factory=Metrics)
    logs: dict[str, Logger] = field(default_factory=dict)
    databases: list[Database] = field(default_factory=list)

    def prefix(self) -> str:
        for cfg in (self.config.external, self.config.internal, self.config.syncer):
            if cfg is not None:
                return cfg.log_prefix
        return "cfnetworking"

    def log(self, role: str) -> Logger:
        return self.logs[role]

    def set_level(self, level: str) -> None:
        for log in self.logs.values():
            log.set_level(level)


def _database(proc: Process, cfg: DatabaseConfig, max_open: int) -> Database:
    for db in proc.databases:
        if db.config == cfg:
            return db
    db = Database(cfg, max_open_connections=max_open or 200)
    proc.databases.append(db)
    return db


def _migrate(store: Any, timeout_s: float, log: Logger) -> int:
    """Retry every second until the migrations succeed or `timeout_s` passes (as migrate-db)."""
    end = time.monotonic() + timeout_s
    while True:
        try:
            return int(store.migrate())
        except ConfigError:  # e.g. tag_length differs from the stored one: waiting will not help
            raise
        except CfnetError as e:
            if time.monotonic() + 1 > end:
                raise CfnetError(f"migrations and groups table population timed out after "
                                 f"{int(timeout_s)} seconds: {e}") from None
            log.error("migrate-failed", error=str(e))
            time.sleep(1)


def _connect(db: Database, log: Logger) -> None:
    """Upstream (spec 8.4): 10 retries every 3 s on network errors; anything else fails at once."""
    db.connect(lambda attempt, error, retry: log.error("db-connect-failed", attempt=attempt,
                                                        error=error, retrying=retry))


def _token_source(uaa_base: str, client: str, secret: str, ca: str, skip: bool,
                  timeout: float) -> Callable[[], str]:
    """Our own client-credentials token for CC; without UAA (standalone) CC gets no token."""
    if not uaa_base:
        return lambda: ""
    from cfnet.policy_server.uaa import UAAClient

    return UAAClient(uaa_base, client, secret, ca, skip, timeout).client_token


def build(proc: Process) -> tuple[list[Any], list[Callable[[], Awaitable[None]]]]:
    """The listeners and background tasks of `proc` (bound later by `serve`)."""
    from cfnet.policy_server.common import StoreCalls
    from cfnet.policy_server.debug import debug_app
    from cfnet.policy_server.wrappers import WrapContext
    from cfnet.store.policies import PolicyStore
    from cfnet.web.serve import Listener

    cfg = proc.config
    check_files(cfg, proc.roles)  # before any database work
    listeners: list[Listener] = []
    background: list[Callable[[], Awaitable[None]]] = []
    started = time.time()
    debug = debug_app(proc.metrics, proc.set_level, proc.log(next(iter(proc.logs))))
    stores: dict[str, PolicyStore] = {}

    def store_for(role: str, db_cfg: DatabaseConfig, tag_length: int, max_open: int,
                  migration_timeout: float) -> PolicyStore:
        db = _database(proc, db_cfg, max_open)
        log = proc.log(role)
        _connect(db, log)
        store = PolicyStore(db, tag_length)
        applied = _migrate(store, migration_timeout, log)
        log.info("db-migration-complete", **{"num-applied": applied})
        stores[role] = store
        return store

    watch = None
    ext_cfg, int_cfg, syn_cfg = cfg.external, cfg.internal, cfg.syncer
    if INTERNAL in proc.roles and int_cfg is not None:
        from cfnet.policy_server.internal import InternalDeps, health_app, internal_app
        from cfnet.policy_server.watch import LastUpdatedWatch
        from cfnet.policy_server.wrappers import StrictTransport
        from cfnet.web.tls import TLSFiles, server_context

        log = proc.log(INTERNAL)
        store = store_for(INTERNAL, int_cfg.database, int_cfg.tag_length,
                          int_cfg.max_open_connections, 600)
        dsn = int_cfg.database.postgres_dsn() if int_cfg.database.type == "postgres" else ""
        watch = LastUpdatedWatch(store.last_updated_ns, log, postgres_dsn=dsn)
        proc.metrics.watch_waiting.set_function(lambda: watch.waiting if watch else 0)
        calls = StoreCalls(store, proc.metrics, log)
        ctx = WrapContext(metrics=proc.metrics, log=log)
        deps = InternalDeps(calls=calls, tag_length=int_cfg.tag_length, watch=watch,
                            max_wait=float(int_cfg.watch_max_wait_seconds), started=started)
        tls = server_context(TLSFiles(Path(int_cfg.server_cert_file), Path(int_cfg.server_key_file),
                                      Path(int_cfg.ca_cert_file)))
        listeners += [
            Listener("internal", StrictTransport(internal_app(deps, ctx)), int_cfg.listen_host,
                     int_cfg.internal_listen_port, ssl=tls),
            Listener("health", health_app(calls, started, WrapContext(proc.metrics, log)),
                     int_cfg.health_check_host, int_cfg.health_check_port),
        ]
        background.append(watch.run)

    async def on_change() -> None:
        if watch is not None:
            try:
                await watch.refresh()
            except Exception as e:  # noqa: BLE001 - the write succeeded; pollers catch up
                proc.log(EXTERNAL).error("watch-refresh-failed", error=str(e))

    if EXTERNAL in proc.roles and ext_cfg is not None:
        from cfnet.policy_server.access import SpaceAccess
        from cfnet.policy_server.cc import CloudController
        from cfnet.policy_server.cleaner import StaleCleaner
        from cfnet.policy_server.external import ExternalDeps, external_app
        from cfnet.policy_server.uaa import StaticTokens, TokenVerifier, UAAClient
        from cfnet.web.tls import TLSFiles, server_context

        log = proc.log(EXTERNAL)
        both = int_cfg is not None and INTERNAL in proc.roles
        if both and int_cfg.tag_length != ext_cfg.tag_length:  # type: ignore[union-attr]
            raise ConfigError("invalid config: key 'tag_length' differs between the external and "
                              "internal configs")
        store = store_for(EXTERNAL, ext_cfg.database, ext_cfg.tag_length,
                          ext_cfg.max_open_connections, ext_cfg.database_migration_timeout)
        timeout = float(ext_cfg.request_timeout)
        verifier: TokenVerifier
        if ext_cfg.static_tokens_file:
            verifier = StaticTokens(load_static_tokens(ext_cfg.static_tokens_file))
        else:
            verifier = UAAClient(ext_cfg.uaa_base_url, ext_cfg.uaa_client,
                                 ext_cfg.uaa_client_secret, ext_cfg.uaa_ca,
                                 ext_cfg.skip_ssl_validation, timeout)
        tokens = _token_source(ext_cfg.uaa_base_url, ext_cfg.uaa_client, ext_cfg.uaa_client_secret,
                               ext_cfg.uaa_ca, ext_cfg.skip_ssl_validation, timeout)
        cc = (CloudController(ext_cfg.cc_url, ext_cfg.cc_ca_cert, ext_cfg.skip_ssl_validation,
                              timeout) if ext_cfg.cc_url else None)
        cleaner = StaleCleaner(store, cc, tokens, proc.metrics, log)
        calls = StoreCalls(store, proc.metrics, log)
        deps = ExternalDeps(calls=calls, access=SpaceAccess(cc, tokens), cleaner=cleaner,
                            max_policies=ext_cfg.max_policies, tag_length=ext_cfg.tag_length,
                            started=started, on_change=on_change)
        ctx = WrapContext(metrics=proc.metrics, log=log, verifier=verifier,
                          hsts=ext_cfg.enable_tls, cors_domains=list(ext_cfg.allowed_cors_domains),
                          self_service=ext_cfg.enable_space_developer_self_service)
        tls = None
        if ext_cfg.enable_tls:
            tls = server_context(TLSFiles(Path(ext_cfg.server_cert_file),
                                          Path(ext_cfg.server_key_file), Path("")),
                                 require_client_cert=False)
        listeners.insert(0, Listener("external", external_app(deps, ctx), ext_cfg.listen_host,
                                     ext_cfg.listen_port, ssl=tls))
        listeners.append(Listener("debug", debug, ext_cfg.debug_server_host,
                                  ext_cfg.debug_server_port))
        if cc is not None:
            async def clean() -> None:
                await cleaner.loop(float(ext_cfg.cleanup_interval), on_change)

            background.append(clean)
        else:
            log.info("stale-policy-cleaner-disabled", reason="no cc_url configured")

    if INTERNAL in proc.roles and int_cfg is not None:
        ext_debug = (ext_cfg.debug_server_host, ext_cfg.debug_server_port) if (
            ext_cfg is not None and EXTERNAL in proc.roles) else None
        mine = (int_cfg.debug_server_host, int_cfg.debug_server_port)
        if mine != ext_debug or mine[1] == 0:
            listeners.append(Listener("internal_debug", debug, *mine))

    if SYNCER in proc.roles and syn_cfg is not None:
        background.append(_syncer_task(proc, syn_cfg, store_for))

    if stores:
        store = next(iter(stores.values()))
        background.append(_metrics_task(proc, store))
    return listeners, background


def _syncer_task(proc: Process, cfg: SyncerConfig,
                 store_for: Callable[..., Any]) -> Callable[[], Awaitable[None]]:
    from cfnet.policy_server.asg_syncer import AsgSyncer
    from cfnet.policy_server.cc import CloudController

    store = store_for(SYNCER, cfg.database, cfg.tag_length, cfg.max_open_connections, 600)
    timeout = float(cfg.request_timeout)
    cert = ((cfg.cc_internal_client_cert, cfg.cc_internal_client_key)
            if cfg.cc_internal_client_cert else None)
    syncer = AsgSyncer(
        store,
        CloudController(cfg.cc_url, cfg.cc_ca_cert, cfg.skip_ssl_validation, timeout),
        CloudController(cfg.cc_internal_url, cfg.cc_internal_ca_cert, cfg.skip_ssl_validation,
                        timeout, client_cert=cert),
        _token_source(cfg.uaa_base_url, cfg.uaa_client, cfg.uaa_client_secret, cfg.uaa_ca,
                      cfg.skip_ssl_validation, timeout),
        proc.metrics, proc.log(SYNCER), float(cfg.asg_poll_interval_seconds))
    return syncer.run


def _metrics_task(proc: Process, store: Any) -> Callable[[], Awaitable[None]]:
    from starlette.concurrency import run_in_threadpool

    async def emit() -> None:
        while True:
            try:
                count = await run_in_threadpool(_count_policies, store)
                proc.metrics.policies.set(count)
            except Exception as e:  # noqa: BLE001 - metrics must never stop the server
                next(iter(proc.logs.values())).error("metrics-failed", error=str(e))
            await asyncio.sleep(METRICS_INTERVAL)

    return emit


def _count_policies(store: Any) -> int:
    with store.db.transaction() as tx:
        return int(tx.scalar("SELECT COUNT(*) FROM policies"))


def run(config: ServeConfig, roles: tuple[str, ...]) -> int:
    """Serve `roles` until SIGTERM/SIGINT; the exit code."""
    from cfnet.web.serve import run as serve

    proc = Process(config, roles)
    prefix = proc.prefix()
    level = "info"
    for role, cfg in ((EXTERNAL, config.external), (INTERNAL, config.internal),
                      (SYNCER, config.syncer)):
        if cfg is not None and role in roles:
            level = cfg.log_level
            proc.logs[role] = setup_logging(f"{cfg.log_prefix}.{JOBS[role]}", cfg.log_level)
    if not proc.logs:
        print(f"{prefix}.policy-server: nothing to serve: give the config of at least one role",
              file=sys.stderr)
        return ExitCode.CONFIG
    first = next(iter(proc.logs.values()))
    # uvicorn's own warnings (malformed HTTP, ...) as JSON lines too, not plain text on stderr
    setup_logging("uvicorn", "error")
    logging.getLogger("uvicorn").setLevel(logging.WARNING)
    first.info("starting", roles=list(proc.logs), log_level=level)
    try:
        listeners, background = build(proc)
        for listener in listeners:
            listener.bind()
        first.info("starting-servers", **{l.name: f"{l.host}:{l.port}" for l in listeners})
        serve(listeners, background, on_ready=lambda: first.info("running"))
    except ConfigError as e:
        first.error("fatal", error=str(e))
        print(config_error_line(prefix, JOBS[roles[0]], e), file=sys.stderr)
        return ExitCode.CONFIG
    except (CfnetError, OSError) as e:  # OSError: port in use, unreadable cert or key
        first.error("fatal", error=str(e))
        print(f"{first.source}: {e}", file=sys.stderr)
        return ExitCode.ERROR
    finally:
        for db in proc.databases:
            db.close()
    first.info("exited")
    return ExitCode.OK


def migrate_only(cfg: ExternalConfig | InternalConfig | SyncerConfig, timeout: float) -> int:
    """`migrate`: create or update the schema, then exit."""
    from cfnet.store.policies import PolicyStore

    log = setup_logging(f"{cfg.log_prefix}.policy-server-migrate-db", cfg.log_level)
    db = Database(cfg.database, max_open_connections=2)
    try:
        _connect(db, log)
        applied = _migrate(PolicyStore(db, cfg.tag_length), timeout, log)
        log.info("db-migration-complete", **{"num-applied": applied})
    except ConfigError as e:
        log.error("fatal", error=str(e))
        print(config_error_line(cfg.log_prefix, "policy-server-migrate-db", e), file=sys.stderr)
        return ExitCode.CONFIG
    except CfnetError as e:
        log.error("fatal", error=str(e))
        print(f"{log.source}: {e}", file=sys.stderr)
        return ExitCode.ERROR
    finally:
        db.close()
    return ExitCode.OK
