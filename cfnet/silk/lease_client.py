"""The client silk-daemon (and teardown, the lab, the benchmark) uses to talk to silk-controller.

Mutual TLS with the server name checked against the URL's host, a timeout on every request
(upstream's `client_timeout_seconds`, 5 s), and upstream's json_client error conventions: any
status above 299 is `http status <code>: <message>`, where the message is the body's `error`
field when the body is JSON and the raw body otherwise; a 409 on renew is the distinct
`NonRetriableError` (`non-retriable: <message>`), telling the daemon to drop its lease and
acquire a new one rather than retry.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
from typing import Any
from urllib.parse import urlsplit

from cfnet.core.errors import CfnetError
from cfnet.core.leases import Lease
from cfnet.web.tls import TLSFiles, client_context

DEFAULT_TIMEOUT = 5.0


class LeaseClientError(CfnetError):
    """The request did not get a usable answer (connection, TLS, timeout, bad response body)."""


class HTTPStatusError(LeaseClientError):
    """The controller answered with a status above 299: `http status <code>: <message>`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"http status {status}: {message}")
        self.status = status
        self.message = message


class NonRetriableError(HTTPStatusError):
    """A renew refused with 409: the lease is invalid or belongs to someone else now."""

    def __init__(self, message: str) -> None:
        LeaseClientError.__init__(self, f"non-retriable: {message}")
        self.status = 409
        self.message = message


class LeaseClient:
    """Thread-safe; keeps one connection open and reconnects when the server closed it."""

    def __init__(self, base_url: str, tls: TLSFiles, timeout: float = DEFAULT_TIMEOUT) -> None:
        url = urlsplit(base_url)
        if url.scheme != "https" or not url.hostname:
            raise ValueError(f"controller URL must be https://host:port, got {base_url!r}")
        self.host = url.hostname
        self.port = url.port or 443
        self.prefix = url.path.rstrip("/")
        self.timeout = timeout
        self._context: ssl.SSLContext = client_context(tls)
        self._conn: http.client.HTTPSConnection | None = None
        self._lock = threading.Lock()

    # -- the API ---------------------------------------------------------------------------------

    def acquire(self, underlay_ip: str, single_overlay_ip: bool = False) -> Lease:
        body = self._do("PUT", "/leases/acquire",
                        {"underlay_ip": underlay_ip, "single_overlay_ip": single_overlay_ip})
        return Lease.from_json(_object(body))

    def renew(self, lease: Lease) -> None:
        try:
            self._do("PUT", "/leases/renew", lease.to_json())
        except HTTPStatusError as e:
            if e.status == 409:
                raise NonRetriableError(e.message) from None
            raise

    def release(self, underlay_ip: str) -> None:
        self._do("PUT", "/leases/release", {"underlay_ip": underlay_ip})

    def routable_leases(self) -> list[Lease]:
        body = _object(self._do("GET", "/leases", None))
        leases = {k.lower(): v for k, v in body.items()}.get("leases") or []
        if not isinstance(leases, list):
            raise LeaseClientError("json unmarshal: leases is not a list")
        return [Lease.from_json(_object(item)) for item in leases]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> LeaseClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport -------------------------------------------------------------------------------

    def _do(self, method: str, path: str, payload: Any) -> Any:
        data = None if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        with self._lock:
            status, raw = self._exchange(method, self.prefix + path, data, headers)
        if status > 299:
            raise HTTPStatusError(status, _error_message(raw))
        try:
            return json.loads(raw) if raw.strip() else None
        except ValueError as e:
            raise LeaseClientError(f"json unmarshal: {e}") from None

    def _exchange(self, method: str, path: str, data: bytes | None,
                  headers: dict[str, str]) -> tuple[int, bytes]:
        # A kept-alive connection the server has closed meanwhile (idle timeout, restart) fails on
        # first use, as a reset, a broken pipe or a TLS EOF: retry once on a fresh connection.
        # All four calls are idempotent, so a retry is safe even if the first attempt did reach
        # the server. A timeout is never retried: the caller's time budget is spent.
        while True:
            reused = self._conn is not None
            if self._conn is None:
                self._conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                                         context=self._context)
            conn = self._conn
            try:
                conn.request(method, path, body=data, headers=headers)
                response = conn.getresponse()
                raw = response.read()
                if response.will_close:
                    conn.close()
                    self._conn = None
                return response.status, raw
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                self._conn = None
                timed_out = isinstance(e, socket.timeout)
                if reused and not timed_out:
                    continue
                reason = "timeout" if timed_out else str(e) or type(e).__name__
                raise LeaseClientError(f"http client do: {method} {path}: {reason}") from None


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise LeaseClientError(f"json unmarshal: expected an object, got {type(value).__name__}")
    return value


def _error_message(raw: bytes) -> str:
    """json_client's message: the `error` field if the body is JSON, else the body itself."""
    text = raw.decode("utf-8", errors="replace")
    try:
        body = json.loads(text)
    except ValueError:
        return text
    if isinstance(body, dict):
        value = {str(k).lower(): v for k, v in body.items()}.get("error", "")
        return value if isinstance(value, str) else ""
    return text
