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


def _closed_port() -> int:
    import socket

    with socket.socket() as s:  # bound and closed again: nothing listens there
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_postgres_is_one_line_and_a_network_error() -> None:
    from cfnet.store.db import is_network_error

    db = Database(DatabaseConfig(type="postgres", user="cfnet", password="cfnet",
                                 host="127.0.0.1", port=_closed_port(), database_name="postgres",
                                 timeout=5))
    seen: list[tuple[int, str, bool]] = []
    with pytest.raises(StoreError) as e:
        db.connect(lambda *failure: seen.append(failure), attempts=2, interval_s=0.01)
    message = str(e.value)
    assert "\n" not in message and "\t" not in message
    assert message.startswith("db connect: unable to ping: ") and "refused" in message
    assert [(attempt, retry) for attempt, _, retry in seen] == [(1, True), (2, False)]
    assert is_network_error(e.value)
    db.close()


def test_a_wrong_password_is_not_retried(pg_config: DatabaseConfig) -> None:
    import dataclasses

    from cfnet.store.db import is_network_error

    db = Database(dataclasses.replace(pg_config, password="certainly-wrong"))
    seen: list[tuple[int, str, bool]] = []
    with pytest.raises(StoreError) as e:
        db.connect(lambda *failure: seen.append(failure), attempts=10, interval_s=0.01)
    assert [(attempt, retry) for attempt, _, retry in seen] == [(1, False)]
    assert "password authentication failed" in str(e.value) and "\n" not in str(e.value)
    assert not is_network_error(e.value)
    with pytest.raises(StoreError):  # also through the deadline-based wait
        db.wait_until_reachable(deadline_s=3600, interval_s=0.01)
    db.close()


def test_sqlite_creates_the_file_but_never_its_directory(tmp_path) -> None:
    missing = tmp_path / "nonexist" / "dir"
    db = Database(DatabaseConfig(type="sqlite", path=str(missing / "x.db")))
    with pytest.raises(ConfigError) as e:
        db.ping()
    assert str(e.value) == f"invalid config: key 'database.path': directory {missing} does not exist"
    assert not (tmp_path / "nonexist").exists()
    db = Database(DatabaseConfig(type="sqlite", path=str(tmp_path / "x.db")))
    db.ping()
    assert (tmp_path / "x.db").exists()
    db.close()
