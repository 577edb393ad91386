"""A router with the routing behaviour of the upstream Go servers (rata/pat), as an ASGI app.

Upstream clients and tests depend on details a generic framework router does not give: a
`:name` segment matches any run of characters other than `/` (even an empty one); only exact
paths match (a trailing `/` is a 404); an unknown path answers `404 page not found`; a known path
with another method answers `405 Method Not Allowed` with an `Allow` header, HEAD included.
Handlers are Starlette-style: `async def handler(request) -> Response`, with the captured
segments in `request.path_params`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class Route:
    method: str
    pattern: str  # e.g. "/networking/:version/external/policies"
    handler: Handler
    name: str = ""  # metric name prefix, e.g. "CreatePolicies"
    regex: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        parts = re.split(r"(:[a-zA-Z_]+)", self.pattern)
        rx = "".join(f"(?P<{p[1:]}>[^/]*)" if p.startswith(":") else re.escape(p) for p in parts)
        self.regex = re.compile(rx + r"\Z")

    def match(self, path: str) -> dict[str, str] | None:
        m = self.regex.match(path)
        return m.groupdict() if m else None


def error_body(description: str) -> bytes:
    """The upstream error body `{"error": "<description>"}` (space after the colon), escaped."""
    return b'{"error": ' + json.dumps(description).encode() + b"}"


def error_response(status: int, description: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(description), status_code=status, headers=headers,
                    media_type="application/json")


def json_response(obj: Any, status: int = 200) -> Response:
    """Compact JSON, field order as given, as the Go encoder writes it."""
    return Response(json.dumps(obj, separators=(",", ":")), status_code=status,
                    media_type="application/json")


class Router:
    """Dispatches to the first route whose pattern and method match, as rata does."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes

    def resolve(self, method: str, path: str) -> tuple[Route | None, list[str]]:
        """The matching route (or None) and the methods the path allows."""
        allowed: list[str] = []
        for route in self.routes:
            if route.match(path) is None:
                continue
            if route.method == method:
                return route, allowed
            if route.method not in allowed:
                allowed.append(route.method)
        return None, allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        route, allowed = self.resolve(scope["method"], scope["path"])
        if route is None:
            if allowed:
                response: Response = PlainTextResponse(
                    "Method Not Allowed\n", status_code=405, headers={"Allow": ", ".join(allowed)})
            else:
                response = PlainTextResponse("404 page not found\n", status_code=404)
            await response(scope, receive, send)
            return
        scope["path_params"] = route.match(scope["path"])
        scope["route"] = route
        response = await route.handler(Request(scope, receive))
        await response(scope, receive, send)


def lower_keys(obj: Any) -> Any:
    """Lower-case every object key, recursively: Go's decoder matches field names case-insensitively."""
    if isinstance(obj, dict):
        return {str(k).lower(): lower_keys(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [lower_keys(v) for v in obj]
    return obj
