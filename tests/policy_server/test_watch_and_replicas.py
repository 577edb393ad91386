"""The watch on policies_last_updated, and several replicas on one PostgreSQL database."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from ps_env import INTERNAL_OVERRIDES, Env, guid, make_database, uaa_overrides, uaa_tokens, v1
from ps_stubs import Cloud, serve_stub

from cfnet.core.policy import Policy
from cfnet.store.db import Database
from cfnet.store.policies import PolicyStore
from cfnet.testing.policy_server import start_policy_server

LAST_UPDATED = "/networking/v1/internal/policies_last_updated"


WAKE_DEADLINE = 20.0  # a woken poll answers in milliseconds; a missed wake-up waits 600 s
# (the server's periodic safety check runs every 30 s on PostgreSQL, so 20 s also tells a LISTEN
# wake-up from that check)


class LongPoll:
    """A long-poll (wait=600 s) running in a thread; `.result()` waits for its answer."""

    def __init__(self, env: Env, query: str) -> None:
        self._pool = ThreadPoolExecutor(1)
        self._future = self._pool.submit(env.get_internal, LAST_UPDATED + query, timeout=700)

    def result(self) -> requests.Response:
        try:
            return self._future.result(timeout=WAKE_DEADLINE)
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)


def wait_until_waiting(env: Env, count: int = 1) -> None:
    """Poll the server's gauge until `count` long-polls are parked (no sleeping on faith)."""
    import re
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = requests.get(env.ps.debug_url + "/metrics", timeout=10).text
        m = re.search(r"^cfnet_policy_server_watch_waiting_requests (\S+)$", text, re.M)
        if m and float(m.group(1)) >= count:
            return
        time.sleep(0.02)
    raise AssertionError("the long-poll never started waiting")


def write_from_another_process(env: Env) -> int:
    """Create a policy through the store from this (test) process, as another replica would."""
    db = Database(env.ps.database)
    try:
        store = PolicyStore(db, 2)
        store.create([Policy(guid("other"), guid("other"), "tcp", 1, 1)])
        return store.last_updated_ns()
    finally:
        db.close()


def test_plain_polling_answers_at_once(server: Env) -> None:
    r = server.get_internal(LAST_UPDATED)
    assert r.status_code == 200 and r.text.isdigit()


def test_watch_answers_at_once_when_the_stamp_is_newer_than_since(server: Env) -> None:
    now = server.stamp()
    r = server.get_internal(LAST_UPDATED + f"?wait=60&since={now - 1}")
    assert (r.status_code, int(r.text)) == (200, now)


def test_watch_times_out_with_the_same_value(server: Env) -> None:
    now = server.stamp()
    r = server.get_internal(LAST_UPDATED + f"?wait=0.5&since={now}")
    assert (r.status_code, int(r.text)) == (200, now)
    r = server.get_internal(LAST_UPDATED + "?wait=0")
    assert (r.status_code, int(r.text)) == (200, now)


def test_watch_wakes_on_a_write_from_another_process(server: Env) -> None:
    now = server.stamp()
    poll = LongPoll(server, f"?wait=600&since={now}")
    wait_until_waiting(server)
    written = write_from_another_process(server)
    r = poll.result()
    assert r.status_code == 200
    assert int(r.text) == written > now


def test_watch_wakes_on_an_api_write_without_since(server: Env) -> None:
    poll = LongPoll(server, "?wait=600")
    wait_until_waiting(server)
    before = server.stamp()
    assert server.create([v1(guid(), guid())]).status_code == 200
    assert int(poll.result().text) > before


@pytest.mark.parametrize("query", ["?wait=abc", "?wait=-1", "?wait=nan", "?wait=1&since=x",
                                   "?wait=inf"])
def test_watch_rejects_bad_parameters_with_400(server: Env, query: str) -> None:
    r = server.get_internal(LAST_UPDATED + query)
    assert r.status_code == 400
    assert r.json()["error"].startswith("invalid value for '")


# -- replicas ----------------------------------------------------------------------------------------


@pytest.fixture
def two_replicas(tmp_path: Path) -> Any:
    cloud = Cloud(tokens=uaa_tokens())
    with serve_stub(cloud) as url:
        for db in make_database("postgres", tmp_path):
            first = start_policy_server(tmp_path / "a", db, external=uaa_overrides(url),
                                        internal=INTERNAL_OVERRIDES)
            try:
                second = start_policy_server(tmp_path / "b", db, bundle=first.bundle,
                                             external=uaa_overrides(url),
                                             internal=INTERNAL_OVERRIDES)
                try:
                    yield Env(first, cloud, url, "postgres"), Env(second, cloud, url, "postgres")
                finally:
                    second.stop()
            finally:
                first.stop()


def test_two_replicas_create_concurrently_and_agree(two_replicas: tuple[Env, Env]) -> None:
    a, b = two_replicas
    apps = [f"app-{i}" for i in range(30)]
    batches = [[v1(apps[i], apps[(i * 7 + j) % 30], 1000 + j) for j in range(3)]
               for i in range(30)]
    barrier = threading.Barrier(8)

    def send(i: int) -> int:
        env = a if i % 2 else b
        if i < 8:
            barrier.wait(timeout=30)
        # every batch twice, once through each replica, so both race on the same rows
        return env.create(batches[i % 30]).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(send, range(60)))
    assert codes == [200] * 60
    ra = a.get_internal("/networking/v1/internal/policies")
    rb = b.get_internal("/networking/v1/internal/policies")
    assert ra.content == rb.content
    policies = ra.json()["policies"]
    assert len(policies) == len({(p["source"]["id"], p["destination"]["id"],
                                  p["destination"]["ports"]["start"]) for p in policies}) == 90
    tags = requests.get(a.ext + "/tags", headers=a.auth(), timeout=10).json()["tags"]
    assert sorted(t["id"] for t in tags) == sorted(apps)
    assert sorted(int(t["tag"], 16) for t in tags) == list(range(1, 31))
    assert requests.get(b.ext + "/tags", headers=b.auth(), timeout=10).json()["tags"] == tags
    for p in policies:  # the tags the agents see agree with the tag table
        assert p["source"]["tag"] == next(t["tag"] for t in tags if t["id"] == p["source"]["id"])


def test_a_long_poll_on_one_replica_wakes_on_a_write_through_the_other(
        two_replicas: tuple[Env, Env]) -> None:
    a, b = two_replicas
    now = a.stamp()
    poll = LongPoll(a, f"?wait=600&since={now}")
    wait_until_waiting(a)
    assert b.create([v1(guid(), guid())]).status_code == 200
    written = b.stamp()
    r = poll.result()
    assert int(r.text) == written > now
