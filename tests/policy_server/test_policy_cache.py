"""The internal fetch's cache of rendered policies (cfnet/policy_server/policy_cache.py), on real
SQLite and PostgreSQL stores: byte-identical answers, invalidation by any writer, the memory
bound, and freshness under concurrent writes."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator

import pytest

from cfnet.core.policy import Policy
from cfnet.policy_server.internal import render_internal_policies
from cfnet.policy_server.policy_cache import PolicyCache
from cfnet.store.db import Database, DatabaseConfig
from cfnet.store.policies import PolicyStore

APPS = [f"app-{i}" for i in range(40)] + ['we"ird\\app', "ünï\u2028/<x>", "😀"]


@pytest.fixture
def store(db_config: DatabaseConfig) -> Iterator[PolicyStore]:
    db = Database(db_config)
    s = PolicyStore(db)
    s.migrate()
    yield s
    db.close()


def random_policies(rng: random.Random, n: int) -> list[Policy]:
    out: dict[Policy, None] = {}
    while len(out) < n:
        src, dst = rng.choice(APPS), rng.choice(APPS)  # self-policies included
        start = rng.choice((80, 443, 8080, rng.randint(1, 65535)))
        out[Policy(src, dst, rng.choice(("tcp", "udp")), start, min(start + rng.choice((0, 9)),
                                                                     65535))] = None
    return list(out)


def expected(store: PolicyStore, ids: list[str] | None, tag_length: int = 2) -> bytes:
    found = store.all() if ids is None else store.by_ids(ids)
    return render_internal_policies(found, tag_length)


def test_answers_are_byte_identical_to_the_store_and_rendering(store: PolicyStore) -> None:
    rng = random.Random(1)
    store.create(random_policies(rng, 300))
    cache = PolicyCache(store, tag_length=2)
    queries: list[list[str] | None] = [None, [], [""], ["unknown"], ["app-1", "app-1"],
                                       APPS, list(reversed(APPS)), ["😀", 'we"ird\\app']]
    queries += [rng.sample(APPS, rng.randint(1, 12)) for _ in range(60)]
    for ids in queries * 2:  # the second pass is served from the cache
        assert cache.fetch(ids) == expected(store, ids), ids
    assert cache.hits > 0 and len(cache) > 0
    body = json.loads(cache.fetch(APPS))
    ids = [(p["source"]["id"], p["destination"]["id"]) for p in body["policies"]]
    assert len(ids) == body["total_policies"] == len(store.all())


@pytest.mark.parametrize("tag_length", [1, 3])
def test_tag_lengths(db_config: DatabaseConfig, tag_length: int) -> None:
    db = Database(db_config)
    try:
        store = PolicyStore(db, tag_length)
        store.migrate()
        store.create(random_policies(random.Random(2), 30))
        cache = PolicyCache(store, tag_length)
        for ids in (APPS[:5], APPS[3:9], APPS[:5]):
            assert cache.fetch(ids) == expected(store, ids, tag_length)
    finally:
        db.close()


def test_any_writer_moves_the_stamp_and_drops_the_cache(store: PolicyStore,
                                                         db_config: DatabaseConfig) -> None:
    cache = PolicyCache(store, tag_length=2)
    a = Policy("app-1", "app-2", "tcp", 80, 80)
    store.create([a])
    assert json.loads(cache.fetch(["app-1"]))["total_policies"] == 1
    # Another Database on the same store: another process or replica.
    other_db = Database(db_config)
    try:
        other = PolicyStore(other_db)
        b = Policy("app-3", "app-1", "udp", 53, 53)
        other.create([b])
        assert cache.fetch(["app-1"]) == expected(store, ["app-1"])
        assert json.loads(cache.fetch(["app-1"]))["total_policies"] == 2
        other.delete([a, b])
        assert cache.fetch(["app-1", "app-2"]) == b'{"total_policies":0,"policies":[]}'
    finally:
        other_db.close()


def test_memory_is_bounded_by_evicting_the_least_recently_used(store: PolicyStore) -> None:
    store.create(random_policies(random.Random(3), 400))
    unbounded = PolicyCache(store, tag_length=2)
    unbounded.fetch(APPS)
    small = PolicyCache(store, tag_length=2, max_bytes=unbounded.bytes // 4)
    rng = random.Random(4)
    for _ in range(50):
        ids = rng.sample(APPS, 8)
        assert small.fetch(ids) == expected(store, ids)
        assert 0 < small.bytes <= small.max_bytes
    assert 0 < len(small) < len(APPS)
    # An entry larger than the whole budget is served, never kept.
    tiny = PolicyCache(store, tag_length=2, max_bytes=10)
    assert tiny.fetch(APPS[:3]) == expected(store, APPS[:3]) and len(tiny) == 0


def test_a_fetch_is_never_older_than_a_stamp_seen_before_it(store: PolicyStore,
                                                             db_config: DatabaseConfig) -> None:
    """A writer commits one change after another (commit k adds policy k and deletes policy
    k - WINDOW), so the state after commit m is exactly policies (m - WINDOW, m]. Readers fetch
    random app sets through one cache. Each answer must be the state after some commit m (never
    a mix of two states), with m at least the number of commits finished before the fetch began
    (their stamps could have been seen by the client)."""
    window, commits, readers = 6, 120, 3
    apps = APPS[:8]
    rng = random.Random(5)
    chain = [Policy(rng.choice(apps), rng.choice(apps), "tcp", 1000 + k, 1000 + k)
             for k in range(commits + 1)]
    writer_db = Database(db_config)
    writer = PolicyStore(writer_db)
    done = [0]  # commits finished (policy 0 is the state before the writer starts)
    writer.create([chain[0]])
    cache = PolicyCache(store, tag_length=2)
    stop = threading.Event()
    failures: list[str] = []
    checked = [0]

    def write() -> None:
        try:
            for k in range(1, commits + 1):
                writer.create([chain[k]])
                if k - window >= 0:
                    writer.delete([chain[k - window]])
                done[0] = k
        finally:
            stop.set()

    def state(m: int, ids: set[str]) -> list[int]:
        return [k for k in range(max(0, m - window + 1), m + 1)
                if chain[k].source in ids or chain[k].destination in ids]

    def read(seed: int) -> None:
        r = random.Random(seed)
        while not stop.is_set() and not failures:
            ids = r.sample(apps, r.randint(1, 4))
            seen = done[0]
            body = json.loads(cache.fetch(ids))
            got = [p["destination"]["ports"]["start"] - 1000 for p in body["policies"]]
            # A delete between commits leaves the state after "add k" but before "delete
            # k - window": states are then (m - window, m] or [m - window, m].
            options = [state(m, set(ids)) for m in range(seen, commits + 1)]
            options += [[k for k in range(max(0, m - window), m + 1)
                         if chain[k].source in set(ids) or chain[k].destination in set(ids)]
                        for m in range(seen + 1, commits + 1)]
            if got not in options:
                failures.append(f"fetch of {ids} after {seen} commits gave {got}")
            checked[0] += 1

    threads = [threading.Thread(target=read, args=(i,)) for i in range(readers)]
    threads.append(threading.Thread(target=write))
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stop.set()
    writer_db.close()
    assert not any(t.is_alive() for t in threads), "threads did not finish"
    assert not failures, failures[:3]
    assert checked[0] > commits // 2
    assert cache.fetch(apps) == expected(store, apps)


class WriteBeforeRows(PolicyStore):
    """The real store, where one real write through another connection commits right before the
    next rows query: the race of a write landing between a fetch's stamp read and its query."""

    def __init__(self, db: Database, writer: PolicyStore) -> None:
        super().__init__(db)
        self.writer = writer
        self.pending: list[Policy] = []

    def policy_rows(self, ids: list[str] | None) -> tuple[list[tuple[object, ...]], int]:
        if self.pending:
            self.writer.create([self.pending.pop()])
        return super().policy_rows(ids)


def test_a_write_between_the_stamp_and_the_query_is_not_mixed_in(store: PolicyStore,
                                                                   db_config: DatabaseConfig) -> None:
    store.create([Policy("app-1", "app-2", "tcp", 80, 80), Policy("app-3", "app-4", "tcp", 80, 80)])
    racing = WriteBeforeRows(store.db, store)
    cache = PolicyCache(racing, tag_length=2)
    cache.fetch(["app-1"])  # app-1 cached at the current stamp
    # The next fetch finds app-1 cached and app-3 missing; before its query runs, app-1 gains a
    # policy. Cached app-1 plus fresh app-3 would be a state that never existed.
    racing.pending.append(Policy("app-1", "app-9", "udp", 53, 53))
    assert cache.fetch(["app-1", "app-3"]) == expected(store, ["app-1", "app-3"])
    assert json.loads(cache.fetch(["app-1", "app-3"]))["total_policies"] == 3
