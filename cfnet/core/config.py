"""Config files: the upstream JSON (as BOSH templates render it) or TOML with the same keys.

A role declares its config as a dataclass; field names are the upstream key names. `load_config`
parses the file, rejects unknown keys, checks types and bounds, and fills defaults. Every problem
is one `ConfigError` line that names the key, so an operator can fix it without reading code.

Bounds and choices go in field metadata: `field(default=4002, metadata={"min": 1, "max": 65535})`,
`metadata={"choices": ("debug", "info")}`, `metadata={"required": True}` (value must be given and
non-empty).
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from cfnet.core.errors import ConfigError

T = TypeVar("T")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a JSON or TOML config file into a dict (TOML when the name ends in .toml)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"reading config: {p}: {e.strerror or e}") from None
    try:
        data = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"parsing config: {p}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"parsing config: {p}: top level must be an object")
    return data


def load_config(path: str | Path, cls: type[T]) -> T:
    """Read `path` and build `cls` from it, validating every key."""
    return build_config(read_config_file(path), cls)


def build_config(data: dict[str, Any], cls: type[T], prefix: str = "") -> T:
    """Build the dataclass `cls` from a dict, validating every key (see the module doc)."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config: key '{prefix.rstrip('.')}': expected an object")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"invalid config: unknown key '{prefix}{unknown[0]}'")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        key = prefix + name
        if name not in data:
            if f.metadata.get("required"):
                raise ConfigError(f"invalid config: key '{key}' is required")
            continue
        value = _convert(data[name], hints[name], key)
        _check_bounds(value, f.metadata, key)
        values[name] = value
    return cls(**values)


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "a boolean"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, args[0], key)
    if dataclasses.is_dataclass(tp):
        return build_config(value, tp, prefix=key + ".")  # type: ignore[arg-type]
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"invalid config: key '{key}': expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"invalid config: key '{key}': expected an object, got {value!r}")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"invalid config: key '{key}': expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"invalid config: key '{key}': expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"invalid config: key '{key}': expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"invalid config: key '{key}': expected a string, got {value!r}")
        return value
    raise ConfigError(f"invalid config: key '{key}': unsupported type {_type_name(tp)}")


def _check_bounds(value: Any, meta: typing.Mapping[str, Any], key: str) -> None:
    if meta.get("required") and value in ("", None, [], ()):
        raise ConfigError(f"invalid config: key '{key}' must not be empty")
    if "min" in meta and value is not None and value < meta["min"]:
        raise ConfigError(f"invalid config: key '{key}': {value} is less than {meta['min']}")
    if "max" in meta and value is not None and value > meta["max"]:
        raise ConfigError(f"invalid config: key '{key}': {value} is more than {meta['max']}")
    if "choices" in meta and value not in meta["choices"]:
        allowed = ", ".join(map(str, meta["choices"]))
        raise ConfigError(f"invalid config: key '{key}': {value!r} is not one of {allowed}")
