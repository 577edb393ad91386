"""`cfnet policy` and the API clients against a real `cfnet policy-server` (subprocess, SQLite).

One server per module, in standalone mode (static admin and network.write tokens); every test uses
its own app guids, so tests do not see each other's policies.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cfnet.cli.exit_codes import ExitCode
from cfnet.clients.http import ApiError
from cfnet.clients.internal_api import InternalClient
from cfnet.clients.policy_api import Policy, PolicyClient
from cfnet.store.db import DatabaseConfig
from cfnet.testing.policy_server import RunningPolicyServer, start_policy_server
from cfnet.web.tls import TLSFiles


@pytest.fixture(scope="module")
def ps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPolicyServer]:
    work = tmp_path_factory.mktemp("policy-server")
    db = DatabaseConfig(type="sqlite", path=str(work / "store.db"), timeout=10)
    server = start_policy_server(work, db)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def apps() -> list[str]:
    """Fresh app guids for one test."""
    return [str(uuid.uuid4()) for _ in range(4)]


@pytest.fixture
def admin(ps: RunningPolicyServer) -> Iterator[PolicyClient]:
    with PolicyClient(ps.external_url, ps.admin_token) as client:
        yield client


@pytest.fixture
def internal(ps: RunningPolicyServer) -> Iterator[InternalClient]:
    with InternalClient(ps.internal_url, ps.client_tls) as client:
        yield client


def server_args(ps: RunningPolicyServer, token: str | None = None) -> list[str]:
    return ["--api", ps.external_url, "--token", token or ps.admin_token]


# --- the CLI -----------------------------------------------------------------------------------


def test_add_list_remove_round_trip(cfnet, ps, apps, internal):
    a, b, c, _ = apps
    srv = server_args(ps)
    r = cfnet("policy", "add", a, b, *srv)
    assert (r.exit_code, r.stdout, r.stderr) == (0, f"Added policy {a} -> {b} tcp 8080\n", "")
    r = cfnet("policy", "add", a, c, "--protocol", "udp", "--port", "5300-5310", *srv)
    assert r.exit_code == ExitCode.OK

    r = cfnet("policy", "list", "--app", a, "--json", *srv)
    assert r.exit_code == ExitCode.OK
    assert json.loads(r.stdout) == {"total_policies": 2, "policies": [
        {"source": {"id": a}, "destination": {"id": b, "protocol": "tcp",
                                               "ports": {"start": 8080, "end": 8080}}},
        {"source": {"id": a}, "destination": {"id": c, "protocol": "udp",
                                               "ports": {"start": 5300, "end": 5310}}}]}

    r = cfnet("policy", "list", "--app", c, *srv)
    rows = [line.split() for line in r.stdout.splitlines()]
    assert rows == [["source", "destination", "protocol", "ports"], [a, c, "udp", "5300-5310"]]

    # Both filters: source or destination, several apps at once.
    r = cfnet("policy", "list", "--app", b, "--app", c, "--json", *srv)
    assert json.loads(r.stdout)["total_policies"] == 2

    r = cfnet("policy", "remove", a, b, *srv)
    assert (r.exit_code, r.stdout) == (0, f"Removed policy {a} -> {b} tcp 8080\n")
    r = cfnet("policy", "list", "--app", a, "--json", *srv)
    assert [p["destination"]["id"] for p in json.loads(r.stdout)["policies"]] == [c]
    assert [p.destination for p in internal.policies([a])] == [c]


def test_remove_of_a_missing_policy_sends_no_delete(cfnet, ps, apps, internal):
    a, b, _, _ = apps
    srv = server_args(ps)
    assert cfnet("policy", "add", a, b, "--port", "9000-9001", *srv).exit_code == ExitCode.OK
    # The server bumps the stamp on every valid delete request, even one that deletes nothing:
    # an unchanged stamp shows that no delete was sent.
    before = internal.policies_last_updated()
    for args in (["--port", "9000"], ["--port", "9000-9002"], ["--protocol", "udp", "--port",
                                                                "9000-9001"]):
        r = cfnet("policy", "remove", a, b, *args, *srv)
        assert r.exit_code == ExitCode.OK
        assert r.stdout.startswith("Policy does not exist: ")
    r = cfnet("policy", "remove", b, a, "--port", "9000-9001", "--json", *srv)
    assert json.loads(r.stdout)["removed"] is False
    assert internal.policies_last_updated() == before
    assert len(internal.policies([a])) == 1

    r = cfnet("policy", "remove", a, b, "--port", "9000-9001", "--json", *srv)
    assert json.loads(r.stdout) == {"removed": True,
                                    "policy": Policy(a, b, "tcp", 9000, 9001).to_v1()}
    assert internal.policies_last_updated() > before
    assert internal.policies([a]) == []


def test_add_is_idempotent_and_json(cfnet, ps, apps):
    a, b, _, _ = apps
    for _ in range(2):
        r = cfnet("policy", "add", a, b, "--port", "443", "--json", *server_args(ps))
        assert r.exit_code == ExitCode.OK
        assert json.loads(r.stdout) == {"total_policies": 1,
                                        "policies": [Policy(a, b, "tcp", 443, 443).to_v1()]}
    r = cfnet("policy", "list", "--app", a, "--json", *server_args(ps))
    assert json.loads(r.stdout)["total_policies"] == 1


def test_tags_and_whoami(cfnet, ps, apps):
    a, b, _, _ = apps
    assert cfnet("policy", "add", a, b, *server_args(ps)).exit_code == ExitCode.OK
    r = cfnet("policy", "tags", "--json", *server_args(ps))
    assert r.exit_code == ExitCode.OK
    tags = {t["id"]: t for t in json.loads(r.stdout)["tags"]}
    assert tags[a]["type"] == tags[b]["type"] == "app"
    assert len(tags[a]["tag"]) == 4 and tags[a]["tag"] != tags[b]["tag"]

    r = cfnet("policy", "tags", *server_args(ps))
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()[1:]}
    assert rows[a] == [a, tags[a]["tag"], "app"]

    r = cfnet("policy", "whoami", *server_args(ps))
    assert (r.exit_code, r.stdout) == (0, "admin\n")
    r = cfnet("policy", "whoami", "--json", *server_args(ps))
    assert json.loads(r.stdout) == {"subject": "admin"}


@pytest.mark.parametrize("command", [["tags"], ["whoami"], ["cleanup"]])
def test_admin_commands_refuse_a_write_token(cfnet, ps, command):
    r = cfnet("policy", *command, *server_args(ps, ps.write_token))
    assert r.exit_code == ExitCode.AUTH
    assert r.stderr == ("error: provided scopes [network.write] do not include allowed scopes "
                        "[network.admin]\n")
    assert r.stdout == ""


def test_unknown_token_and_no_token(cfnet, ps, clean_env):
    r = cfnet("policy", "list", *server_args(ps, "not-a-token"))
    assert (r.exit_code, r.stderr) == (ExitCode.AUTH, "error: failed to verify token with uaa\n")
    r = cfnet("policy", "list", "--api", ps.external_url)
    assert (r.exit_code, r.stderr) == (ExitCode.AUTH, "error: missing authorization header\n")


def test_other_4xx_exit_code(cfnet, ps):
    # A path prefix the server does not have (as behind a misconfigured proxy): 404 as is.
    r = cfnet("policy", "list", "--api", ps.external_url + "/prefix", "--token", ps.admin_token)
    assert r.exit_code == ExitCode.CLIENT_ERROR
    assert r.stderr == "error: HTTP 404 Not Found: 404 page not found\n"


def test_server_error_text_and_5xx_exit_code(cfnet, ps, apps, internal):
    router = apps[0]
    tag = internal.create_tag(router, "router")
    assert (tag.id, tag.type) == (router, "router")
    # A guid that already holds a non-app tag cannot be a policy's app: upstream answers 500.
    r = cfnet("policy", "add", router, apps[1], *server_args(ps))
    assert r.exit_code == ExitCode.SERVER_ERROR
    assert r.stderr == "error: database create failed\n"


def test_quota_is_shown_as_the_server_says_it(cfnet, tmp_path, apps):
    db = DatabaseConfig(type="sqlite", path=str(tmp_path / "quota.db"), timeout=10)
    server = start_policy_server(tmp_path / "quota", db, external={"max_policies": 1})
    try:
        srv = server_args(server, server.write_token)
        assert cfnet("policy", "add", apps[0], apps[1], *srv).exit_code == ExitCode.OK
        r = cfnet("policy", "add", apps[0], apps[2], *srv)
        assert (r.exit_code, r.stderr) == (ExitCode.AUTH, "error: policy quota exceeded\n")
    finally:
        server.stop()


def test_settings_from_env_and_config_file_reach_the_server(cfnet, ps, apps, clean_env):
    a, b, _, _ = apps
    cfg = Path(clean_env["XDG_CONFIG_HOME"]) / "cfnet" / "cli.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(f'api = "{ps.external_url}"\ntoken = "{ps.admin_token}"\n')
    assert cfnet("policy", "add", a, b).exit_code == ExitCode.OK
    # The environment's token beats the file's ...
    r = cfnet("policy", "whoami", env={"CFNET_TOKEN": ps.write_token})
    assert r.exit_code == ExitCode.AUTH
    # ... and the flag beats the environment.
    r = cfnet("policy", "whoami", "--token", ps.admin_token, env={"CFNET_TOKEN": ps.write_token})
    assert (r.exit_code, r.stdout) == (0, "admin\n")
    # The full Cloud Controller link works as the URL too.
    r = cfnet("policy", "list", "--app", a, "--json",
              "--api", ps.external_url + "/networking/v1/external")
    assert json.loads(r.stdout)["total_policies"] == 1


def test_subprocess_round_trip(cfnet_proc, ps, apps):
    a, b, _, _ = apps
    env = {"CFNET_API": ps.external_url, "CFNET_TOKEN": ps.admin_token}
    r = cfnet_proc("policy", "add", a, b, "--protocol", "udp", "--port", "53", env=env)
    assert (r.exit_code, r.stdout, r.stderr) == (0, f"Added policy {a} -> {b} udp 53\n", "")
    r = cfnet_proc("policy", "list", "--app", b, "--json", env=env)
    assert json.loads(r.stdout)["policies"] == [Policy(a, b, "udp", 53, 53).to_v1()]
    r = cfnet_proc("policy", "remove", a, b, "--protocol", "udp", "--port", "53", env=env)
    assert (r.exit_code, r.stdout) == (0, f"Removed policy {a} -> {b} udp 53\n")
    r = cfnet_proc("policy", "tags", env={**env, "CFNET_TOKEN": ps.write_token})
    assert r.exit_code == ExitCode.AUTH
    assert r.stderr == ("error: provided scopes [network.write] do not include allowed scopes "
                        "[network.admin]\n")


# --- the external client -----------------------------------------------------------------------


def test_client_server_validation_text_and_status(admin, apps):
    a, b, _, _ = apps
    # Built without make_policy, so nothing stops it locally: the server's text comes back as is.
    with pytest.raises(ApiError) as e:
        admin.create([Policy(a, b, "tcp", 0, 0)])
    assert (e.value.status, e.value.error) == (400, "mapper: validate policies: missing start port")
    with pytest.raises(ApiError) as e:
        admin.create([Policy(a, b, "icmp", 1, 1)])
    assert e.value.error == ("mapper: validate policies: invalid destination protocol, specify "
                             "either udp or tcp")
    # All or nothing: one bad policy in a batch stores none of them.
    with pytest.raises(ApiError):
        admin.create([Policy(a, b, "tcp", 80, 80), Policy(a, b, "tcp", 90, 80)])
    assert admin.list(ids=[a]) == []


def test_client_list_filters(admin, apps):
    a, b, c, d = apps
    admin.create([Policy(a, b, "tcp", 1, 1), Policy(c, a, "tcp", 2, 2), Policy(c, d, "udp", 3, 4)])
    assert [p.start for p in admin.list(ids=[a])] == [1, 2]
    assert [p.start for p in admin.list(source_ids=[c])] == [2, 3]
    assert [p.start for p in admin.list(dest_ids=[a, d])] == [2, 3]
    assert [p.start for p in admin.list(source_ids=[c], dest_ids=[d])] == [3]
    assert admin.list(ids=[]) == []
    every = admin.list()
    assert {Policy(a, b, "tcp", 1, 1), Policy(c, d, "udp", 3, 4)} <= set(every)
    assert admin.find(Policy(c, d, "udp", 3, 4)) == Policy(c, d, "udp", 3, 4)
    assert admin.find(Policy(c, d, "udp", 3, 3)) is None
    assert admin.remove(Policy(c, d, "udp", 3, 4)) is True
    assert admin.remove(Policy(c, d, "udp", 3, 4)) is False


def test_client_cleanup_and_whoami(admin):
    assert admin.whoami() == "admin"
    assert isinstance(admin.cleanup(), list)


# --- the internal client (mutual TLS) -----------------------------------------------------------


def test_internal_policies_carry_the_tags(admin, internal, apps):
    a, b, c, _ = apps
    admin.create([Policy(a, b, "tcp", 8080, 8080), Policy(b, c, "udp", 1000, 2000)])
    tags = {t.id: t.tag for t in admin.tags()}
    got = internal.policies([b])
    assert [(p.source, p.source_tag, p.destination, p.destination_tag, p.protocol, p.start, p.end)
            for p in got] == [(a, tags[a], b, tags[b], "tcp", 8080, 8080),
                              (b, tags[b], c, tags[c], "udp", 1000, 2000)]
    assert internal.policies([]) == []
    assert {(p.source, p.destination) for p in internal.policies()} >= {(a, b), (b, c)}


def test_last_updated_grows_on_every_change(admin, internal, apps):
    a, b, _, _ = apps
    first = internal.policies_last_updated()
    admin.create([Policy(a, b, "tcp", 1, 1)])
    second = internal.policies_last_updated()
    admin.delete([Policy(a, b, "tcp", 1, 1)])
    third = internal.policies_last_updated()
    assert first < second < third
    assert third % 1000 == 0  # microseconds, as upstream


def test_watch_returns_when_a_policy_changes(cfnet, ps, internal, apps):
    a, b, _, _ = apps
    since = internal.policies_last_updated()
    result: list[object] = []

    def watch() -> None:
        with InternalClient(ps.internal_url, ps.client_tls) as watcher:
            try:
                result.append(watcher.policies_last_updated(wait=60, since=since))
            except ApiError as e:
                result.append(e)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    assert cfnet("policy", "add", a, b, *server_args(ps)).exit_code == ExitCode.OK
    thread.join(30)  # far below the 60 s wait: only a wake-up on the change finishes in time
    assert not thread.is_alive(), "the watch did not return after the change"
    assert isinstance(result[0], int) and result[0] > since
    assert result[0] == internal.policies_last_updated()


@pytest.mark.timeout(30)  # a `since` in the past must not wait the full 60 s
def test_watch_without_change_returns_the_same_stamp(internal):
    # Nothing writes to this module's server while this test runs.
    stamp = internal.policies_last_updated()
    assert internal.policies_last_updated(wait=0.2, since=stamp) == stamp
    assert internal.policies_last_updated(wait=0.2) == stamp
    assert internal.policies_last_updated(wait=0) == stamp
    # A `since` older than the stamp answers at once with the current stamp.
    assert internal.policies_last_updated(wait=60, since=stamp - 1) == stamp


def test_create_tag_is_idempotent_and_conflicts_are_server_errors(internal, apps):
    router = apps[0]
    first = internal.create_tag(router, "router")
    assert internal.create_tag(router, "router") == first
    assert len(first.tag) == 4
    with pytest.raises(ApiError) as e:
        internal.create_tag(router, "other-type")
    assert (e.value.status, e.value.error) == (500, "database create failed")


def test_security_groups_and_paging(ps, internal):
    from cfnet.core.security_groups import SecurityGroup as StoredGroup
    from cfnet.store.db import Database
    from cfnet.store.policies import PolicyStore

    rules = ('[{"protocol":"tcp","destination":"10.0.0.0/8","ports":"443","type":0,"code":0,'
             '"description":"","log":false}]')
    # The ASG syncer's job, done directly on the server's own database.
    db = Database(ps.database)
    try:
        PolicyStore(db).replace_security_groups([
            StoredGroup("g-global", "global", rules, running_default=True),
            StoredGroup("g-a", "a", "[]", staging_spaces=("space-a",)),
            StoredGroup("g-b", "b", "[]", running_spaces=("space-b",)),
            StoredGroup("g-c", "c", "[]", running_spaces=("space-c",)),
        ])
    finally:
        db.close()

    only_global = internal.security_groups()
    assert [g.guid for g in only_global.security_groups] == ["g-global"]
    assert only_global.next == 0
    g = only_global.security_groups[0]
    assert (g.running_default, g.staging_default, g.rule_list()[0]["ports"]) == (True, False, "443")

    spaces = ["space-a", "space-b"]
    assert [g.guid for g in internal.security_groups(spaces).security_groups] == \
        ["g-global", "g-a", "g-b"]
    page = internal.security_groups(spaces, limit=2)
    assert [g.guid for g in page.security_groups] == ["g-global", "g-a"] and page.next > 0
    rest = internal.security_groups(spaces, from_id=page.next, limit=2)
    assert [g.guid for g in rest.security_groups] == ["g-b"] and rest.next == 0
    assert [g.guid for g in internal.all_security_groups(spaces, page_size=1)] == \
        ["g-global", "g-a", "g-b"]
    assert internal.security_groups(["space-a"]).security_groups[1].staging_space_guids == \
        ["space-a"]


def refused(error: ApiError, url: str) -> bool:
    """Under TLS 1.3 a refused client certificate shows as a closed connection or a TLS alert."""
    return error.unreachable and (
        error.error.startswith(f"cannot connect to {url}: the server closed the connection")
        or error.error.startswith(f"TLS failure talking to {url}: "))


def test_internal_api_refuses_clients_without_a_trusted_certificate(ps, tmp_path):
    from cfnet.clients.http import Transport
    from cfnet.web.tls import generate_bundle

    anonymous = Transport(ps.internal_url, verify=ps.ca_file, timeout=5)
    with pytest.raises(ApiError) as e:
        anonymous.request("GET", "/networking/v1/internal/policies")
    anonymous.close()
    assert refused(e.value, ps.internal_url), e.value.error

    other = generate_bundle(tmp_path / "other")
    stranger = TLSFiles(other.client.cert, other.client.key, ps.client_tls.ca)
    with InternalClient(ps.internal_url, stranger, timeout=5) as client:
        with pytest.raises(ApiError) as e:
            client.policies_last_updated()
    assert refused(e.value, ps.internal_url), e.value.error


def test_internal_client_verifies_the_server(ps, tmp_path):
    from cfnet.web.tls import generate_bundle

    other = generate_bundle(tmp_path / "other")
    with InternalClient(ps.internal_url, other.client, timeout=5) as client:
        with pytest.raises(ApiError) as e:
            client.policies()
    assert e.value.unreachable
    assert e.value.error == (f"TLS failure talking to {ps.internal_url}: certificate verify "
                             "failed: certificate signature failure")


def test_https_external_api_with_ca_cert(cfnet, tmp_path, apps):
    """`--ca-cert` / CFNET_CA_CERT verify an external API served over TLS (`enable_tls`)."""
    from cfnet.web.tls import generate_bundle

    bundle = generate_bundle(tmp_path / "certs")
    db = DatabaseConfig(type="sqlite", path=str(tmp_path / "tls.db"), timeout=10)
    server = start_policy_server(tmp_path / "tls", db, bundle=bundle, external={
        "enable_tls": True, "server_cert_file": str(bundle.server.cert),
        "server_key_file": str(bundle.server.key)})
    try:
        assert server.external_url.startswith("https://")
        srv = server_args(server)
        r = cfnet("policy", "add", apps[0], apps[1], *srv, "--ca-cert", str(bundle.ca_cert))
        assert r.exit_code == ExitCode.OK, r.stderr
        r = cfnet("policy", "list", "--app", apps[0], "--json", *srv,
                  env={"CFNET_CA_CERT": str(bundle.ca_cert)})
        assert json.loads(r.stdout)["total_policies"] == 1
        # Without the CA the server's certificate cannot be verified.
        r = cfnet("policy", "list", *srv)
        assert r.exit_code == ExitCode.UNREACHABLE
        assert r.stderr.startswith(f"error: TLS failure talking to {server.external_url}: "
                                   "certificate verify failed")
    finally:
        server.stop()


# --- v0 ports above 65535, untrusted text on the terminal ---------------------------------------


def post_v0(ps: RunningPolicyServer, path: str, body: object) -> None:
    import requests

    resp = requests.post(f"{ps.external_url}/networking/v0/external/{path}", json=body,
                         headers={"Authorization": f"bearer {ps.admin_token}"}, timeout=10)
    assert resp.status_code == 200, resp.text


def test_remove_can_name_a_v0_port_above_65535(cfnet, ps, apps, internal):
    """v0 stores port 70000 (a kept upstream quirk); v1 cannot name it, so remove goes via v0."""
    a, b, _, _ = apps
    post_v0(ps, "policies", {"policies": [
        {"source": {"id": a}, "destination": {"id": b, "protocol": "tcp", "port": 70000}}]})
    r = cfnet("policy", "list", "--app", a, *server_args(ps))
    assert [line.split() for line in r.stdout.splitlines()][1:] == [[a, b, "tcp", "70000"]]
    # add still refuses it: the server's v1 API would.
    r = cfnet("policy", "add", a, b, "--port", "70000", *server_args(ps))
    assert r.exit_code == ExitCode.USAGE
    # A range above 65535 cannot be stored by any version, so remove refuses it as well.
    r = cfnet("policy", "remove", a, b, "--port", "70000-70001", *server_args(ps))
    assert (r.exit_code, r.stderr) == (ExitCode.USAGE,
                                       "error: invalid port 70000, must be in range 1-65535\n")
    r = cfnet("policy", "remove", a, b, "--port", "70001", *server_args(ps))
    assert (r.exit_code, r.stdout) == (0, f"Policy does not exist: {a} -> {b} tcp 70001\n")
    r = cfnet("policy", "remove", a, b, "--port", "70000", *server_args(ps))
    assert (r.exit_code, r.stdout, r.stderr) == (0, f"Removed policy {a} -> {b} tcp 70000\n", "")
    assert internal.policies([a]) == []


def test_control_characters_are_escaped_on_the_terminal_not_in_json(cfnet, ps, apps):
    a = apps[0]
    red = f"\x1b[31mRED{apps[1]}\x1b[0m"
    shown = f"\\x1b[31mRED{apps[1]}\\x1b[0m"
    r = cfnet("policy", "add", a, red, *server_args(ps))
    assert (r.exit_code, r.stdout) == (0, f"Added policy {a} -> {shown} tcp 8080\n")
    r = cfnet("policy", "list", "--app", a, *server_args(ps))
    assert "\x1b" not in r.stdout
    assert [line.split() for line in r.stdout.splitlines()][1:] == [[a, shown, "tcp", "8080"]]
    r = cfnet("policy", "tags", *server_args(ps))
    assert "\x1b" not in r.stdout and shown in r.stdout
    r = cfnet("policy", "list", "--app", a, "--json", *server_args(ps))
    assert json.loads(r.stdout)["policies"][0]["destination"]["id"] == red
    r = cfnet("policy", "remove", a, red, "--port", "8081", *server_args(ps))
    assert r.stdout == f"Policy does not exist: {a} -> {shown} tcp 8081\n"
    r = cfnet("policy", "remove", a, red, *server_args(ps))
    assert r.stdout == f"Removed policy {a} -> {shown} tcp 8080\n"
    # A bidi override or a bell in an id is escaped the same way.
    r = cfnet("policy", "add", a, "x\u202ey\x07", "--json", *server_args(ps))
    assert json.loads(r.stdout)["policies"][0]["destination"]["id"] == "x\u202ey\x07"
    r = cfnet("policy", "list", "--app", a, *server_args(ps))
    assert "x\\u202ey\\x07" in r.stdout and "\u202e" not in r.stdout
