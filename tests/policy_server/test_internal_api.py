"""The internal API on mutual TLS, the health listener, and the tag rules (spec 1.2, 4)."""

from __future__ import annotations

import re
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from ps_env import Env, StartEnv, guid, v1

from cfnet.core.security_groups import SecurityGroup
from cfnet.store.db import Database
from cfnet.store.policies import PolicyStore
from cfnet.web.tls import generate_bundle


def test_policies_carry_tags_and_filter_by_id(fresh_server: StartEnv) -> None:
    env = fresh_server()
    assert env.create([v1("app1", "app2", 8080), v1("app3", "app1", 9999),
                       v1("app3", "app2", 3333, 4444)]).status_code == 200
    r = env.get_internal("/networking/v1/internal/policies")
    assert r.status_code == 200
    assert r.content == (
        b'{"total_policies":3,"policies":['
        b'{"source":{"id":"app1","tag":"0001"},"destination":{"id":"app2","tag":"0002","protocol":"tcp","ports":{"start":8080,"end":8080}}},'
        b'{"source":{"id":"app3","tag":"0003"},"destination":{"id":"app1","tag":"0001","protocol":"tcp","ports":{"start":9999,"end":9999}}},'
        b'{"source":{"id":"app3","tag":"0003"},"destination":{"id":"app2","tag":"0002","protocol":"tcp","ports":{"start":3333,"end":4444}}}]}')
    assert r.headers["strict-transport-security"] == "max-age=31536000"
    assert "x-frame-options" not in r.headers
    assert re.fullmatch(r"[0-9a-f-]{36}", r.headers["x-vcap-request-id"])
    # no version check: any segment gives the same v1 shape
    assert env.get_internal("/networking/v9/internal/policies").content == r.content
    r = env.get_internal("/networking/v0/internal/policies?id=app2")
    assert [p["source"]["id"] for p in r.json()["policies"]] == ["app1", "app3"]
    r = env.get_internal("/networking/v1/internal/policies?id=")
    assert r.content == b'{"total_policies":0,"policies":[]}'


def test_tags_follow_the_upstream_reuse_examples(fresh_server: StartEnv) -> None:
    env = fresh_server()
    tags = lambda: [(t["id"], t["tag"]) for t in requests.get(  # noqa: E731
        env.ext + "/tags", headers=env.auth(), timeout=10).json()["tags"]]
    assert env.create([v1("A", "B", 8090), v1("A", "C", 6666, protocol="udp"),
                       v1("C", "A", 3333)]).status_code == 200
    assert tags() == [("A", "0001"), ("B", "0002"), ("C", "0003")]
    assert env.delete([v1("A", "B", 8090)]).status_code == 200
    assert env.create([v1("A", "D", 1234)]).status_code == 200
    assert tags() == [("A", "0001"), ("D", "0002"), ("C", "0003")]
    r = requests.get(env.ext_v("v0") + "/tags", headers=env.auth(), timeout=10)
    assert r.content == (b'{"tags":[{"id":"A","tag":"0001","type":"app"},'
                         b'{"id":"D","tag":"0002","type":"app"},{"id":"C","tag":"0003","type":"app"}]}')


def test_empty_tags_and_cleanup_bodies(fresh_server: StartEnv) -> None:
    env = fresh_server()
    r = requests.get(env.ext + "/tags", headers=env.auth(), timeout=10)
    assert r.content == b'{"tags":[]}'
    r = requests.post(env.ext + "/policies/cleanup", headers=env.auth(), timeout=10)
    assert r.content == b'{"total_policies":0,"policies":[]}'


def test_put_tags_is_idempotent_per_type(server: Env) -> None:
    kw = dict(cert=server.ps.client_cert, verify=server.ps.ca_file, timeout=10)
    router = guid("router")
    r1 = requests.put(server.int + "/tags", data=f'{{"id": "{router}", "type": "router-type"}}', **kw)
    assert r1.status_code == 200
    body = r1.json()
    assert body["id"] == router and body["type"] == "router-type"
    assert r1.content == (f'{{"id":"{router}","tag":"{body["tag"]}","type":"router-type"}}').encode()
    assert requests.put(server.int + "/tags", data=f'{{"ID": "{router}", "Type": "router-type"}}',
                        **kw).content == r1.content
    r = requests.put(server.int + "/tags", json={"id": router, "type": "other"}, **kw)
    assert (r.status_code, r.content) == (500, b'{"error": "database create failed"}')
    for bad in (b"{", b"[]", b'{"id": 5}', b"\xff"):
        r = requests.put(server.int + "/tags", data=bad, **kw)
        assert (r.status_code, r.content) == (400, b'{"error": "failed parsing request body"}')
    r = requests.put(server.int + "/tags", data=b'{"id": "lone-\\ud800", "type": "x"}', **kw)
    assert r.status_code == 200 and r.json()["id"] == "lone-\ufffd"
    # PUT only on the literal v1 path; the router's own answers carry HSTS too on this port
    r = requests.put(server.ps.internal_url + "/networking/v0/internal/tags", json={}, **kw)
    assert (r.status_code, r.text) == (404, "404 page not found\n")
    assert r.headers["strict-transport-security"] == "max-age=31536000"
    r = requests.post(server.int + "/policies", **kw)
    assert r.status_code == 405 and r.headers["strict-transport-security"] == "max-age=31536000"


def test_last_updated_is_a_bare_integer_that_only_writes_move(server: Env) -> None:
    r = server.get_internal("/networking/v1/internal/policies_last_updated")
    assert r.status_code == 200
    assert r.text.isdigit() and r.text.endswith("000")
    first = int(r.text)
    server.create([v1("", "x")])  # rejected: no change
    requests.get(server.ext + "/policies", timeout=10)
    assert server.stamp() == first
    server.create([v1(guid(), guid())])
    second = server.stamp()
    server.delete([v1(guid(), guid())])  # deletes nothing, still bumps
    third = server.stamp()
    assert first < second < third


def test_security_groups_pages_and_space_filter(fresh_server: StartEnv) -> None:
    env = fresh_server()
    db = Database(env.ps.database)
    try:
        store = PolicyStore(db, 2)
        rules = '[{"protocol":"tcp","destination":"","ports":"","type":0,"code":0,"description":"sg-rule-1","log":false}]'
        store.replace_security_groups([
            SecurityGroup("sg-guid-1", "sg-name-1", rules, True, False, ("space-a",), ("space-b",)),
            SecurityGroup("sg-2", "bound-a", "[]", False, False, ("space-a",), ()),
            SecurityGroup("sg-3", "bound-c", "[]", False, False, (), ("space-c",)),
            SecurityGroup("sg-4", "global-running", "[]", False, True, (), ()),
        ])
    finally:
        db.close()
    get = lambda q: env.get_internal("/networking/v1/internal/security_groups" + q)  # noqa: E731
    r = get("")
    assert r.status_code == 200
    assert r.content.startswith(
        b'{"next":0,"security_groups":[{"guid":"sg-guid-1","name":"sg-name-1","rules":'
        b'"[{\\"protocol\\":\\"tcp\\",\\"destination\\":\\"\\",\\"ports\\":\\"\\",\\"type\\":0,'
        b'\\"code\\":0,\\"description\\":\\"sg-rule-1\\",\\"log\\":false}]",'
        b'"staging_default":true,"running_default":false,"staging_space_guids":["space-a"],'
        b'"running_space_guids":["space-b"]}')
    names = lambda r: [g["name"] for g in r.json()["security_groups"]]  # noqa: E731
    assert names(r) == ["sg-name-1", "global-running"]
    assert names(get("?space_guids=space-c,space-x")) == ["sg-name-1", "bound-c", "global-running"]
    page1 = get("?space_guids=space-a,space-c&limit=2").json()
    assert [g["guid"] for g in page1["security_groups"]] == ["sg-guid-1", "sg-2"]
    assert page1["next"] > 0
    page2 = get(f"?space_guids=space-a,space-c&limit=2&from={page1['next']}").json()
    assert [g["guid"] for g in page2["security_groups"]] == ["sg-3", "sg-4"]
    assert page2["next"] == 0
    assert names(get("?per_page=1")) == ["sg-name-1", "global-running"]  # per_page is ignored
    for q, name in (("?from=x", "from"), ("?limit=1.5", "limit"), ("?from=1&limit=--1", "limit")):
        r = get(q)
        assert (r.status_code, r.json()) == (500, {"error": f"invalid value for '{name}' parameter"})


# -- mutual TLS ------------------------------------------------------------------------------------


def test_mtls_refuses_clients_without_a_cert_or_from_another_ca(server: Env,
                                                                tmp_path: Path) -> None:
    url = server.int + "/policies"
    # TLS 1.3 reports the refusal after the handshake: an alert or a closed connection, never
    # an HTTP response (SSLError is a ConnectionError).
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url, verify=server.ps.ca_file, timeout=10).raise_for_status()
    foreign = generate_bundle(tmp_path / "foreign")
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url, verify=server.ps.ca_file, timeout=10,
                     cert=(str(foreign.client.cert), str(foreign.client.key))).raise_for_status()
    # and the server's certificate is only trusted through our CA
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(url, cert=server.ps.client_cert, verify=str(foreign.ca_cert), timeout=10)


def test_mtls_allows_only_the_pinned_tls12_suite(server: Env) -> None:
    host, port = server.ps.internal_url.split("//")[1].split(":")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(server.ps.ca_file)
    ctx.load_cert_chain(*server.ps.client_cert)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ECDHE-RSA-AES256-GCM-SHA384")
    import socket

    with socket.create_connection((host, int(port)), timeout=10) as sock:
        with pytest.raises(ssl.SSLError):
            ctx.wrap_socket(sock, server_hostname=host)


def test_health_listener_is_plain_http_without_hsts(server: Env) -> None:
    r = requests.get(server.ps.health_url, timeout=10)
    assert (r.status_code, r.content) == (200, b"")
    assert "strict-transport-security" not in r.headers
    r = requests.get(server.ps.health_url.rsplit("/", 1)[0] + "/", timeout=10)
    assert r.text.startswith("Network policy server, up for ")


def test_migrate_command_is_idempotent(server: Env) -> None:
    for _ in range(2):
        r = subprocess.run([sys.executable, "-m", "cfnet", "policy-server", "migrate",
                            "--config-file", str(server.ps.internal_config_path)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert '"num-applied":0' in r.stdout


@pytest.mark.parametrize("tag_length", [1, 2, 3])
def test_fast_policy_rendering_matches_the_generic_json(tag_length: int) -> None:
    import json

    from cfnet.core.policy import Policy, TaggedPolicy, tagged_policy_to_internal
    from cfnet.policy_server.internal import render_internal_policies

    found = [TaggedPolicy(Policy('a"\\b', "ünï\u2028/<x>", "tcp", 1, 65535), 1, 255),
             TaggedPolicy(Policy("app-1", "app-2", "udp", 70000, 70000), 10, 2),
             TaggedPolicy(Policy("\x00\x1f", "😀", "tcp", 8080, 8090), 255, 3)]
    expected = json.dumps({"total_policies": 3, "policies": [
        tagged_policy_to_internal(tp, tag_length) for tp in found]}, separators=(",", ":"))
    assert render_internal_policies(found, tag_length) == expected.encode()
    assert render_internal_policies([], tag_length) == b'{"total_policies":0,"policies":[]}'
