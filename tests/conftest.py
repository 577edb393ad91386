"""Shared fixtures: both database backends, root-only tests, and a PostgreSQL database per test.

PostgreSQL is real: `.ci/run` (scripts/setup.sh) starts the packaged server with a `cfnet` role.
Point CFNET_TEST_POSTGRES at another server to use it instead. Without a reachable server the
PostgreSQL tests fail under CI and are skipped (with the reason) on a developer machine.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from cfnet.store.db import DatabaseConfig

PG_URL = os.environ.get("CFNET_TEST_POSTGRES", "postgresql://cfnet:cfnet@127.0.0.1:5432/postgres")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces); CI runs as root")
    for item in items:
        if "privileged" in item.keywords:
            item.add_marker(skip)


def _pg_admin() -> object:
    import psycopg

    try:
        return psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as e:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {PG_URL} is not reachable: {e}")
        pytest.skip(f"PostgreSQL at {PG_URL} is not reachable: {e}")


@pytest.fixture
def pg_config() -> Iterator[DatabaseConfig]:
    """A DatabaseConfig for a new, empty PostgreSQL database, dropped after the test."""
    from urllib.parse import urlparse

    admin = _pg_admin()
    name = "cfnet_t_" + uuid.uuid4().hex[:12]
    admin.execute(f'CREATE DATABASE "{name}"')  # type: ignore[attr-defined]
    u = urlparse(PG_URL)
    try:
        yield DatabaseConfig(type="postgres", user=u.username or "", password=u.password or "",
                             host=u.hostname or "127.0.0.1", port=u.port or 5432,
                             database_name=name, timeout=10)
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[attr-defined]
        admin.close()  # type: ignore[attr-defined]


@pytest.fixture
def sqlite_config(tmp_path: object) -> DatabaseConfig:
    return DatabaseConfig(type="sqlite", path=str(tmp_path) + "/store.db", timeout=10)  # type: ignore[operator]


@pytest.fixture(params=["sqlite", "postgres"])
def db_config(request: pytest.FixtureRequest) -> DatabaseConfig:
    """Runs the test once on SQLite and once on a fresh PostgreSQL database."""
    name = "sqlite_config" if request.param == "sqlite" else "pg_config"
    return request.getfixturevalue(name)


@pytest.fixture
def sandbox() -> Iterator[object]:
    """A cfnet.testing.netns.Sandbox: namespaces and topologies removed after the test."""
    from cfnet.testing.netns import Sandbox

    with Sandbox() as box:
        yield box
