"""The database layer and migration runner, on both backends."""

from __future__ import annotations

import threading

import pytest

from cfnet.core.errors import ConfigError, StoreError
from cfnet.store.db import Database, DatabaseConfig
from cfnet.store.migrations import Migration, migrate

TABLE = Migration("t-0001", ("CREATE TABLE things (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)",),
                  ("CREATE TABLE things (id SERIAL PRIMARY KEY, n INTEGER NOT NULL)",))


def test_transaction_commits_and_rolls_back(db_config: DatabaseConfig) -> None:
    db = Database(db_config)
    migrate(db, [TABLE])
    with db.transaction(write=True) as tx:
        tx.execute("INSERT INTO things (n) VALUES (?)", (1,))
    with pytest.raises(RuntimeError):
        with db.transaction(write=True) as tx:
            tx.execute("INSERT INTO things (n) VALUES (?)", (2,))
            raise RuntimeError("boom")
    with db.transaction() as tx:
        assert tx.all("SELECT n FROM things") == [(1,)]
    db.close()


def test_sql_errors_become_store_errors(db_config: DatabaseConfig) -> None:
    db = Database(db_config)
    with pytest.raises(StoreError):
        with db.transaction() as tx:
            tx.execute("SELECT * FROM no_such_table")
    db.ping()  # the connection is still usable afterwards
    db.close()


def test_migrations_are_applied_once(db_config: DatabaseConfig) -> None:
    db = Database(db_config)
    assert migrate(db, [TABLE]) == 1
    assert migrate(db, [TABLE]) == 0
    db.close()


def test_failed_migration_leaves_nothing_and_reruns(db_config: DatabaseConfig) -> None:
    bad = Migration("t-0002", ("CREATE TABLE half (id INTEGER)", "THIS IS NOT SQL"),
                    ("CREATE TABLE half (id INTEGER)", "THIS IS NOT SQL"))
    good = Migration("t-0002", ("CREATE TABLE half (id INTEGER)",), ("CREATE TABLE half (id INTEGER)",))
    db = Database(db_config)
    with pytest.raises(StoreError):
        migrate(db, [TABLE, bad])
    assert migrate(db, [TABLE, good]) == 1  # `half` was rolled back with the failed migration
    db.close()


def test_write_transactions_are_serialised(db_config: DatabaseConfig) -> None:
    """Read-then-write under the write lock never loses an update, across connections."""
    db = Database(db_config)
    migrate(db, [TABLE])
    with db.transaction(write=True) as tx:
        tx.execute("INSERT INTO things (id, n) VALUES (1, 0)")

    def bump() -> None:
        for _ in range(20):
            with db.transaction(write=True) as tx:
                n = tx.scalar("SELECT n FROM things WHERE id = 1")
                tx.execute("UPDATE things SET n = ? WHERE id = 1", (n + 1,))

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with db.transaction() as tx:
        assert tx.scalar("SELECT n FROM things WHERE id = 1") == 80
    db.close()


def test_unsupported_database_type() -> None:
    with pytest.raises(ConfigError, match="database type 'mysql' is not supported"):
        Database(DatabaseConfig(type="mysql", host="h", user="u", port=1))


def test_postgres_dsn_sslmodes() -> None:
    base = dict(type="postgres", user="u", password="p@ss", host="db", port=5432, database_name="n")
    assert "sslmode=disable" in DatabaseConfig(**base).postgres_dsn()  # type: ignore[arg-type]
    assert "p%40ss" in DatabaseConfig(**base).postgres_dsn()  # type: ignore[arg-type]
    assert "sslmode=verify-full" in DatabaseConfig(**base, require_ssl=True).postgres_dsn()  # type: ignore[arg-type]
    assert "sslmode=require" in DatabaseConfig(
        **base, require_ssl=True, skip_hostname_validation=True).postgres_dsn()  # type: ignore[arg-type]
