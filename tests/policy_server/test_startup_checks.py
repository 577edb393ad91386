"""Start-up checks before any database work: TLS, CA and token files, database.path, a wrong
PostgreSQL password (no retrying), and the tag_length stored at the first migration."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from cfnet.testing.postgres import PG_URL

from cfnet.web.tls import generate_bundle

PREFIX = "cfnetworking.policy-server: could not read config file: invalid config: "


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cfnet", "policy-server", *args],
                          capture_output=True, text=True, timeout=60)


def _write(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(json.dumps(config))
    return path


def _internal(tmp_path: Path, **keys: Any) -> Path:
    certs = generate_bundle(tmp_path / "certs")
    config = {"listen_host": "127.0.0.1", "internal_listen_port": 0, "health_check_port": 0,
              "debug_server_port": 0, "ca_cert_file": str(certs.ca_cert),
              "server_cert_file": str(certs.server.cert), "server_key_file": str(certs.server.key),
              "database": {"type": "sqlite", "path": str(tmp_path / "db.sqlite")}, **keys}
    return _write(tmp_path / "internal.json", config)


def _external(tmp_path: Path, tokens: Any = None, **keys: Any) -> Path:
    (tmp_path / "tokens.json").write_text(json.dumps(tokens or {"tokens": []}))
    config = {"listen_host": "127.0.0.1", "listen_port": 0, "debug_server_port": 0,
              "database": {"type": "sqlite", "path": str(tmp_path / "db.sqlite")},
              "static_tokens_file": str(tmp_path / "tokens.json"), **keys}
    return _write(tmp_path / "ext.json", config)


def _one_line(r: subprocess.CompletedProcess[str], code: int) -> str:
    assert r.returncode == code, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


@pytest.mark.parametrize("key, damage, text", [
    ("ca_cert_file", "missing", "cannot read"),
    ("server_cert_file", "garbage", "holds no PEM certificate"),
    ("server_key_file", "missing", "No such file or directory"),
    ("server_key_file", "other-key", "does not match the certificate"),
])
def test_internal_tls_files_are_checked_before_the_database(tmp_path: Path, key: str,
                                                            damage: str, text: str) -> None:
    path = _internal(tmp_path)
    config = json.loads(path.read_text())
    if damage == "missing":
        config[key] = str(tmp_path / "nope.pem")
    elif damage == "garbage":
        (tmp_path / "garbage.pem").write_text("not a certificate\n")
        config[key] = str(tmp_path / "garbage.pem")
    else:
        config[key] = str(tmp_path / "certs" / "client.key")  # a key of another certificate
    _write(path, config)
    line = _one_line(run_cli("serve-internal", "--config-file", str(path)), 3)
    assert line.startswith("cfnetworking.policy-server-internal: could not read config file: "
                           f"invalid config: key '{key}': ")
    assert text in line
    assert not (tmp_path / "db.sqlite").exists(), "the database was touched before the check"


def test_external_tls_ca_and_token_files_name_their_key(tmp_path: Path) -> None:
    certs = generate_bundle(tmp_path / "certs")
    cases = [
        ({"enable_tls": True, "server_cert_file": str(certs.server.cert),
          "server_key_file": str(certs.client.key)}, "server_key_file"),
        ({"enable_tls": True, "server_cert_file": str(tmp_path / "nope.crt"),
          "server_key_file": str(certs.server.key)}, "server_cert_file"),
        ({"uaa_ca": str(tmp_path / "nope.crt")}, "uaa_ca"),
        ({"cc_ca_cert": str(certs.server.key)}, "cc_ca_cert"),
    ]
    for keys, key in cases:
        line = _one_line(run_cli("serve-external", "--config-file",
                                 str(_external(tmp_path, **keys))), 3)
        assert line.startswith(f"{PREFIX}key '{key}': "), line
    assert not (tmp_path / "db.sqlite").exists()


def test_duplicate_static_tokens_are_refused_without_printing_them(tmp_path: Path) -> None:
    secret = "s3cr3t-token-value"
    tokens = {"tokens": [{"token": secret, "user_name": "a", "scopes": ["network.admin"]},
                         {"token": "other", "user_name": "b", "scopes": []},
                         {"token": secret, "user_name": "c", "scopes": ["network.write"]}]}
    line = _one_line(run_cli("serve-external", "--config-file",
                             str(_external(tmp_path, tokens))), 3)
    assert line == (f"{PREFIX}key 'static_tokens_file': {tmp_path / 'tokens.json'}: tokens[2]: "
                    "duplicate token (same as tokens[0])")
    assert secret not in line


def test_database_path_in_a_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nonexist" / "dir"
    path = _external(tmp_path, database={"type": "sqlite", "path": str(missing / "x.db")})
    line = _one_line(run_cli("serve-external", "--config-file", str(path)), 3)
    assert line == f"{PREFIX}key 'database.path': directory {missing} does not exist"
    assert not (tmp_path / "nonexist").exists()
    line = _one_line(run_cli("migrate", "--config-file", str(path)), 3)
    assert "key 'database.path'" in line


def test_a_wrong_postgres_password_fails_at_once(tmp_path: Path) -> None:
    url = urlsplit(PG_URL)
    database = {"type": "postgres", "host": url.hostname, "port": url.port or 5432,
                "user": url.username, "password": "certainly-wrong", "database_name": "postgres",
                "timeout": 120}
    r = run_cli("serve-external", "--config-file", str(_external(tmp_path, database=database)))
    line = _one_line(r, 1)
    assert line.startswith("cfnetworking.policy-server: db connect: unable to ping: ")
    assert "password authentication failed" in line
    failures = [json.loads(l) for l in r.stdout.splitlines() if "db-connect-failed" in l]
    assert [f["data"]["retrying"] for f in failures] == [False]


def test_tag_length_is_fixed_at_the_first_migration(tmp_path: Path) -> None:
    one = _external(tmp_path, tag_length=1)
    assert run_cli("migrate", "--config-file", str(one)).returncode == 0
    two = _external(tmp_path, tag_length=2)
    want = (f"{PREFIX}key 'tag_length': the database was created with tag_length 1, "
            "configured 2 (changing it after seeding is unsupported)")
    assert _one_line(run_cli("serve-external", "--config-file", str(two)), 3) == want
    internal = _internal(tmp_path, tag_length=2)
    line = _one_line(run_cli("serve-internal", "--config-file", str(internal)), 3)
    assert line.endswith("tag_length 1, configured 2 (changing it after seeding is unsupported)")
    assert _one_line(run_cli("migrate", "--config-file", str(two)), 3).endswith(
        "configured 2 (changing it after seeding is unsupported)")
