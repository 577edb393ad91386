"""The port pool: lowest free port, release, exhaustion, locking across processes, crash safety."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from cfnet.garden.ports import PortError, PortPool


def test_lowest_free_port_and_release(tmp_path: Path) -> None:
    state = tmp_path / "dir" / "state.json"
    pool = PortPool(str(state), 61000, 5)
    assert pool.acquire("a", 2) == [61000, 61001]
    assert pool.acquire("b", 1) == [61002]
    pool.release("a")
    assert pool.acquire("c", 1) == [61000]  # the lowest free one again
    assert json.loads(state.read_text()) == {"acquired_ports": {"b": [61002], "c": [61000]}}
    assert oct(state.stat().st_mode & 0o777) == "0o600"
    assert oct(state.parent.stat().st_mode & 0o777) == "0o700"
    pool.release("b", [61002])
    pool.release("nobody")
    assert pool.acquired() == {"c": [61000]}


def test_exhausted_pool_changes_nothing(tmp_path: Path) -> None:
    pool = PortPool(str(tmp_path / "s.json"), 61000, 2)
    pool.acquire("a", 1)
    with pytest.raises(PortError, match="^acquire port: port pool exhausted$"):
        pool.acquire("b", 2)
    assert pool.acquired() == {"a": [61000]}


def test_reads_upstream_state_and_empty_files(tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    state.write_text("")
    pool = PortPool(str(state), 61000, 3)
    assert pool.acquired() == {}
    state.write_text('{"acquired_ports": {"old": [61000, 61002]}}')
    assert pool.acquire("new", 1) == [61001]


def test_a_corrupt_state_file_is_an_error_not_an_empty_pool(tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    state.write_text('{"acquired_ports": {"a": [610')
    with pytest.raises(PortError, match="reading port state"):
        PortPool(str(state), 61000, 3).acquire("b", 1)
    assert state.read_text() == '{"acquired_ports": {"a": [610'


def _grab(state: str, handle: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    pool = PortPool(state, 61000, 400)
    got = []
    for _ in range(20):
        got += pool.acquire(handle, 1)
    queue.put(got)


def test_concurrent_processes_never_share_a_port(tmp_path: Path) -> None:
    state = str(tmp_path / "s.json")
    queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    procs = [multiprocessing.Process(target=_grab, args=(state, f"h{i}", queue))
             for i in range(8)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
    ports = [port for r in results for port in r]
    assert len(ports) == 160 and len(set(ports)) == 160
    assert sorted(ports) == list(range(61000, 61160))
    assert sum(len(v) for v in PortPool(state, 61000, 400).acquired().values()) == 160


def _die_before_rename(state: str) -> None:
    """Acquire a port, but the machine "crashes" after the new state is written to its
    temporary file and before it replaces the old one (the worst moment)."""

    def crash(*_: object) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    os.rename = crash  # type: ignore[assignment] - fault injection in this child process only
    PortPool(state, 61000, 10).acquire("crashed", 1)


def test_a_crash_while_writing_never_hands_out_a_port_twice(tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    pool = PortPool(str(state), 61000, 10)
    assert pool.acquire("a", 2) == [61000, 61001]
    p = multiprocessing.Process(target=_die_before_rename, args=(str(state),))
    p.start()
    p.join(30)
    assert p.exitcode == -signal.SIGKILL
    # the old state is intact (upstream truncates in place: a crash there empties the pool),
    # the dead process's lock is gone, and a's ports stay a's
    assert json.loads(state.read_text()) == {"acquired_ports": {"a": [61000, 61001]}}
    assert pool.acquire("b", 1) == [61002]
