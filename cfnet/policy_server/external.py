"""The external API (spec 1.1): policies for developers and operators, behind UAA tokens.

Create runs: authenticate -> read the body (10 MiB cap) -> decode and validate -> space guard ->
quota -> store, stopping at the first failure with upstream's status and text (spec 1.1.2).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from cfnet.core.errors import StoreError
from cfnet.core.policy import (Policy, PolicyValidationError, format_tag, parse_policies,
                               policy_to_v0, policy_to_v1)
from cfnet.policy_server import wrappers
from cfnet.policy_server.access import SpaceAccess
from cfnet.policy_server.cleaner import CleanupError, StaleCleaner
from cfnet.policy_server.common import (BODY_ERRORS, StoreCalls, health_handler, query_list,
                                        read_body, uptime_handler)
from cfnet.policy_server.uaa import ADMIN_SCOPE, WRITE_SCOPE, TokenData, UpstreamError
from cfnet.policy_server.wrappers import WrapContext
from cfnet.web.router import Route, Router, error_response, json_response

ADMIN = (ADMIN_SCOPE,)
WRITERS = (ADMIN_SCOPE, WRITE_SCOPE)
OPENAPI_FILE = Path(__file__).with_name("openapi.json")
OPENAPI_PATH = "/networking/v1/external/openapi.json"


@dataclass
class ExternalDeps:
    calls: StoreCalls
    access: SpaceAccess
    cleaner: StaleCleaner
    max_policies: int
    tag_length: int
    started: float
    on_change: Callable[[], Awaitable[Any]]  # after a write: wake the watch


def _body_json(data: Any) -> Response:
    return json_response(data)


def _policy_list(policies: list[Policy], version: str) -> dict[str, Any]:
    if version == "v0":
        out = [d for d in (policy_to_v0(p) for p in policies) if d is not None]
    else:
        out = [policy_to_v1(p) for p in policies]
    return {"total_policies": len(out), "policies": out}


def _decode(body: bytes, version: str) -> list[Policy] | Response:
    try:
        policies = parse_policies(body, version)
    except PolicyValidationError as e:
        return error_response(400, f"mapper: {e}")
    except (ValueError, TypeError, RecursionError, UnicodeError) as e:  # defence in depth
        return error_response(400, f"mapper: unmarshal json: {e}")
    # cfnet: an id with a NUL character cannot be stored on PostgreSQL (upstream answers 500
    # there); refuse it on every backend, as bad input.
    for p in policies:
        for side, guid in (("source", p.source), ("destination", p.destination)):
            if "\x00" in guid:
                return error_response(400, f"mapper: validate policies: invalid {side} id, "
                                           "must not contain a NUL character")
    return policies


class ExternalHandlers:
    def __init__(self, deps: ExternalDeps) -> None:
        self.d = deps
        self.log = deps.calls.log

    async def _guard(self, policies: list[Policy], token: TokenData) -> Response | None:
        if token.is_admin:
            return None
        try:
            allowed = await run_in_threadpool(self.d.access.check, policies, token)
        except UpstreamError as e:
            self.log.error("check-access-failed", error=str(e))
            return error_response(500, "check access failed")
        if not allowed:
            return error_response(403, "one or more applications cannot be found or accessed")
        return None

    async def _quota(self, policies: list[Policy], token: TokenData) -> Response | None:
        if token.is_admin:
            return None
        apps = list(dict.fromkeys(g for p in policies for g in (p.source, p.destination)))
        try:
            existing = await self.d.calls("ByGuids", self.d.calls.store.count_by_source, apps)
        except StoreError as e:
            self.log.error("check-quota-failed", error=str(e))
            return error_response(500, "check quota failed")
        for app in apps:
            requested = sum(1 for p in policies if p.source == app)
            if existing.get(app, 0) + requested > self.d.max_policies:
                return error_response(403, "policy quota exceeded")
        return None

    async def create(self, request: Request) -> Response:
        token: TokenData = request.state.token
        version = request.path_params["version"]
        try:
            body = await read_body(request)
        except BODY_ERRORS:
            return error_response(400, "failed reading request body")
        policies = _decode(body, version)
        if isinstance(policies, Response):
            return policies
        for check in (self._guard, self._quota):
            refused = await check(policies, token)
            if refused is not None:
                return refused
        try:
            await self.d.calls("Create", self.d.calls.store.create, policies)
        except StoreError as e:
            self.log.error("create-policies-failed", error=str(e))
            return error_response(500, "database create failed")
        await self.d.on_change()
        self.log.info("created-policies", policies=[policy_to_v1(p) for p in policies],
                      userName=token.user_name)
        return _body_json({})

    async def delete(self, request: Request) -> Response:
        token: TokenData = request.state.token
        version = request.path_params["version"]
        try:
            body = await read_body(request)
        except BODY_ERRORS:
            return error_response(400, "invalid request body")
        policies = _decode(body, version)
        if isinstance(policies, Response):
            return policies
        refused = await self._guard(policies, token)
        if refused is not None:
            return refused
        try:
            await self.d.calls("Delete", self.d.calls.store.delete, policies)
        except StoreError as e:
            self.log.error("delete-policies-failed", error=str(e))
            return error_response(500, "database delete failed")
        await self.d.on_change()
        self.log.info("deleted-policies", policies=[policy_to_v1(p) for p in policies],
                      userName=token.user_name)
        return _body_json({})

    async def index(self, request: Request) -> Response:
        token: TokenData = request.state.token
        version = request.path_params["version"]
        store = self.d.calls.store
        ids = query_list(request, "id")
        sources, dests = query_list(request, "source_id"), query_list(request, "dest_id")
        try:
            if ids is not None:
                found = await self.d.calls("ByGuids", store.by_ids, ids)
            elif sources is not None or dests is not None:
                found = await self.d.calls("ByGuids", store.by_guids, sources or [], dests or [],
                                           both=sources is not None and dests is not None)
            else:
                found = await self.d.calls("All", store.all)
        except StoreError as e:
            self.log.error("database-read-failed", error=str(e))
            return error_response(500, "database read failed")
        policies = [tp.policy for tp in found]
        if not token.is_admin:
            try:
                policies = await run_in_threadpool(self.d.access.filter, policies, token)
            except UpstreamError as e:
                self.log.error("filter-policies-failed", error=str(e))
                return error_response(500, "filter policies failed")
        return _body_json(_policy_list(policies, version))

    async def cleanup(self, request: Request) -> Response:
        try:
            deleted = await run_in_threadpool(self.d.cleaner.run_once)
        except CleanupError as e:
            self.log.error("policies-cleanup-failed", error=str(e))
            return error_response(500, "policies cleanup failed")
        if deleted:
            await self.d.on_change()
        return _body_json(_policy_list(deleted, "v1"))  # [quirk] always v1, even on /v0/

    async def tags(self, request: Request) -> Response:
        try:
            tags = await self.d.calls("Tags", self.d.calls.store.tags)
        except StoreError as e:
            self.log.error("database-read-failed", error=str(e))
            return error_response(500, "database read failed")
        return _body_json({"tags": [{"id": t.guid, "tag": format_tag(t.tag, self.d.tag_length),
                                     "type": t.type} for t in tags]})

    async def whoami(self, request: Request) -> Response:
        token: TokenData = request.state.token
        return _body_json({"subject": token.subject})

    async def openapi(self, request: Request) -> Response:
        return Response(OPENAPI_FILE.read_bytes(), media_type="application/json")


def external_app(deps: ExternalDeps, ctx: WrapContext) -> Router:
    """The external router: E1-E9 in upstream's order, OPTIONS for each, and the OpenAPI doc."""
    h = ExternalHandlers(deps)
    ext = wrappers.external
    uptime = uptime_handler(deps.started)
    health = health_handler(deps.calls)
    base = "/networking/:version/external"
    routes = [
        Route("GET", "/", ext(uptime, "Uptime", ctx), "Uptime"),
        Route("GET", "/networking", ext(uptime, "Uptime", ctx), "Uptime"),
        Route("GET", "/health", ext(health, "Health", ctx), "Health"),
        Route("GET", f"{base}/whoami",
              ext(h.whoami, "WhoAmI", ctx, version=True, scopes=ADMIN), "WhoAmI"),
        Route("POST", f"{base}/policies",
              ext(h.create, "CreatePolicies", ctx, version=True, scopes=WRITERS, skippable=True),
              "CreatePolicies"),
        Route("POST", f"{base}/policies/delete",
              ext(h.delete, "DeletePolicies", ctx, version=True, scopes=WRITERS, skippable=True),
              "DeletePolicies"),
        Route("GET", f"{base}/policies",
              ext(h.index, "PoliciesIndex", ctx, version=True, scopes=WRITERS, skippable=True),
              "PoliciesIndex"),
        Route("POST", f"{base}/policies/cleanup",
              ext(h.cleanup, "Cleanup", ctx, version=True, scopes=ADMIN), "Cleanup"),
        Route("GET", f"{base}/tags", ext(h.tags, "TagsIndex", ctx, version=True, scopes=ADMIN),
              "TagsIndex"),
        Route("GET", OPENAPI_PATH, ext(h.openapi, "OpenAPI", ctx), "OpenAPI"),
    ]
    options = wrappers.options_handler(routes, ctx)
    patterns = list(dict.fromkeys(r.pattern for r in routes))
    routes += [Route("OPTIONS", p, options, "Options") for p in patterns]
    return Router(routes)


def load_openapi() -> dict[str, Any]:
    return json.loads(OPENAPI_FILE.read_text())
