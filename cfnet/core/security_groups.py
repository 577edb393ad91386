"""Application security groups (dynamic ASGs) as the internal API serves them (spec §1.2.3, §6).

Pure domain code. `rules` stays a JSON-encoded string end to end, as upstream stores and serves it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Every rule carries these 7 keys in this order; a missing field takes Go's zero value.
RULE_FIELDS: tuple[tuple[str, type, Any], ...] = (
    ("protocol", str, ""), ("destination", str, ""), ("ports", str, ""),
    ("type", int, 0), ("code", int, 0), ("description", str, ""), ("log", bool, False),
)


@dataclass(frozen=True)
class SecurityGroup:
    guid: str
    name: str
    rules: str  # JSON text of the rule list, see `rules_json`
    staging_default: bool = False
    running_default: bool = False
    staging_spaces: tuple[str, ...] = ()
    running_spaces: tuple[str, ...] = ()


def security_group_to_internal(g: SecurityGroup) -> dict[str, Any]:
    """One element of I3's `security_groups`, keys in upstream's order."""
    return {"guid": g.guid, "name": g.name, "rules": g.rules,
            "staging_default": g.staging_default, "running_default": g.running_default,
            "staging_space_guids": list(g.staging_spaces),
            "running_space_guids": list(g.running_spaces)}


def rules_json(rules: list[Mapping[str, Any]] | None) -> str:
    """Encode Cloud Controller rule objects as the stored `rules` string (Go's compact encoding).

    Raises ValueError naming the field when a value has the wrong type.
    """
    out = []
    for i, rule in enumerate(rules or []):
        item: dict[str, Any] = {}
        for key, kind, default in RULE_FIELDS:
            value = rule.get(key)
            if value is None:
                value = default
            elif kind is int and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"rule {i}: '{key}' must be an integer")
            elif not isinstance(value, kind):
                raise ValueError(f"rule {i}: '{key}' must be a {kind.__name__}")
            item[key] = value
        out.append(item)
    text = json.dumps(out, separators=(",", ":"), ensure_ascii=False)
    # Byte for byte as Go's encoder: it escapes these HTML-sensitive runes inside strings (they
    # can only occur inside strings here, so replacing them everywhere is safe).
    for raw, escaped in _GO_ESCAPES:
        text = text.replace(raw, escaped)
    return text


_GO_ESCAPES = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
               ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))
