"""The container-metadata datastore (silk.md 4.2): file format, version counter, lock, cache."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from cfnet.cni.datastore import Container, Datastore, DatastoreError

META = {"policy_group_id": "app-guid", "space_id": "space-guid", "ports": "8080, 9090",
        "container_workload": "app"}


def test_add_writes_upstreams_format_and_counts_versions(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    store = Datastore(str(path))
    assert store.version() == 1  # missing version file counts as 1
    store.add("h2", "10.255.1.3", {"b": "x<y", "a": "1"})
    store.add("h1", "10.255.1.2", META)
    raw = path.read_bytes()
    assert raw.endswith(b"}\n") and raw.count(b"\n") == 1
    assert raw.startswith(b'{"h1":{"handle":"h1","ip":"10.255.1.2","metadata":'
                          b'{"container_workload"')
    assert b'"a":"1","b":"x\\u003cy"' in raw  # sorted keys, Go's HTML escaping
    assert json.loads(raw)["h2"] == {"handle": "h2", "ip": "10.255.1.3",
                                     "metadata": {"a": "1", "b": "x<y"}}
    assert (tmp_path / "store.json_version").read_text() == "3"  # first write yields 2
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert (tmp_path / "store.json_lock").exists()


def test_read_update_delete(tmp_path: Path) -> None:
    store = Datastore(str(tmp_path / "store.json"))
    store.add("h1", "10.255.1.2", META)
    assert store.read_all() == {"h1": Container("h1", "10.255.1.2", META)}
    assert store.read_all()["h1"].meta("policy_group_id") == "app-guid"
    store.update("h1", "10.255.1.9", {"x": "y"})
    assert store.get("h1") == Container("h1", "10.255.1.9", {"x": "y"})
    with pytest.raises(DatastoreError, match="^entry does not exist$"):
        store.update("nope", "10.255.1.2", {})
    assert store.delete("h1").ip == "10.255.1.9"
    assert store.delete("h1") == Container("h1", "", {})  # unknown handle: no error
    assert store.read_all() == {}
    assert store.version() == 5


def test_invalid_entries_and_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    store = Datastore(str(path))
    with pytest.raises(DatastoreError, match="^invalid handle$"):
        store.add("", "10.255.1.2")
    with pytest.raises(DatastoreError, match="^invalid ip: nonsense$"):
        store.add("h", "nonsense")
    assert not path.exists()  # nothing written
    path.write_text("bad")
    (tmp_path / "store.json_version").write_text("7")
    with pytest.raises(DatastoreError, match="^decoding file: Expecting value"):
        store.read_all()
    with pytest.raises(DatastoreError, match="^decoding file"):
        store.add("h", "10.255.1.2")
    assert path.read_text() == "bad"  # a failed add leaves the file alone


def test_reader_cache_follows_the_version_file(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    writer, reader = Datastore(str(path)), Datastore(str(path))
    writer.add("h1", "10.255.1.2", {})
    assert set(reader.read_all()) == {"h1"}
    # Same version: the reader answers from its cache without reading the data file.
    path.write_text('{"other":{"handle":"other","ip":"10.255.1.5","metadata":{}}}\n')
    assert set(reader.read_all()) == {"h1"}
    writer.add("h2", "10.255.1.3", {})  # moves the version: the reader re-reads
    assert set(reader.read_all()) == {"other", "h2"}


def _add_many(path: str, prefix: str, n: int) -> None:
    store = Datastore(path)
    for i in range(n):
        store.add(f"{prefix}-{i}", f"10.255.{len(prefix)}.{i + 2}", {"i": str(i)})


def test_concurrent_writers_in_several_processes_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "store.json")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_add_many, args=(path, "p" * (k + 1), 25)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    data = Datastore(path).read_all()
    assert len(data) == 100
    assert Datastore(path).version() == 101
