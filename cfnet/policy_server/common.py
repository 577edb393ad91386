"""Pieces shared by the external, internal and health apps: the store behind metrics, uptime,
health, query lists, a capped body reader."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response

from cfnet.core.errors import StoreError
from cfnet.core.logs import Logger
from cfnet.policy_server.metrics import Metrics
from cfnet.web.router import error_response

T = TypeVar("T")
MAX_BODY = 10 * 1024 * 1024  # upstream's http.MaxBytesReader limit on create/delete


class BodyTooLarge(Exception):
    pass


@dataclass
class StoreCalls:
    """Calls the store from a worker thread, timing each call as `Store<op>`."""

    store: Any  # cfnet.store.policies.PolicyStore
    metrics: Metrics
    log: Logger

    async def __call__(self, op: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        def timed() -> T:
            with self.metrics.store_op(op):
                return fn(*args, **kwargs)

        return await run_in_threadpool(timed)


def go_duration(seconds: float) -> str:
    """Go's time.Duration.String(): `1m2.5s`, `1h0m0s`, `350ms`, `0s`."""
    ns = int(round(seconds * 1e9))
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size or unit == "ns":
                return sign + _frac(ns, size) + unit
    hours, rest = divmod(ns, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    out = _frac(rest, 10**9) + "s"
    if hours or minutes:
        out = f"{minutes}m" + out
    if hours:
        out = f"{hours}h" + out
    return sign + out


def _frac(value: int, size: int) -> str:
    whole, frac = divmod(value, size)
    if not frac:
        return str(whole)
    digits = len(str(size)) - 1
    return f"{whole}." + f"{frac:0{digits}d}".rstrip("0")


def uptime_handler(started: float) -> Callable[[Request], Any]:
    async def uptime(request: Request) -> Response:
        up = go_duration(time.time() - started)
        return PlainTextResponse(f"Network policy server, up for {up}\n")

    return uptime


def health_handler(calls: StoreCalls) -> Callable[[Request], Any]:
    async def health(request: Request) -> Response:
        try:
            await calls("CheckDatabase", calls.store.check_database)
        except StoreError as e:
            calls.log.error("health.check-database-failed", error=str(e))
            return error_response(500, "check database failed")
        return Response(b"", status_code=200)

    return health


def query_list(request: Request, name: str) -> list[str] | None:
    """The first occurrence of a list parameter split on `,` (`?id=` gives [""]); None if absent.

    Items with a NUL character are dropped: no stored id can hold one (PostgreSQL text cannot),
    so they match nothing, and PostgreSQL would refuse the query instead of answering "none".
    """
    values = request.query_params.getlist(name)
    if not values:
        return None
    return [v for v in values[0].split(",") if "\x00" not in v]


def query_value(request: Request, name: str) -> str | None:
    values = request.query_params.getlist(name)
    return values[0] if values else None


async def read_body(request: Request, limit: int | None = MAX_BODY) -> bytes:
    """The body; BodyTooLarge past `limit` bytes, ClientDisconnect if the client went away."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if limit is not None and size > limit:
            raise BodyTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


BODY_ERRORS = (BodyTooLarge, ClientDisconnect)
