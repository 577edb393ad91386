"""A typed client for the policy server's external API (v1), as the cf CLI uses it.

    client = PolicyClient("http://127.0.0.1:4002", token="...")
    client.create([Policy("app-a", "app-b", "tcp", 8080, 8080)])
    client.list(ids=["app-a"])

Every call raises `ApiError` (cfnet.clients.http) on failure, carrying the HTTP status and the
server's `error` text. Local input that can never be valid raises `InvalidInput` before anything
is sent (see `parse_ports`, `check_protocol`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cfnet.clients.http import (DEFAULT_TIMEOUT, ApiError, InvalidInput, Transport,
                               normalize_base_url, unexpected)
from cfnet.core import policy as core_policy

API_PREFIX = "/networking/v1/external"
# v0 stores a single port with no upper bound (a kept upstream quirk); only v0 can name such a
# policy again, so removing one goes through the v0 delete.
V0_PREFIX = "/networking/v0/external"
MAX_PORT = 65535
MAX_V0_PORT = 2**63 - 1  # Go's int
PROTOCOLS = ("tcp", "udp")
DEFAULT_PROTOCOL = "tcp"
DEFAULT_PORT = "8080"


@dataclass(frozen=True, order=True)
class Policy(core_policy.Policy):
    """One app-to-app policy as the external v1 API shows it (no tags): the stored policy's
    fields, with the conversions a client needs."""

    @property
    def ports(self) -> str:
        """`8080` or `8080-8090`, as the cf CLI prints and accepts it."""
        return str(self.start) if self.start == self.end else f"{self.start}-{self.end}"

    def to_v1(self) -> dict[str, Any]:
        return core_policy.policy_to_v1(self)

    def to_v0(self) -> dict[str, Any]:
        """The v0 shape (one port): only for a single-port policy."""
        return {"source": {"id": self.source},
                "destination": {"id": self.destination, "protocol": self.protocol,
                                "port": self.start}}

    @classmethod
    def from_v1(cls, data: Any) -> Policy:
        """Read one v1 policy object; raise ValueError when its shape is not v1."""
        try:
            src, dst = data["source"], data["destination"]
            ports = dst["ports"]
            policy = cls(src["id"], dst["id"], dst["protocol"], ports["start"], ports["end"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"policy {data!r} lacks {e}") from None
        names = (policy.source, policy.destination, policy.protocol)
        if not all(isinstance(v, str) for v in names) \
                or not all(type(v) is int for v in (policy.start, policy.end)):
            raise ValueError(f"policy {data!r} has a field of the wrong type")
        return policy


@dataclass(frozen=True)
class Tag:
    """A tag allocated to a group: an app (`type` "app") or any other group (`router-type`, ...)."""

    id: str
    tag: str
    type: str

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "tag": self.tag, "type": self.type}

    @classmethod
    def from_json(cls, data: Any) -> Tag:
        try:
            tag = cls(data["id"], data["tag"], data.get("type", ""))
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"tag {data!r} lacks {e}") from None
        if not all(isinstance(v, str) for v in (tag.id, tag.tag, tag.type)):
            raise ValueError(f"tag {data!r} has a field of the wrong type")
        return tag


def parse_ports(text: str, *, allow_v0_port: bool = False) -> tuple[int, int]:
    """`8080` -> (8080, 8080), `8080-8090` -> (8080, 8090); anything else is InvalidInput.

    `allow_v0_port` also accepts a single port above 65535, which only the v0 API can store.
    """
    raw = text.strip()
    parts = raw.split("-")
    if len(parts) not in (1, 2) or not all(p.strip().isascii() and p.strip().isdigit()
                                           and len(p.strip()) <= 20 for p in parts):
        raise InvalidInput(f"invalid port {text!r}: expected a port (8080) or a range (8080-8090)")
    start, end = int(parts[0]), int(parts[-1])
    v0_single = allow_v0_port and len(parts) == 1 and MAX_PORT < start <= MAX_V0_PORT
    for port in (start, end):
        if not 1 <= port <= MAX_PORT and not v0_single:
            raise InvalidInput(f"invalid port {port}, must be in range 1-{MAX_PORT}")
    if start > end:
        raise InvalidInput(
            f"invalid port range {start}-{end}, start must be less than or equal to end")
    return start, end


def check_token(token: str) -> str:
    """Return `token` if it can go in an Authorization header as is, else InvalidInput."""
    if token != token.strip():
        raise InvalidInput("invalid token: leading or trailing whitespace")
    if not all(0x20 <= ord(ch) < 0x7F for ch in token):
        raise InvalidInput("invalid token: only printable ASCII characters are allowed")
    return token


def check_protocol(protocol: str) -> str:
    """Return `protocol` if the server accepts it (exactly `tcp` or `udp`), else InvalidInput."""
    if protocol not in PROTOCOLS:
        raise InvalidInput(f"invalid protocol {protocol!r}, specify either udp or tcp")
    return protocol


def make_policy(source: str, destination: str, protocol: str = DEFAULT_PROTOCOL,
                ports: str = DEFAULT_PORT, *, allow_v0_port: bool = False) -> Policy:
    """Build a policy from command-line style input, checking it as the server would."""
    if not source:
        raise InvalidInput("missing source app id")
    if not destination:
        raise InvalidInput("missing destination app id")
    start, end = parse_ports(ports, allow_v0_port=allow_v0_port)
    return Policy(source, destination, check_protocol(protocol), start, end)


def external_base(url: str) -> str:
    """Accept the server root (`http://host:4002`) or a full `.../networking/v1/external` URL."""
    text = normalize_base_url(url)
    path = urlsplit(text).path
    if path.endswith(API_PREFIX):
        return text[: len(text) - len(API_PREFIX)]
    other = re.search(r"/networking/([^/]*)/external$", path)
    if other:
        raise InvalidInput(f"invalid API URL {url!r}: cfnet speaks API version v1, not "
                           f"{other.group(1)!r}; give the server's root URL")
    return text


def policies_body(policies: Iterable[Policy]) -> dict[str, Any]:
    return {"policies": [p.to_v1() for p in policies]}


def policies_listing(policies: Sequence[Policy]) -> dict[str, Any]:
    """The v1 index shape: `{"total_policies": N, "policies": [...]}`."""
    return {"total_policies": len(policies), "policies": [p.to_v1() for p in policies]}


def _policy_list(data: Any, status: int = 200) -> list[Policy]:
    if not isinstance(data, dict) or not isinstance(data.get("policies"), list):
        raise unexpected(status, "no 'policies' list")
    try:
        return [Policy.from_v1(p) for p in data["policies"]]
    except ValueError as e:
        raise unexpected(status, str(e)) from None


class PolicyClient:
    """The external API, authenticated with a bearer token (UAA or the server's static tokens)."""

    def __init__(self, base_url: str, token: str | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT, ca_cert: str | None = None) -> None:
        headers = {"Authorization": f"bearer {check_token(token)}"} if token else {}
        self._http = Transport(external_base(base_url), timeout=timeout, headers=headers,
                               verify=ca_cert or True)

    @property
    def base_url(self) -> str:
        return self._http.base_url

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(self, policies: Sequence[Policy]) -> None:
        """Create all `policies` in one all-or-nothing request (existing ones are a no-op)."""
        self._http.request("POST", f"{API_PREFIX}/policies", body=policies_body(policies))

    def delete(self, policies: Sequence[Policy]) -> None:
        """Delete exactly these policies; the server skips ones that do not exist.

        A policy with a port above 65535 (stored through v0) is deleted through v0, the only
        version that accepts it.
        """
        v1 = [p for p in policies if p.end <= MAX_PORT]
        v0 = [p for p in policies if p.end > MAX_PORT]
        if v1:
            self._http.request("POST", f"{API_PREFIX}/policies/delete", body=policies_body(v1))
        if v0:
            self._http.request("POST", f"{V0_PREFIX}/policies/delete",
                               body={"policies": [p.to_v0() for p in v0]})

    def list(self, ids: Sequence[str] | None = None, *, source_ids: Sequence[str] | None = None,
             dest_ids: Sequence[str] | None = None) -> list[Policy]:
        """Policies touching `ids` (as source or destination), or filtered by source/destination."""
        params: dict[str, str] = {}
        if ids is not None:
            params["id"] = ",".join(ids)
        else:
            if source_ids is not None:
                params["source_id"] = ",".join(source_ids)
            if dest_ids is not None:
                params["dest_id"] = ",".join(dest_ids)
        return _policy_list(self._http.request_json("GET", f"{API_PREFIX}/policies",
                                                    params=params or None))

    def find(self, policy: Policy) -> Policy | None:
        """The stored policy exactly equal to `policy`, looked up as the cf CLI does."""
        for stored in self.list(ids=[policy.source]):
            if stored == policy:
                return stored
        return None

    def remove(self, policy: Policy) -> bool:
        """Delete `policy` if it exists (True), else send nothing and return False (cf CLI)."""
        if self.find(policy) is None:
            return False
        self.delete([policy])
        return True

    def tags(self) -> list[Tag]:
        """Every allocated tag in tag order (admin only)."""
        data = self._http.request_json("GET", f"{API_PREFIX}/tags")
        if not isinstance(data, dict) or not isinstance(data.get("tags"), list):
            raise unexpected(200, "no 'tags' list")
        try:
            return [Tag.from_json(t) for t in data["tags"]]
        except ValueError as e:
            raise unexpected(200, str(e)) from None

    def whoami(self) -> str:
        """The token's user name, or its client id for a client token (admin only)."""
        data = self._http.request_json("GET", f"{API_PREFIX}/whoami")
        if not isinstance(data, dict) or not isinstance(data.get("subject"), str):
            raise unexpected(200, "no 'subject'")
        return data["subject"]

    def cleanup(self) -> list[Policy]:
        """Run the stale-policy cleaner now (admin only); returns the policies it deleted."""
        return _policy_list(self._http.request_json("POST", f"{API_PREFIX}/policies/cleanup"))


__all__ = ["ApiError", "InvalidInput", "Policy", "PolicyClient", "Tag", "check_protocol",
           "check_token",
           "make_policy", "parse_ports", "policies_listing"]
