"""Small UAA and Cloud Controller stand-ins on 127.0.0.1, for the policy server tests.

One threaded HTTP server answers both UAA (`/check_token`, `/oauth/token`) and Cloud
Controller (`/v3/apps`, `/v2/spaces...`, `/v2/users/<id>/spaces`, `/v3/security_groups`); a second
one on mutual TLS answers CC's internal `/internal/v4/asg_latest_update`. Tests set the data
(tokens, apps, spaces, security groups) and can make any path fail; every request is recorded.
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

UAA_CLIENT, UAA_SECRET = "network-policy", "secret"
SERVER_TOKEN = "server-client-token"


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Cloud:
    """The state the stubs serve; tests mutate it directly."""

    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)  # token -> check_token reply
    apps: dict[str, str] = field(default_factory=dict)  # app guid -> space guid
    spaces: dict[str, tuple[str, str]] = field(default_factory=dict)  # space -> (name, org)
    developers: dict[str, set[str]] = field(default_factory=dict)  # user sub -> spaces
    security_groups: list[dict[str, Any]] = field(default_factory=list)
    asg_last_update: str = "2026-01-01T00:00:00Z"
    fail: set[str] = field(default_factory=set)  # path prefixes answered with 500
    on_page: Callable[[int], None] | None = None  # called as each security-group page is served
    hang: set[str] = field(default_factory=set)  # path prefixes that never answer (until release)
    release: threading.Event = field(default_factory=threading.Event)
    requests: list[Recorded] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, r: Recorded) -> None:
        with self.lock:
            self.requests.append(r)

    def seen(self, prefix: str) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.path.startswith(prefix)]


def _handler(cloud: Cloud) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet, and no reverse DNS
            pass

        def address_string(self) -> str:
            return self.client_address[0]

        def _reply(self, status: int, body: Any = None) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _dispatch(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            cloud.record(Recorded(method, self.path, dict(self.headers.items()), body))
            url = urlsplit(self.path)
            if any(self.path.startswith(p) for p in cloud.hang):
                cloud.release.wait(120)  # a peer that accepted the request and went silent
            if any(self.path.startswith(p) for p in cloud.fail):
                return self._reply(500, {"error": "stub failure"})
            query = parse_qs(url.query, keep_blank_values=True)
            try:
                status, reply = self._route(method, url.path, query, body)
            except Exception as e:  # noqa: BLE001 - a stub bug shows up as a 599 in the test
                status, reply = 599, {"error": repr(e)}
            self._reply(status, reply)

        def _authorized_client(self) -> bool:
            expected = base64.b64encode(f"{UAA_CLIENT}:{UAA_SECRET}".encode()).decode()
            return self.headers.get("Authorization") == f"Basic {expected}"

        def _route(self, method: str, path: str, q: dict[str, list[str]],
                   body: bytes) -> tuple[int, Any]:
            if method == "POST" and path == "/check_token":
                if not self._authorized_client():
                    return 401, {"error": "unauthorized"}
                token = parse_qs(body.decode()).get("token", [""])[0]
                if token not in cloud.tokens:
                    return 400, {"error": "invalid_token"}
                return 200, cloud.tokens[token]
            if method == "POST" and path == "/oauth/token":
                form = parse_qs(body.decode())
                if not self._authorized_client() or form.get("grant_type") != ["client_credentials"]:
                    return 401, {"error": "unauthorized"}
                return 200, {"access_token": SERVER_TOKEN, "token_type": "bearer"}
            if method != "GET":
                return 404, None
            if self.headers.get("Authorization") != f"bearer {SERVER_TOKEN}":
                return 401, {"error": "bad server token"}
            if path == "/v3/apps":
                guids = q.get("guids", [""])[0].split(",")
                found = [{"guid": g, "links": {"space": {
                    "href": f"https://cc.example/v3/spaces/{cloud.apps[g]}"}}}
                    for g in guids if g in cloud.apps]
                return 200, {"pagination": {"total_pages": 1}, "resources": found}
            m = re.fullmatch(r"/v2/spaces/([^/]+)", path)
            if m:
                if m.group(1) not in cloud.spaces:
                    return 404, {"error": "not found"}
                name, org = cloud.spaces[m.group(1)]
                return 200, {"entity": {"name": name, "organization_guid": org}}
            if path == "/v2/spaces":
                filters = dict(v.split(":", 1) for v in q.get("q", []))
                user = filters.get("developer_guid", "")
                matches = [s for s in cloud.developers.get(user, set())
                           if cloud.spaces.get(s) == (filters.get("name"),
                                                      filters.get("organization_guid"))]
                return 200, {"resources": [{"metadata": {"guid": s}} for s in matches]}
            m = re.fullmatch(r"/v2/users/([^/]+)/spaces", path)
            if m:
                spaces = sorted(cloud.developers.get(m.group(1), set()))
                page = int(q.get("page", ["1"])[0])
                per = 2  # small pages, so next_url is followed
                chunk = spaces[(page - 1) * per:page * per]
                nxt = (f"/v2/users/{m.group(1)}/spaces?results-per-page=100&page={page + 1}"
                       if page * per < len(spaces) else None)
                return 200, {"next_url": nxt, "resources": [{"metadata": {"guid": s}}
                                                            for s in chunk]}
            if path == "/v3/security_groups":
                page, per = int(q["page"][0]), 2  # small pages, so paging is exercised
                if cloud.on_page is not None:
                    cloud.on_page(page)
                items = cloud.security_groups[(page - 1) * per:page * per]
                more = page * per < len(cloud.security_groups)
                nxt = {"href": f"https://cc.example/v3/security_groups?page={page + 1}"} if more \
                    else None
                return 200, {"pagination": {"next": nxt}, "resources": items}
            if path == "/internal/v4/asg_latest_update":
                return 200, {"last_update": cloud.asg_last_update}
            return 404, {"error": "unknown stub path"}

        def do_GET(self) -> None:  # noqa: N802
            self._dispatch("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._dispatch("POST")

    return Handler


@contextmanager
def serve_stub(cloud: Cloud, tls: ssl.SSLContext | None = None) -> Iterator[str]:
    """Serve `cloud` on 127.0.0.1; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(cloud))
    server.daemon_threads = True
    scheme = "http"
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}"
    finally:
        cloud.release.set()
        server.shutdown()
        server.server_close()
