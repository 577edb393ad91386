"""The internal API for cell agents (spec 1.2), served on mutual TLS, and the plain health listener.

No version check (any `:version` segment gives the v1 shape), no tokens, no body cap.
Extension: `policies_last_updated?wait=N[&since=NS]` long-polls (see watch.py); without `wait`
it answers at once, exactly as upstream.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from cfnet.core.errors import StoreError
from cfnet.core.policy import TaggedPolicy, format_tag, security_group_to_internal
from cfnet.policy_server import wrappers
from cfnet.policy_server.common import (BODY_ERRORS, StoreCalls, health_handler, query_list,
                                        query_value, read_body, uptime_handler)
from cfnet.policy_server.policy_cache import PolicyCache, policies_body, render_row, tag_format
from cfnet.policy_server.watch import LastUpdatedWatch
from cfnet.policy_server.wrappers import WrapContext
from cfnet.web.router import Route, Router, error_response, json_response, lower_keys

_GO_INT = re.compile(r"[+-]?[0-9]+\Z")
_SURROGATE = re.compile("[\ud800-\udfff]")
INT64_MAX = 2**63 - 1


def go_atoi(text: str) -> int | None:
    """strconv.Atoi on 64-bit: optional sign, decimal digits, int64 range; None when invalid."""
    if not _GO_INT.match(text):
        return None
    n = int(text)
    return n if -INT64_MAX - 1 <= n <= INT64_MAX else None


def render_internal_policies(found: list[TaggedPolicy], tag_length: int) -> bytes:
    """I1's body, byte for byte what `json_response` makes of `tagged_policy_to_internal`, but
    written directly: a cell's fetch renders about a thousand policies per request."""
    tag = tag_format(tag_length)
    return policies_body([render_row((0, tp.policy.source, tp.source_tag, tp.policy.destination,
                                      tp.destination_tag, tp.policy.protocol, tp.policy.start,
                                      tp.policy.end), tag) for tp in found])


@dataclass
class InternalDeps:
    calls: StoreCalls
    tag_length: int
    watch: LastUpdatedWatch | None
    max_wait: float
    started: float
    cache: PolicyCache | None = None  # made from `calls.store` when not given


class InternalHandlers:
    def __init__(self, deps: InternalDeps) -> None:
        self.d = deps
        self.log = deps.calls.log
        self.cache = deps.cache or PolicyCache(deps.calls.store, deps.tag_length)

    async def policies(self, request: Request) -> Response:
        ids = query_list(request, "id")
        try:
            # Rendered in the worker thread, from rows (no model objects) or cached fragments.
            body = await self.d.calls("All" if ids is None else "ByGuids", self.cache.fetch, ids)
        except StoreError as e:
            self.log.error("database-read-failed", error=str(e))
            return error_response(500, "database read failed")
        return Response(body, media_type="application/json")

    async def last_updated(self, request: Request) -> Response:
        wait_text = query_value(request, "wait")
        try:
            if wait_text is None or self.d.watch is None:
                stamp = await self.d.calls("LastUpdated", self.d.calls.store.last_updated_ns)
            else:
                try:
                    wait = float(wait_text)
                except ValueError:
                    wait = math.nan
                if not math.isfinite(wait) or wait < 0:
                    return error_response(400, "invalid value for 'wait' parameter")
                since_text = query_value(request, "since")
                since = None
                if since_text not in (None, ""):
                    since = go_atoi(since_text)
                    if since is None:
                        return error_response(400, "invalid value for 'since' parameter")
                stamp = await self.d.watch.wait(since, min(wait, self.d.max_wait))
        except StoreError as e:
            self.log.error("database-read-failed", error=str(e))
            return error_response(500, "database read failed")
        return Response(str(stamp).encode(), media_type="text/plain")

    async def security_groups(self, request: Request) -> Response:
        spaces = query_list(request, "space_guids")
        start, limit = 0, 0
        for name in ("from", "limit"):
            text = query_value(request, name)
            if text:
                value = go_atoi(text)
                if value is None:  # [quirk] upstream answers 500 here, not 400
                    return error_response(500, f"invalid value for '{name}' parameter")
                if name == "from":
                    start = value
                else:
                    limit = value
        try:
            groups, nxt = await self.d.calls("BySpaceGuids", self.d.calls.store.security_groups,
                                             spaces, start if start > 0 else 0,
                                             limit if limit > 0 else 0)
        except StoreError as e:
            self.log.error("database-read-failed", error=str(e))
            return error_response(500, "database read failed")
        return json_response({"next": nxt,
                              "security_groups": [security_group_to_internal(g) for g in groups]})

    async def create_tag(self, request: Request) -> Response:
        try:
            body = await read_body(request, limit=None)
        except BODY_ERRORS:
            return error_response(400, "failed reading request body")
        try:
            data = lower_keys(json.loads(body))
        except (ValueError, RecursionError):
            return error_response(400, "failed parsing request body")
        if data is None:
            data = {}
        if not isinstance(data, dict):
            return error_response(400, "failed parsing request body")
        guid, kind = data.get("id"), data.get("type")
        if not isinstance(guid, (str, type(None))) or not isinstance(kind, (str, type(None))):
            return error_response(400, "failed parsing request body")
        # Go decodes a lone surrogate escape as U+FFFD; neither database takes one as text.
        guid, kind = (_SURROGATE.sub("\ufffd", v or "") for v in (guid, kind))
        try:
            tag = await self.d.calls("CreateTag", self.d.calls.store.create_tag, guid, kind)
        except StoreError as e:
            self.log.error("create-tag-failed", error=str(e))
            return error_response(500, "database create failed")
        return json_response({"id": tag.guid, "tag": format_tag(tag.tag, self.d.tag_length),
                              "type": tag.type})


def internal_app(deps: InternalDeps, ctx: WrapContext) -> Router:
    h = InternalHandlers(deps)
    base = "/networking/:version/internal"

    def w(handler: Any, name: str) -> Any:
        return wrappers.internal(handler, name, ctx)

    return Router([
        Route("GET", f"{base}/policies", w(h.policies, "InternalPolicies"), "InternalPolicies"),
        Route("GET", f"{base}/policies_last_updated",
              w(h.last_updated, "InternalPoliciesLastUpdated"), "InternalPoliciesLastUpdated"),
        Route("GET", f"{base}/security_groups", w(h.security_groups, "InternalSecurityGroups"),
              "InternalSecurityGroups"),
        Route("PUT", "/networking/v1/internal/tags", w(h.create_tag, "CreateTags"), "CreateTags"),
    ])


def health_app(calls: StoreCalls, started: float, ctx: WrapContext) -> Router:
    """H1/H2 on the plain health port: the same handlers as E1/E3, no security headers."""
    return Router([
        Route("GET", "/", wrappers.internal(uptime_handler(started), "Uptime", ctx), "Uptime"),
        Route("GET", "/health", wrappers.internal(health_handler(calls), "Health", ctx), "Health"),
    ])
