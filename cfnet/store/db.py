"""One small database interface over SQLite (the default) and PostgreSQL (for several replicas).

Stores write their SQL once, with `?` placeholders and the SQL that both engines share
(`INSERT ... ON CONFLICT DO NOTHING`, `RETURNING`). A write transaction is serialised across
processes and replicas: SQLite takes its write lock at `BEGIN IMMEDIATE`; PostgreSQL takes a
transaction-scoped advisory lock named by the caller, so "read the lowest free tag, then take it"
can never race.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from cfnet.core.errors import ConfigError, StoreError

Dialect = Literal["sqlite", "postgres"]


@dataclass
class DatabaseConfig:
    """The upstream `database` config block, plus `type: sqlite` with `path`."""

    type: str = "sqlite"
    path: str = ""  # sqlite only
    user: str = ""
    password: str = ""
    host: str = ""
    port: int = field(default=0, metadata={"min": 0, "max": 65535})
    timeout: int = field(default=120, metadata={"min": 1})
    database_name: str = ""
    require_ssl: bool = False
    ca_cert: str = ""
    skip_hostname_validation: bool = False

    def validate(self) -> None:
        if self.type not in ("sqlite", "postgres"):
            raise ConfigError(f"database type '{self.type}' is not supported")
        if self.type == "sqlite" and not self.path:
            raise ConfigError("invalid config: key 'database.path' is required for sqlite")
        if self.type == "postgres":
            for key in ("user", "host", "port"):
                if not getattr(self, key):
                    raise ConfigError(f"invalid config: key 'database.{key}' is required for postgres")

    def postgres_dsn(self) -> str:
        """The libpq URL, with sslmode chosen as upstream does."""
        sslmode = "disable"
        if self.require_ssl:
            sslmode = "require" if self.skip_hostname_validation else "verify-full"
        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        dsn = (f"postgresql://{auth}@{self.host}:{self.port}/{quote(self.database_name, safe='')}"
               f"?connect_timeout={self.timeout}&sslmode={sslmode}")
        if self.ca_cert:
            dsn += f"&sslrootcert={quote(self.ca_cert, safe='/')}"
        return dsn


class Tx:
    """An open transaction: run statements with `?` placeholders."""

    def __init__(self, conn: Any, dialect: Dialect) -> None:
        self._conn = conn
        self.dialect = dialect

    def _sql(self, sql: str) -> str:
        if self.dialect == "postgres":
            return sql.replace("%", "%%").replace("?", "%s")
        return sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        cur = self._conn.cursor()
        cur.execute(self._sql(sql), tuple(params))
        return cur

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        cur = self._conn.cursor()
        cur.executemany(self._sql(sql), [tuple(r) for r in rows])

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.execute(sql, params).fetchall()]

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        row = self.execute(sql, params).fetchone()
        return tuple(row) if row is not None else None

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self.one(sql, params)
        return row[0] if row else None


class Database:
    """A connection source for one store. Thread-safe; use `transaction()` for every access."""

    def __init__(self, config: DatabaseConfig, max_open_connections: int = 20) -> None:
        config.validate()
        self.config = config
        self.dialect: Dialect = "sqlite" if config.type == "sqlite" else "postgres"
        self._local = threading.local()
        self._pool: queue.LifoQueue[Any] = queue.LifoQueue()
        self._slots = threading.Semaphore(max_open_connections or 20)
        self._all: list[Any] = []
        self._lock = threading.Lock()

    # -- connections -----------------------------------------------------------------------------

    def _sqlite_conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # Create the file, never its directory: a typo in the path must not start an empty store
            if not Path(self.config.path).parent.is_dir():
                raise ConfigError(f"invalid config: key 'database.path': directory "
                                  f"{Path(self.config.path).parent} does not exist")
            conn = sqlite3.connect(self.config.path, timeout=self.config.timeout,
                                   isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA busy_timeout={self.config.timeout * 1000}")
            # Reads through mmap share the OS page cache between the per-thread connections,
            # instead of re-reading pages into each one's small private cache (2 MiB by default).
            conn.execute("PRAGMA mmap_size=268435456")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _pg_connect(self) -> Any:
        import psycopg

        conn = psycopg.connect(self.config.postgres_dsn(), autocommit=True)
        with self._lock:
            self._all.append(conn)
        return conn

    @contextmanager
    def _pg_conn(self) -> Iterator[Any]:
        if not self._slots.acquire(timeout=self.config.timeout):
            raise StoreError("no database connection free within the timeout")
        conn = None
        try:
            try:
                conn = self._pool.get_nowait()
                if conn.closed or conn.broken:
                    conn = self._pg_connect()
            except queue.Empty:
                conn = self._pg_connect()
            yield conn
        except BaseException:
            if conn is not None and (conn.closed or conn.broken):
                conn = None
            raise
        finally:
            if conn is not None:
                self._pool.put(conn)
            self._slots.release()

    # -- transactions ----------------------------------------------------------------------------

    @contextmanager
    def transaction(self, write: bool = False, lock: int = 1) -> Iterator[Tx]:
        """A transaction, committed on success and rolled back on any exception.

        `write=True` serialises it against every other write transaction holding the same `lock`
        (PostgreSQL) or against every writer (SQLite).
        """
        try:
            if self.dialect == "sqlite":
                conn = self._sqlite_conn()
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield Tx(conn, "sqlite")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            else:
                with self._pg_conn() as conn, conn.transaction():
                    tx = Tx(conn, "postgres")
                    if write:
                        tx.execute("SELECT pg_advisory_xact_lock(?)", (lock,))
                    yield tx
        except (sqlite3.Error, _pg_errors()) as e:
            raise StoreError(one_line(str(e))) from e

    def ping(self) -> None:
        """`SELECT 1`, raising StoreError when the database cannot answer."""
        with self.transaction() as tx:
            tx.scalar("SELECT 1")

    def wait_until_reachable(self, deadline_s: float, interval_s: float = 3.0) -> None:
        """Retry `ping` on network errors until it works or `deadline_s` passes; any other error
        (authentication, missing database) fails at once, since it will not heal by waiting."""
        end = time.monotonic() + deadline_s
        while True:
            try:
                self.ping()
                return
            except StoreError as e:
                if not is_network_error(e) or time.monotonic() + interval_s > end:
                    raise StoreError(f"db connect: unable to ping: {e}") from None
                time.sleep(interval_s)

    def connect(self, on_error: Callable[[int, str, bool], None] | None = None,
                attempts: int = 10, interval_s: float = 3.0) -> None:
        """Ping until it works: network errors up to `attempts` times, `interval_s` apart
        (upstream: 10 x 3 s); any other error fails at once. `on_error(attempt, error, retrying)`
        is called for every failure (for logging)."""
        for attempt in range(1, attempts + 1):
            try:
                self.ping()
                return
            except StoreError as e:
                retry = attempt < attempts and is_network_error(e)
                if on_error is not None:
                    on_error(attempt, str(e), retry)
                if not retry:
                    raise StoreError(f"db connect: unable to ping: {e}") from None
                time.sleep(interval_s)

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        self._local = threading.local()
        self._pool = queue.LifoQueue()


# libpq's texts for failures below the PostgreSQL protocol: the only errors worth retrying
# (spec policy-server.md 8.4, silk.md 1.1: retry on network errors only).
_NETWORK_ERRORS = (
    "connection refused", "timeout expired", "connection timed out", "no route to host",
    "network is unreachable", "host is unreachable", "connection reset by peer",
    "server closed the connection unexpectedly", "could not translate host name",
    "failed to resolve host", "name or service not known", "temporary failure in name resolution",
)


def is_network_error(error: BaseException) -> bool:
    """True when a database error is a network failure, not an answer from the server."""
    text = str(error).lower()
    if "fatal:" in text:  # the server answered: authentication, missing database, too many clients
        return False
    return any(phrase in text for phrase in _NETWORK_ERRORS)


def one_line(text: str) -> str:
    """libpq's multi-line messages ("...refused" + "\tIs the server running...") as one line."""
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def _pg_errors() -> type[Exception]:
    try:
        import psycopg

        return psycopg.Error
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return sqlite3.Error
