"""The lease store's allocation rules on real SQLite and PostgreSQL (spec silk.md §1.4)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cfnet.core.leases import CIDRPool, Lease
from cfnet.silk.controller_store import LeaseStore, LeaseStoreError, NonRetriableError
from cfnet.store.db import Database, DatabaseConfig

WEEK = 604800


def _store(db_config: DatabaseConfig, network: str = "10.255.0.0/16", prefix: int = 24) -> LeaseStore:
    store = LeaseStore(Database(db_config), CIDRPool(network, prefix), WEEK)
    store.migrate()
    return store


@pytest.fixture
def store(db_config: DatabaseConfig) -> Iterator[LeaseStore]:
    s = _store(db_config)
    yield s
    s.db.close()


def _expire(store: LeaseStore, underlay_ip: str, seconds_ago: int = 2 * WEEK) -> None:
    """Move a lease's last renewal into the past, as time passing would."""
    with store.db.transaction(write=True) as tx:
        tx.execute("UPDATE subnets SET last_renewed_at = last_renewed_at - ? WHERE underlay_ip = ?",
                   (seconds_ago, underlay_ip))


def test_migrations_create_the_upstream_table_once(db_config: DatabaseConfig) -> None:
    store = _store(db_config)
    assert store.migrate() == 0
    with store.db.transaction() as tx:
        assert tx.all("SELECT underlay_ip, overlay_subnet, overlay_hwaddr, last_renewed_at "
                      "FROM subnets") == []
    store.db.close()


def test_acquire_gives_a_block_with_its_mac(store: LeaseStore) -> None:
    lease = store.acquire("10.244.16.11")
    assert lease is not None
    assert store.pool.is_block_member(lease.overlay_subnet)
    base = lease.overlay_subnet.split("/")[0]
    assert lease.overlay_hardware_addr == "ee:ee:" + ":".join(f"{int(o):02x}" for o in base.split("."))
    assert store.routable() == [lease]


def test_same_underlay_ip_keeps_its_block(store: LeaseStore) -> None:
    first = store.acquire("10.244.16.11")
    assert store.acquire("10.244.16.11") == first
    assert store.acquire("10.244.16.11", single_overlay_ip=True) == first  # regardless of kind
    assert len(store.routable()) == 1


def test_reacquire_of_an_expired_own_lease_makes_it_routable_again(store: LeaseStore) -> None:
    lease = store.acquire("10.244.0.1")
    _expire(store, "10.244.0.1")
    assert store.routable() == []
    assert store.acquire("10.244.0.1") == lease
    assert store.routable() == [lease]


def test_lease_outside_the_network_is_replaced(db_config: DatabaseConfig) -> None:
    old = _store(db_config, "10.99.0.0/16")
    foreign = old.acquire("10.244.0.1")
    old.db.close()
    store = _store(db_config, "10.255.0.0/16")
    lease = store.acquire("10.244.0.1")
    assert lease is not None and lease != foreign and store.pool.is_member(lease.overlay_subnet)
    store.db.close()


def test_single_ip_leases_come_from_the_first_block(store: LeaseStore) -> None:
    lease = store.acquire("10.244.0.1", single_overlay_ip=True)
    assert lease is not None and lease.overlay_subnet.endswith("/32")
    assert store.pool.is_single_member(lease.overlay_subnet)


def test_invalid_underlay_ip(store: LeaseStore) -> None:
    for bad in ("foo", "", "10.0.0.256", "fd00::1"):
        with pytest.raises(LeaseStoreError, match=f"^invalid ipv4 address: {bad}$"):
            store.acquire(bad)


def test_exhaustion_reclaims_the_oldest_expired_and_never_a_live_lease(db_config: DatabaseConfig) -> None:
    store = _store(db_config, "10.255.0.0/24", 26)  # 3 blocks
    leases = {ip: store.acquire(ip) for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3")}
    assert len({lease.overlay_subnet for lease in leases.values()}) == 3  # type: ignore[union-attr]
    assert store.acquire("10.0.0.4") is None  # all live: nothing is stolen

    _expire(store, "10.0.0.2", 2 * WEEK)
    _expire(store, "10.0.0.3", 3 * WEEK)  # the oldest
    taken = store.acquire("10.0.0.4")
    assert taken is not None and taken.overlay_subnet == leases["10.0.0.3"].overlay_subnet  # type: ignore[union-attr]
    assert taken.overlay_hardware_addr == leases["10.0.0.3"].overlay_hardware_addr  # type: ignore[union-attr]
    taken = store.acquire("10.0.0.5")
    assert taken is not None and taken.overlay_subnet == leases["10.0.0.2"].overlay_subnet  # type: ignore[union-attr]
    assert store.acquire("10.0.0.6") is None
    store.db.close()


def test_a_never_used_block_is_preferred_to_an_expired_one(db_config: DatabaseConfig) -> None:
    store = _store(db_config, "10.255.0.0/24", 26)  # 3 blocks
    first = store.acquire("10.0.0.1")
    _expire(store, "10.0.0.1")
    others = {store.acquire("10.0.0.2"), store.acquire("10.0.0.3")}
    assert first not in others and None not in others
    store.db.close()


def test_expired_leases_of_an_old_network_are_not_handed_out(db_config: DatabaseConfig) -> None:
    old = _store(db_config, "10.99.0.0/24", 26)
    old.acquire("10.0.0.9")
    _expire(old, "10.0.0.9")
    old.db.close()
    store = _store(db_config, "10.255.0.0/24", 26)
    for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        assert store.acquire(ip) is not None
    assert store.acquire("10.0.0.4") is None
    store.db.close()


def test_renew_accepts_its_own_lease_and_re_registers_a_lost_one(store: LeaseStore) -> None:
    lease = store.acquire("10.244.0.1")
    assert lease is not None
    _expire(store, "10.244.0.1")
    store.renew(lease)
    assert store.routable() == [lease]
    assert store.release("10.244.0.1") is True
    store.renew(lease)  # the row is gone: renew inserts it again
    assert store.routable() == [lease]


def test_renew_refuses_a_mismatch(store: LeaseStore) -> None:
    lease = store.acquire("10.244.0.1")
    assert lease is not None
    other = Lease(lease.underlay_ip, "10.255.0.7/32", "ee:ee:0a:ff:00:07")
    with pytest.raises(NonRetriableError, match="^lease mismatch$"):
        store.renew(other)


def test_renew_of_a_subnet_now_owned_by_another_cell_is_refused(db_config: DatabaseConfig) -> None:
    store = _store(db_config, "10.255.0.0/24", 26)
    old = store.acquire("10.0.0.1")
    store.acquire("10.0.0.2")
    store.acquire("10.0.0.3")
    assert old is not None
    _expire(store, "10.0.0.1")
    new = store.acquire("10.0.0.4")  # reclaims the expired block
    assert new is not None and new.overlay_subnet == old.overlay_subnet
    with pytest.raises(NonRetriableError, match="(?i)unique|duplicate"):
        store.renew(old)
    owners = [lease.underlay_ip for lease in store.routable() if lease.overlay_subnet == old.overlay_subnet]
    assert owners == ["10.0.0.4"]
    store.db.close()


def test_renew_validates_the_lease(store: LeaseStore) -> None:
    with pytest.raises(NonRetriableError, match="^invalid underlay ip: $"):
        store.renew(Lease("", "10.255.1.0/24", "ee:ee:0a:ff:01:00"))


def test_release_of_unknown_is_not_an_error(store: LeaseStore) -> None:
    assert store.release("10.9.9.9") is False


def test_counts(db_config: DatabaseConfig) -> None:
    store = _store(db_config, "10.255.0.0/24", 26)
    store.acquire("10.0.0.1")
    store.acquire("10.0.0.2")
    store.acquire("10.0.0.3", single_overlay_ip=True)
    _expire(store, "10.0.0.2", 7200)
    counts = store.counts(3600)
    assert (counts.total, counts.free, counts.stale) == (3, 1, 1)
    store.db.close()


def test_exhausting_a_pool_one_by_one_gives_distinct_blocks(db_config: DatabaseConfig) -> None:
    store = _store(db_config, "10.255.0.0/24", 28)  # 15 blocks
    subnets = [store.acquire(f"10.0.1.{i}").overlay_subnet for i in range(15)]  # type: ignore[union-attr]
    assert sorted(subnets) == sorted(store.pool.blocks())
    assert store.acquire("10.0.1.99") is None
    store.db.close()
