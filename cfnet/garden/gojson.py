"""Go `encoding/json` error texts for the two JSON inputs of the hook (adapter.json and stdin).

Garden and operators see upstream's messages, so syntax and type errors are worded as Go words
them. Only what the hook decodes is covered: flat structs of strings, integers, booleans, string
lists, free-form objects, and lists of such structs.
"""

from __future__ import annotations

import json
from typing import Any


class GoJSONError(ValueError):
    """A decoding failure, worded as Go's encoding/json would word it."""


def _reject_constant(name: str) -> Any:
    raise GoJSONError(f"invalid character '{name[0]}' looking for beginning of value")


def _syntax_error(text: str, e: json.JSONDecodeError, end: str) -> str:
    rest = text[e.pos:]
    if not rest.strip():
        return end
    ch = rest[0]
    if e.msg.startswith("Expecting value"):
        for literal in ("null", "true", "false"):
            if ch == literal[0]:
                for got, want in zip(rest, literal):
                    if got != want:
                        return (f"invalid character '{got}' in literal {literal} "
                                f"(expecting '{want}')")
                return end
    if e.msg == "Extra data":
        return f"invalid character '{ch}' after top-level value"
    if e.msg.startswith("Expecting property name"):
        return f"invalid character '{ch}' looking for beginning of object key string"
    if e.msg.startswith("Expecting ':'"):
        return f"invalid character '{ch}' after object key"
    if e.msg.startswith("Expecting ',' delimiter") and rest[:1] not in ("]",):
        return f"invalid character '{ch}' after object key:value pair"
    if e.msg.startswith("Invalid control character"):
        return f"invalid character {json.dumps(ch)} in string literal"
    return f"invalid character '{ch}' looking for beginning of value"


def unmarshal(data: bytes | str) -> Any:
    """`json.Unmarshal`: the whole input is one value."""
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    if not text.strip(" \t\r\n"):
        raise GoJSONError("unexpected end of JSON input")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise GoJSONError(_syntax_error(text, e, "unexpected end of JSON input")) from None


def decode_stream(data: bytes | str) -> Any:
    """`json.NewDecoder(r).Decode(&v)`: the first value; anything after it is not read."""
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    start = len(text) - len(text.lstrip(" \t\r\n"))
    if start == len(text):
        raise GoJSONError("EOF")
    try:
        value, _ = json.JSONDecoder(parse_constant=_reject_constant).raw_decode(text, start)
    except json.JSONDecodeError as e:
        raise GoJSONError(_syntax_error(text, e, "unexpected EOF")) from None
    return value


def kind(value: Any) -> str:
    """The JSON kind Go names in `cannot unmarshal <kind> into ...`."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return f"number {json.dumps(value)}" if isinstance(value, int) else f"number {value!r}"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def type_error(value: Any, struct: str, path: str, gotype: str) -> GoJSONError:
    what = kind(value)
    if not what.startswith("number") or gotype in ("string", "bool", "[]string"):
        what = what.split(" ")[0]
    return GoJSONError(f"json: cannot unmarshal {what} into Go struct field {struct}.{path} "
                       f"of type {gotype}")


def field(obj: dict[str, Any], name: str) -> tuple[bool, Any]:
    """Go's key matching: the exact key wins, else a case-insensitive one (the last such key)."""
    if name in obj:
        return True, obj[name]
    found, value = False, None
    lname = name.lower()
    for key, v in obj.items():
        if key.lower() == lname:
            found, value = True, v
    return found, value


_INT_RANGES = {"int": (-(2**63), 2**63 - 1), "uint32": (0, 2**32 - 1), "uint16": (0, 2**16 - 1),
               "uint8": (0, 255)}


def go_value(value: Any, struct: str, path: str, gotype: str) -> Any:
    """Check one value against a Go type name; null leaves the zero value (returned as None)."""
    if value is None:
        return None
    if gotype == "string":
        if not isinstance(value, str):
            raise type_error(value, struct, path, gotype)
        return value
    if gotype == "bool":
        if not isinstance(value, bool):
            raise type_error(value, struct, path, gotype)
        return value
    if gotype == "[]string":
        if not isinstance(value, list):
            raise type_error(value, struct, path, gotype)
        for item in value:
            if item is not None and not isinstance(item, str):
                raise type_error(item, struct, path, "string")
        return [item or "" for item in value]
    base = gotype.split(".")[-1].lower()
    if base in ("protocol", "icmptype", "icmpcode"):
        base = "uint8"
    if base in _INT_RANGES:
        lo, hi = _INT_RANGES[base]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise type_error(value, struct, path, gotype)
        if isinstance(value, float) or not lo <= value <= hi:
            raise GoJSONError(f"json: cannot unmarshal {kind(value)} into Go struct field "
                              f"{struct}.{path} of type {gotype}")
        return int(value)
    raise ValueError(f"unsupported Go type {gotype}")
