"""Fuzz the running external API from its own OpenAPI document (schemathesis).

Valid and invalid requests (positive and negative generation) go to the real server over HTTP,
on SQLite and PostgreSQL. Whatever is sent, the server must never answer 5xx, must answer as
documented, and a rejected request must leave the store unchanged (its last-updated stamp and
its tags).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from ps_env import ADMIN, Env

DOC = Path(__file__).parents[2] / "docs" / "policy-server-openapi.json"
# Checks that do not fit a wire-compatible API: upstream answers 200 to many invalid inputs
# (unknown query parameters, odd ids), and auth is handled per test below.
EXCLUDED_CHECKS = [schemathesis.checks.ignored_auth, schemathesis.checks.unsupported_method,
                   schemathesis.checks.negative_data_rejection,
                   schemathesis.checks.positive_data_acceptance,
                   schemathesis.checks.missing_required_header]
_PATHS = json.loads(DOC.read_text())["paths"]
# Negative cases need something to break: operations without parameters or body get none.
CASES = [(path, method.upper(), mode) for path, ops in _PATHS.items() for method, op in ops.items()
         for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
         if mode is GenerationMode.POSITIVE or op.get("parameters") or op.get("requestBody")]


def _tags(server: Env) -> bytes:
    return requests.get(server.ext + "/tags", headers=server.auth(), timeout=10).content


@pytest.mark.parametrize("path, method, mode", CASES,
                         ids=[f"{m} {p} {g.value}" for p, m, g in CASES])
def test_no_5xx_and_rejections_change_nothing(server: Env, path: str, method: str,
                                              mode: GenerationMode) -> None:
    api = schemathesis.openapi.from_url(server.ps.external_url
                                        + "/networking/v1/external/openapi.json")
    operation = api[path][method]
    if path.endswith("/cleanup"):
        # the cleaner legitimately deletes policies of apps the CC stub does not know
        server.cloud.apps.clear()

    @given(case=operation.as_strategy(generation_mode=mode))
    # no shrinking: a failure is reported at once with its (unshrunk) request, instead of
    # minutes of replaying requests against a server
    @settings(max_examples=20, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.reuse, Phase.generate])
    def check(case: schemathesis.Case) -> None:
        stamp, tags = server.stamp(), _tags(server)
        # A valid token, so that requests get past authentication into decoding, validation
        # and the store (schemathesis would send random bearer tokens: all 401s).
        headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        headers["Authorization"] = f"Bearer {ADMIN}"
        case.headers = headers  # on the case itself: negative mode would otherwise drop it
        response = case.call(timeout=30)
        assert response.status_code < 500, (case.method, case.formatted_path, response.text)
        if response.status_code >= 400:
            assert json.loads(response.text)["error"]
            assert server.stamp() == stamp
            assert _tags(server) == tags
        if mode is GenerationMode.POSITIVE:
            case.validate_response(response, excluded_checks=EXCLUDED_CHECKS)

    check()


def test_served_document_is_the_one_in_docs(server: Env) -> None:
    served = requests.get(server.ext + "/openapi.json", timeout=10)
    assert served.status_code == 200
    assert served.json() == json.loads(DOC.read_text())
    # every documented path is routed (a docs test, as sqlite-utils does)
    for path, operations in served.json()["paths"].items():
        for method in operations:
            url = server.ps.external_url + path.replace("{version}", "v1")
            r = requests.request(method.upper(), url, headers=server.auth(), timeout=30)
            assert r.status_code not in (404, 405), (method, path)
