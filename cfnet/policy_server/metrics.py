"""Prometheus metrics with the upstream names translated to Prometheus conventions (spec 9).

- `<Name>RequestTime` / `<Name>RequestCount`: `cfnet_policy_server_request_duration_seconds{route}`
  (a histogram) and `cfnet_policy_server_requests_total{route,code}`;
- `http_error`: `cfnet_policy_server_http_errors_total{route}`;
- `Store<Op>SuccessTime` / `ErrorTime` / `Store<Op>Error`:
  `cfnet_policy_server_store_operation_duration_seconds{op,outcome}` and
  `cfnet_policy_server_store_errors_total{op}`;
- `totalPolicies`, `uptime`: `cfnet_policy_server_policies`, `cfnet_policy_server_uptime_seconds`;
- `SecurityGroupsRetrievalFromCCTime`, `SecurityGroupsTotalSyncTime`:
  `cfnet_policy_server_asg_cc_retrieval_seconds`, `cfnet_policy_server_asg_sync_seconds`.

One registry per process (not the global one), so `/metrics` shows exactly these.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

T = TypeVar("T")
PREFIX = "cfnet_policy_server"
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.started = time.time()
        r = self.registry = CollectorRegistry()
        self.request_duration = Histogram(f"{PREFIX}_request_duration_seconds",
                                          "Time to serve a request, by route name.", ["route"],
                                          registry=r, buckets=_BUCKETS)
        self.requests = Counter(f"{PREFIX}_requests", "Requests served, by route name and status.",
                                ["route", "code"], registry=r)
        self.http_errors = Counter(f"{PREFIX}_http_errors",
                                   "Error responses (upstream http_error).", ["route"], registry=r)
        self.store_duration = Histogram(f"{PREFIX}_store_operation_duration_seconds",
                                        "Store operation time, by operation and outcome.",
                                        ["op", "outcome"], registry=r, buckets=_BUCKETS)
        self.store_errors = Counter(f"{PREFIX}_store_errors", "Failed store operations.", ["op"],
                                    registry=r)
        self.policies = Gauge(f"{PREFIX}_policies", "Policies stored (upstream totalPolicies).",
                              registry=r)
        self.uptime = Gauge(f"{PREFIX}_uptime_seconds", "Seconds since the process started.",
                            registry=r)
        self.uptime.set_function(lambda: time.time() - self.started)
        self.asg_retrieval = Histogram(f"{PREFIX}_asg_cc_retrieval_seconds",
                                       "Time to read every ASG from Cloud Controller.", registry=r,
                                       buckets=_BUCKETS)
        self.asg_sync = Histogram(f"{PREFIX}_asg_sync_seconds", "Time of a whole ASG sync.",
                                  registry=r, buckets=_BUCKETS)
        self.asg_sync_failures = Counter(f"{PREFIX}_asg_sync_failures",
                                         "ASG sync cycles that failed.", registry=r)
        self.cleaner_deleted = Counter(f"{PREFIX}_stale_policies_deleted",
                                       "Policies deleted by the stale-policy cleaner.", registry=r)
        self.watch_waiting = Gauge(f"{PREFIX}_watch_waiting_requests",
                                   "Long-polls waiting on policies_last_updated.", registry=r)

    @contextmanager
    def store_op(self, op: str) -> Iterator[None]:
        """Time one store call as `Store<op>`; failures also count as `Store<op>Error`."""
        start = time.perf_counter()
        try:
            yield
        except Exception:
            self.store_duration.labels(op, "error").observe(time.perf_counter() - start)
            self.store_errors.labels(op).inc()
            raise
        self.store_duration.labels(op, "success").observe(time.perf_counter() - start)

    def timed(self, op: str, fn: Callable[[], T]) -> T:
        with self.store_op(op):
            return fn()

    def render(self) -> bytes:
        return generate_latest(self.registry)
