"""Cloud Controller reads for the policy server: app spaces, membership, ASGs (spec 3.3-3.4, 6, 7).

Blocking (requests) with a timeout on every call. Every method takes the server's own bearer
token (a UAA client-credentials token, sent as `bearer <token>` as upstream does) so the caller
decides when to fetch one.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import requests

from cfnet.policy_server.uaa import UpstreamError, _verify_arg

APP_CHUNK = 100  # upstream hard-codes it (cc_app_request_chunk_size is ignored)


class CloudController:
    def __init__(self, base_url: str, ca_file: str = "", skip_ssl_validation: bool = False,
                 timeout: float = 5.0, client_cert: tuple[str, str] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.verify_tls = _verify_arg(ca_file, skip_ssl_validation)
        self.timeout = timeout
        self.client_cert = client_cert

    def get(self, path: str, token: str | None, ok: tuple[int, ...] = (200,)) -> tuple[int, Any]:
        """GET `path` (relative to the base URL); the status and parsed JSON (None on 404)."""
        headers = {"Authorization": f"bearer {token}"} if token else {}
        try:
            r = requests.get(self.base_url + path, headers=headers, verify=self.verify_tls,
                             timeout=self.timeout, cert=self.client_cert)
        except requests.RequestException as e:
            raise UpstreamError(f"cloud controller GET {path}: {e}") from None
        if r.status_code not in ok:
            raise UpstreamError(f"cloud controller GET {path}: status {r.status_code}")
        if r.status_code == 404:
            return 404, None
        try:
            return r.status_code, r.json()
        except ValueError as e:
            raise UpstreamError(f"cloud controller GET {path}: bad JSON: {e}") from None

    # -- apps and spaces -------------------------------------------------------------------------

    def app_spaces(self, guids: list[str], token: str) -> dict[str, str]:
        """app guid -> space guid for the apps CC knows, one request (spec 3.3 step 1)."""
        if not guids:
            return {}
        path = f"/v3/apps?guids={quote(','.join(guids), safe=',')}&per_page={len(guids)}"
        _, body = self.get(path, token)
        try:
            if (body.get("pagination") or {}).get("total_pages", 0) > 1:
                raise UpstreamError("cloud controller /v3/apps: more than one page")
            out: dict[str, str] = {}
            for app in body.get("resources") or []:
                href = app["links"]["space"]["href"]
                out[app["guid"]] = href.rstrip("/").rsplit("/", 1)[-1]
            return out
        except (AttributeError, KeyError, TypeError) as e:
            raise UpstreamError(f"cloud controller /v3/apps: unexpected reply: {e!r}") from None

    def app_spaces_chunked(self, guids: list[str], token: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for i in range(0, len(guids), APP_CHUNK):
            out.update(self.app_spaces(guids[i:i + APP_CHUNK], token))
        return out

    def space(self, guid: str, token: str) -> tuple[str, str] | None:
        """(name, organization guid) of a space, or None when CC answers 404."""
        status, body = self.get(f"/v2/spaces/{quote(guid, safe='')}", token, ok=(200, 404))
        if status == 404:
            return None
        try:
            entity = body["entity"]
            return str(entity["name"]), str(entity["organization_guid"])
        except (KeyError, TypeError) as e:
            raise UpstreamError(f"cloud controller /v2/spaces: unexpected reply: {e!r}") from None

    def developer_space_count(self, user: str, name: str, org: str, token: str) -> int:
        """How many spaces named `name` in `org` have `user` as a developer (spec 3.3 step 3)."""
        q = "&".join("q=" + quote(v, safe=":") for v in
                     (f"developer_guid:{user}", f"name:{name}", f"organization_guid:{org}"))
        _, body = self.get(f"/v2/spaces?{q}", token)
        try:
            return len(body.get("resources") or [])
        except AttributeError as e:
            raise UpstreamError(f"cloud controller /v2/spaces: unexpected reply: {e!r}") from None

    def user_spaces(self, user: str, token: str) -> set[str]:
        """Every space the user is a developer of, following `next_url` (spec 3.4 step 2)."""
        spaces: set[str] = set()
        path: str | None = f"/v2/users/{quote(user, safe='')}/spaces?results-per-page=100"
        seen = 0
        while path:
            seen += 1
            if seen > 10000:
                raise UpstreamError("cloud controller /v2/users/.../spaces: too many pages")
            _, body = self.get(path, token)
            try:
                for res in body.get("resources") or []:
                    spaces.add(str(res["metadata"]["guid"]))
                path = body.get("next_url")
            except (AttributeError, KeyError, TypeError) as e:
                raise UpstreamError(f"cloud controller user spaces: bad reply: {e!r}") from None
        return spaces

    # -- security groups (ASG syncer) ------------------------------------------------------------

    def asg_latest_update(self, token: str) -> str:
        """`last_update` of `/internal/v4/asg_latest_update` (mTLS); "" for a 404 (zero time)."""
        status, body = self.get("/internal/v4/asg_latest_update", token, ok=(200, 404))
        if status == 404:
            return ""
        try:
            value = body["last_update"]
        except (KeyError, TypeError) as e:
            raise UpstreamError(f"cloud controller asg_latest_update: bad reply: {e!r}") from None
        if not isinstance(value, str):
            raise UpstreamError("cloud controller asg_latest_update: last_update is not a string")
        return value

    def security_groups_page(self, page: int,
                             token: str) -> tuple[list[dict[str, Any]] | None, bool]:
        """One page of `/v3/security_groups` (5000 a page): (resources or None, has next page)."""
        _, body = self.get(f"/v3/security_groups?per_page=5000&page={page}", token)
        if not isinstance(body, dict):
            raise UpstreamError("cloud controller /v3/security_groups: reply is not an object")
        resources = body.get("resources")
        nxt = ((body.get("pagination") or {}).get("next") or {})
        has_next = bool(nxt.get("href")) if isinstance(nxt, dict) else False
        if resources is not None and not isinstance(resources, list):
            raise UpstreamError("cloud controller /v3/security_groups: resources is not a list")
        return resources, has_next
