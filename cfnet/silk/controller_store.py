"""The silk-controller's lease table on SQLite or PostgreSQL, with upstream's allocation rules.

Schema and semantics follow upstream (`subnets` with three UNIQUE constraints, `last_renewed_at`
in Unix seconds computed by the database so that several controllers agree on "now"). Where
upstream relies on UNIQUE constraints plus blind retries, acquire here runs in one transaction
under the store's write lock (an advisory lock on PostgreSQL, shared by every replica), so two
cells can never race for a block; the UNIQUE constraints stay as the last line of defence.

Errors carry upstream's texts: `LeaseStoreError` for a failure the API reports as 500,
`NonRetriableError` for a renewal the API refuses with 409.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cfnet.core.errors import CfnetError, StoreError
from cfnet.core.leases import CIDRPool, Lease, LeaseError, hardware_addr, parse_ipv4, validate_lease
from cfnet.core.logs import Logger, get_logger
from cfnet.store.db import Database, Tx
from cfnet.store.migrations import Migration, migrate

SILK_LOCK = 0x73696C6B  # advisory lock id ("silk") serialising acquires across replicas
ACQUIRE_ATTEMPTS = 10  # as upstream; with the lock only a concurrent renew can force a retry

_COLUMNS = ("underlay_ip varchar(15) NOT NULL, overlay_subnet varchar(18) NOT NULL, "
            "overlay_hwaddr varchar(17) NOT NULL, last_renewed_at bigint NOT NULL, "
            "UNIQUE (underlay_ip), UNIQUE (overlay_subnet), UNIQUE (overlay_hwaddr)")
MIGRATIONS = [
    Migration(
        "silk-0001-subnets",
        sqlite=(f"CREATE TABLE IF NOT EXISTS subnets (id INTEGER PRIMARY KEY AUTOINCREMENT, {_COLUMNS})",),
        postgres=(f"CREATE TABLE IF NOT EXISTS subnets (id SERIAL PRIMARY KEY, {_COLUMNS})",),
    ),
]

# "now" in Unix seconds, computed by the database (upstream's Postgres expression).
_NOW = {
    "sqlite": "CAST(strftime('%s', 'now') AS INTEGER)",
    "postgres": "EXTRACT(EPOCH FROM now())::numeric::integer",
}
_SELECT = "SELECT underlay_ip, overlay_subnet, overlay_hwaddr FROM subnets"


class LeaseStoreError(CfnetError):
    """The store failed; the message is what the API reports (500)."""


class NonRetriableError(CfnetError):
    """A renewal that must not be retried as is (409): invalid lease, mismatch, subnet taken."""


@dataclass(frozen=True)
class LeaseCounts:
    total: int  # every row
    free: int  # blocks of the current pool that no row holds
    stale: int  # rows not renewed within the staleness threshold


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


@contextmanager
def _step(what: str) -> Iterator[None]:
    """Turn a database error inside a transaction into `<what>: <error>` (the transaction rolls back)."""
    try:
        yield
    except CfnetError:
        raise
    except Exception as e:  # noqa: BLE001 - sqlite3.Error or psycopg.Error, whichever backend
        raise LeaseStoreError(f"{what}: {_first_line(e)}") from e


class LeaseStore:
    """Acquire, renew, release and list subnet leases."""

    def __init__(self, db: Database, pool: CIDRPool, lease_expiration_seconds: int,
                 log: Logger | None = None) -> None:
        self.db = db
        self.pool = pool
        self.expiration = lease_expiration_seconds
        self.log = log or get_logger("cfnetworking.silk-controller")
        self._now = _NOW[db.dialect]
        # One writer at a time inside this process: SQLite writers then never spin on
        # busy_timeout, and PostgreSQL acquires do not pile up on the advisory lock.
        self._write_lock = threading.Lock()

    def migrate(self) -> int:
        return migrate(self.db, MIGRATIONS)

    def ping(self) -> None:
        self.db.ping()

    @contextmanager
    def _write(self, what: str, lock: bool) -> Iterator[Tx]:
        """A write transaction; `lock` also takes the cross-replica lock on PostgreSQL."""
        sqlite = self.db.dialect == "sqlite"
        with self._write_lock if (lock or sqlite) else _nothing():
            try:
                with self.db.transaction(write=lock or sqlite, lock=SILK_LOCK) as tx:
                    yield tx
            except StoreError as e:
                raise LeaseStoreError(f"{what}: {_first_line(e)}") from e

    # -- acquire ---------------------------------------------------------------------------------

    def acquire(self, underlay_ip: str, single_overlay_ip: bool = False) -> Lease | None:
        """The lease for `underlay_ip`, or None when no subnet is free (the API's 409)."""
        if parse_ipv4(underlay_ip) is None:
            raise LeaseStoreError(f"invalid ipv4 address: {underlay_ip}")
        error: LeaseStoreError | None = None
        for _ in range(ACQUIRE_ATTEMPTS):
            events: list[tuple[str, dict[str, Any]]] = []
            try:
                with self._write("acquiring lease", lock=True) as tx:
                    lease = self._acquire(tx, underlay_ip, single_overlay_ip, events.append)
            except LeaseStoreError as e:
                error = e
                continue
            for event, data in events:
                self.log.info(event, **data)
            return lease
        assert error is not None
        raise error

    def _acquire(self, tx: Tx, underlay_ip: str, single: bool,
                 note: Callable[[tuple[str, dict[str, Any]]], None]) -> Lease | None:
        with _step("getting lease for underlay ip"):
            row = tx.one(f"{_SELECT} WHERE underlay_ip = ?", (underlay_ip,))
        if row is not None:
            existing = Lease(*row)
            if self.pool.is_member(existing.overlay_subnet):
                # Upstream returns it without touching last_renewed_at, so a cell coming back after
                # expiry stays unroutable until its first renew; we count the acquire as a renewal.
                with _step("renewing lease for underlay ip"):
                    tx.execute(f"UPDATE subnets SET last_renewed_at = {self._now} "
                               "WHERE underlay_ip = ?", (underlay_ip,))
                note(("lease-renewed", {"lease": existing.to_json()}))
                return existing
            with _step(f"deleting lease for underlay ip {underlay_ip}"):
                tx.execute("DELETE FROM subnets WHERE underlay_ip = ?", (underlay_ip,))
            note(("lease-deleted", {"lease": existing.to_json()}))

        kind = "LIKE '%/32'" if single else "NOT LIKE '%/32'"
        with _step("getting all single ip subnets" if single else "getting all subnets"):
            taken = [r[0] for r in tx.all(f"SELECT overlay_subnet FROM subnets WHERE overlay_subnet {kind}")]
        subnet = self.pool.free_single(taken) if single else self.pool.free_block(taken)
        if subnet is None:
            subnet = self._reclaim_oldest_expired(tx, kind, single, note)
            if subnet is None:
                return None
        lease = Lease(underlay_ip, subnet, hardware_addr(subnet.split("/")[0]))
        with _step("adding lease entry"):
            tx.execute("INSERT INTO subnets (underlay_ip, overlay_subnet, overlay_hwaddr, "
                       f"last_renewed_at) VALUES (?, ?, ?, {self._now})",
                       (lease.underlay_ip, lease.overlay_subnet, lease.overlay_hardware_addr))
        note(("lease-acquired", {"lease": lease.to_json()}))
        return lease

    def _reclaim_oldest_expired(self, tx: Tx, kind: str, single: bool,
                                note: Callable[[tuple[str, dict[str, Any]]], None]) -> str | None:
        """Delete the oldest expired lease of the pool and return its subnet (None: none expired).

        Upstream would also hand out an expired subnet from a network no longer configured; we
        only reclaim members of the current pool.
        """
        member = self.pool.is_single_member if single else self.pool.is_block_member
        with _step("get oldest expired single ip" if single else "get oldest expired"):
            rows = tx.all(f"{_SELECT} WHERE overlay_subnet {kind} AND last_renewed_at + ? <= {self._now} "
                          "ORDER BY last_renewed_at ASC, id ASC", (self.expiration,))
        for row in rows:
            old = Lease(*row)
            if member(old.overlay_subnet):
                with _step("delete expired subnet"):
                    tx.execute("DELETE FROM subnets WHERE underlay_ip = ?", (old.underlay_ip,))
                note(("lease-reclaimed", {"lease": old.to_json()}))
                return old.overlay_subnet
        return None

    # -- renew, release, list --------------------------------------------------------------------

    def renew(self, lease: Lease) -> None:
        """Refresh `lease`, re-registering it when its row is gone; refuse any conflict."""
        try:
            validate_lease(lease)
        except LeaseError as e:
            raise NonRetriableError(str(e)) from None
        with self._write("renewing lease for underlay ip", lock=False) as tx:
            with _step("getting lease for underlay ip"):
                row = tx.one(f"{_SELECT} WHERE underlay_ip = ?", (lease.underlay_ip,))
            if row is None:
                # How a daemon re-registers after its row was released or reclaimed. If the subnet
                # now belongs to another cell the UNIQUE constraint refuses it: never two cells on
                # one subnet.
                try:
                    tx.execute("INSERT INTO subnets (underlay_ip, overlay_subnet, overlay_hwaddr, "
                               f"last_renewed_at) VALUES (?, ?, ?, {self._now})",
                               (lease.underlay_ip, lease.overlay_subnet, lease.overlay_hardware_addr))
                except Exception as e:  # noqa: BLE001 - the backend's integrity error
                    raise NonRetriableError(_first_line(e)) from e
            elif Lease(*row) != lease:
                raise NonRetriableError("lease mismatch")
            else:
                with _step("renewing lease for underlay ip"):
                    tx.execute(f"UPDATE subnets SET last_renewed_at = {self._now} "
                               "WHERE underlay_ip = ?", (lease.underlay_ip,))
        self.log.debug("lease-renewed", lease=lease.to_json())

    def release(self, underlay_ip: str) -> bool:
        """Delete the lease of `underlay_ip`; False (not an error) when there was none."""
        with self._write("release lease", lock=False) as tx:
            with _step("release lease"):
                deleted = tx.execute("DELETE FROM subnets WHERE underlay_ip = ?", (underlay_ip,)).rowcount
        if deleted:
            self.log.info("lease-released", underlay_ip=underlay_ip)
        else:
            self.log.debug("lease-not-found", underlay_ip=underlay_ip)
        return bool(deleted)

    def routable(self) -> list[Lease]:
        """Every unexpired lease, of any network and kind, oldest row first."""
        try:
            with self.db.transaction() as tx, _step("getting all leases"):
                rows = tx.all(f"{_SELECT} WHERE last_renewed_at + ? > {self._now} ORDER BY id",
                              (self.expiration,))
        except StoreError as e:
            raise LeaseStoreError(f"getting all leases: {_first_line(e)}") from e
        return [Lease(*r) for r in rows]

    def counts(self, staleness_threshold_seconds: int) -> LeaseCounts:
        """Totals for the metrics. `free` counts only rows holding a block of the current pool."""
        try:
            with self.db.transaction() as tx:
                subnets = [r[0] for r in tx.all("SELECT overlay_subnet FROM subnets")]
                fresh = tx.scalar(f"SELECT COUNT(*) FROM subnets WHERE last_renewed_at + ? > {self._now}",
                                  (staleness_threshold_seconds,))
        except StoreError as e:
            raise LeaseStoreError(f"counting leases: {_first_line(e)}") from e
        held = sum(1 for s in subnets if self.pool.is_block_member(s))
        return LeaseCounts(total=len(subnets), free=self.pool.block_pool_size - held,
                           stale=len(subnets) - int(fresh or 0))


@contextmanager
def _nothing() -> Iterator[None]:
    yield
