"""silk-controller start-up failures: TLS files are part of config validation (one line naming the
key, exit 3), and only network errors are retried when connecting to the database (spec §1.1)."""

from __future__ import annotations

import dataclasses
import io
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cfnet.core.errors import CfnetError
from cfnet.core.logs import setup_logging
from cfnet.silk.controller import connect_database, is_network_error
from cfnet.store.db import Database, DatabaseConfig
from cfnet.web.tls import Bundle, generate_bundle


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, Bundle]:
    """Two unrelated CA bundles: b's key never matches a's certificate."""
    root = tmp_path_factory.mktemp("tls")
    return generate_bundle(root / "a"), generate_bundle(root / "b")


def controller_config(tmp_path: Path, bundle: Bundle, **change: Any) -> Path:
    config: dict[str, Any] = {
        "listen_host": "127.0.0.1", "listen_port": 0, "health_check_port": 0,
        "debug_server_port": 0, "ca_cert_file": str(bundle.ca_cert),
        "server_cert_file": str(bundle.server.cert), "server_key_file": str(bundle.server.key),
        "database": {"type": "sqlite", "path": str(tmp_path / "silk.db")},
    }
    config.update(change)
    path = tmp_path / "silk-controller.json"
    path.write_text(json.dumps(config))
    return path


def run_controller(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cfnet", "silk-controller", "-config", str(path)],
                          capture_output=True, text=True, timeout=120)


def tls_cases(a: Bundle, b: Bundle, tmp_path: Path) -> list[tuple[dict[str, str], str, str]]:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(a.server.key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.BestAvailableEncryption(b"secret")))
    return [
        ({"ca_cert_file": "/nonexist"}, "ca_cert_file",
         "cannot read /nonexist: No such file or directory"),
        ({"ca_cert_file": str(tmp_path)}, "ca_cert_file",
         f"cannot read {tmp_path}: Is a directory"),
        ({"ca_cert_file": str(a.ca_key)}, "ca_cert_file", f"{a.ca_key} holds no PEM certificate"),
        ({"server_cert_file": "/nonexist.crt"}, "server_cert_file",
         "cannot read /nonexist.crt: No such file or directory"),
        ({"server_cert_file": str(a.server.key)}, "server_cert_file",
         f"{a.server.key} holds no PEM certificate"),
        ({"server_key_file": "/nonexist.key"}, "server_key_file",
         "cannot read /nonexist.key: No such file or directory"),
        ({"server_key_file": str(a.server.cert)}, "server_key_file",
         f"{a.server.cert} holds no PEM private key"),
        ({"server_key_file": str(b.server.key)}, "server_key_file",
         f"{b.server.key} does not match the certificate in {a.server.cert}"),
        ({"server_key_file": str(encrypted)}, "server_key_file",
         f"{encrypted} is encrypted; give a key without a passphrase"),
    ]


def test_tls_file_errors_are_config_errors_naming_the_key(tmp_path, bundles):
    a, b = bundles
    for change, key, problem in tls_cases(a, b, tmp_path):
        result = run_controller(controller_config(tmp_path, a, **change))
        assert result.returncode == 3, (change, result.stderr)
        assert result.stderr == (f"cfnetworking.silk-controller error: load config: invalid "
                                 f"config: key '{key}': {problem}\n"), change
        assert result.stdout == ""  # nothing started, nothing logged
    assert not (tmp_path / "silk.db").exists()  # no database work before the TLS files are good


def failing_attempts(log_text: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in log_text.splitlines()]
    return [line["data"] for line in lines if line["message"].endswith(".db-connect-failed")]


def test_wrong_postgres_password_is_not_retried(pg_config):
    stream = io.StringIO()
    log = setup_logging("test.silk-controller", stream=stream)
    db = Database(dataclasses.replace(pg_config, password="wrong-password"))
    try:
        with pytest.raises(CfnetError, match="password authentication failed"):
            connect_database(db, log, attempts=10, interval_s=3.0)
    finally:
        db.close()
    attempts = failing_attempts(stream.getvalue())
    assert [(a["attempt"], a["retrying"]) for a in attempts] == [(1, False)]


def test_missing_postgres_database_is_not_retried(pg_config):
    stream = io.StringIO()
    log = setup_logging("test.silk-controller", stream=stream)
    db = Database(dataclasses.replace(pg_config, database_name="cfnet_no_such_database"))
    try:
        with pytest.raises(CfnetError, match="does not exist"):
            connect_database(db, log, attempts=10, interval_s=3.0)
    finally:
        db.close()
    assert len(failing_attempts(stream.getvalue())) == 1


def test_network_errors_are_retried_up_to_the_limit(pg_config):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, not listening: connection refused
    stream = io.StringIO()
    log = setup_logging("test.silk-controller", stream=stream)
    db = Database(dataclasses.replace(pg_config, port=closed.getsockname()[1]))
    try:
        with pytest.raises(CfnetError, match="db connect: unable to ping: .*refused"):
            connect_database(db, log, attempts=3, interval_s=0.01)
    finally:
        db.close()
        closed.close()
    attempts = failing_attempts(stream.getvalue())
    assert [(a["attempt"], a["retrying"]) for a in attempts] == [(1, True), (2, True), (3, False)]


def test_a_reachable_database_connects_at_once(pg_config):
    stream = io.StringIO()
    db = Database(pg_config)
    try:
        connect_database(db, setup_logging("test.silk-controller", stream=stream))
    finally:
        db.close()
    assert failing_attempts(stream.getvalue()) == []


@pytest.mark.parametrize("text, network", [
    ('connection failed: connection to server at "127.0.0.1", port 1 failed: Connection refused',
     True),
    ("failed to resolve host 'db.invalid': [Errno -2] Name or service not known", True),
    ("connection failed: timeout expired", True),
    ('connection failed: ... failed: FATAL:  password authentication failed for user "x"', False),
    ("connection failed: server does not support SSL, but SSL was required", False),
    ("unable to open database file", False),
])
def test_is_network_error(text, network):
    assert is_network_error(CfnetError(text)) is network


def test_wrong_password_exits_with_one_line(tmp_path, bundles, pg_config):
    database = dict(dataclasses.asdict(pg_config), password="wrong-password")
    result = run_controller(controller_config(tmp_path, bundles[0], database=database))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "cfnetworking.silk-controller error: db connect: unable to ping: "), result.stderr
    assert "password authentication failed" in lines[0]
    assert len(failing_attempts(result.stdout)) == 1
