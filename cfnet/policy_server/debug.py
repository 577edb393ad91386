"""The debug listener (spec 1.3): `POST /log-level` as upstream, and Prometheus `GET /metrics`."""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from cfnet.core.logs import parse_level
from cfnet.policy_server.metrics import Metrics
from cfnet.web.router import Route, Router

CONTENT_TYPE_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


def debug_app(metrics: Metrics, set_level: Callable[[str], None]) -> Router:
    async def log_level(request: Request) -> Response:
        body = (await request.body()).decode("utf-8", errors="replace")
        level = parse_level(body)
        if level is None:
            return PlainTextResponse(f"unknown log level: {body.strip()!r}\n", status_code=400)
        set_level(level)
        return PlainTextResponse(f"log level set to {level}\n")

    async def render(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_PROMETHEUS)

    return Router([Route("POST", "/log-level", log_level, "LogLevel"),
                   Route("GET", "/metrics", render, "Metrics")])
