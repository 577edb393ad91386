"""A typed client for the policy server's internal API (mutual TLS), as cell agents use it.

    client = InternalClient("https://127.0.0.1:4003", bundle.client)
    stamp = client.policies_last_updated()
    stamp = client.policies_last_updated(wait=30, since=stamp)   # watch: returns on a change
    policies = client.policies(ids=["app-a", "app-b"])

`policies_last_updated(wait=..., since=...)` uses cfnet's watch extension: the server holds the
request for up to `wait` seconds and answers as soon as the stamp moves past `since`. A server
without the extension ignores both parameters and answers at once, so callers simply compare the
stamp with the last one they saw, as upstream's agent does. Failures raise `ApiError`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from cfnet.clients.http import DEFAULT_TIMEOUT, ApiError, InvalidInput, Transport, unexpected
from cfnet.clients.policy_api import Tag
from cfnet.web.tls import TLSFiles

INTERNAL_PREFIX = "/networking/v1/internal"


@dataclass(frozen=True)
class InternalPolicy:
    """A policy with both groups' tags, as the internal API serves it to agents."""

    source: str
    source_tag: str
    destination: str
    destination_tag: str
    protocol: str
    start: int
    end: int

    @classmethod
    def from_json(cls, data: Any) -> InternalPolicy:
        try:
            src, dst = data["source"], data["destination"]
            p = cls(src["id"], src["tag"], dst["id"], dst["tag"], dst["protocol"],
                    dst["ports"]["start"], dst["ports"]["end"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"policy {data!r} lacks {e}") from None
        if not all(isinstance(v, str) for v in (p.source, p.source_tag, p.destination,
                                                 p.destination_tag, p.protocol)) \
                or not all(type(v) is int for v in (p.start, p.end)):
            raise ValueError(f"policy {data!r} has a field of the wrong type")
        return p

    def to_json(self) -> dict[str, Any]:
        return {
            "source": {"id": self.source, "tag": self.source_tag},
            "destination": {"id": self.destination, "tag": self.destination_tag,
                            "protocol": self.protocol,
                            "ports": {"start": self.start, "end": self.end}},
        }


@dataclass(frozen=True)
class SecurityGroup:
    """A dynamic ASG; `rules` is the JSON-encoded string the server sends (see `rule_list`)."""

    guid: str
    name: str
    rules: str
    staging_default: bool
    running_default: bool
    staging_space_guids: list[str] = field(default_factory=list)
    running_space_guids: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: Any) -> SecurityGroup:
        try:
            sg = cls(data["guid"], data["name"], data["rules"], data["staging_default"],
                     data["running_default"], list(data.get("staging_space_guids") or []),
                     list(data.get("running_space_guids") or []))
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"security group {data!r} lacks {e}") from None
        if not isinstance(sg.rules, str):
            raise ValueError(f"security group {sg.guid!r}: rules is not a JSON string")
        return sg

    def rule_list(self) -> list[dict[str, Any]]:
        """The rules decoded (an empty string means no rules)."""
        return json.loads(self.rules) if self.rules else []


@dataclass(frozen=True)
class SecurityGroupPage:
    security_groups: list[SecurityGroup]
    next: int  # internal id to pass as `from_id` for the next page; 0 when this is the last


def _parse_page(data: Any) -> SecurityGroupPage:
    if not isinstance(data, dict) or not isinstance(data.get("security_groups"), list) \
            or type(data.get("next", 0)) is not int:
        raise unexpected(200, "no 'security_groups' list")
    try:
        groups = [SecurityGroup.from_json(g) for g in data["security_groups"]]
    except ValueError as e:
        raise unexpected(200, str(e)) from None
    return SecurityGroupPage(groups, data.get("next", 0))


class InternalClient:
    """The internal API over mutual TLS: presents `tls.cert`, trusts only `tls.ca`."""

    def __init__(self, base_url: str, tls: TLSFiles, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._http = Transport(base_url, timeout=timeout, verify=str(tls.ca),
                               cert=(str(tls.cert), str(tls.key)))

    @property
    def base_url(self) -> str:
        return self._http.base_url

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> InternalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def policies(self, ids: Sequence[str] | None = None) -> list[InternalPolicy]:
        """Policies whose source or destination is in `ids` (None: every policy; []: none)."""
        params = None if ids is None else {"id": ",".join(ids)}
        data = self._http.request_json("GET", f"{INTERNAL_PREFIX}/policies", params=params)
        if not isinstance(data, dict) or not isinstance(data.get("policies"), list):
            raise unexpected(200, "no 'policies' list")
        try:
            return [InternalPolicy.from_json(p) for p in data["policies"]]
        except ValueError as e:
            raise unexpected(200, str(e)) from None

    def policies_last_updated(self, wait: float | None = None, since: int | None = None) -> int:
        """The policies' last-modified stamp (ns since the epoch, strictly increasing).

        With `wait`, long-poll: the server answers once the stamp is newer than `since` (or than
        its value when the request arrived) or after `wait` seconds, whichever comes first.
        """
        params: dict[str, str] = {}
        read_timeout = None
        if wait is not None:
            if not 0 <= wait < float("inf"):
                raise InvalidInput(f"invalid wait {wait}: must be 0 or more seconds")
            params["wait"] = f"{wait:g}"
            read_timeout = wait + self._http.timeout
        if since is not None:
            params["since"] = str(int(since))
        resp = self._http.request("GET", f"{INTERNAL_PREFIX}/policies_last_updated",
                                  params=params or None, read_timeout=read_timeout)
        text = resp.text.strip()
        if not text.isdigit():
            raise unexpected(resp.status_code, f"not a decimal stamp: {text[:40]!r}")
        return int(text)

    def security_groups(self, space_guids: Sequence[str] | None = None, *,
                        from_id: int | None = None, limit: int | None = None) -> SecurityGroupPage:
        """One page of global ASGs plus those bound to any of `space_guids`, in id order."""
        params: dict[str, str] = {}
        if space_guids is not None:
            params["space_guids"] = ",".join(space_guids)
        if from_id is not None:
            params["from"] = str(int(from_id))
        if limit is not None:
            params["limit"] = str(int(limit))
        return _parse_page(self._http.request_json(
            "GET", f"{INTERNAL_PREFIX}/security_groups", params=params or None))

    def all_security_groups(self, space_guids: Sequence[str] | None = None, *,
                            page_size: int = 5000) -> Iterator[SecurityGroup]:
        """Every matching ASG, following `next` page by page."""
        from_id: int | None = None
        while True:
            page = self.security_groups(space_guids, from_id=from_id, limit=page_size)
            yield from page.security_groups
            if page.next <= 0 or page.next == from_id:
                return
            from_id = page.next

    def create_tag(self, id: str, type: str) -> Tag:
        """Allocate (or look up) the tag of a non-app group, e.g. a router; idempotent."""
        data = self._http.request_json("PUT", f"{INTERNAL_PREFIX}/tags",
                                       body={"id": id, "type": type})
        try:
            return Tag.from_json(data)
        except ValueError as e:
            raise unexpected(200, str(e)) from None


__all__ = ["ApiError", "InternalClient", "InternalPolicy", "SecurityGroup", "SecurityGroupPage"]
