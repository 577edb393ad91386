"""Small helpers shared by the benchmarks in bench/: percentiles, machine, RSS, CPU, scratch stores.

    from _common import machine, percentile, rss_kib, scratch_database   # with bench/ on sys.path

Every benchmark reports ratios against an anchor measured in the same run; `machine()` gives the
line to record beside the figures (date, CPUs, kernel, load), since this machine is often shared.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path



def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) by linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


def machine() -> str:
    """One line: UTC date, CPU count and model, kernel, Python, load average (1, 5, 15 min)."""
    return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; nproc {os.cpu_count()} "
            f"({cpu_model()}); kernel {platform.release()}; Python {platform.python_version()}; "
            f"load average {load_average()}")


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB: resident now, and the peak."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


@contextmanager
def scratch_database(backend: str, workdir: Path, name: str = "bench") -> Iterator[object]:
    """A cfnet DatabaseConfig for an empty store, removed afterwards.

    SQLite: a file under `workdir` (the caller removes the directory). PostgreSQL: a database
    created on the local server (`CFNET_TEST_POSTGRES`, the tests' admin URL) and dropped with
    FORCE on exit, even after an error.
    """
    from cfnet.store.db import DatabaseConfig

    if backend == "sqlite":
        yield DatabaseConfig(type="sqlite", path=str(workdir / f"{name}.db"))
        return
    if backend != "postgres":
        raise ValueError(f"unknown backend {backend!r}: sqlite or postgres")
    from cfnet.testing.postgres import fresh_database

    with fresh_database(f"cfnet_{name}_", timeout=120) as config:
        yield config


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process (all its threads) has used so far, in seconds.

    Unlike wall-clock latency this hardly moves when other work shares the machine, so a CPU
    figure per request is the steadier comparison on a loaded box. Read from the scheduler's
    per-thread nanosecond counters; a thread that has exited no longer counts, so take
    differences with `cpu_delta` over threads alive at the end.
    """
    return sum(thread_cpu_ns(pid).values()) / 1e9


def thread_cpu_ns(pid: int) -> dict[int, int]:
    """{thread id: ns on CPU} for every live thread of `pid` (/proc/PID/task/*/schedstat)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):  # the thread exited meanwhile
            continue
    return out


def cpu_delta(before: dict[int, int], after: dict[int, int]) -> float:
    """CPU seconds spent between two `thread_cpu_ns` readings by the threads alive at the end."""
    return sum(ns - before.get(tid, 0) for tid, ns in after.items()) / 1e9
