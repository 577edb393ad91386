"""Throw-away PostgreSQL databases for tests and benchmarks.

The server is the one `scripts/setup.sh` starts (role cfnet on 127.0.0.1:5432); point
CFNET_TEST_POSTGRES at another to use it instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

from cfnet.store.db import DatabaseConfig

PG_URL = os.environ.get("CFNET_TEST_POSTGRES", "postgresql://cfnet:cfnet@127.0.0.1:5432/postgres")


class PostgresUnavailable(RuntimeError):
    """The test server cannot be reached."""


@contextmanager
def fresh_database(prefix: str = "cfnet_t_", timeout: int = 10) -> Iterator[DatabaseConfig]:
    """A new, empty database on the test server, dropped (with its connections) afterwards."""
    import psycopg

    try:
        admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as e:
        raise PostgresUnavailable(f"PostgreSQL at {PG_URL} is not reachable: {e}") from None
    name = prefix + uuid.uuid4().hex[:12]
    admin.execute(f'CREATE DATABASE "{name}"')
    u = urlparse(PG_URL)
    try:
        yield DatabaseConfig(type="postgres", user=u.username or "", password=u.password or "",
                             host=u.hostname or "127.0.0.1", port=u.port or 5432,
                             database_name=name, timeout=timeout)
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@contextmanager
def database_for_test(prefix: str = "cfnet_t_") -> Iterator[DatabaseConfig]:
    """`fresh_database` for a pytest test: an unreachable server fails the test under CI (CI
    starts PostgreSQL, so that is a broken run) and skips it, with the reason, elsewhere."""
    import pytest

    try:
        with fresh_database(prefix) as config:
            yield config
    except PostgresUnavailable as e:
        if os.environ.get("CI"):
            pytest.fail(str(e))
        pytest.skip(str(e))
