"""Several OS processes writing the same policy store at once, on SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing
import random
from multiprocessing.synchronize import Barrier

from cfnet.core.policy import Policy
from cfnet.store.db import Database, DatabaseConfig
from cfnet.store.policies import PolicyStore

WORKERS = 4
SHARED_APPS = [f"shared-{i}" for i in range(120)]
BATCH = 5
POLICIES = 150


def shared_policies() -> list[Policy]:
    rng = random.Random(7)
    return [Policy(rng.choice(SHARED_APPS), rng.choice(SHARED_APPS), rng.choice(("tcp", "udp")),
                   port, port) for port in range(1000, 1000 + POLICIES)]


def _worker(config: DatabaseConfig, n: int, barrier: Barrier) -> None:
    db = Database(config)
    store = PolicyStore(db)
    rng = random.Random(n)
    mine = shared_policies()
    rng.shuffle(mine)  # every worker creates every shared policy, in its own order
    barrier.wait(timeout=60)
    for i in range(0, len(mine), BATCH):
        store.create(mine[i:i + BATCH])
        # Churn on private apps: tags are freed and taken again while others allocate.
        private = [Policy(f"w{n}-src-{i}", f"w{n}-dst-{i}", "tcp", 80, 80)]
        store.create(private)
        store.create_tag(f"router-{i // BATCH % 3}", "router")
        store.create_tag(f"w{n}-router-{i}", "router")  # new tags that bump no stamp
        store.delete(private)
    db.close()


def test_concurrent_writers_never_duplicate_tags_or_policies(db_config: DatabaseConfig) -> None:
    db = Database(db_config)
    store = PolicyStore(db)
    store.migrate()
    start = store.last_updated_ns()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    procs = [ctx.Process(target=_worker, args=(db_config, n, barrier)) for n in range(WORKERS)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=240)
    finally:
        for p in procs:  # only if the test failed: never leave a worker behind
            if p.is_alive():
                p.kill()
                p.join()
    assert [p.exitcode for p in procs] == [0] * WORKERS

    stored = [tp.policy for tp in store.all()]
    assert len(stored) == len(set(stored))  # every policy exactly once
    assert set(stored) == set(shared_policies())
    tags = store.tags()
    assert len({t.tag for t in tags}) == len(tags)  # no tag handed out twice
    used = {p.source for p in stored} | {p.destination for p in stored}
    routers = {f"w{n}-router-{i}" for n in range(WORKERS) for i in range(0, POLICIES, BATCH)}
    assert {t.guid for t in tags} == used | routers | {"router-0", "router-1", "router-2"}
    assert all(t.type == ("router" if "router-" in t.guid else "app") for t in tags)
    for tp in store.all():  # tags in policies agree with the tag table
        by_guid = {t.guid: t.tag for t in tags}
        assert (tp.source_tag, tp.destination_tag) == (by_guid[tp.policy.source],
                                                       by_guid[tp.policy.destination])
    writes = WORKERS * len(shared_policies()) // BATCH * 3
    assert store.last_updated_ns() >= start + writes * 1000  # one bump per create or delete
    db.close()
