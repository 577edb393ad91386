"""Container-to-container policies: the v0/v1 wire formats, their validation, and tags.

Pure domain code, no I/O. Request bodies are decoded with Go's `encoding/json` rules (spec §2.1)
because existing clients depend on them, then checked in upstream's exact order with its exact
texts (spec §2.2, §2.3). The store and the HTTP server share these types.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from cfnet.core.errors import CfnetError
from cfnet.core.security_groups import SecurityGroup, security_group_to_internal

__all__ = [
    "GoJSONError", "Policy", "PolicyValidationError", "SecurityGroup", "Tag", "TaggedPolicy",
    "format_tag", "max_tag", "parse_policies", "policy_to_v0", "policy_to_v1",
    "security_group_to_internal", "tagged_policy_to_internal",
]

PROTOCOLS = ("tcp", "udp")
MAX_PORT = 65535


class PolicyValidationError(CfnetError):
    """A create/delete body was rejected. str() is the text after `mapper: ` in the 400 body."""


# -- domain types ---------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Policy:
    """One c2c policy as stored: v0's single port is start == end."""

    source: str
    destination: str
    protocol: str
    start: int
    end: int

    @property
    def port(self) -> int:
        """The legacy `port` column: the port when the range is a single port, else 0."""
        return self.start if self.start == self.end else 0


@dataclass(frozen=True)
class TaggedPolicy:
    policy: Policy
    source_tag: int
    destination_tag: int


@dataclass(frozen=True)
class Tag:
    guid: str
    tag: int
    type: str


def max_tag(tag_length: int) -> int:
    """The highest usable tag: 255 for one byte, 65 535 for two. Tag 0 is never handed out."""
    return (1 << (8 * tag_length)) - 1


def format_tag(tag: int, tag_length: int) -> str:
    """Upper-case hex, zero-padded to two characters per byte: 10 -> "000A"."""
    return f"{tag:0{2 * tag_length}X}"


def policy_to_v1(p: Policy) -> dict[str, Any]:
    return {"source": {"id": p.source},
            "destination": {"id": p.destination, "protocol": p.protocol,
                            "ports": {"start": p.start, "end": p.end}}}


def policy_to_v0(p: Policy) -> dict[str, Any] | None:
    """The v0 shape, or None for a port range (v0 listings leave those out)."""
    if p.start != p.end:
        return None
    return {"source": {"id": p.source},
            "destination": {"id": p.destination, "protocol": p.protocol, "port": p.start}}


def tagged_policy_to_internal(tp: TaggedPolicy, tag_length: int) -> dict[str, Any]:
    """The internal API (I1) shape: both sides carry their group's tag."""
    p = tp.policy
    return {"source": {"id": p.source, "tag": format_tag(tp.source_tag, tag_length)},
            "destination": {"id": p.destination,
                            "tag": format_tag(tp.destination_tag, tag_length),
                            "protocol": p.protocol,
                            "ports": {"start": p.start, "end": p.end}}}


# -- request bodies -------------------------------------------------------------------------------


def parse_policies(body: bytes, version: str) -> list[Policy]:
    """Decode and validate a create/delete body for API `version` ("v0" or "v1").

    Duplicates are kept (the quota guard counts them); the store makes them no-ops.
    """
    if version not in ("v0", "v1"):
        raise ValueError(f"api version '{version}' not supported")
    schema = _V0_PAYLOAD if version == "v0" else _V1_PAYLOAD
    try:
        payload = decode_go_json(body, schema)
    except GoJSONError as e:
        raise PolicyValidationError(f"unmarshal json: {e}") from None
    items = payload["policies"]
    if not items:
        raise PolicyValidationError("validate policies: missing policies")
    check = _check_v0 if version == "v0" else _check_v1
    return [check(item) for item in items]


def _invalid(problem: str) -> PolicyValidationError:
    return PolicyValidationError(f"validate policies: {problem}")


def _check_common(src: dict[str, Any], dst: dict[str, Any]) -> None:
    if src["id"] == "":
        raise _invalid("missing source id")
    if dst["id"] == "":
        raise _invalid("missing destination id")
    if dst["protocol"] not in PROTOCOLS:
        raise _invalid("invalid destination protocol, specify either udp or tcp")


def _check_v1(item: dict[str, Any]) -> Policy:
    src, dst = item["source"], item["destination"]
    start, end = dst["ports"]["start"], dst["ports"]["end"]
    _check_common(src, dst)
    if start > end:
        raise _invalid(f"invalid port range {start}-{end}, start must be less than or equal to end")
    if start < 0:
        raise _invalid(f"invalid start port {start}, must be in range 1-{MAX_PORT}")
    if start == 0:
        raise _invalid("missing start port")
    if end > MAX_PORT:
        raise _invalid(f"invalid end port {end}, must be in range 1-{MAX_PORT}")
    if src["tag"] or dst["tag"]:
        raise _invalid("tags may not be specified")
    return Policy(src["id"], dst["id"], dst["protocol"], start, end)


def _check_v0(item: dict[str, Any]) -> Policy:
    src, dst = item["source"], item["destination"]
    port = dst["port"]
    _check_common(src, dst)
    if port < 0:
        raise _invalid(f"invalid port {port}, must be in range 1-{MAX_PORT}")
    if port == 0:
        raise _invalid("missing port")
    # [quirk] v0 has no upper bound: 70000 is stored as 70000-70000, as upstream does.
    if src["tag"] or dst["tag"]:
        raise _invalid("tags may not be specified")
    return Policy(src["id"], dst["id"], dst["protocol"], port, port)


# -- Go's encoding/json, for the shapes above ----------------------------------------------------
#
# Go matches object keys to fields case-insensitively (Unicode simple folding), ignores unknown
# keys, leaves a value untouched on `null`, decodes a repeated key into the same field again
# (structs merge), and rejects a value of the wrong JSON type, including fields the handler then
# ignores (`source.type`, `destination.ips`, `total_policies`). Integers must be integer literals
# within int64: `1.0`, `1e3`, `true` and 2**63 are rejected.

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class GoJSONError(ValueError):
    """Invalid JSON, or a value that does not fit its Go type. str() follows Go's message."""


@dataclass(frozen=True)
class GoInt:
    gotype: str = "int"


@dataclass(frozen=True)
class GoString:
    gotype: str = "string"


@dataclass(frozen=True)
class GoSlice:
    elem: GoType
    gotype: str


@dataclass(frozen=True)
class GoStruct:
    """`name` is the bare type name Go puts before the field path, `gotype` the qualified one."""

    name: str
    gotype: str
    fields: dict[str, GoType] = field(hash=False)  # JSON field name -> type
    folded: dict[str, str] = field(init=False, hash=False, compare=False, repr=False)
    zero: dict[str, Any] = field(init=False, hash=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "folded", {go_fold(n): n for n in self.fields})
        object.__setattr__(self, "zero", {n: go_zero(ft) for n, ft in self.fields.items()})


GoType = GoInt | GoString | GoSlice | GoStruct


def _struct(pkg: str, name: str, **fields: GoType) -> GoStruct:
    return GoStruct(name, f"{pkg}.{name}", dict(fields))


def _payload_schema(pkg: str, v1: bool) -> GoStruct:
    s, i = GoString(), GoInt()
    if v1:
        ip_range = _struct(pkg, "IPRange", start=s, end=s)
        source = _struct(pkg, "Source", id=s, tag=s, type=s)
        destination = _struct(pkg, "Destination", id=s, tag=s, protocol=s,
                              ports=_struct(pkg, "Ports", start=i, end=i), type=s,
                              ips=GoSlice(ip_range, f"[]{pkg}.IPRange"))
        payload = "PoliciesPayload"
    else:
        source = _struct(pkg, "Source", id=s, tag=s)
        destination = _struct(pkg, "Destination", id=s, tag=s, protocol=s, port=i)
        payload = "Policies"
    policy = _struct(pkg, "Policy", source=source, destination=destination)
    return _struct(pkg, payload, total_policies=i, policies=GoSlice(policy, f"[]{pkg}.Policy"))


@dataclass(frozen=True)
class _Number:
    """A number literal that is not an int64, kept as text for the error message."""

    literal: str


class _Pairs(list):  # type: ignore[type-arg]
    """A JSON object as its ordered (key, value) pairs, so repeated keys decode as in Go."""


_SURROGATE = re.compile("[\ud800-\udfff]")


def go_zero(t: GoType) -> Any:
    """Go's zero value as plain Python: 0, "", [] or a dict of zero fields.

    Struct zeros are one shared template per type: the decoder copies before it writes, and its
    results are read-only.
    """
    if isinstance(t, GoInt):
        return 0
    if isinstance(t, GoString):
        return ""
    if isinstance(t, GoSlice):
        return []
    return t.zero


def decode_go_json(body: bytes, schema: GoStruct) -> dict[str, Any]:
    """Parse `body` into `schema` as Go would (treat the result as read-only); GoJSONError."""
    if not body.strip(b" \t\r\n"):
        raise GoJSONError("unexpected end of JSON input")
    # Go turns invalid UTF-8 inside strings into U+FFFD; anywhere else it is a syntax error.
    text = body.decode("utf-8", errors="replace")
    try:
        raw = json.loads(text, object_pairs_hook=_Pairs, parse_int=_parse_int,
                         parse_float=_Number, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise GoJSONError(f"{e.msg} at offset {e.pos}") from None
    except (ValueError, RecursionError) as e:
        raise GoJSONError(str(e) or "invalid JSON") from None
    decoded: dict[str, Any] = _GoDecoder(schema).value(raw, schema, go_zero(schema))
    return decoded


def _parse_int(s: str) -> int | _Number:
    if len(s) > 20:
        return _Number(s)
    n = int(s)
    return n if INT64_MIN <= n <= INT64_MAX else _Number(s)


def _reject_constant(s: str) -> Any:
    raise ValueError(f"invalid character '{s[0]}' looking for beginning of value")


def _json_kind(v: Any) -> str:
    if isinstance(v, _Pairs):
        return "object"
    if isinstance(v, list):
        return "array"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, str):
        return "string"
    return "number"


@lru_cache(maxsize=4096)
def go_fold(name: str) -> str:
    """Go's `foldName`: ASCII upper-cased, other runes mapped to the least rune of their orbit."""
    out = []
    for c in name:
        if c < "\x80":
            out.append(c.upper())
            continue
        orbit, todo = {c}, [c]
        while todo:
            r = todo.pop()
            for m in (r.upper(), r.lower()):
                if len(m) == 1 and m not in orbit:
                    orbit.add(m)
                    todo.append(m)
        out.append(min(orbit))
    return "".join(out)


class _GoDecoder:
    def __init__(self, top: GoStruct) -> None:
        self.top = top
        self.stack: list[str] = []  # JSON field names from the top, as Go reports them
        self.struct = ""  # the struct type holding the innermost field

    def _fail(self, v: Any, t: GoType) -> GoJSONError:
        what = _json_kind(v)
        if isinstance(v, _Number) and isinstance(t, GoInt):
            what = f"number {v.literal}"
        if not self.stack:
            return GoJSONError(f"json: cannot unmarshal {what} into Go value of type "
                               f"{self.top.gotype}")
        return GoJSONError(f"json: cannot unmarshal {what} into Go struct field "
                           f"{self.struct}.{'.'.join(self.stack)} of type {t.gotype}")

    def value(self, v: Any, t: GoType, current: Any) -> Any:
        if v is None:  # null sets a slice to nil and leaves anything else as it was
            return [] if isinstance(t, GoSlice) else current
        if isinstance(t, GoInt):
            if isinstance(v, int) and not isinstance(v, bool):
                return v
            raise self._fail(v, t)
        if isinstance(t, GoString):
            if isinstance(v, str):
                return _SURROGATE.sub("\ufffd", v)
            raise self._fail(v, t)
        if isinstance(t, GoSlice):
            if not isinstance(v, list) or isinstance(v, _Pairs):
                raise self._fail(v, t)
            old = current
            return [self.value(e, t.elem, old[i] if i < len(old) else go_zero(t.elem))
                    for i, e in enumerate(v)]
        if not isinstance(v, _Pairs):
            raise self._fail(v, t)
        out = dict(current)
        for key, item in v:
            name = key if key in t.fields else t.folded.get(go_fold(key))
            if name is None:
                continue  # unknown keys are ignored
            saved = self.struct
            self.stack.append(name)
            self.struct = t.name
            out[name] = self.value(item, t.fields[name], out[name])
            self.stack.pop()
            self.struct = saved
        return out


# The request bodies, as upstream declares them (api.PoliciesPayload, api_v0.Policies).
_V1_PAYLOAD = _payload_schema("api", v1=True)
_V0_PAYLOAD = _payload_schema("api_v0", v1=False)
