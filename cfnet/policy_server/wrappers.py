"""The handler wrappers of the upstream servers, in upstream order (spec 1.0, 3.6).

External routes, outermost first: HSTS (only with enable_tls) -> nosniff -> XSS -> CORS/frame
headers -> metrics -> request log (X-VCAP-Request-ID) -> API version check -> authentication ->
handler. Headers are set on whatever the inner layers answer, errors included; router-level
404/405 never reach a wrapper. Internal routes: metrics -> request log -> handler, and HSTS on
every response of the listener (`StrictTransport`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cfnet.core.logs import Logger
from cfnet.policy_server.metrics import Metrics
from cfnet.policy_server.uaa import AuthError, TokenData, TokenVerifier, bearer, scope_error
from cfnet.web.router import Route, error_response

Handler = Callable[[Request], Awaitable[Response]]
VERSIONS = ("v0", "v1")
HSTS = ("Strict-Transport-Security", "max-age=31536000")


@dataclass
class WrapContext:
    """What the wrappers need from the running server."""

    metrics: Metrics
    log: Logger
    verifier: TokenVerifier | None = None
    hsts: bool = False
    cors_domains: list[str] = field(default_factory=list)
    self_service: bool = False


def request_id(request: Request) -> str:
    new = str(uuid.uuid4())
    given = request.headers.get("x-vcap-request-id")
    return f"{given}::{new}" if given else new


def security_headers(response: Response, ctx: WrapContext, request: Request) -> None:
    h = response.headers
    if ctx.hsts:
        h[HSTS[0]] = HSTS[1]
    h["X-Content-Type-Options"] = "nosniff"
    h["X-XSS-Protection"] = "1; mode=block"
    h["X-Frame-Options"] = "deny"
    h["Content-Security-Policy"] = "frame-ancestors 'none'"
    origin = request.headers.get("origin", "")
    for domain in ctx.cors_domains:
        if domain == "*" or domain == origin:
            h["Access-Control-Allow-Origin"] = domain
            break


def measured(handler: Handler, name: str, ctx: WrapContext) -> Handler:
    """Metrics timer and request log (with the request id): upstream's metrics + logger wrappers."""

    async def run(request: Request) -> Response:
        rid = request_id(request)
        request.state.request_id = rid
        session = f"request_{rid.rsplit('::', 1)[-1]}"
        request.state.session = session
        start = time.perf_counter()
        ctx.log.debug(f"{session}.serving", method=request.method, request=str(request.url.path))
        try:
            response = await handler(request)
        except Exception:  # a bug, never client input: answer 500 and keep serving
            ctx.log.exception(f"{session}.unhandled-error")
            response = error_response(500, "internal server error")
        elapsed = time.perf_counter() - start
        ctx.metrics.request_duration.labels(name).observe(elapsed)
        ctx.metrics.requests.labels(name, str(response.status_code)).inc()
        if response.status_code >= 400:
            ctx.metrics.http_errors.labels(name).inc()
        response.headers["X-VCAP-Request-ID"] = rid
        ctx.log.debug(f"{session}.done", status=response.status_code, duration_s=round(elapsed, 6))
        return response

    return run


def external(handler: Handler, name: str, ctx: WrapContext, *, version: bool = False,
             scopes: tuple[str, ...] | None = None, skippable: bool = False) -> Handler:
    """Wrap an external handler. `scopes` set means a token is required; `skippable` means the
    scope check is skipped when space-developer self-service is on (create, delete, index)."""

    async def checked(request: Request) -> Response:
        if version:
            v = request.path_params.get("version", "")
            if v not in VERSIONS:
                return error_response(406, f"api version '{v}' not supported")
        if scopes is not None:
            token_or_error = await authenticate(request, ctx, scopes, skippable)
            if isinstance(token_or_error, Response):
                return token_or_error
            request.state.token = token_or_error
        return await handler(request)

    inner = measured(checked, name, ctx)

    async def run(request: Request) -> Response:
        response = await inner(request)
        security_headers(response, ctx, request)
        return response

    return run


async def authenticate(request: Request, ctx: WrapContext, scopes: tuple[str, ...],
                       skippable: bool) -> TokenData | Response:
    """Spec 3.1: the first Authorization header, `Bearer `/`bearer ` stripped, verified, scoped."""
    headers = request.headers.getlist("authorization")
    if not headers:
        return error_response(401, "missing authorization header",
                              headers={"WWW-Authenticate": "Bearer"})
    assert ctx.verifier is not None
    try:
        token = await run_in_threadpool(ctx.verifier.verify, bearer(headers[0]))
    except AuthError as e:
        ctx.log.error(f"{request.state.session}.failed-to-verify-token", error=str(e))
        return error_response(401, "failed to verify token with uaa",
                              headers={"WWW-Authenticate": "Bearer"})
    if not (skippable and ctx.self_service):
        problem = scope_error(token, scopes)
        if problem:
            return error_response(403, problem)
    return token


def options_handler(routes: list[Route], ctx: WrapContext) -> Handler:
    """E10: CORS preflight. Allow-Methods lists the routes matching the path, in table order."""

    async def run(request: Request) -> Response:
        path = request.url.path
        methods = [r.method for r in routes if r.method != "OPTIONS" and r.match(path) is not None]
        response = Response(b"", status_code=200)
        response.headers["Access-Control-Allow-Methods"] = ",".join([*methods, "OPTIONS"])
        response.headers["Access-Control-Allow-Headers"] = "authorization"
        security_headers(response, ctx, request)
        return response

    return run


def internal(handler: Handler, name: str, ctx: WrapContext) -> Handler:
    """Metrics and request log; HSTS comes from `StrictTransport` around the whole router."""
    return measured(handler, name, ctx)


class StrictTransport:
    """HSTS on every response of the mutual-TLS listener, the router's own 404/405 included
    (upstream wraps the internal router, not each handler)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_hsts(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []),
                           (HSTS[0].lower().encode(), HSTS[1].encode())]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_hsts)
