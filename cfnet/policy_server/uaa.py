"""Who is calling: UAA `check_token` as upstream (spec 3.1), or static tokens where there is no UAA.

Blocking (requests); the web layer calls these from a worker thread. Every outbound call has a
timeout (`request_timeout`), a documented deviation: upstream waits forever.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import requests

ADMIN_SCOPE = "network.admin"
WRITE_SCOPE = "network.write"


class AuthError(Exception):
    """The token could not be verified (answered 401 `failed to verify token with uaa`)."""


class UpstreamError(Exception):
    """UAA or Cloud Controller failed or answered something unusable."""


@dataclass(frozen=True)
class TokenData:
    scopes: tuple[str, ...] = ()
    sub: str = ""
    user_id: str = ""
    user_name: str = ""
    client_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def is_admin(self) -> bool:
        return ADMIN_SCOPE in self.scopes

    @property
    def subject(self) -> str:
        """whoami's subject: the user name, or `sub` for a client token."""
        return self.user_name or self.sub


def go_list(items: tuple[str, ...] | list[str]) -> str:
    """Go's `%s` of a []string: `[a b c]`, `[]` when empty."""
    return "[" + " ".join(items) + "]"


def scope_error(token: TokenData, allowed: tuple[str, ...]) -> str | None:
    """The upstream 403 text when no token scope is allowed, else None."""
    if any(s in allowed for s in token.scopes):
        return None
    return (f"provided scopes {go_list(list(token.scopes))} do not include allowed scopes "
            f"{go_list(list(allowed))}")


def bearer(header: str) -> str:
    """Strip exactly `Bearer ` or `bearer `; anything else goes to UAA as is (and fails)."""
    for prefix in ("Bearer ", "bearer "):
        if header.startswith(prefix):
            return header[len(prefix):]
    return header


class TokenVerifier(Protocol):
    def verify(self, token: str) -> TokenData: ...


def _verify_arg(ca_file: str, skip_ssl_validation: bool) -> bool | str:
    if skip_ssl_validation:
        return False
    return ca_file or True


class UAAClient:
    """`check_token` for callers' tokens and client-credentials tokens for our own CC calls."""

    def __init__(self, base_url: str, client: str, secret: str, ca_file: str = "",
                 skip_ssl_validation: bool = False, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.auth = (client, secret)
        self.client = client
        self.verify_tls = _verify_arg(ca_file, skip_ssl_validation)
        self.timeout = timeout

    def verify(self, token: str) -> TokenData:
        try:
            r = requests.post(f"{self.base_url}/check_token", data={"token": token},
                              auth=self.auth, verify=self.verify_tls, timeout=self.timeout)
            if r.status_code != 200:
                raise AuthError(f"check_token: status {r.status_code}")
            body = r.json()
        except (requests.RequestException, ValueError) as e:
            raise AuthError(str(e)) from None
        if not isinstance(body, dict):
            raise AuthError("check_token: reply is not an object")
        scopes = body.get("scope") or []
        if not isinstance(scopes, list):
            raise AuthError("check_token: scope is not a list")
        return TokenData(scopes=tuple(str(s) for s in scopes), sub=str(body.get("sub") or ""),
                         user_id=str(body.get("user_id") or ""),
                         user_name=str(body.get("user_name") or ""),
                         client_id=str(body.get("client_id") or ""))

    def client_token(self) -> str:
        """A client-credentials token for the server itself (spec 3.1 step 6)."""
        try:
            r = requests.post(f"{self.base_url}/oauth/token",
                              data={"client_id": self.client, "grant_type": "client_credentials"},
                              auth=self.auth, verify=self.verify_tls, timeout=self.timeout)
            if r.status_code != 200:
                raise UpstreamError(f"uaa /oauth/token: status {r.status_code}")
            token = r.json().get("access_token")
        except (requests.RequestException, ValueError, AttributeError) as e:
            raise UpstreamError(f"uaa /oauth/token: {e}") from None
        if not isinstance(token, str) or not token:
            raise UpstreamError("uaa /oauth/token: no access_token in the reply")
        return token


class StaticTokens:
    """Standalone mode: tokens and their scopes from `static_tokens_file`, no UAA."""

    def __init__(self, tokens: dict[str, Any]) -> None:
        self.tokens = tokens

    def verify(self, token: str) -> TokenData:
        t = self.tokens.get(token)
        if t is None:
            raise AuthError("unknown static token")
        return TokenData(scopes=t.scopes, sub=t.sub, user_id=t.sub, user_name=t.user_name)
