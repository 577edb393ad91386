"""Config loading: upstream JSON keys or TOML, one clear line naming the key on any problem."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cfnet.core.config import build_config, load_config
from cfnet.core.errors import ConfigError
from cfnet.store.db import DatabaseConfig


@dataclass
class Sample:
    listen_host: str = field(default="", metadata={"required": True})
    listen_port: int = field(default=4002, metadata={"min": 1, "max": 65535})
    log_level: str = field(default="info", metadata={"choices": ("debug", "info", "error", "fatal")})
    allowed_cors_domains: list[str] = field(default_factory=list)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)


def test_json_and_toml_give_the_same_config(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text('{"listen_host": "0.0.0.0", "listen_port": 4002, '
                                     '"database": {"type": "sqlite", "path": "/x.db"}}')
    (tmp_path / "c.toml").write_text('listen_host = "0.0.0.0"\nlisten_port = 4002\n'
                                     '[database]\ntype = "sqlite"\npath = "/x.db"\n')
    assert load_config(tmp_path / "c.json", Sample) == load_config(tmp_path / "c.toml", Sample)


@pytest.mark.parametrize("data, message", [
    ({"listen_host": "h", "bogus": 1}, "unknown key 'bogus'"),
    ({}, "key 'listen_host' is required"),
    ({"listen_host": ""}, "key 'listen_host' must not be empty"),
    ({"listen_host": "h", "listen_port": "80"}, "key 'listen_port': expected an integer, got '80'"),
    ({"listen_host": "h", "listen_port": True}, "key 'listen_port': expected an integer"),
    ({"listen_host": "h", "listen_port": 70000}, "key 'listen_port': 70000 is more than 65535"),
    ({"listen_host": "h", "log_level": "loud"}, "key 'log_level': 'loud' is not one of"),
    ({"listen_host": "h", "allowed_cors_domains": "x"}, "key 'allowed_cors_domains': expected a list"),
    ({"listen_host": "h", "allowed_cors_domains": [1]}, "key 'allowed_cors_domains[0]'"),
    ({"listen_host": "h", "database": {"typo": 1}}, "unknown key 'database.typo'"),
    ({"listen_host": "h", "database": {"port": "x"}}, "key 'database.port'"),
])
def test_bad_values_name_the_key(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match="invalid config: .*" if "invalid" not in message else ""):
        build_config(data, Sample)
    with pytest.raises(ConfigError) as e:
        build_config(data, Sample)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_unreadable_and_unparsable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="reading config: .*missing.json"):
        load_config(tmp_path / "missing.json", Sample)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="parsing config: .*bad.json"):
        load_config(tmp_path / "bad.json", Sample)
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ConfigError, match="top level must be an object"):
        load_config(tmp_path / "list.json", Sample)
