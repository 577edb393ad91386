"""The debug listener every role shares (upstream: one lager debug server for every job).

`/log-level` accepts any method and any body (spec silk.md §1.2): a level name or alias
(`debug|DEBUG|d|0`, ...) changes the level, anything else (also an empty body) changes
nothing, and the answer is always 200 with an empty body, since BOSH probes `GET /log-level`.
`/metrics` is Prometheus text; `/debug/pprof` only points at `/metrics` (not a Go program).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from cfnet.core.logs import Logger, parse_level
from cfnet.web.router import Route, Router

LOG_LEVEL_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")
CONTENT_TYPE_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


def debug_app(set_level: Callable[[str], None], log: Logger | None,
              render_metrics: Callable[[], bytes], extra: Sequence[Route] = (),
              content_type: str = CONTENT_TYPE_PROMETHEUS) -> Router:
    """The debug router: `/log-level`, `/metrics`, `/debug/pprof`, plus a role's `extra` routes."""

    async def log_level(request: Request) -> Response:
        level = parse_level((await request.body()).decode("utf-8", errors="replace"))
        if level is not None:
            set_level(level)
            if log is not None:
                log.info("log-level-changed", level=level)
        return Response(b"")

    async def metrics(request: Request) -> Response:
        return Response(render_metrics(), media_type=content_type)

    async def pprof_redirect(request: Request) -> Response:
        return RedirectResponse("/debug/pprof/", status_code=301)

    async def pprof_index(request: Request) -> Response:
        return PlainTextResponse("cfnet is not a Go program: no pprof profiles; see /metrics\n")

    routes = [Route(m, "/log-level", log_level, "LogLevel") for m in LOG_LEVEL_METHODS]
    routes += [Route("GET", "/metrics", metrics, "Metrics"),
               Route("GET", "/debug/pprof", pprof_redirect),
               Route("GET", "/debug/pprof/", pprof_index)]
    return Router(routes + list(extra))
