"""Fixtures: UAA/CC stubs, and real policy servers (subprocesses) on SQLite and PostgreSQL.

`server` is one UAA-mode server per backend per module (tests use fresh app guids, so they do
not see each other's policies); `fresh_server` starts new ones on an empty database for tests
that look at global state (tags, cleanup, stamps).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ps_env import INTERNAL_OVERRIDES, Env, StartEnv, make_database, uaa_overrides, uaa_tokens
from ps_stubs import Cloud, serve_stub

from cfnet.testing.policy_server import RunningPolicyServer, start_policy_server


@pytest.fixture(scope="module")
def stub_cloud() -> Iterator[tuple[Cloud, str]]:
    cloud = Cloud(tokens=uaa_tokens())
    with serve_stub(cloud) as url:
        yield cloud, url


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           stub_cloud: tuple[Cloud, str]) -> Iterator[Env]:
    """One UAA-mode server per backend for the whole module."""
    cloud, url = stub_cloud
    work = tmp_path_factory.mktemp(f"ps-{request.param}")
    for db in make_database(request.param, work):
        ps = start_policy_server(work, db, external=uaa_overrides(url),
                                 internal=INTERNAL_OVERRIDES)
        try:
            yield Env(ps, cloud, url, request.param)
        finally:
            ps.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def fresh_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StartEnv]:
    """A factory of servers on one new, empty database (per test); all stopped after it."""
    cloud = Cloud(tokens=uaa_tokens())
    started: list[RunningPolicyServer] = []
    with serve_stub(cloud) as url:
        for db in make_database(request.param, tmp_path):
            def start(**external: Any) -> Env:
                work = tmp_path / f"server-{len(started)}"
                ps = start_policy_server(work, db, external=uaa_overrides(url, **external),
                                     internal=INTERNAL_OVERRIDES)
                started.append(ps)
                return Env(ps, cloud, url, request.param)

            try:
                yield start
            finally:
                for ps in started:
                    ps.stop()
