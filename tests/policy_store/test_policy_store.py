"""The policy store on SQLite and PostgreSQL: tags, batches, delete semantics, stamp, ASGs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cfnet.core.errors import StoreError, TagsExhaustedError
from cfnet.core.policy import Policy, SecurityGroup, Tag, TaggedPolicy
from cfnet.store.db import Database, DatabaseConfig
from cfnet.store.policies import MIGRATIONS, PolicyStore


@pytest.fixture
def db(db_config: DatabaseConfig) -> Iterator[Database]:
    database = Database(db_config)
    yield database
    database.close()


@pytest.fixture
def store(db: Database) -> PolicyStore:
    s = PolicyStore(db)
    s.migrate()
    return s


def tcp(src: str, dst: str, start: int, end: int | None = None) -> Policy:
    return Policy(src, dst, "tcp", start, start if end is None else end)


def udp(src: str, dst: str, port: int) -> Policy:
    return Policy(src, dst, "udp", port, port)


def tag_map(store: PolicyStore) -> dict[str, int]:
    return {t.guid: t.tag for t in store.tags()}


def policies(store: PolicyStore) -> list[Policy]:
    return [tp.policy for tp in store.all()]


def test_migrate_is_idempotent(db: Database) -> None:
    s = PolicyStore(db)
    assert s.migrate() == len(MIGRATIONS)
    stamp = s.last_updated_ns()
    assert s.migrate() == 0
    assert s.last_updated_ns() == stamp  # re-seeding leaves the stamp alone
    assert stamp % 1000 == 0 and stamp > 0
    s.check_database()


def test_create_and_read_in_insertion_order_with_tags(store: PolicyStore) -> None:
    batch = [tcp("app1", "app2", 8080), tcp("app3", "app1", 9999), tcp("app3", "app2", 3333, 4444)]
    store.create(batch)
    assert store.all() == [
        TaggedPolicy(batch[0], 1, 2), TaggedPolicy(batch[1], 3, 1), TaggedPolicy(batch[2], 3, 2)]
    store.create([udp("app0", "app1", 53)])
    assert policies(store)[-1] == udp("app0", "app1", 53)
    assert store.tags() == [Tag("app1", 1, "app"), Tag("app2", 2, "app"), Tag("app3", 3, "app"),
                            Tag("app0", 4, "app")]


def test_create_is_idempotent(store: PolicyStore) -> None:
    p = tcp("a", "b", 8080)
    store.create([p, p, tcp("a", "b", 8080, 8080)])  # duplicates in one batch
    store.create([p])  # and again later
    assert policies(store) == [p] and store.count() == 1
    store.create([tcp("a", "b", 8080, 8081), udp("a", "b", 8080)])  # different ranges/protocols
    assert policies(store) == [p, tcp("a", "b", 8080, 8081), udp("a", "b", 8080)]
    assert tag_map(store) == {"a": 1, "b": 2}


def test_empty_create_and_delete_do_nothing(store: PolicyStore) -> None:
    stamp = store.last_updated_ns()
    store.create([])
    store.delete([])
    assert store.last_updated_ns() == stamp
    assert store.all() == []


def test_batch_is_all_or_nothing_when_tags_run_out(db: Database) -> None:
    store = PolicyStore(db, tag_length=1)
    store.migrate()
    store.create([tcp(f"app{i}", f"app{i + 1}", 80) for i in range(0, 250, 2)])  # 250 tags
    before = (store.all(), store.tags(), store.last_updated_ns())
    batch = [tcp("app0", "new1", 81), tcp("new2", "new3", 82), tcp("new4", "new5", 83),
             tcp("new6", "app1", 84)]  # needs 6 new tags, only 5 are left
    with pytest.raises(TagsExhaustedError, match="^failed to find available tag: "):
        store.create(batch)
    assert (store.all(), store.tags(), store.last_updated_ns()) == before
    store.create(batch[:3])  # 5 new tags fit exactly: 251..255
    assert max(tag_map(store).values()) == 255
    with pytest.raises(TagsExhaustedError):
        store.create_tag("router", "router")


def test_guid_holding_another_type_fails_the_whole_batch(store: PolicyStore) -> None:
    router = store.create_tag("router-guid", "router")
    stamp = store.last_updated_ns()
    with pytest.raises(StoreError):
        store.create([tcp("a", "b", 80), tcp("c", "router-guid", 80)])
    assert store.all() == [] and store.tags() == [router] and store.last_updated_ns() == stamp


def test_tag_reuse_integration_example(store: PolicyStore) -> None:
    """Spec §4: A->B, A->C, C->A; delete A->B frees only B; A->D takes B's tag."""
    store.create([tcp("A", "B", 8090), udp("A", "C", 6666), tcp("C", "A", 3333)])
    assert tag_map(store) == {"A": 1, "B": 2, "C": 3}
    store.delete([tcp("A", "B", 8090)])
    assert tag_map(store) == {"A": 1, "C": 3}
    store.create([tcp("A", "D", 8090)])
    assert store.tags() == [Tag("A", 1, "app"), Tag("D", 2, "app"), Tag("C", 3, "app")]


def test_tag_reuse_store_example(store: PolicyStore) -> None:
    """Spec §4: A->B, C->B; delete A->B frees A (B still owns a destination); D takes 01."""
    store.create([tcp("A", "B", 8080), udp("C", "B", 1234)])
    assert tag_map(store) == {"A": 1, "B": 2, "C": 3}
    store.delete([tcp("A", "B", 8080)])
    store.create([tcp("D", "B", 8080)])
    assert store.tags() == [Tag("D", 1, "app"), Tag("B", 2, "app"), Tag("C", 3, "app")]


def test_lowest_free_tags_are_taken_in_order_of_appearance(store: PolicyStore) -> None:
    store.create([tcp(f"a{i}", "hub", 80) for i in range(6)])  # a0=1 hub=2 a1..a5=3..7
    store.delete([tcp("a0", "hub", 80), tcp("a2", "hub", 80), tcp("a4", "hub", 80)])
    assert sorted(tag_map(store).values()) == [2, 3, 5, 7]  # 1, 4 and 6 are free
    store.create([tcp("x", "y", 80), tcp("z", "hub", 80), tcp("w", "v", 80)])
    tags = tag_map(store)
    assert [tags[g] for g in ("x", "y", "z", "w", "v")] == [1, 4, 6, 8, 9]


def test_delete_semantics(store: PolicyStore) -> None:
    keep = tcp("a", "b", 80)
    gone = tcp("a", "c", 80, 90)
    store.create([keep, gone, udp("c", "d", 53)])
    stamp = store.last_updated_ns()
    store.delete([gone, gone, tcp("a", "c", 80), tcp("nobody", "c", 80, 90),
                  tcp("a", "nowhere", 80), tcp("c", "d", 53)])  # only `gone` matches exactly
    assert policies(store) == [keep, udp("c", "d", 53)]
    assert store.last_updated_ns() > stamp
    stamp = store.last_updated_ns()
    store.delete([tcp("x", "y", 1)])  # nothing matches: still bumped
    assert store.last_updated_ns() > stamp
    assert tag_map(store) == {"a": 1, "b": 2, "c": 3, "d": 4}  # c is still a source


def test_delete_frees_destinations_and_groups(store: PolicyStore, db: Database) -> None:
    store.create([tcp("a", "b", 80), tcp("c", "b", 80), tcp("a", "b", 81)])
    with db.transaction() as tx:
        assert tx.scalar("SELECT COUNT(*) FROM destinations") == 2
    store.delete([tcp("a", "b", 80)])
    with db.transaction() as tx:  # b:80 is still used by c
        assert tx.scalar("SELECT COUNT(*) FROM destinations") == 2
    store.delete([tcp("c", "b", 80)])
    with db.transaction() as tx:
        assert tx.scalar("SELECT COUNT(*) FROM destinations") == 1
    assert tag_map(store) == {"a": 1, "b": 2}  # c freed
    store.delete([tcp("a", "b", 81)])
    assert store.tags() == [] and store.all() == []
    with db.transaction() as tx:
        assert tx.scalar("SELECT COUNT(*) FROM destinations") == 0
    store.create([tcp("n", "m", 80)])
    assert tag_map(store) == {"n": 1, "m": 2}


def test_deletes_never_free_tags_of_other_types(store: PolicyStore) -> None:
    router = store.create_tag("router-guid", "router")
    store.create([tcp("a", "b", 80)])
    store.delete([tcp("router-guid", "b", 80), tcp("a", "b", 80), tcp("b", "router-guid", 80)])
    assert store.tags() == [router]


def test_stamp_is_strictly_increasing(store: PolicyStore) -> None:
    seen = [store.last_updated_ns()]
    for i in range(30):
        store.create([tcp("a", "b", 1000 + i)])
        seen.append(store.last_updated_ns())
        store.delete([tcp("a", "b", 1000 + i)])
        seen.append(store.last_updated_ns())
    assert all(later > earlier for earlier, later in zip(seen, seen[1:], strict=False))
    assert all(s % 1000 == 0 for s in seen)


def test_stamp_survives_a_clock_behind_the_stored_value(store: PolicyStore, db: Database) -> None:
    future_us = (store.last_updated_ns() // 1000) + 3600 * 10**6  # another replica's clock
    with db.transaction(write=True) as tx:
        tx.execute("UPDATE policies_info SET last_updated_us = ?", (future_us,))
    store.create([tcp("a", "b", 80)])
    assert store.last_updated_ns() == (future_us + 1) * 1000
    store.delete([tcp("a", "b", 80)])
    assert store.last_updated_ns() == (future_us + 2) * 1000


def test_create_tag(store: PolicyStore) -> None:
    store.create([tcp("a", "b", 80)])
    router = store.create_tag("router-guid", "router-type")
    assert router == Tag("router-guid", 3, "router-type")
    assert store.create_tag("router-guid", "router-type") == router
    with pytest.raises(StoreError):
        store.create_tag("router-guid", "other-type")
    with pytest.raises(StoreError):
        store.create_tag("a", "router-type")  # app guids hold a tag too
    assert store.create_tag("", "") == Tag("", 4, "")  # upstream does not validate I4
    assert [t.tag for t in store.tags()] == [1, 2, 3, 4]
    store.delete([tcp("a", "b", 80)])
    assert store.create_tag("x", "router") == Tag("x", 1, "router")  # reuses freed app tags


def test_by_guids_and_by_ids(store: PolicyStore) -> None:
    p1, p2, p3, p4 = tcp("a", "b", 1), tcp("b", "c", 2), tcp("c", "a", 3), tcp("d", "e", 4)
    store.create([p1, p2, p3, p4])

    def got(result: list[TaggedPolicy]) -> list[Policy]:
        return [tp.policy for tp in result]

    assert got(store.by_ids(["a"])) == [p1, p3]
    assert got(store.by_ids(["a", "a", "e", "unknown"])) == [p1, p3, p4]
    assert got(store.by_ids([""])) == [] and store.by_ids([]) == []
    assert got(store.by_guids(["a", "c"], [])) == [p1, p3]
    assert got(store.by_guids([], ["a", "c"])) == [p2, p3]
    assert got(store.by_guids(["a"], ["a"])) == [p1, p3]
    assert got(store.by_guids(["d"], ["b"])) == [p1, p4]  # OR
    assert got(store.by_guids(["a", "b", "c"], ["c", "e"], both=True)) == [p2]  # AND
    assert store.by_guids(["a"], [], both=True) == []
    assert store.by_guids([], []) == []
    assert store.by_ids(["a"])[1] == TaggedPolicy(p3, 3, 1)


def test_count_by_source(store: PolicyStore) -> None:
    store.create([tcp("a", "b", 1), tcp("a", "c", 2), tcp("b", "a", 3)])
    assert store.count_by_source(["a", "b", "c", "zz"]) == {"a": 2, "b": 1, "c": 0, "zz": 0}
    assert store.count_by_source([]) == {}


def test_large_batches_and_long_id_lists(store: PolicyStore) -> None:
    """One create of 1000 policies, then lists far longer than any bound-parameter limit."""
    batch = [tcp(f"src-{i}", f"dst-{i % 40}", 8000 + i % 7) for i in range(1000)]
    store.create(batch)
    assert len(store.all()) == 1000 and len(store.tags()) == 1040
    ids = [f"src-{i}" for i in range(0, 1000, 2)] + [f"unknown-{i}" for i in range(40000)]
    assert [tp.policy for tp in store.by_ids(ids)] == batch[::2]
    store.delete(batch[:999])
    assert [tp.policy for tp in store.all()] == batch[999:]
    assert len(store.tags()) == 2


def test_security_groups_replace_keeps_ids_and_removes_the_rest(store: PolicyStore) -> None:
    g1 = SecurityGroup("g1", "one", "[]", True, False, (), ())
    g2 = SecurityGroup("g2", "two", "[]", False, True, (), ())
    g3 = SecurityGroup("g3", "three", "[]", True, True, (), ())
    store.replace_security_groups([g1, g2, g3])
    assert store.security_groups(None) == ([g1, g2, g3], 0)
    g2b = SecurityGroup("g2", "two-b", '[{"protocol":"all"}]', True, False, ("s1",), ("s2", "s3"))
    g4 = SecurityGroup("g4", "four", "[]", True, False, (), ())
    store.replace_security_groups([g4, g2b])
    page, nxt = store.security_groups(None)
    assert page == [g2b, g4] and nxt == 0  # g2 kept its (lower) id, so it still comes first
    store.replace_security_groups([])
    assert store.security_groups(None) == ([], 0)
    assert store.security_groups(["s1"]) == ([], 0)


def test_security_groups_space_filter(store: PolicyStore) -> None:
    glob = SecurityGroup("global", "g", "[]", staging_default=True)
    staging = SecurityGroup("staging", "s", "[]", staging_spaces=("space-a", "space-b"))
    running = SecurityGroup("running", "r", "[]", running_spaces=("space-b", "space-c"))
    unbound = SecurityGroup("unbound", "u", "[]")
    store.replace_security_groups([glob, staging, running, unbound])
    assert store.security_groups(None)[0] == [glob]
    assert store.security_groups([])[0] == [glob]
    assert store.security_groups([""])[0] == [glob]
    assert store.security_groups(["space-a"])[0] == [glob, staging]
    assert store.security_groups(["space-c"])[0] == [glob, running]
    assert store.security_groups(["space-b"])[0] == [glob, staging, running]
    assert store.security_groups(["space-a", "space-c", "nope"])[0] == [glob, staging, running]
    assert store.security_groups(["space-"])[0] == [glob]  # whole guids only


def test_security_groups_pagination(store: PolicyStore) -> None:
    groups = [SecurityGroup(f"g{i}", f"n{i}", "[]", running_default=True) for i in range(5)]
    store.replace_security_groups(groups)
    all_rows, nxt = store.security_groups(None, limit=0)
    assert all_rows == groups and nxt == 0
    seen, cursor = [], 0
    while True:
        page, cursor = store.security_groups(None, from_id=cursor, limit=2)
        seen += page
        assert len(page) <= 2
        if cursor == 0:
            break
    assert seen == groups
    page, nxt = store.security_groups(None, from_id=-5, limit=5)
    assert page == groups and nxt == 0
    page, nxt = store.security_groups(None, limit=4)
    assert page == groups[:4] and nxt > 0
    assert store.security_groups(None, from_id=nxt)[0] == groups[4:]
    assert store.security_groups(None, from_id=2**63 - 1) == ([], 0)
    assert store.security_groups(None, from_id=2**70, limit=2**70) == ([], 0)
    assert store.security_groups(None, limit=2**63 - 1) == (groups, 0)


def test_postgres_notifies_watchers_on_commit(pg_config: DatabaseConfig) -> None:
    import psycopg

    db = Database(pg_config)
    store = PolicyStore(db)
    store.migrate()
    listener = psycopg.connect(pg_config.postgres_dsn(), autocommit=True)
    try:
        listener.execute("LISTEN cfnet_policies")
        with pytest.raises(TagsExhaustedError):  # a rolled-back batch notifies no one
            PolicyStore(db, tag_length=1).create([tcp(f"a{i}", "b", 80) for i in range(300)])
        store.create([tcp("a", "b", 80)])
        created = store.last_updated_ns()
        store.delete([tcp("a", "b", 80)])
        deleted = store.last_updated_ns()
        payloads = [n.payload for n in listener.notifies(timeout=5, stop_after=2)]
        assert payloads == [str(created), str(deleted)]
    finally:
        listener.close()
        db.close()


def test_unusual_values_round_trip_or_fail_cleanly(store: PolicyStore, db: Database) -> None:
    huge = Policy("\u00e4pp-\U0001f600", "x" * 1000, "tcp", 2**63 - 1, 2**63 - 1)  # v0: no bound
    store.create([huge])
    assert policies(store) == [huge]
    assert store.by_ids(["x" * 1000])[0].policy == huge
    store.delete([huge])
    assert store.all() == [] and store.tags() == []
    nul = Policy("a\x00b", "c", "tcp", 80, 80)
    if db.dialect == "postgres":  # PostgreSQL text cannot hold NUL: a clean StoreError
        with pytest.raises(StoreError):
            store.create([nul])
        assert store.all() == []
    else:
        store.create([nul])
        assert policies(store) == [nul]


def test_tag_length_is_recorded_at_the_first_migration(db: Database) -> None:
    from cfnet.core.errors import ConfigError

    assert PolicyStore(db, tag_length=1).migrate() == len(MIGRATIONS)
    assert PolicyStore(db, tag_length=1).migrate() == 0
    with pytest.raises(ConfigError) as e:
        PolicyStore(db, tag_length=2).migrate()
    assert str(e.value) == ("invalid config: key 'tag_length': the database was created with "
                            "tag_length 1, configured 2 (changing it after seeding is unsupported)")
