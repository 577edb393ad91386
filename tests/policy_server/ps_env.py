"""Helpers shared by the policy server tests: databases, a server handle with request helpers."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from cfnet.store.db import DatabaseConfig
from cfnet.testing.policy_server import RunningPolicyServer
from cfnet.testing.postgres import database_for_test
from ps_stubs import UAA_CLIENT, UAA_SECRET, Cloud


ADMIN = "uaa-admin-token"
WRITER = "uaa-write-token"
NOSCOPE = "uaa-noscope-token"
CLIENT = "uaa-client-token"
CORS = ["https://good.example", "*"]
MAX_POLICIES = 4
INTERNAL_OVERRIDES = {"watch_max_wait_seconds": 600}  # long-polls in tests can outlast any wake-up


def uaa_tokens() -> dict[str, dict[str, Any]]:
    return {
        ADMIN: {"scope": ["network.admin"], "sub": "admin-id", "user_id": "admin-id",
                "user_name": "admin", "client_id": "cf"},
        WRITER: {"scope": ["network.write", "openid"], "sub": "dev-id", "user_id": "dev-id",
                 "user_name": "dev", "client_id": "cf"},
        NOSCOPE: {"scope": [], "sub": "nobody-id", "user_name": "nobody"},
        CLIENT: {"scope": ["network.admin"], "sub": "some-client-id", "client_id": "some-client-id"},
    }


def make_database(kind: str, directory: Path) -> Iterator[DatabaseConfig]:
    if kind == "postgres":
        with database_for_test("cfnet_ps_") as config:
            yield config
    else:
        yield DatabaseConfig(type="sqlite", path=str(directory / "store.db"), timeout=10)


@dataclass
class Env:
    """A running server plus the stubs it talks to."""

    ps: RunningPolicyServer
    cloud: Cloud
    stub_url: str
    backend: str

    @property
    def ext(self) -> str:
        return self.ps.external_url + "/networking/v1/external"

    def ext_v(self, version: str) -> str:
        return self.ps.external_url + f"/networking/{version}/external"

    @property
    def int(self) -> str:
        return self.ps.internal_url + "/networking/v1/internal"

    def get_internal(self, path: str, **kw: Any) -> requests.Response:
        # Connection: close, as an idle TLS connection kept by a client that never reads it
        # holds up the server's shutdown for the grace period (see docs/policy-server.md).
        return requests.get(self.ps.internal_url + path, cert=self.ps.client_cert,
                            verify=self.ps.ca_file, timeout=kw.pop("timeout", 30),
                            headers={"Connection": "close"}, **kw)

    def stamp(self) -> int:
        r = self.get_internal("/networking/v1/internal/policies_last_updated")
        assert r.status_code == 200, r.text
        return int(r.text)

    def auth(self, token: str = ADMIN) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def create(self, policies: list[dict[str, Any]], token: str = ADMIN,
               version: str = "v1") -> requests.Response:
        return requests.post(self.ext_v(version) + "/policies", headers=self.auth(token),
                             json={"policies": policies}, timeout=30)

    def delete(self, policies: list[dict[str, Any]], token: str = ADMIN,
               version: str = "v1") -> requests.Response:
        return requests.post(self.ext_v(version) + "/policies/delete", headers=self.auth(token),
                             json={"policies": policies}, timeout=30)

    def list(self, query: str = "", token: str = ADMIN, version: str = "v1") -> requests.Response:
        return requests.get(self.ext_v(version) + "/policies" + query, headers=self.auth(token),
                            timeout=30)


def v1(src: str, dst: str, start: int = 8080, end: int | None = None,
       protocol: str = "tcp") -> dict[str, Any]:
    return {"source": {"id": src}, "destination": {"id": dst, "protocol": protocol,
                                                   "ports": {"start": start,
                                                             "end": start if end is None else end}}}


def guid(name: str = "app") -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}"


def uaa_overrides(stub_url: str, **extra: Any) -> dict[str, Any]:
    host, port = stub_url.rsplit(":", 1)
    return {"static_tokens_file": "", "uaa_url": host, "uaa_port": int(port),
            "uaa_client": UAA_CLIENT, "uaa_client_secret": UAA_SECRET, "cc_url": stub_url,
            "allowed_cors_domains": CORS, "max_policies": MAX_POLICIES, **extra}


StartEnv = Callable[..., Env]


