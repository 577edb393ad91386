"""The ASG syncer's read of Cloud Controller: paging and the stability check (spec 6.1), in-process
against the CC stub (real HTTP, real mutual TLS) and a real SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ps_stubs import SERVER_TOKEN, Cloud, serve_stub

from cfnet.core.logs import get_logger
from cfnet.policy_server.asg_syncer import AsgSyncer, SyncError, to_security_group
from cfnet.policy_server.cc import CloudController
from cfnet.policy_server.metrics import Metrics
from cfnet.store.db import Database, DatabaseConfig
from cfnet.store.policies import PolicyStore
from cfnet.web.tls import generate_bundle, server_context


def group(guid: str, **extra: Any) -> dict[str, Any]:
    return {"guid": guid, "name": f"name-{guid}", "rules": [{"protocol": "icmp", "type": 8}],
            "globally_enabled": {"running": True, "staging": False}, **extra}


@pytest.fixture
def syncer(tmp_path: Path) -> Iterator[tuple[AsgSyncer, Cloud, PolicyStore]]:
    bundle = generate_bundle(tmp_path / "certs")
    cloud = Cloud(security_groups=[group(f"g{i}") for i in range(5)])  # three pages of two
    db = Database(DatabaseConfig(type="sqlite", path=str(tmp_path / "db.sqlite")))
    store = PolicyStore(db, 2)
    store.migrate()
    with serve_stub(cloud) as url, serve_stub(cloud, tls=server_context(bundle.server)) as iurl:
        cc = CloudController(url, timeout=5)
        internal = CloudController(iurl, str(bundle.ca_cert), timeout=5,
                                   client_cert=(str(bundle.client.cert), str(bundle.client.key)))
        yield (AsgSyncer(store, cc, internal, lambda: SERVER_TOKEN, Metrics(),
                         get_logger("test.asg-syncer"), interval=60), cloud, store)
    db.close()


def stored(store: PolicyStore) -> list[str]:
    return [g.guid for g in store.security_groups(["any"])[0]]


def test_reads_every_page_then_skips_until_cc_changes(syncer: Any) -> None:
    sync, cloud, store = syncer
    assert sync.poll() is True
    assert stored(store) == ["g0", "g1", "g2", "g3", "g4"]
    (rules,) = {g.rules for g in store.security_groups(["any"])[0]}
    assert rules == ('[{"protocol":"icmp","destination":"","ports":"","type":8,"code":0,'
                     '"description":"","log":false}]')
    pages = len(cloud.seen("/v3/security_groups"))
    assert pages == 3
    assert sync.poll() is False  # same last_update: nothing read
    assert len(cloud.seen("/v3/security_groups")) == pages
    cloud.security_groups = [group("g1"), group("g9")]
    cloud.asg_last_update = "2026-02-01T00:00:00Z"
    assert sync.poll() is True
    assert stored(store) == ["g1", "g9"]


def test_a_list_that_changes_while_read_is_read_again(syncer: Any) -> None:
    sync, cloud, store = syncer
    changes = iter(["2026-01-01T00:00:01Z"])  # CC changes once, during the first attempt

    def on_page(page: int) -> None:
        if page == 2:
            cloud.asg_last_update = next(changes, cloud.asg_last_update)

    cloud.on_page = on_page
    assert sync.poll() is True
    assert stored(store) == ["g0", "g1", "g2", "g3", "g4"]
    assert len(cloud.seen("/v3/security_groups")) == 2 + 3  # a broken attempt, then a whole one


def test_a_list_that_never_settles_fails_the_cycle_and_keeps_the_store(syncer: Any) -> None:
    sync, cloud, store = syncer
    assert sync.poll() is True
    cloud.asg_last_update = "2026-03-01T00:00:00Z"
    cloud.security_groups = [group("new")]
    ticks = iter(range(10**6))
    cloud.on_page = lambda page: setattr(cloud, "asg_last_update",
                                         f"2026-03-02T00:00:{next(ticks) % 60:02d}Z")
    with pytest.raises(SyncError, match="Ran out of retry attempts"):
        sync.poll()
    assert stored(store) == ["g0", "g1", "g2", "g3", "g4"]


def test_cc_group_conversion_rejects_bad_data() -> None:
    with pytest.raises(SyncError, match="entry without guid"):
        to_security_group(group("x", relationships={"running_spaces": {"data": [{}]}}))
    with pytest.raises(SyncError, match="'type' must be an integer"):
        to_security_group(group("x", rules=[{"type": "8"}]))
    with pytest.raises(SyncError):
        to_security_group({"name": "no guid"})
    g = to_security_group(group("x", relationships={
        "staging_spaces": {"data": [{"guid": "s1"}]}, "running_spaces": {"data": []}}))
    assert (g.staging_spaces, g.running_spaces, g.running_default, g.staging_default) == (
        ("s1",), (), True, False)
