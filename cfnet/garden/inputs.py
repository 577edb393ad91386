"""Garden's stdin for `up` (Guardian's UpInputs) and the JSON the hook writes back.

Decoding follows Go: keys match case-insensitively, a type error names the struct field and Go
type, and anything after the first JSON value is not read. NetOut rules are re-encoded in
Garden's own JSON shape (what upstream hands to the plugins); port mappings carry both Garden's
keys (`host_port`, read by the CF wrapper plugin) and the CNI convention's (`hostPort`,
`containerPort`, `protocol`: read by portmap and other standard plugins).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

from cfnet.garden import gojson
from cfnet.garden.gojson import GoJSONError


@dataclass
class UpInputs:
    pid: int = 0
    properties: dict[str, Any] = field(default_factory=dict)
    netout_rules: list[dict[str, Any]] = field(default_factory=list)
    netin: list[dict[str, int]] = field(default_factory=list)  # host_port, container_port


def _struct(value: Any, struct: str, path: str, gotype: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise gojson.type_error(value, struct, path, gotype)
    return value


def _list(value: Any, struct: str, path: str, gotype: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise gojson.type_error(value, struct, path, gotype)
    return value


def _ip(value: Any, struct: str, path: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise gojson.type_error(value, struct, path, "net.IP")
    if value == "":
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise GoJSONError(f"invalid IP address: {value}") from None


def _scalar(obj: dict[str, Any], key: str, struct: str, path: str, gotype: str) -> Any:
    """The Go-checked value of `key` (None when absent or null)."""
    found, value = gojson.field(obj, key)
    return gojson.go_value(value, struct, path, gotype) if found else None


def _netout_rule(raw: Any) -> dict[str, Any]:
    rule = _struct(raw, "UpInputs", "netout_rules", "garden.NetOutRule") or {}
    out: dict[str, Any] = {}
    proto = _scalar(rule, "protocol", "NetOutRule", "netout_rules.protocol", "garden.Protocol")
    if proto:
        out["protocol"] = proto
    found, v = gojson.field(rule, "networks")
    networks = []
    for item in _list(v if found else None, "NetOutRule", "netout_rules.networks",
                      "[]garden.IPRange"):
        r = _struct(item, "NetOutRule", "netout_rules.networks", "garden.IPRange") or {}
        entry: dict[str, str] = {}
        for key in ("start", "end"):
            f, val = gojson.field(r, key)
            ip = _ip(val, "IPRange", f"netout_rules.networks.{key}") if f else None
            if ip:
                entry[key] = ip
        networks.append(entry)
    if networks:
        out["networks"] = networks
    found, v = gojson.field(rule, "ports")
    ports = []
    for item in _list(v if found else None, "NetOutRule", "netout_rules.ports",
                      "[]garden.PortRange"):
        r = _struct(item, "NetOutRule", "netout_rules.ports", "garden.PortRange") or {}
        entry2: dict[str, int] = {}
        for key in ("start", "end"):
            n = _scalar(r, key, "PortRange", f"netout_rules.ports.{key}", "uint16")
            if n:
                entry2[key] = n
        ports.append(entry2)
    if ports:
        out["ports"] = ports
    found, v = gojson.field(rule, "icmps")
    icmps = _struct(v if found else None, "NetOutRule", "netout_rules.icmps", "garden.ICMPControl")
    if icmps is not None:
        control: dict[str, int] = {}
        f, val = gojson.field(icmps, "type")
        control["type"] = (gojson.go_value(val, "ICMPControl", "netout_rules.icmps.type",
                                           "garden.ICMPType") if f else None) or 0
        f, val = gojson.field(icmps, "code")
        code = gojson.go_value(val, "ICMPControl", "netout_rules.icmps.code",
                               "garden.ICMPCode") if f else None
        if code is not None:
            control["code"] = code
        out["icmps"] = control
    found, v = gojson.field(rule, "log")
    if found and gojson.go_value(v, "NetOutRule", "netout_rules.log", "bool"):
        out["log"] = True
    return out


def decode_up(data: bytes) -> UpInputs:
    """Guardian's stdin for `up`; GoJSONError worded as Go's decoder."""
    raw = gojson.decode_stream(data)
    if raw is None:
        return UpInputs()
    if not isinstance(raw, dict):
        raise GoJSONError(f"json: cannot unmarshal {gojson.kind(raw).split(' ')[0]} into Go value "
                          f"of type manager.UpInputs")
    inputs = UpInputs()
    found, v = gojson.field(raw, "Pid")
    if found:
        inputs.pid = gojson.go_value(v, "UpInputs", "Pid", "int") or 0
    found, v = gojson.field(raw, "Properties")
    if found:
        inputs.properties = _struct(v, "UpInputs", "Properties", "map[string]interface {}") or {}
    found, v = gojson.field(raw, "netout_rules")
    if found:
        inputs.netout_rules = [_netout_rule(r) for r in
                               _list(v, "UpInputs", "netout_rules", "[]garden.NetOutRule")]
    found, v = gojson.field(raw, "netin")
    if found:
        for item in _list(v, "UpInputs", "netin", "[]garden.NetIn"):
            r = _struct(item, "UpInputs", "netin", "garden.NetIn") or {}
            entry = {}
            for key in ("host_port", "container_port"):
                entry[key] = _scalar(r, key, "NetIn", f"netin.{key}", "uint32") or 0
            inputs.netin.append(entry)
    return inputs


def port_mappings(netin: list[dict[str, int]]) -> list[dict[str, Any]]:
    """`runtimeConfig.portMappings`: Garden's NetIn keys plus the CNI convention's."""
    return [{"host_port": m["host_port"], "container_port": m["container_port"],
             "hostPort": m["host_port"], "containerPort": m["container_port"], "protocol": "tcp"}
            for m in netin]


def encode(value: Any) -> str:
    """Go's json.Encoder: compact, HTML characters escaped, newline-terminated."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text + "\n"
