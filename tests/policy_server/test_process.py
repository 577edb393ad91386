"""The process: start-up errors, SIGTERM, standalone static tokens, external TLS, the cleaner, the
ASG syncer."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from ps_env import INTERNAL_OVERRIDES, Env, StartEnv, make_database, uaa_overrides, uaa_tokens, v1
from ps_stubs import Cloud, serve_stub

from cfnet.store.db import DatabaseConfig
from cfnet.testing.policy_server import policy_server, start_policy_server
from cfnet.web.tls import generate_bundle, server_context


def eventually(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:.0f} s")
        time.sleep(0.05)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cfnet", "policy-server", *args],
                          capture_output=True, text=True, timeout=60)


# -- start-up errors ---------------------------------------------------------------------------------


def _external(tmp_path: Path, **keys: Any) -> Path:
    config = {"listen_host": "127.0.0.1", "listen_port": 0, "debug_server_port": 0,
              "database": {"type": "sqlite", "path": str(tmp_path / "db.sqlite")},
              "static_tokens_file": str(tmp_path / "tokens.json"), **keys}
    (tmp_path / "tokens.json").write_text('{"tokens": []}')
    path = tmp_path / "ext.json"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("keys, text", [
    ({"bogus_key": 1}, "invalid config: unknown key 'bogus_key'"),
    ({"listen_port": "4002"}, "invalid config: key 'listen_port': expected an integer"),
    ({"max_policies": 0}, "invalid config: key 'max_policies': 0 is less than 1"),
    ({"tag_length": 4}, "invalid config: key 'tag_length': 4 is more than 3"),
    ({"database": {"type": "mysql"}}, "database type 'mysql' is not supported"),
    ({"database": {"type": "sqlite", "bogus": 1}}, "unknown key 'database.bogus'"),
    ({"static_tokens_file": ""}, "invalid config: key 'uaa_url' is required"),
    ({"enable_tls": True}, "key 'server_cert_file' and 'server_key_file' are required"),
    ({"internal": {"ca_cert_file": "x"}}, "key 'internal.server_cert_file' is required"),
])
def test_bad_config_is_one_line_and_a_nonzero_exit(tmp_path: Path, keys: dict[str, Any],
                                                   text: str) -> None:
    r = run_cli("serve", "--config-file", str(_external(tmp_path, **keys)))
    assert r.returncode == 3
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("cfnetworking.policy-server: could not read config file: ")
    assert text in lines[0]


def test_missing_unparsable_and_bad_token_files(tmp_path: Path) -> None:
    r = run_cli("serve", "--config-file", str(tmp_path / "nope.json"))
    assert r.returncode == 3
    assert r.stderr.strip() == ("cfnetworking.policy-server: could not read config file: "
                                f"reading config: {tmp_path / 'nope.json'}: No such file or directory")
    (tmp_path / "broken.toml").write_text("listen_port = ")
    r = run_cli("serve-external", "--config-file", str(tmp_path / "broken.toml"))
    assert r.returncode == 3 and "parsing config:" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    path = _external(tmp_path)
    (tmp_path / "tokens.json").write_text('{"tokens": [{"token": 5}]}')
    r = run_cli("serve", "--config-file", str(path))
    assert r.returncode == 3
    assert r.stderr.strip().splitlines() == [
        "cfnetworking.policy-server: could not read config file: invalid config: key "
        f"'static_tokens_file': {tmp_path / 'tokens.json'}: tokens[0]: 'token' must be a "
        "non-empty string"]


def test_help_teaches_the_subcommands() -> None:
    r = run_cli("--help")
    assert r.returncode == 0
    for word in ("serve", "serve-external", "serve-internal", "asg-syncer", "migrate"):
        assert word in r.stdout
    r = run_cli("serve", "--help")
    assert "--internal-config-file" in r.stdout and "--asg-syncer-config-file" in r.stdout


def test_toml_config_and_one_file_setup(tmp_path: Path) -> None:
    bundle = generate_bundle(tmp_path / "certs")
    (tmp_path / "tokens.toml").write_text(
        '[[tokens]]\ntoken = "t"\nuser_name = "ops"\nscopes = ["network.admin"]\n')
    (tmp_path / "ps.toml").write_text(f"""
listen_host = "127.0.0.1"
listen_port = 0
debug_server_port = 0
static_tokens_file = "{tmp_path / 'tokens.toml'}"
[database]
type = "sqlite"
path = "{tmp_path / 'db.sqlite'}"
[internal]
internal_listen_port = 0
health_check_port = 0
debug_server_port = 0
ca_cert_file = "{bundle.ca_cert}"
server_cert_file = "{bundle.server.cert}"
server_key_file = "{bundle.server.key}"
""")
    out = tmp_path / "out"
    with open(out, "wb") as stdout:
        proc = subprocess.Popen([sys.executable, "-m", "cfnet", "policy-server", "serve",
                                 "--config-file", str(tmp_path / "ps.toml")], stdout=stdout,
                                stderr=subprocess.PIPE)
    try:
        line = eventually(lambda: next((l for l in out.read_text().splitlines()
                                        if "starting-servers" in l), None), what="start")
        addresses = json.loads(line)["data"]
        assert set(addresses) == {"external", "internal", "health", "debug", "internal_debug"}
        url = f"http://{addresses['external']}/networking/v1/external/whoami"
        r = eventually(lambda: _try_get(url, {"Authorization": "Bearer t"}), what="whoami")
        assert r.content == b'{"subject":"ops"}'
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def _try_get(url: str, headers: dict[str, str]) -> requests.Response | None:
    try:
        return requests.get(url, headers=headers, timeout=5)
    except requests.ConnectionError:
        return None


# -- SIGTERM -----------------------------------------------------------------------------------------


def test_sigterm_answers_waiting_long_polls_and_exits_zero(sqlite_config: DatabaseConfig,
                                                            tmp_path: Path) -> None:
    ps = start_policy_server(tmp_path, sqlite_config)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        stamp = requests.get(ps.internal_url + "/networking/v1/internal/policies_last_updated",
                             cert=ps.client_cert, verify=ps.ca_file, timeout=10).text
        future = pool.submit(requests.get, ps.internal_url
                             + f"/networking/v1/internal/policies_last_updated?wait=100&since={stamp}",
                             cert=ps.client_cert, verify=ps.ca_file, timeout=60,
                             headers={"Connection": "close"})
        eventually(lambda: re.search(r"^cfnet_policy_server_watch_waiting_requests 1",
                                     requests.get(ps.debug_url + "/metrics", timeout=5).text, re.M),
                   what="long-poll parked")
        ps.process.send_signal(signal.SIGTERM)
        assert ps.process.wait(30) == 0
        r = future.result(timeout=30)
    assert (r.status_code, r.text) == (200, stamp)
    assert any(l["message"].endswith(".exited") for l in ps.log_lines())
    assert "Traceback" not in ps.stderr_path.read_text()


# -- standalone mode (static tokens, no UAA, no CC) --------------------------------------------------


def test_static_tokens_without_cloud_controller(db_config: DatabaseConfig, tmp_path: Path) -> None:
    with policy_server(tmp_path, db_config, external={"max_policies": 2}) as ps:
        base = ps.external_url + "/networking/v1/external"
        admin = {"Authorization": f"Bearer {ps.admin_token}"}
        writer = {"Authorization": f"bearer {ps.write_token}"}
        assert requests.get(base + "/whoami", headers=admin, timeout=10).json() == {
            "subject": "admin"}
        r = requests.get(base + "/whoami", headers=writer, timeout=10)
        assert r.status_code == 403
        r = requests.post(base + "/policies", headers=writer, timeout=10,
                          json={"policies": [v1("a", "b"), v1("a", "c")]})
        assert (r.status_code, r.content) == (200, b"{}")
        r = requests.post(base + "/policies", headers=writer, timeout=10,
                          json={"policies": [v1("a", "d")]})
        assert (r.status_code, r.json()) == (403, {"error": "policy quota exceeded"})
        r = requests.get(base + "/policies", headers=writer, timeout=10)
        assert r.json()["total_policies"] == 2
        r = requests.get(base + "/policies", headers={"Authorization": "Bearer nope"}, timeout=10)
        assert (r.status_code, r.json()) == (401, {"error": "failed to verify token with uaa"})
        r = requests.post(base + "/policies/cleanup", headers=admin, timeout=10)
        assert r.content == b'{"total_policies":0,"policies":[]}'


def test_external_tls_adds_hsts(sqlite_config: DatabaseConfig, tmp_path: Path) -> None:
    bundle = generate_bundle(tmp_path / "certs")
    with policy_server(tmp_path, sqlite_config, bundle=bundle, external={
            "enable_tls": True, "server_cert_file": str(bundle.server.cert),
            "server_key_file": str(bundle.server.key)}) as ps:
        assert ps.external_url.startswith("https://")
        r = eventually(lambda: _try_get_tls(ps.external_url + "/health", str(bundle.ca_cert)),
                       what="external TLS health")
        assert r.headers["strict-transport-security"] == "max-age=31536000"
        assert r.headers["x-content-type-options"] == "nosniff"


def _try_get_tls(url: str, ca: str) -> requests.Response | None:
    try:
        # Connection: close, so that no idle TLS connection is left for shutdown to drop.
        return requests.get(url, verify=ca, timeout=5, headers={"Connection": "close"})
    except requests.ConnectionError:
        return None


# -- stale-policy cleaner (spec 7) -------------------------------------------------------------------


def test_cleanup_deletes_policies_of_apps_cc_does_not_know(fresh_server: StartEnv) -> None:
    env = fresh_server()
    env.cloud.apps.update({"live-app-1-guid": "s1", "live-app-2-guid": "s1"})
    assert env.create([v1("live-app-1-guid", "dead-app", 3333),
                       v1("live-app-1-guid", "live-app-2-guid", 1),
                       v1("dead-app", "live-app-2-guid", 2)]).status_code == 200
    before = env.stamp()
    r = requests.post(env.ext_v("v0") + "/policies/cleanup", headers=env.auth(), timeout=30)
    assert r.status_code == 200
    assert r.content == (
        b'{"total_policies":2,"policies":['
        b'{"source":{"id":"live-app-1-guid"},"destination":{"id":"dead-app","protocol":"tcp","ports":{"start":3333,"end":3333}}},'
        b'{"source":{"id":"dead-app"},"destination":{"id":"live-app-2-guid","protocol":"tcp","ports":{"start":2,"end":2}}}]}')
    assert env.stamp() > before
    assert env.list().json()["policies"] == [v1("live-app-1-guid", "live-app-2-guid", 1)]
    tags = requests.get(env.ext + "/tags", headers=env.auth(), timeout=10).json()["tags"]
    assert [t["id"] for t in tags] == ["live-app-1-guid", "live-app-2-guid"]  # dead-app freed
    assert any("deleting stale policies:" in l["message"] for l in env.ps.log_lines())
    env.cloud.fail.add("/v3/apps")
    r = requests.post(env.ext + "/policies/cleanup", headers=env.auth(), timeout=30)
    env.cloud.fail.discard("/v3/apps")
    assert (r.status_code, r.content) == (500, b'{"error": "policies cleanup failed"}')


def test_cleaner_runs_periodically_and_survives_errors(fresh_server: StartEnv) -> None:
    env = fresh_server(cleanup_interval=1)
    env.cloud.fail.add("/v3/apps")
    env.cloud.apps["live"] = "s1"
    assert env.create([v1("live", "gone")]).status_code == 200
    eventually(lambda: any(l["message"].endswith(".poll-cycle") for l in env.ps.log_lines()),
               what="a failed cleaner cycle")
    env.cloud.fail.discard("/v3/apps")
    eventually(lambda: env.list().json()["total_policies"] == 0, what="stale policy removed")


# -- ASG syncer (spec 6.1) ---------------------------------------------------------------------------


def _cc_group(guid_: str, name: str, **extra: Any) -> dict[str, Any]:
    return {"guid": guid_, "name": name,
            "globally_enabled": {"running": False, "staging": False},
            "rules": [{"protocol": "tcp", "destination": "10.0.0.0/8", "ports": "443"}],
            "relationships": {"staging_spaces": {"data": []},
                              "running_spaces": {"data": [{"guid": "space-1"}]}}, **extra}


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_asg_syncer_mirrors_cloud_controller_and_survives_errors(backend: str,
                                                                 tmp_path: Path) -> None:
    bundle = generate_bundle(tmp_path / "certs")
    cloud = Cloud(tokens=uaa_tokens())
    cloud.security_groups = [
        _cc_group("g1", "public", globally_enabled={"running": True, "staging": True}, rules=[]),
        _cc_group("g2", "bound"), _cc_group("g3", "other")]
    cc_tls = server_context(bundle.server)
    with serve_stub(cloud) as url, serve_stub(cloud, tls=cc_tls) as internal_url:
        host, port = url.rsplit(":", 1)
        syncer = {"asg_poll_interval_seconds": 1, "cc_url": url, "cc_internal_url": internal_url,
                  "cc_internal_ca_cert": str(bundle.ca_cert),
                  "cc_internal_client_cert": str(bundle.client.cert),
                  "cc_internal_client_key": str(bundle.client.key),
                  "uaa_url": host, "uaa_port": int(port), "uaa_client": "network-policy",
                  "uaa_client_secret": "secret"}
        for db in make_database(backend, tmp_path):
            with policy_server(tmp_path / "ps", db, bundle=bundle, asg_syncer=syncer,
                               external=uaa_overrides(url),
                               internal=INTERNAL_OVERRIDES) as ps:
                env = Env(ps, cloud, url, backend)
                groups = lambda q="?space_guids=space-1": env.get_internal(  # noqa: E731
                    "/networking/v1/internal/security_groups" + q).json()["security_groups"]
                eventually(lambda: len(groups()) == 3, what="first sync")
                got = groups()
                assert [g["guid"] for g in got] == ["g1", "g2", "g3"]
                assert got[1]["rules"] == ('[{"protocol":"tcp","destination":"10.0.0.0/8",'
                                           '"ports":"443","type":0,"code":0,"description":"",'
                                           '"log":false}]')
                assert got[1]["running_space_guids"] == ["space-1"]
                assert [g["guid"] for g in groups("")] == ["g1"]
                # unchanged last_update: polls continue, groups are not re-read
                pages = len(cloud.seen("/v3/security_groups"))
                polls = len(cloud.seen("/internal/v4/asg_latest_update"))
                eventually(lambda: len(cloud.seen("/internal/v4/asg_latest_update")) >= polls + 3,
                           what="more polls")
                assert len(cloud.seen("/v3/security_groups")) == pages
                # CC fails: logged, retried; when it recovers the change lands
                cloud.fail.add("/v3/security_groups")
                cloud.security_groups = [_cc_group("g2", "bound-renamed"), _cc_group("g4", "new")]
                cloud.asg_last_update = "2026-06-01T00:00:00Z"
                eventually(lambda: any(l["message"].endswith("asg-sync.failed")
                                       for l in ps.log_lines()), what="a failed sync")
                cloud.fail.discard("/v3/security_groups")
                eventually(lambda: [g["name"] for g in groups()] == ["bound-renamed", "new"],
                           what="sync after recovery")
                assert ps.process.poll() is None
                call = cloud.seen("/internal/v4/asg_latest_update")[-1]
                assert call.headers["Authorization"] == "bearer server-client-token"


# -- database failures: the documented 500s ----------------------------------------------------------


def test_a_lost_database_gives_the_documented_500s(tmp_path: Path) -> None:
    import psycopg
    from cfnet.testing.postgres import PG_URL

    for db in make_database("postgres", tmp_path):
        with policy_server(tmp_path / "ps", db) as ps:
            env = Env(ps, Cloud(), "", "postgres")
            admin = {"Authorization": f"Bearer {ps.admin_token}"}
            assert requests.post(env.ext + "/policies", headers=admin, timeout=10,
                                 json={"policies": [v1("a", "b")]}).status_code == 200
            with psycopg.connect(PG_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE "{db.database_name}" WITH (FORCE)')
            checks = [
                (requests.get(ps.external_url + "/health", timeout=30), "check database failed"),
                (requests.get(ps.health_url, timeout=30), "check database failed"),
                (requests.get(env.ext + "/policies", headers=admin, timeout=30),
                 "database read failed"),
                (requests.get(env.ext + "/tags", headers=admin, timeout=30),
                 "database read failed"),
                (requests.post(env.ext + "/policies", headers=admin, timeout=30,
                               json={"policies": [v1("a", "c")]}), "database create failed"),
                (requests.post(env.ext + "/policies/delete", headers=admin, timeout=30,
                               json={"policies": [v1("a", "b")]}), "database delete failed"),
                (env.get_internal("/networking/v1/internal/policies"), "database read failed"),
                (env.get_internal("/networking/v1/internal/policies_last_updated"),
                 "database read failed"),
                (env.get_internal("/networking/v1/internal/security_groups"),
                 "database read failed"),
            ]
            for r, text in checks:
                assert (r.status_code, r.json()) == (500, {"error": text}), r.url
            # uptime never touches the database
            assert requests.get(ps.external_url + "/", timeout=10).status_code == 200


def test_self_service_skips_the_scope_check_but_not_the_guard(fresh_server: StartEnv) -> None:
    from ps_env import NOSCOPE, guid

    env = fresh_server(enable_space_developer_self_service=True)
    r = env.create([v1(guid(), guid())], token=NOSCOPE)  # apps unknown to CC pass the guard
    assert (r.status_code, r.content) == (200, b"{}")
    env.cloud.apps.update({"in-space": "s1", "other": "s2"})
    env.cloud.spaces.update({"s1": ("one", "org"), "s2": ("two", "org")})
    r = env.create([v1("in-space", "other")], token=NOSCOPE)
    assert r.status_code == 403
    assert r.json() == {"error": "one or more applications cannot be found or accessed"}
    r = requests.get(env.ext + "/tags", headers=env.auth(NOSCOPE), timeout=10)
    assert r.json() == {"error": "provided scopes [] do not include allowed scopes [network.admin]"}


def test_a_hung_uaa_or_cloud_controller_times_out(fresh_server: StartEnv) -> None:
    """Upstream's UAA/CC clients have no timeout, so one hung peer hangs every request."""
    from ps_env import WRITER

    env = fresh_server(request_timeout=1)
    env.cloud.hang.add("/check_token")
    try:
        r = requests.get(env.ext + "/whoami", headers=env.auth(), timeout=60)
        assert (r.status_code, r.json()) == (401, {"error": "failed to verify token with uaa"})
        env.cloud.hang = {"/v2/spaces"}
        env.cloud.apps.update({"a": "s1", "b": "s1"})
        r = env.create([v1("a", "b")], token=WRITER)
        assert (r.status_code, r.json()) == (500, {"error": "check access failed"})
        assert env.create([v1("a", "b")]).status_code == 200  # as admin: no CC involved
        env.cloud.hang = {"/v3/apps"}
        r = requests.post(env.ext + "/policies/cleanup", headers=env.auth(), timeout=60)
        assert (r.status_code, r.json()) == (500, {"error": "policies cleanup failed"})
    finally:
        env.cloud.release.set()
