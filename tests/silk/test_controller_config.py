"""silk-controller config: upstream keys in JSON or TOML; a bad config is one line and a non-zero exit."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cfnet.core.errors import ConfigError
from cfnet.silk.controller import load_controller_config

BASE: dict[str, Any] = {
    "listen_host": "127.0.0.1",
    "listen_port": 0,
    "health_check_port": 0,
    "debug_server_port": 0,
    "ca_cert_file": "/nonexistent/ca.crt",
    "server_cert_file": "/nonexistent/server.crt",
    "server_key_file": "/nonexistent/server.key",
    "network": "10.255.0.0/16",
    "subnet_prefix_length": 24,
    "lease_expiration_seconds": 604800,
    "metron_port": 3457,
    "metrics_emit_seconds": 30,
    "staleness_threshold_seconds": 3600,
    "log_prefix": "cfnetworking",
    "max_idle_connections": 10,
    "max_open_connections": 200,
    "connections_max_lifetime_seconds": 3600,
    "database": {"type": "postgres", "user": "cfnet", "password": "x", "host": "127.0.0.1",
                 "port": 5432, "database_name": "silk", "timeout": 120},
}


def _run(config_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cfnet", "silk-controller", "-config", str(config_path)],
                          capture_output=True, text=True, timeout=60)


def test_upstream_bosh_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "silk-controller.json"
    path.write_text(json.dumps(BASE))
    config = load_controller_config(path)
    assert config.pool().block_pool_size == 255
    assert config.database.postgres_dsn().startswith("postgresql://cfnet:x@127.0.0.1:5432/silk?")


def test_toml_with_the_same_keys_and_a_list_of_cidrs(tmp_path: Path) -> None:
    path = tmp_path / "silk-controller.toml"
    path.write_text("""
ca_cert_file = "/c/ca.crt"
server_cert_file = "/c/server.crt"
server_key_file = "/c/server.key"
network = ["10.255.0.0/24", "10.200.0.0/24"]
subnet_prefix_length = 26

[database]
type = "sqlite"
path = "/var/lib/cfnet/silk.db"
""")
    config = load_controller_config(path)
    assert config.pool().block_pool_size == 3 + 4
    assert (config.listen_port, config.health_check_port, config.debug_server_port) == (4103, 19683, 46455)


@pytest.mark.parametrize(("change", "key", "text"), [
    ({"subnet_prefix_length": 16}, "subnet_prefix_length", "must be longer than the prefix"),
    ({"subnet_prefix_length": 31}, "subnet_prefix_length", "31 is more than 30"),
    ({"subnet_prefix_length": 0}, "subnet_prefix_length", "0 is less than 1"),
    ({"network": "10.255.0.0/16,10.255.128.0/17"}, "network", "overlap"),
    ({"network": ["10.255.0.0/16", "nonsense"]}, "network", "is not an IPv4 CIDR"),
    ({"network": ""}, "network", "must not be empty"),
    ({"network": 10}, "network", "is not a CIDR or a list of CIDRs"),
    ({"network": ["10.255.0.0/16", "10.1.0.0/25"]}, "subnet_prefix_length", "smaller than one /24 block"),
    ({"lease_expiration_seconds": 0}, "lease_expiration_seconds", "less than 1"),
    ({"listen_port": 70000}, "listen_port", "more than 65535"),
    ({"ca_cert_file": ""}, "ca_cert_file", "must not be empty"),
    ({"server_key_file": None}, "server_key_file", "is required"),
    ({"listen_host": ""}, "listen_host", "must not be empty"),
    ({"subnet_prefix_length": "24"}, "subnet_prefix_length", "expected an integer"),
    ({"colour": "red"}, "colour", "unknown key"),
    ({"database": {"type": "mysql", "user": "u", "host": "h", "port": 1}}, "mysql", "is not supported"),
    ({"database": {"type": "postgres", "host": "h", "port": 1}}, "database.user", "required"),
])
def test_bad_config_exits_non_zero_with_one_line(tmp_path: Path, change: dict[str, Any], key: str,
                                                 text: str) -> None:
    config = dict(BASE, **change)
    config = {k: v for k, v in config.items() if v is not None}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=text):
        load_controller_config(path)

    result = _run(path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cfnetworking.silk-controller error: load config: ")
    assert key in lines[0] and text in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_missing_and_unparsable_files(tmp_path: Path) -> None:
    result = _run(tmp_path / "absent.json")
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1
    assert "absent.json" in result.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = _run(bad)
    assert result.returncode != 0 and result.stderr.startswith("cfnetworking.silk-controller error: ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_busy_port_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    from cfnet.web.tls import generate_bundle

    bundle = generate_bundle(tmp_path / "certs")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        config = dict(BASE, listen_port=busy.getsockname()[1], ca_cert_file=str(bundle.ca_cert),
                      server_cert_file=str(bundle.server.cert), server_key_file=str(bundle.server.key),
                      database={"type": "sqlite", "path": str(tmp_path / "silk.db")})
        path = tmp_path / "c.json"
        path.write_text(json.dumps(config))
        result = _run(path)
    finally:
        busy.close()
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "api listener: cannot bind" in lines[0], result.stderr
