"""Shared fixtures: both database backends, root-only tests, and a PostgreSQL database per test.

PostgreSQL is real: `.ci/run` (scripts/setup.sh) starts the packaged server with a `cfnet` role.
Point CFNET_TEST_POSTGRES at another server to use it instead. Without a reachable server the
PostgreSQL tests fail under CI and are skipped (with the reason) on a developer machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from cfnet.store.db import DatabaseConfig
from cfnet.testing.postgres import database_for_test


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces); CI runs as root")
    for item in items:
        if "privileged" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def pg_config() -> Iterator[DatabaseConfig]:
    """A DatabaseConfig for a new, empty PostgreSQL database, dropped after the test."""
    with database_for_test() as config:
        yield config


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
