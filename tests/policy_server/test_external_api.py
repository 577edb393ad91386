"""The external API over real HTTP against a real server on SQLite and PostgreSQL (spec 1.0, 1.1, 2, 3).

UAA and Cloud Controller are the stubs of ps_stubs.py; everything else is the real process.
"""

from __future__ import annotations

import http.client
import json
import re
import uuid
from typing import Any

import pytest
import requests
from ps_env import ADMIN, CLIENT, MAX_POLICIES, NOSCOPE, WRITER, Env, guid, v1

UUID4 = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-xss-protection": "1; mode=block",
    "x-frame-options": "deny",
    "content-security-policy": "frame-ancestors 'none'",
}


def raw(env: Env, method: str, path: str, body: bytes = b"",
        headers: list[tuple[str, str]] | None = None) -> tuple[int, bytes, http.client.HTTPMessage]:
    """One request with exact control over headers (repeated ones too) and body bytes."""
    host, port = env.ps.external_url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest(method, path)
        for k, v in headers or []:
            conn.putheader(k, v)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        if body:
            conn.send(body)
        r = conn.getresponse()
        return r.status, r.read(), r.headers
    finally:
        conn.close()


# -- E1-E3 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/networking"])
def test_uptime_is_plain_text_with_a_go_duration(server: Env, path: str) -> None:
    r = requests.get(server.ps.external_url + path, timeout=10)
    assert r.status_code == 200
    assert re.fullmatch(r"Network policy server, up for ([0-9.]+(h|m|s|ms|µs|ns))+\n", r.text), r.text


def test_health_is_an_empty_200(server: Env) -> None:
    r = requests.get(server.ps.external_url + "/health", timeout=10)
    assert (r.status_code, r.content) == (200, b"")
    for k, v in SECURITY_HEADERS.items():
        assert r.headers[k] == v


# -- conventions ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v2", "", "V1"])
def test_unknown_version_is_406_before_auth(server: Env, version: str) -> None:
    for method, suffix in (("GET", "/policies"), ("POST", "/policies"), ("GET", "/tags"),
                           ("GET", "/whoami"), ("POST", "/policies/delete"),
                           ("POST", "/policies/cleanup")):
        r = requests.request(method, server.ps.external_url + f"/networking/{version}/external"
                             + suffix, timeout=10)
        assert r.status_code == 406
        assert r.content == f'{{"error": "api version \'{version}\' not supported"}}'.encode()
        assert r.headers["x-frame-options"] == "deny"


def test_router_404_and_405_have_upstream_bodies_and_no_security_headers(server: Env) -> None:
    r = requests.get(server.ext + "/policies/", timeout=10)
    assert (r.status_code, r.text) == (404, "404 page not found\n")
    assert "x-frame-options" not in r.headers and "x-vcap-request-id" not in r.headers
    r = requests.delete(server.ext + "/policies", timeout=10)
    assert (r.status_code, r.text) == (405, "Method Not Allowed\n")
    assert "GET" in r.headers["allow"] and "POST" in r.headers["allow"]
    assert "x-frame-options" not in r.headers
    r = requests.head(server.ps.external_url + "/", timeout=10)
    assert r.status_code == 405
    for gone in ("/networking/v1/external/destinations", "/networking/v1/internal/healthcheck"):
        assert requests.get(server.ps.external_url + gone, timeout=10).status_code == 404


def test_request_id_is_a_uuid4_or_extends_the_callers(server: Env) -> None:
    r = requests.get(server.ext + "/whoami", headers=server.auth(), timeout=10)
    assert re.fullmatch(UUID4, r.headers["x-vcap-request-id"])
    r = requests.get(server.ext + "/whoami", timeout=10,
                     headers={**server.auth(), "X-VCAP-Request-ID": "caller-id"})
    assert re.fullmatch("caller-id::" + UUID4, r.headers["x-vcap-request-id"])
    r = requests.get(server.ext_v("v9") + "/whoami", timeout=10)  # errors carry it too
    assert re.fullmatch(UUID4, r.headers["x-vcap-request-id"])


def test_every_handler_response_has_security_headers_and_no_hsts_without_tls(server: Env) -> None:
    responses = [
        requests.get(server.ps.external_url + "/", timeout=10),
        requests.get(server.ext + "/policies", timeout=10),  # 401
        requests.get(server.ext + "/tags", headers=server.auth(WRITER), timeout=10),  # 403
        requests.get(server.ext + "/tags", headers=server.auth(), timeout=10),
        server.create([v1("", "x")]),  # 400
    ]
    for r in responses:
        for k, v in SECURITY_HEADERS.items():
            assert r.headers.get(k) == v, (r.status_code, k)
        assert "strict-transport-security" not in r.headers


@pytest.mark.parametrize("path, methods", [
    ("/networking/v1/external/policies", "POST,GET,OPTIONS"),
    ("/", "GET,OPTIONS"),
    ("/networking/v1/external/tags", "GET,OPTIONS"),
    ("/networking/v0/external/policies/delete", "POST,OPTIONS"),
])
def test_options_preflight_lists_the_route_methods(server: Env, path: str, methods: str) -> None:
    r = requests.options(server.ps.external_url + path, timeout=10)
    assert (r.status_code, r.content) == (200, b"")
    assert r.headers["access-control-allow-methods"] == methods
    assert r.headers["access-control-allow-headers"] == "authorization"
    assert r.headers["x-frame-options"] == "deny"
    assert "x-vcap-request-id" not in r.headers  # OPTIONS is not logged


def test_cors_origin_matches_an_entry_or_the_wildcard(server: Env) -> None:
    r = requests.options(server.ext + "/policies", headers={"Origin": "https://good.example"},
                         timeout=10)
    assert r.headers["access-control-allow-origin"] == "https://good.example"
    r = requests.get(server.ext + "/policies", headers={"Origin": "https://other.example"},
                     timeout=10)
    assert r.headers["access-control-allow-origin"] == "*"


# -- authentication (3.1) ---------------------------------------------------------------------------


def test_missing_header_is_401_with_www_authenticate(server: Env) -> None:
    r = requests.get(server.ext + "/policies", timeout=10)
    assert (r.status_code, r.content) == (401, b'{"error": "missing authorization header"}')
    assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("header", ["Bearer not-a-token", f"BEARER {ADMIN}", "Bearer "])
def test_unverifiable_token_is_401(server: Env, header: str) -> None:
    r = requests.get(server.ext + "/policies", headers={"Authorization": header}, timeout=10)
    assert (r.status_code, r.content) == (401, b'{"error": "failed to verify token with uaa"}')
    assert r.headers["www-authenticate"] == "Bearer"


def test_lowercase_bearer_and_a_bare_token_reach_uaa(server: Env) -> None:
    for header in (f"bearer {ADMIN}", ADMIN):
        r = requests.get(server.ext + "/whoami", headers={"Authorization": header}, timeout=10)
        assert r.status_code == 200, r.text


def test_check_token_uses_basic_auth_and_a_form_body(server: Env) -> None:
    before = len(server.cloud.seen("/check_token"))
    requests.get(server.ext + "/whoami", headers=server.auth(), timeout=10)
    call = server.cloud.seen("/check_token")[before]
    assert call.method == "POST"
    assert call.headers["Authorization"].startswith("Basic ")
    assert call.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert call.body == f"token={ADMIN}".encode()


def test_only_the_first_authorization_header_counts(server: Env) -> None:
    status, body, _ = raw(server, "GET", "/networking/v1/external/whoami",
                          headers=[("Authorization", "Bearer nope"),
                                   ("Authorization", f"Bearer {ADMIN}")])
    assert status == 401
    status, body, _ = raw(server, "GET", "/networking/v1/external/whoami",
                          headers=[("Authorization", f"Bearer {ADMIN}"),
                                   ("Authorization", "Bearer nope")])
    assert (status, body) == (200, b'{"subject":"admin"}')


@pytest.mark.parametrize("path, method, token, text", [
    ("/policies", "GET", NOSCOPE,
     "provided scopes [] do not include allowed scopes [network.admin network.write]"),
    ("/policies", "POST", NOSCOPE,
     "provided scopes [] do not include allowed scopes [network.admin network.write]"),
    ("/tags", "GET", WRITER,
     "provided scopes [network.write openid] do not include allowed scopes [network.admin]"),
    ("/whoami", "GET", WRITER,
     "provided scopes [network.write openid] do not include allowed scopes [network.admin]"),
    ("/policies/cleanup", "POST", WRITER,
     "provided scopes [network.write openid] do not include allowed scopes [network.admin]"),
])
def test_scope_errors_are_403_with_go_lists(server: Env, path: str, method: str, token: str,
                                            text: str) -> None:
    r = requests.request(method, server.ext + path, headers=server.auth(token), timeout=10)
    assert r.status_code == 403
    assert r.json() == {"error": text}


def test_uaa_failure_is_401(server: Env) -> None:
    server.cloud.fail.add("/check_token")
    try:
        r = requests.get(server.ext + "/whoami", headers=server.auth(), timeout=10)
    finally:
        server.cloud.fail.discard("/check_token")
    assert (r.status_code, r.json()) == (401, {"error": "failed to verify token with uaa"})


def test_whoami_uses_user_name_or_sub(server: Env) -> None:
    r = requests.get(server.ext_v("v0") + "/whoami", headers=server.auth(), timeout=10)
    assert r.content == b'{"subject":"admin"}'
    r = requests.get(server.ext + "/whoami", headers=server.auth(CLIENT), timeout=10)
    assert r.content == b'{"subject":"some-client-id"}'


# -- create, list, delete ---------------------------------------------------------------------------


def test_create_list_delete_v1(server: Env) -> None:
    a, b, c = guid("a"), guid("b"), guid("c")
    before = server.stamp()
    r = server.create([v1(a, b, 1234, 1235), v1(c, a, 8080, 8090), v1(a, b, 1234, 1235)])
    assert (r.status_code, r.content) == (200, b"{}")
    assert server.stamp() > before
    r = server.list(f"?id={a}")
    assert r.content == (
        b'{"total_policies":2,"policies":['
        b'{"source":{"id":"%s"},"destination":{"id":"%s","protocol":"tcp","ports":{"start":1234,"end":1235}}},'
        b'{"source":{"id":"%s"},"destination":{"id":"%s","protocol":"tcp","ports":{"start":8080,"end":8090}}}]}'
        % (a.encode(), b.encode(), c.encode(), a.encode()))
    assert "tag" not in r.text
    r = server.delete([v1(a, b, 1234, 1235)])
    assert (r.status_code, r.content) == (200, b"{}")
    assert server.list(f"?id={a}").json()["policies"] == [v1(c, a, 8080, 8090)]


def test_list_filters(server: Env) -> None:
    a, b, c = guid("a"), guid("b"), guid("c")
    assert server.create([v1(a, b), v1(b, c), v1(c, a)]).status_code == 200

    def pairs(query: str) -> list[tuple[str, str]]:
        r = server.list(query)
        assert r.status_code == 200, r.text
        return [(p["source"]["id"], p["destination"]["id"]) for p in r.json()["policies"]]

    assert pairs(f"?id={a}") == [(a, b), (c, a)]
    assert pairs(f"?id={a}&source_id={b}") == [(a, b), (c, a)]  # id wins
    assert pairs(f"?source_id={a},{b}") == [(a, b), (b, c)]
    assert pairs(f"?dest_id={a}") == [(c, a)]
    assert pairs(f"?source_id={a},{b}&dest_id={c}") == [(b, c)]
    assert pairs(f"?id={a}&id={b}") == [(a, b), (c, a)]  # first occurrence only
    assert pairs("?id=") == []
    assert pairs(f"?id={a}%2C{c}") == [(a, b), (b, c), (c, a)]
    all_pairs = pairs("")
    assert {(a, b), (b, c), (c, a)} <= set(all_pairs)


def test_v0_create_is_the_v1_single_port_policy_and_v0_lists_hide_ranges(server: Env) -> None:
    a, b = guid("a"), guid("b")
    body = {"source": {"id": a}, "destination": {"id": b, "protocol": "udp", "port": 5000}}
    assert server.create([body], version="v0").status_code == 200
    assert server.create([v1(a, b, 5000, protocol="udp"), v1(a, b, 6000, 6001)]).status_code == 200
    r = server.list(f"?id={a}", version="v0")
    assert r.content == (b'{"total_policies":1,"policies":[{"source":{"id":"%s"},"destination":'
                         b'{"id":"%s","protocol":"udp","port":5000}}]}' % (a.encode(), b.encode()))
    assert server.list(f"?id={a}").json()["total_policies"] == 2
    r = server.delete([body], version="v0")
    assert r.status_code == 200
    assert server.list(f"?id={a}").json()["policies"] == [v1(a, b, 6000, 6001)]


def test_v0_has_no_upper_port_bound(server: Env) -> None:
    a, b = guid("a"), guid("b")
    body = {"source": {"id": a}, "destination": {"id": b, "protocol": "tcp", "port": 70000}}
    assert server.create([body], version="v0").status_code == 200
    assert server.list(f"?id={a}").json()["policies"] == [v1(a, b, 70000)]


def test_delete_of_unknown_policies_is_200_and_bumps_the_stamp(server: Env) -> None:
    before = server.stamp()
    r = server.delete([v1(guid(), guid())])
    assert (r.status_code, r.content) == (200, b"{}")
    assert server.stamp() > before


def test_keys_match_case_insensitively(server: Env) -> None:
    a, b = guid("a"), guid("b")
    body = ('{"POLICIES": [{"Source": {"ID": "%s"}, "destination": {"Id": "%s", "PROTOCOL": "tcp",'
            ' "Ports": {"START": 80, "end": 81}, "ips": [], "type": "x"}}]}' % (a, b))
    r = requests.post(server.ext + "/policies", data=body, headers=server.auth(), timeout=10)
    assert r.status_code == 200, r.text
    assert server.list(f"?id={a}").json()["policies"] == [v1(a, b, 80, 81)]


V1_ERRORS: list[tuple[Any, str]] = [
    ({}, "validate policies: missing policies"),
    ({"policies": []}, "validate policies: missing policies"),
    ({"policies": None}, "validate policies: missing policies"),
    (None, "validate policies: missing policies"),
    ({"policies": [v1("", "b")]}, "validate policies: missing source id"),
    ({"policies": [v1("a", "")]}, "validate policies: missing destination id"),
    ({"policies": [v1("a", "b", protocol="icmp")]},
     "validate policies: invalid destination protocol, specify either udp or tcp"),
    ({"policies": [v1("a", "b", protocol="TCP")]},
     "validate policies: invalid destination protocol, specify either udp or tcp"),
    ({"policies": [v1("a", "b", 9, 8)]},
     "validate policies: invalid port range 9-8, start must be less than or equal to end"),
    ({"policies": [v1("a", "b", -2, 5)]},
     "validate policies: invalid start port -2, must be in range 1-65535"),
    ({"policies": [v1("a", "b", 0, 0)]}, "validate policies: missing start port"),
    ({"policies": [v1("a", "b", 1, 65536)]},
     "validate policies: invalid end port 65536, must be in range 1-65535"),
    ({"policies": [{"source": {"id": "a"}, "destination": {"id": "b", "protocol": "tcp"}}]},
     "validate policies: missing start port"),
    ({"policies": [{"source": {"id": "a"}, "destination": {"id": "b", "protocol": "tcp",
                                                          "ports": {"start": 8080}}}]},
     "validate policies: invalid port range 8080-0, start must be less than or equal to end"),
    ({"policies": [{"source": {"id": "a", "tag": "01"},
                    "destination": {"id": "b", "protocol": "tcp", "ports": {"start": 1, "end": 1}}}]},
     "validate policies: tags may not be specified"),
    ({"policies": [v1("a", "b"), v1("", "b")]}, "validate policies: missing source id"),
    ({"policies": [{"source": {"id": "a"}, "destination": {"id": "b", "protocol": "tcp",
                                                          "port": 8080}}]},
     "validate policies: missing start port"),  # a v0 body on v1
]


@pytest.mark.parametrize("body, text", V1_ERRORS)
def test_v1_validation_errors(server: Env, body: Any, text: str) -> None:
    before = server.stamp()
    for path in ("/policies", "/policies/delete"):
        r = requests.post(server.ext + path, data=json.dumps(body), headers=server.auth(),
                          timeout=10)
        assert r.status_code == 400
        assert r.json() == {"error": f"mapper: {text}"}
    assert server.stamp() == before


@pytest.mark.parametrize("destination, text", [
    ({"id": "b", "protocol": "tcp", "port": -1}, "invalid port -1, must be in range 1-65535"),
    ({"id": "b", "protocol": "tcp", "port": 0}, "missing port"),
    ({"id": "b", "protocol": "tcp", "ports": {"start": 1, "end": 2}}, "missing port"),
    ({"id": "b", "protocol": "all", "port": 1},
     "invalid destination protocol, specify either udp or tcp"),
])
def test_v0_validation_errors(server: Env, destination: dict[str, Any], text: str) -> None:
    r = server.create([{"source": {"id": "a"}, "destination": destination}], version="v0")
    assert (r.status_code, r.json()) == (400, {"error": f"mapper: validate policies: {text}"})


@pytest.mark.parametrize("body", [b"", b"{", b"[]", b'{"policies": {}}', b"\xff\xfe",
                                  b'{"policies": [{"destination": {"ports": {"start": 1.5}}}]}',
                                  b'{"policies": [{"destination": {"ports": {"start": true}}}]}',
                                  b'{"policies": [{"destination": {"ports": {"start": 1e400}}}]}',
                                  b"[" * 100000, b'{"policies": [{"source": {"id": 7}}]}'])
def test_malformed_json_is_400_unmarshal(server: Env, body: bytes) -> None:
    before = server.stamp()
    for path in ("/policies", "/policies/delete"):
        r = requests.post(server.ext + path, data=body, headers=server.auth(), timeout=30)
        assert r.status_code == 400, r.text
        assert r.json()["error"].startswith("mapper: unmarshal json: ")
    assert server.stamp() == before


def test_ids_with_a_nul_character_are_refused(server: Env) -> None:
    before = server.stamp()
    for call in (server.create, server.delete):
        r = call([v1("a\x00", "b")])
        assert (r.status_code, r.json()) == (400, {"error": "mapper: validate policies: invalid "
                                                   "source id, must not contain a NUL character"})
        r = call([{"source": {"id": "a"}, "destination": {"id": "\x00", "protocol": "tcp",
                                                          "port": 1}}], version="v0")
        assert r.json()["error"].startswith("mapper: validate policies: invalid destination id")
    assert server.stamp() == before
    r = server.get_internal("/networking/v1/internal/policies?id=%00")
    assert r.content == b'{"total_policies":0,"policies":[]}'
    r = server.get_internal("/networking/v1/internal/security_groups?space_guids=%00")
    assert r.status_code == 200


def test_empty_body_has_gos_message(server: Env) -> None:
    r = requests.post(server.ext + "/policies", data=b"", headers=server.auth(), timeout=10)
    assert r.json() == {"error": "mapper: unmarshal json: unexpected end of JSON input"}


def test_bodies_over_10_mib_are_refused(server: Env) -> None:
    big = b'{"policies": [], "x": "' + b"a" * (10 * 1024 * 1024) + b'"}'
    r = requests.post(server.ext + "/policies", data=big, headers=server.auth(), timeout=60)
    assert (r.status_code, r.content) == (400, b'{"error": "failed reading request body"}')
    r = requests.post(server.ext + "/policies/delete", data=big, headers=server.auth(), timeout=60)
    assert (r.status_code, r.content) == (400, b'{"error": "invalid request body"}')
    # Just under the cap is read and decoded.
    ok = b'{"policies": [], "x": "' + b"a" * (10 * 1024 * 1024 - 40) + b'"}'
    r = requests.post(server.ext + "/policies", data=ok, headers=server.auth(), timeout=60)
    assert r.json() == {"error": "mapper: validate policies: missing policies"}


@pytest.mark.parametrize("query", ["?id=%ff%fe", "?id=%zz", "?source_id&dest_id", "?id=a;b",
                                   "?%00=%00", "?id=%00", "?source_id=a%00&dest_id=b",
                                   "?id=" + "x," * 2000])
def test_odd_query_strings_are_not_errors(server: Env, query: str) -> None:
    r = server.list(query)
    assert r.status_code == 200, r.text
    assert r.json()["total_policies"] >= 0


# -- non-admin: guard, quota, filter (3.3, 3.4, 2.4) -----------------------------------------------


@pytest.fixture
def spaces(server: Env) -> dict[str, str]:
    """Apps in two of dev's spaces, one app in a space dev cannot use, one unknown to CC."""
    cloud = server.cloud
    mine1, mine2, foreign = guid("space"), guid("space"), guid("space")
    org = guid("org")
    cloud.spaces.update({mine1: ("dev-space", org), mine2: ("dev-space-2", org),
                         foreign: ("other", org)})
    cloud.developers.setdefault("dev-id", set()).update({mine1, mine2})
    apps = {"a": guid("a"), "b": guid("b"), "c": guid("c"), "x": guid("x"), "unknown": guid("u")}
    cloud.apps.update({apps["a"]: mine1, apps["b"]: mine1, apps["c"]: mine2, apps["x"]: foreign})
    return apps


def test_space_developer_may_create_between_own_apps(server: Env, spaces: dict[str, str]) -> None:
    r = server.create([v1(spaces["a"], spaces["b"]), v1(spaces["b"], spaces["c"])], token=WRITER)
    assert (r.status_code, r.content) == (200, b"{}")
    # apps unknown to CC are not checked [quirk]
    r = server.create([v1(spaces["unknown"], spaces["a"])], token=WRITER)
    assert r.status_code == 200


def test_guard_refuses_foreign_apps_and_changes_nothing(server: Env,
                                                        spaces: dict[str, str]) -> None:
    before = server.stamp()
    for call in (server.create, server.delete):
        r = call([v1(spaces["a"], spaces["x"])], token=WRITER)
        assert r.status_code == 403
        assert r.content == b'{"error": "one or more applications cannot be found or accessed"}'
    assert server.stamp() == before
    # a space CC answers 404 for
    server.cloud.apps[spaces["unknown"]] = guid("gone-space")
    r = server.create([v1(spaces["a"], spaces["unknown"])], token=WRITER)
    assert r.status_code == 403


def test_guard_failure_is_500(server: Env, spaces: dict[str, str]) -> None:
    server.cloud.fail.add("/v2/spaces")
    try:
        r = server.create([v1(spaces["a"], spaces["b"])], token=WRITER)
    finally:
        server.cloud.fail.discard("/v2/spaces")
    assert (r.status_code, r.content) == (500, b'{"error": "check access failed"}')


def test_quota_counts_existing_and_duplicate_policies(server: Env, spaces: dict[str, str]) -> None:
    a, b = spaces["a"], spaces["b"]
    assert server.create([v1(a, b, p) for p in range(1, MAX_POLICIES)], token=WRITER).status_code == 200
    # one more is fine for the admin and would be fine for dev too; re-posting counts [quirk]
    r = server.create([v1(a, b, 1), v1(a, b, 1000)], token=WRITER)
    assert (r.status_code, r.content) == (403, b'{"error": "policy quota exceeded"}')
    r = server.create([v1(a, b, 1000)], token=WRITER)
    assert r.status_code == 200
    r = server.create([v1(a, b, 1001)], token=WRITER)
    assert r.status_code == 403
    r = server.create([v1(a, b, 1001)], token=ADMIN)  # admins have no quota
    assert r.status_code == 200


def test_list_is_filtered_to_the_developers_spaces(server: Env, spaces: dict[str, str]) -> None:
    a, b, c, x = spaces["a"], spaces["b"], spaces["c"], spaces["x"]
    assert server.create([v1(a, b), v1(b, c), v1(a, x), v1(spaces["unknown"], a)]).status_code == 200
    ids = ",".join(spaces.values())
    r = server.list(f"?id={ids}", token=WRITER)
    assert r.status_code == 200
    assert [(p["source"]["id"], p["destination"]["id"]) for p in r.json()["policies"]] == [
        (a, b), (b, c)]
    assert r.json()["total_policies"] == 2
    server.cloud.fail.add("/v2/users/")
    try:
        r = server.list(f"?id={ids}", token=WRITER)
    finally:
        server.cloud.fail.discard("/v2/users/")
    assert (r.status_code, r.content) == (500, b'{"error": "filter policies failed"}')


def test_store_refusal_is_500_and_rolls_the_batch_back(server: Env) -> None:
    router, a = guid("router"), guid("a")
    r = requests.put(server.int + "/tags", json={"id": router, "type": "router"},
                     cert=server.ps.client_cert, verify=server.ps.ca_file, timeout=10)
    assert r.status_code == 200
    r = server.create([v1(a, guid("b")), v1(a, router)])
    assert (r.status_code, r.content) == (500, b'{"error": "database create failed"}')
    assert server.list(f"?id={a}").json() == {"total_policies": 0, "policies": []}


# -- metrics and logs -------------------------------------------------------------------------------


def test_metrics_count_routes_errors_and_store_calls(server: Env) -> None:
    requests.get(server.ext + "/tags", timeout=10)  # a 401
    server.list()
    text = requests.get(server.ps.debug_url + "/metrics", timeout=10).text
    assert re.search(r'cfnet_policy_server_requests_total\{code="200",route="PoliciesIndex"\} [1-9]',
                     text)
    assert re.search(r'cfnet_policy_server_http_errors_total\{route="TagsIndex"\} [1-9]', text)
    assert re.search(r'cfnet_policy_server_store_operation_duration_seconds_count'
                     r'\{op="All",outcome="success"\} [1-9]', text)
    assert "cfnet_policy_server_request_duration_seconds_bucket" in text


def test_created_and_deleted_policies_are_logged_with_the_user(server: Env) -> None:
    a = guid("logged")
    server.create([v1(a, "b")], token=ADMIN)
    server.delete([v1(a, "b")], token=ADMIN)

    def find(event: str) -> dict[str, Any]:
        for line in server.ps.log_lines():
            if line["message"].endswith(event) and a in str(line["data"]):
                return line
        raise AssertionError(f"no {event} line for {a}")

    for event in ("created-policies", "deleted-policies"):
        line = find(event)
        assert line["source"] == "cfnetworking.policy-server"
        assert line["data"]["userName"] == "admin"


def test_log_level_changes_at_runtime(server: Env) -> None:
    r = requests.post(server.ps.debug_url + "/log-level", data="d", timeout=10)
    assert r.status_code == 200
    marker = uuid.uuid4().hex
    requests.get(server.ext + "/whoami", headers={**server.auth(), "X-VCAP-Request-ID": marker},
                 timeout=10)
    requests.post(server.ps.debug_url + "/log-level", data="info", timeout=10)
    assert any(l["message"].endswith(".serving") for l in server.ps.log_lines())
    # upstream's lager debug server: any method, unknown or empty body = no change, always 200
    for method, body in (("POST", "loud"), ("POST", ""), ("GET", ""), ("PUT", "x")):
        r = requests.request(method, server.ps.debug_url + "/log-level", data=body, timeout=10)
        assert (r.status_code, r.text) == (200, "")
    serving = sum(l["message"].endswith(".serving") for l in server.ps.log_lines())
    requests.get(server.ext + "/whoami", headers=server.auth(), timeout=10)
    assert sum(l["message"].endswith(".serving") for l in server.ps.log_lines()) == serving, \
        "an unknown level must leave the level at info"
