"""Benchmark: 1,000 simulated cells acquiring, then renewing, leases from a real silk-controller.

    .venv/bin/python bench/silk_controller.py [--cells 1000] [--workers 8] [--backends sqlite,postgres]

For each backend a controller process is started (cfnet.testing.silk_controller) on a /14 overlay
with /24 blocks (1,023 cells). Every worker thread plays a share of the cells over its own kept-alive
mutual-TLS connection, as a daemon does. Reported per phase: wall time per operation (throughput),
p50/p95 latency, and the ratio to an anchor measured in the same run against the same server: a
bare `GET /health` (plain HTTP on the health listener, which runs `SELECT 1`), with the same
workers and request count. Then the controller's resident memory (VmRSS, peak VmHWM).
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cfnet.core.leases import Lease  # noqa: E402
from cfnet.silk.lease_client import LeaseClient  # noqa: E402
from cfnet.store.db import DatabaseConfig  # noqa: E402
from cfnet.testing.silk_controller import RunningController, silk_controller  # noqa: E402
from cfnet.web.tls import generate_bundle  # noqa: E402



def underlay_ip(cell: int) -> str:
    return f"10.0.{cell // 250}.{cell % 250 + 1}"


@contextmanager
def database(backend: str, workdir: Path) -> Iterator[DatabaseConfig]:
    if backend == "sqlite":
        yield DatabaseConfig(type="sqlite", path=str(workdir / "silk.db"))
        return
    from cfnet.testing.postgres import fresh_database

    with fresh_database("cfnet_bench_", timeout=120) as config:
        yield config


def run_phase(cells: int, workers: int, make: Callable[[], object],
              op: Callable[[object, int], None]) -> tuple[float, list[float]]:
    """Run `op(conn, cell)` for every cell, spread over `workers` threads; (wall s, latencies s)."""
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(workers + 1)
    errors: list[BaseException] = []

    def worker(share: range) -> None:
        conn = make()
        mine: list[float] = []
        barrier.wait()
        try:
            for cell in share:
                t = time.perf_counter()
                op(conn, cell)
                mine.append(time.perf_counter() - t)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
        finally:
            close = getattr(conn, "close", None)
            if close:
                close()
            with lock:
                latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(range(w, cells, workers),)) for w in range(workers)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} workers failed, first: {errors[0]!r}")
    return wall, latencies


def rss_kib(pid: int) -> tuple[int, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def bench_backend(backend: str, cells: int, workers: int, workdir: Path) -> list[str]:
    bundle = generate_bundle(workdir / "certs")
    leases: dict[int, Lease] = {}

    def acquire(client: object, cell: int) -> None:
        leases[cell] = client.acquire(underlay_ip(cell))  # type: ignore[attr-defined]

    def renew(client: object, cell: int) -> None:
        client.renew(leases[cell])  # type: ignore[attr-defined]

    with database(backend, workdir) as db, silk_controller(
            workdir, db, bundle=bundle, network="10.252.0.0/14", subnet_prefix_length=24,
            max_open_connections=workers + 4) as ctl:
        health = urlsplit(ctl.health_url)

        def lease_client() -> LeaseClient:
            return LeaseClient(ctl.url, ctl.client_tls, timeout=30)

        def health_conn() -> http.client.HTTPConnection:
            return http.client.HTTPConnection(health.hostname, health.port, timeout=30)

        def get_health(conn: object, cell: int) -> None:
            conn.request("GET", "/health")  # type: ignore[attr-defined]
            response = conn.getresponse()  # type: ignore[attr-defined]
            response.read()
            assert response.status == 200

        rows = []
        anchor_wall, anchor = run_phase(cells, workers, health_conn, get_health)
        for name, op in (("acquire", acquire), ("renew", renew)):
            wall, lat = run_phase(cells, workers, lease_client, op)
            rows.append((name, wall, lat))
        assert len({lease.overlay_subnet for lease in leases.values()}) == cells
        rss, peak = rss_kib(ctl.pid)
        assert isinstance(ctl, RunningController)

    a50 = statistics.median(anchor)
    out = [f"## {backend}: {cells} cells, {workers} workers",
           f"{'phase':<16}{'per op (wall)':>14}{'p50':>10}{'p95':>10}{'p50 / anchor':>14}",
           f"{'health (anchor)':<16}{anchor_wall / cells * 1e3:>11.2f} ms{a50 * 1e3:>7.2f} ms"
           f"{pct(anchor, 95) * 1e3:>7.2f} ms{1.0:>13.2f}x"]
    for name, wall, lat in rows:
        p50 = statistics.median(lat)
        out.append(f"{name:<16}{wall / cells * 1e3:>11.2f} ms{p50 * 1e3:>7.2f} ms"
                   f"{pct(lat, 95) * 1e3:>7.2f} ms{p50 / a50:>13.2f}x")
    out.append(f"controller RSS after the run: {rss / 1024:.1f} MiB (peak {peak / 1024:.1f} MiB)")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--backends", default="sqlite,postgres")
    args = parser.parse_args()
    if not 1 <= args.cells <= 1023:
        parser.error("--cells must be between 1 and 1023 (a /14 overlay with /24 blocks)")
    print(f"# silk-controller benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"nproc {os.cpu_count()}, kernel {os.uname().release}")
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory(prefix=f"silk-bench-{backend}-") as tmp:
            for line in bench_backend(backend.strip(), args.cells, args.workers, Path(tmp)):
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
