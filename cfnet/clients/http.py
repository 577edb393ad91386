"""The HTTP plumbing both API clients share: one session, timeouts, and one error type.

Every failure of a request becomes an `ApiError`: `status` is the HTTP status, or None when no
HTTP answer arrived (cannot connect, TLS failure, timeout); `error` is the server's own `error`
text when it sent one (`mapper: validate policies: missing start port`), so callers can show it
unchanged, and otherwise a short one-line description.
"""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cfnet.core.errors import CfnetError

if TYPE_CHECKING:
    import requests

DEFAULT_TIMEOUT = 10.0
CLOSED = "the server closed the connection without a response"
# What a mutual-TLS server does under TLS 1.3 when it refuses the client's certificate.
CLOSED_TLS_HINT = " (is the client certificate signed by a CA the server trusts?)"


class ApiError(CfnetError):
    """A request failed: the server said no (`status` set) or was not reached (`status` None)."""

    def __init__(self, error: str, status: int | None = None, *, timeout: bool = False) -> None:
        super().__init__(error)
        self.error = error
        self.status = status
        self.timeout = timeout

    @property
    def unreachable(self) -> bool:
        """True when no HTTP answer arrived (connection refused, TLS failure, timeout)."""
        return self.status is None


class InvalidInput(CfnetError, ValueError):
    """Local input that can never make a valid request (bad URL, port, protocol); nothing sent."""


def normalize_base_url(url: str) -> str:
    """Check that `url` is an http(s) URL with a host and a valid port, and drop a trailing slash.

    A query or fragment is refused: the client appends API paths, which would land inside them.
    """
    text = url.strip()
    expected = "expected http://HOST:PORT or https://HOST:PORT"
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in text):
        raise InvalidInput(f"invalid API URL {url!r}: contains whitespace or a control character")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as e:  # "Invalid IPv6 URL", "Port out of range 0-65535", ...
        raise InvalidInput(f"invalid API URL {url!r}: {e}; {expected}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"invalid API URL {url!r}: {expected}")
    if port == 0:
        raise InvalidInput(f"invalid API URL {url!r}: port 0; the port must be 1-65535")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise InvalidInput(f"invalid API URL {url!r}: must not have a query or fragment; "
                           f"{expected}")
    return text.rstrip("/")


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _reason(exc: BaseException) -> str:
    """The most specific cause in a requests/urllib3 exception chain, as a short phrase."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    found_os: OSError | None = None
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {e.verify_message}"
        if isinstance(e, ssl.SSLError):
            reason = getattr(e, "reason", None)
            return reason.lower().replace("_", " ") if reason else _one_line(str(e))
        if isinstance(e, http.client.RemoteDisconnected):
            return CLOSED
        if isinstance(e, OSError) and e.strerror and found_os is None:
            found_os = e
        for nxt in (getattr(e, "reason", None), e.__cause__, e.__context__, *e.args):
            if isinstance(nxt, BaseException):
                stack.append(nxt)
    if found_os is not None:
        return str(found_os.strerror).lower()
    return _one_line(str(exc))


def error_from_response(status: int, reason: str, body: bytes) -> ApiError:
    """An ApiError for a non-2xx reply: the server's `error` text as is, else status and body."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return ApiError(data["error"], status)
    text = _one_line(body.decode("utf-8", "replace")) if body else ""
    head = f"HTTP {status} {reason}".rstrip()
    return ApiError(f"{head}: {text}" if text else head, status)


class Transport:
    """A keep-alive session against one base URL, turning every failure into `ApiError`.

    Environment proxies and netrc are ignored on purpose: the URL given is the server talked to.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        headers: Mapping[str, str] | None = None,
        verify: bool | str = True,
        cert: tuple[str, str] | None = None,
    ) -> None:
        import requests

        self.base_url = normalize_base_url(base_url)
        self.timeout = timeout
        self._session = requests.Session()
        self._session.trust_env = False
        self._session.verify = verify
        if cert is not None:
            self._session.cert = cert
        self._session.headers.update(headers or {})

    def close(self) -> None:
        self._session.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        read_timeout: float | None = None,
    ) -> requests.Response:
        """Send one request; return the 2xx response or raise `ApiError`."""
        import requests

        url = self.base_url + path
        data = None
        headers = {}
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        read = self.timeout if read_timeout is None else read_timeout
        try:
            resp = self._session.request(method, url, params=params, data=data, headers=headers,
                                         timeout=(self.timeout, read))
        except requests.exceptions.ConnectTimeout:
            raise ApiError(f"timed out after {self.timeout:g}s connecting to {self.base_url}",
                           timeout=True) from None
        except requests.exceptions.ReadTimeout:
            raise ApiError(f"timed out after {read:g}s waiting for {method} {url}",
                           timeout=True) from None
        except requests.exceptions.SSLError as e:
            raise ApiError(f"TLS failure talking to {self.base_url}: {_reason(e)}") from None
        except requests.exceptions.ConnectionError as e:
            reason = _reason(e)
            if reason == CLOSED and self._session.cert:
                reason += CLOSED_TLS_HINT
            raise ApiError(f"cannot connect to {self.base_url}: {reason}") from None
        except requests.exceptions.RequestException as e:
            raise ApiError(f"request to {url} failed: {_reason(e)}") from None
        except OSError as e:  # e.g. unreadable client certificate files
            raise ApiError(f"request to {url} failed: {e}") from None
        if not 200 <= resp.status_code < 300:
            raise error_from_response(resp.status_code, resp.reason or "", resp.content)
        return resp

    def request_json(self, method: str, path: str, **kwargs: Any) -> Any:
        """Like `request`, and decode the JSON body (a non-JSON 2xx body is an ApiError)."""
        resp = self.request(method, path, **kwargs)
        try:
            return resp.json()
        except ValueError:
            raise unexpected(resp.status_code, f"not JSON: {_one_line(resp.text, 80)!r}") from None


def unexpected(status: int, what: str) -> ApiError:
    """The server answered 2xx with a body this client cannot read."""
    return ApiError(f"unexpected response from server (HTTP {status}): {what}", status)
