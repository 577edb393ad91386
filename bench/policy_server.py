"""Benchmark: a real `cfnet policy-server` with 100k policies over 20k apps, SQLite and PostgreSQL.

    .venv/bin/python bench/policy_server.py [--rounds 500] [--backends sqlite,postgres]

For each backend: a scratch store (a file; a fresh PostgreSQL database created and dropped) is
migrated and loaded through the store API (`PolicyStore.create`, batches of 10,000 in one
transaction each: the same code path as the external API's create, minus HTTP and JSON, so
100k policies load in seconds rather than minutes). Then the real server starts as a subprocess
(cfnet.testing.policy_server) on 127.0.0.1, the external API on HTTPS and the internal one on
mutual TLS, and one client measures with kept-alive connections, one request at a time:

- anchors: `GET /health` on the internal health listener (plain HTTP, `SELECT 1`), and
  `GET .../internal/policies_last_updated` on the mutual-TLS listener (one indexed read of one row
  through the same TLS, wrappers and store thread as the fetch);
- fetch: `GET .../internal/policies?id=<100 app guids>`, a cell's 100 apps drawn at random from
  the 20k each round (about 960 policies, about 190 KiB of JSON per answer); 100 distinct
  apps is the heavy case of a 100-container cell (instances of one app share a guid);
- the three run interleaved, round after round, so that load from elsewhere on the machine hits
  them alike; a warm-up precedes the measured rounds;
- create: batches of 100 new policies (between existing apps) through the external API as admin,
  one batch per request; policies per second and per-batch latency;
- CPU per request: each kind again on its own (the anchors 3x as often as the fetch), reading
  the scheduler's nanosecond CPU counters of every server thread before and after
  (/proc/PID/task/*/schedstat), and on PostgreSQL also those of the server's backends. CPU
  hardly moves when other work shares the machine, so these ratios are the steadier ones on a
  busy box; latency percentiles are not;
- the server's RSS (VmRSS, peak VmHWM) before the first request and after everything.

Latencies are client-side wall times of request + full response read (JSON not decoded). Each
figure is printed with its ratio to the health anchor and to the mTLS anchor of the same run;
DESIGN.md's target: fetch p99 <= 5x the health endpoint. Only loopback traffic; everything is
removed afterwards. About a minute for both backends on 2 cores.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import (cpu_delta, machine, percentile, rss_kib, scratch_database,  # noqa: E402
                     thread_cpu_ns)

from cfnet.core.policy import Policy  # noqa: E402
from cfnet.store.db import Database, DatabaseConfig  # noqa: E402
from cfnet.store.policies import PolicyStore  # noqa: E402
from cfnet.testing.policy_server import RunningPolicyServer, policy_server  # noqa: E402
from cfnet.web.tls import client_context, generate_bundle  # noqa: E402

INTERNAL = "/networking/v1/internal"
EXTERNAL = "/networking/v1/external"
LOAD_BATCH = 10_000


# -- workload -----------------------------------------------------------------------------------


def app_guids(rng: random.Random, n: int) -> list[str]:
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]


def random_policy(rng: random.Random, apps: list[str]) -> Policy:
    """Source and destination drawn uniformly; mostly tcp on common ports, some ranges and udp."""
    src, dst = rng.sample(apps, 2)
    proto = "udp" if rng.random() < 0.1 else "tcp"
    start = rng.choice((8080, 8080, 8080, 443, 9000, rng.randint(1024, 65000)))
    end = start + rng.randint(1, 100) if rng.random() < 0.1 else start
    return Policy(src, dst, proto, start, end)


def unique_policies(rng: random.Random, apps: list[str], n: int,
                    taken: set[Policy] | None = None) -> list[Policy]:
    taken = taken if taken is not None else set()
    out: list[Policy] = []
    while len(out) < n:
        p = random_policy(rng, apps)
        if p not in taken:
            taken.add(p)
            out.append(p)
    return out


def load_store(db_cfg: DatabaseConfig, policies: list[Policy]) -> float:
    """Migrate and store `policies` in batches; seconds taken (migration excluded)."""
    db = Database(db_cfg)
    try:
        store = PolicyStore(db)
        store.migrate()
        start = time.perf_counter()
        for i in range(0, len(policies), LOAD_BATCH):
            store.create(policies[i:i + LOAD_BATCH])
        elapsed = time.perf_counter() - start
        stored = store.count()
        if stored != len(policies):
            raise SystemExit(f"loaded {stored} policies, expected {len(policies)}")
        return elapsed
    finally:
        db.close()


# -- the client -----------------------------------------------------------------------------------


class Conn:
    """One kept-alive HTTP(S) connection; `get`/`post` return (status, body) and fail on a close."""

    def __init__(self, url: str, context: object | None = None) -> None:
        u = urlsplit(url)
        if u.scheme == "https":
            self.conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                u.hostname, u.port, context=context, timeout=60)  # type: ignore[arg-type]
        else:
            self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        self.conn.request(method, path, body=body, headers=headers or {})
        response = self.conn.getresponse()
        data = response.read()
        if response.will_close:
            raise SystemExit(f"server closed the kept-alive connection after {method} {path}")
        return response.status, data

    def close(self) -> None:
        self.conn.close()


def timed(fn: Callable[[], tuple[int, bytes]], expect: int = 200) -> tuple[float, int]:
    start = time.perf_counter()
    status, body = fn()
    elapsed = time.perf_counter() - start
    if status != expect:
        raise SystemExit(f"unexpected status {status}: {body[:200]!r}")
    return elapsed, len(body)


# -- measurement ----------------------------------------------------------------------------------


@dataclass
class Series:
    name: str
    times: list[float] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    cpu_server: float = 0.0  # server process CPU seconds per request (separate, sequential phase)
    cpu_db: float = 0.0  # PostgreSQL backends' CPU seconds per request

    def add(self, sample: tuple[float, int]) -> None:
        self.times.append(sample[0])
        self.sizes.append(sample[1])

    def p(self, q: float) -> float:
        return percentile(self.times, q)


@dataclass
class Result:
    backend: str
    load_s: float
    stored: int
    rss_start_kib: int
    rss_end_kib: int
    rss_peak_kib: int
    series: list[Series]
    create: Series
    create_batch: int
    policies_per_fetch: float


class CpuMeter:
    """CPU seconds used by the server process and, on PostgreSQL, by its database backends."""

    def __init__(self, pid: int, db_cfg: DatabaseConfig) -> None:
        self.pid = pid
        self.pg = None
        if db_cfg.type == "postgres":
            import psycopg

            self.pg = psycopg.connect(db_cfg.postgres_dsn(), autocommit=True)

    def _backends(self) -> dict[int, int]:
        if self.pg is None:
            return {}
        out: dict[int, int] = {}
        for (pid,) in self.pg.execute(
                "SELECT pid FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchall():
            try:
                out.update(thread_cpu_ns(pid))
            except OSError:  # gone since the query
                continue
        return out

    def snapshot(self) -> tuple[dict[int, int], dict[int, int]]:
        return thread_cpu_ns(self.pid), self._backends()

    def since(self, before: tuple[dict[int, int], dict[int, int]]) -> tuple[float, float]:
        """(server CPU s, database backends' CPU s) since `before`."""
        server, backends = self.snapshot()
        return cpu_delta(before[0], server), cpu_delta(before[1], backends)

    def close(self) -> None:
        if self.pg is not None:
            self.pg.close()


def fetch_path(cell: list[str]) -> str:
    return f"{INTERNAL}/policies?id={','.join(cell)}"


def check_fetch(server_body: bytes, store: PolicyStore, cell: list[str]) -> int:
    """The server's answer holds exactly the store's policies for the cell; the count."""
    data = json.loads(server_body)
    expected = store.by_ids(cell)
    if data["total_policies"] != len(expected) or len(data["policies"]) != len(expected):
        raise SystemExit(f"fetch returned {data['total_policies']} policies, store has "
                         f"{len(expected)}")
    return len(expected)


def measure(ps: RunningPolicyServer, db_cfg: DatabaseConfig, apps: list[str],
            taken: set[Policy], rng: random.Random, args: argparse.Namespace,
            ) -> tuple[list[Series], Series, float]:
    health = Conn(ps.health_url)
    internal = Conn(ps.internal_url, client_context(ps.client_tls))
    external = Conn(ps.external_url, client_context(ps.client_tls))
    meter = CpuMeter(ps.pid, db_cfg)
    health_path = urlsplit(ps.health_url).path
    anchor_h = Series("health (plain HTTP)")
    anchor_t = Series("last_updated (mTLS)")
    fetch = Series("fetch 100 apps (mTLS)")
    create = Series(f"create {args.create_batch}/batch (HTTPS)")
    # Cells drawn in advance, so that the timed part is the request alone.
    next_path = iter([fetch_path(rng.sample(apps, 100))
                      for _ in range(args.warmup + args.rounds + args.cpu_requests)]).__next__
    requests: dict[str, Callable[[], tuple[int, bytes]]] = {
        anchor_h.name: lambda: health.request("GET", health_path),
        anchor_t.name: lambda: internal.request("GET", f"{INTERNAL}/policies_last_updated"),
        fetch.name: lambda: internal.request("GET", next_path()),
    }
    try:
        # Correctness first: a few cells compared with the store itself.
        db = Database(db_cfg, max_open_connections=2)
        try:
            store = PolicyStore(db)
            counts = []
            for _ in range(3):
                cell = rng.sample(apps, 100)
                status, body = internal.request("GET", fetch_path(cell))
                if status != 200:
                    raise SystemExit(f"fetch answered {status}: {body[:200]!r}")
                counts.append(check_fetch(body, store, cell))
        finally:
            db.close()
        # Latency: the three interleaved, one round after the other.
        for i in range(args.warmup + args.rounds):
            samples = [(s, timed(requests[s.name])) for s in (anchor_h, anchor_t, fetch)]
            if i >= args.warmup:
                for series, sample in samples:
                    series.add(sample)
        # CPU per request: each kind alone, so that its CPU can be told apart.
        for series, n in ((anchor_h, args.cpu_requests * 3), (anchor_t, args.cpu_requests * 3),
                          (fetch, args.cpu_requests)):
            before = meter.snapshot()
            for _ in range(n):
                timed(requests[series.name])
            server_s, db_s = meter.since(before)
            series.cpu_server, series.cpu_db = server_s / n, db_s / n
        # Create: new policies between the existing apps, one batch per request.
        headers = {"Authorization": f"Bearer {ps.admin_token}",
                   "Content-Type": "application/json"}
        before = meter.snapshot()
        for _ in range(args.create_batches):
            batch = unique_policies(rng, apps, args.create_batch, taken)
            body = json.dumps({"policies": [
                {"source": {"id": p.source},
                 "destination": {"id": p.destination, "protocol": p.protocol,
                                 "ports": {"start": p.start, "end": p.end}}}
                for p in batch]}).encode()
            create.add(timed(lambda: external.request(
                "POST", f"{EXTERNAL}/policies", body, headers)))
        server_s, db_s = meter.since(before)
        create.cpu_server, create.cpu_db = server_s / len(create.times), db_s / len(create.times)
    finally:
        for c in (health, internal, external):
            c.close()
        meter.close()
    return [anchor_h, anchor_t, fetch], create, sum(counts) / len(counts)


def run_backend(backend: str, args: argparse.Namespace, workdir: Path) -> Result:
    rng = random.Random(args.seed)
    apps = app_guids(rng, args.apps)
    taken: set[Policy] = set()
    policies = unique_policies(rng, apps, args.policies, taken)
    bundle = generate_bundle(workdir / "certs", server_names=["127.0.0.1", "localhost"])
    with scratch_database(backend, workdir, "bench_ps") as db_cfg:
        assert isinstance(db_cfg, DatabaseConfig)
        load_s = load_store(db_cfg, policies)
        print(f"  {backend}: stored {len(policies)} policies over {len(apps)} apps in "
              f"{load_s:.1f} s ({len(policies) / load_s:,.0f}/s through PolicyStore.create, "
              f"batches of {LOAD_BATCH})", flush=True)
        with policy_server(workdir / "server", db_cfg, bundle=bundle, external={
                "enable_tls": True, "server_cert_file": str(bundle.server.cert),
                "server_key_file": str(bundle.server.key)}) as ps:
            rss_start, _ = rss_kib(ps.pid)
            try:
                series, create, per_fetch = measure(ps, db_cfg, apps, taken, rng, args)
            except SystemExit:
                for line in ps.log_lines():
                    if line.get("level") in ("error", "fatal"):
                        print(f"  server log: {line.get('message')} {line.get('data')}")
                raise
            rss_end, rss_peak = rss_kib(ps.pid)
    return Result(backend, load_s, len(policies), rss_start, rss_end, rss_peak, series, create,
                  args.create_batch, per_fetch)


# -- report ---------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def report(r: Result) -> list[str]:
    health, mtls, fetch = r.series
    h50, h99, t99 = health.p(50), health.p(99), mtls.p(99)
    pg = r.backend == "postgres"
    out = [f"### {'PostgreSQL' if pg else 'SQLite'}: {r.stored:,} policies; "
           f"{len(fetch.times)} rounds; a fetch returns {r.policies_per_fetch:.0f} policies, "
           f"{sum(fetch.sizes) / len(fetch.sizes) / 1024:.0f} KiB",
           "",
           "| request | p50 | p99 | p50 / health | p99 / health | p99 / mTLS anchor "
           "| server CPU | / health |" + (" PostgreSQL CPU |" if pg else ""),
           "|---|---|---|---|---|---|---|---|" + ("---|" if pg else "")]
    for s in (*r.series, r.create):
        row = (f"| {s.name} | {ms(s.p(50))} | {ms(s.p(99))} | {s.p(50) / h50:.2f}x "
               f"| {s.p(99) / h99:.2f}x | {s.p(99) / t99:.2f}x | {ms(s.cpu_server)} "
               f"| {s.cpu_server / health.cpu_server:.1f}x |")
        if pg:
            row += f" {ms(s.cpu_db)} |"
        out.append(row)
    c = r.create
    rate = r.create_batch * len(c.times) / sum(c.times)
    if fetch.p(99) > 5 * h99:
        verdict = "MISSES the 5x target"
    elif fetch.p(50) > 5 * h50 or fetch.cpu_server > 5 * health.cpu_server:
        # A loaded machine inflates the anchor's tail far more than its median.
        verdict = ("within 5x at p99 only: the p50 and CPU ratios are over 5x, so the target "
                   "is not really met")
    else:
        verdict = "meets the 5x target"
    out += ["",
            f"- fetch p99 / health p99 = {fetch.p(99) / h99:.2f}x: {verdict} "
            f"(p50: {fetch.p(50) / h50:.2f}x; against the mTLS anchor p50: "
            f"{fetch.p(50) / mtls.p(50):.2f}x; server CPU: "
            f"{fetch.cpu_server / health.cpu_server:.1f}x"
            + (f", plus PostgreSQL {ms(fetch.cpu_db)} per fetch)" if pg else ")"),
            f"- create through the external API: {rate:,.0f} policies/s "
            f"({len(c.times)} batches of {r.create_batch}, one at a time)",
            f"- store load: {r.stored / r.load_s:,.0f} policies/s (PolicyStore.create, "
            f"batches of {LOAD_BATCH})",
            f"- server RSS: {r.rss_start_kib / 1024:.1f} MiB after start, "
            f"{r.rss_end_kib / 1024:.1f} MiB after the run "
            f"({r.rss_end_kib / r.rss_start_kib:.2f}x), peak {r.rss_peak_kib / 1024:.1f} MiB"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--apps", type=int, default=20_000)
    parser.add_argument("--policies", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=500, help="measured fetch rounds")
    parser.add_argument("--cpu-requests", type=int, default=100,
                        help="fetches in the CPU phase (anchors: 3x as many)")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--create-batches", type=int, default=30)
    parser.add_argument("--create-batch", type=int, default=100)
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args()
    if args.apps < 100:
        parser.error("--apps must be at least 100 (a cell fetches 100 apps)")
    if args.apps > 65_000:
        parser.error("--apps must fit in 16-bit tags (at most 65,000)")
    if args.policies > args.apps * (args.apps - 1):
        parser.error("--policies is more than the apps can hold")
    if args.rounds < 10 or args.create_batches < 2 or args.cpu_requests < 10:
        parser.error("--rounds and --cpu-requests must be at least 10, --create-batches 2")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in backends:
        if b not in ("sqlite", "postgres"):
            parser.error(f"unknown backend {b!r}: sqlite or postgres")
    print(f"# policy-server benchmark: {machine()}", flush=True)
    results = []
    for backend in backends:
        with tempfile.TemporaryDirectory(prefix=f"ps-bench-{backend}-") as tmp:
            results.append(run_backend(backend, args, Path(tmp)))
    for r in results:
        print()
        print("\n".join(report(r)))
    print(f"\n# finished: load average {machine().rsplit('load average ', 1)[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
