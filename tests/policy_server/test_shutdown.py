"""SIGTERM with idle keep-alive connections open: the process exits promptly (cfnet/web/serve.py).

An idle TLS keep-alive connection whose client never reads (as a requests pool keeps it) used to
hold shutdown for the whole grace period: asyncio waits for the peer's close_notify before it
reports the connection closed, and uvicorn waits for every connection to close.
"""

from __future__ import annotations

import http.client
import inspect
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import requests

from cfnet.store.db import DatabaseConfig
from cfnet.testing.policy_server import policy_server
from cfnet.web.serve import serve
from cfnet.web.tls import client_context

GRACE = inspect.signature(serve).parameters["grace"].default  # what the policy server runs with
INTERNAL = "/networking/v1/internal"


def _kept_alive(url: str, context: object | None = None) -> http.client.HTTPConnection:
    """A connection that has answered one request and is kept alive, then left unread."""
    u = urlsplit(url)
    conn: http.client.HTTPConnection
    if u.scheme == "https":
        conn = http.client.HTTPSConnection(u.hostname, u.port, context=context,  # type: ignore[arg-type]
                                           timeout=30)
    else:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("GET", u.path or "/")
    response = conn.getresponse()
    response.read()
    assert response.status == 200 and not response.will_close
    return conn


def test_sigterm_closes_idle_keep_alive_connections_and_lets_requests_finish(
        sqlite_config: DatabaseConfig, tmp_path: Path) -> None:
    with policy_server(tmp_path, sqlite_config) as ps:
        tls = client_context(ps.client_tls)
        idle = [
            _kept_alive(ps.internal_url + f"{INTERNAL}/policies_last_updated", tls),
            _kept_alive(ps.internal_url + f"{INTERNAL}/policies", tls),
            _kept_alive(ps.health_url),
        ]
        with ThreadPoolExecutor(1) as pool:
            # An in-flight request on a kept-alive connection (a long-poll parked in the watch).
            since = requests.get(ps.internal_url + f"{INTERNAL}/policies_last_updated",
                                 cert=ps.client_cert, verify=ps.ca_file, timeout=10).text
            in_flight = pool.submit(requests.get, ps.internal_url
                                    + f"{INTERNAL}/policies_last_updated?wait=100&since={since}",
                                    cert=ps.client_cert, verify=ps.ca_file, timeout=60)
            deadline = time.monotonic() + 30
            while "watch_waiting_requests 1" not in requests.get(
                    ps.debug_url + "/metrics", timeout=5).text:
                assert time.monotonic() < deadline, "long-poll never parked"
                time.sleep(0.05)

            ps.process.send_signal(signal.SIGTERM)
            try:
                code = ps.process.wait(GRACE - 1)
            except subprocess.TimeoutExpired:
                code = None
            assert code is not None, f"still running {GRACE - 1:.0f} s after SIGTERM: the idle " \
                                     f"keep-alive connections held it until the grace deadline"
            assert code == 0
            answer = in_flight.result(timeout=30)
        assert (answer.status_code, answer.text) == (200, since)
        # The idle connections were closed by the server, not left half-open.
        for conn in idle:
            assert conn.sock is not None
            conn.sock.settimeout(10)
            try:
                assert conn.sock.recv(1) == b""
            except ConnectionResetError:  # closed as well
                pass
            conn.close()
    assert "Traceback" not in ps.stderr_path.read_text()
