"""The CNI protocol (SPEC 1.0/1.1): errors, versions, results, and the `CNI_*` environment.

Everything here is pure and cheap to import: a runtime execs a plugin for every container, so this
module pulls in nothing beyond json and re. Messages follow libcni's `skel` byte for byte where
upstream plugins print them (Cloud Foundry's tooling and tests match on them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

SUPPORTED_VERSIONS: tuple[str, ...] = ("0.4.0", "1.0.0", "1.1.0")
# The version a plugin reports itself in (`VERSION` output) and uses when the config has none.
LATEST = "1.1.0"

_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
# Valid Linux interface names: 1..15 bytes, no '/', ':' or whitespace, not '.' or '..'.
_IFNAME_BAD = re.compile(r"[/:\s]")


class Code(IntEnum):
    """Well-known CNI error codes (0-99 are the spec's, 100+ are the plugin's own)."""

    INCOMPATIBLE_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENV = 4
    IO_FAILURE = 5
    DECODING_FAILURE = 6
    INVALID_CONFIG = 7
    INVALID_NETNS = 8
    TRY_AGAIN_LATER = 11
    PLUGIN_NOT_AVAILABLE = 50
    LIMITED_CONNECTIVITY = 51
    PLUGIN = 100  # silk's code for every failed step of ADD/DEL
    INTERNAL = 999


class CNIError(Exception):
    """A CNI error result: printed as JSON on stdout, exit status 1."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(f"{msg}: {details}" if details else msg)
        self.code = int(code)
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if cni_version:
            out["cniVersion"] = cni_version
        out["code"] = self.code
        out["msg"] = self.msg
        if self.details:
            out["details"] = self.details
        return out

    def to_json(self, cni_version: str | None = None) -> str:
        return json.dumps(self.to_dict(cni_version), indent=4)


def go_quote_list(items: list[str] | tuple[str, ...]) -> str:
    """Go's `%q` of a []string: `["a" "b"]`, which upstream error details contain."""
    return "[" + " ".join(json.dumps(i) for i in items) + "]"


def version_tuple(version: str) -> tuple[int, int, int]:
    try:
        parts = [int(p) for p in version.split(".")]
    except ValueError:
        raise CNIError(Code.INCOMPATIBLE_VERSION, "incompatible CNI versions",
                       f'invalid version "{version}"') from None
    if len(parts) != 3 or any(p < 0 for p in parts):
        raise CNIError(Code.INCOMPATIBLE_VERSION, "incompatible CNI versions",
                       f'invalid version "{version}"')
    return parts[0], parts[1], parts[2]


def check_version(config_version: str, supported: tuple[str, ...] = SUPPORTED_VERSIONS) -> str:
    """The version to answer in: the config's own, if the plugin supports it (else code 1)."""
    if config_version not in supported:
        version_tuple(config_version)  # a malformed version gets its own detail
        raise CNIError(Code.INCOMPATIBLE_VERSION, "incompatible CNI versions",
                       f'config is "{config_version}", plugin supports {go_quote_list(supported)}')
    return config_version


def at_least(version: str, minimum: str) -> bool:
    return version_tuple(version) >= version_tuple(minimum)


def version_json(supported: tuple[str, ...] = SUPPORTED_VERSIONS) -> str:
    """The `VERSION` command's output (compact, newline-terminated, as libcni's skel prints it)."""
    return json.dumps({"cniVersion": LATEST, "supportedVersions": list(supported)},
                      separators=(",", ":")) + "\n"


# --------------------------------------------------------------------------------------------
# Results


# Keys that only CNI 1.1.0 results carry; converting down to an older version drops them.
_V11_INTERFACE_KEYS = ("mtu", "socketPath", "pciID")
_V11_ROUTE_KEYS = ("mtu", "advmss", "priority", "table", "scope")


def _extra(data: dict[str, Any], known: tuple[str, ...], version: str,
           v11_only: tuple[str, ...]) -> dict[str, Any]:
    """The keys a type does not model, kept so a prevResult passes through unchanged."""
    newer = at_least(version, "1.1.0")
    return {k: v for k, v in data.items() if k not in known and (newer or k not in v11_only)}


@dataclass
class Interface:
    name: str
    mac: str = ""
    sandbox: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # mtu, socketPath, pciID (1.1)

    def to_dict(self, version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.mac:
            out["mac"] = self.mac
        out.update(_extra(self.extra, ("name", "mac", "sandbox"), version, _V11_INTERFACE_KEYS))
        if self.sandbox:
            out["sandbox"] = self.sandbox
        return out


@dataclass
class IPConfig:
    address: str  # CIDR, e.g. 10.255.30.2/32
    gateway: str = ""
    interface: int | None = None

    def to_dict(self, version: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if version_tuple(version) < (1, 0, 0):
            out["version"] = "6" if ":" in self.address else "4"
        if self.interface is not None:
            out["interface"] = self.interface
        out["address"] = self.address
        if self.gateway:
            out["gateway"] = self.gateway
        return out


@dataclass
class Route:
    dst: str
    gw: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # mtu, advmss, priority, table, scope

    def to_dict(self, version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"dst": self.dst}
        if self.gw:
            out["gw"] = self.gw
        out.update(_extra(self.extra, ("dst", "gw"), version, _V11_ROUTE_KEYS))
        return out


@dataclass
class Result:
    """An ADD result of any supported version; `to_dict(version)` converts it."""

    interfaces: list[Interface] = field(default_factory=list)
    ips: list[IPConfig] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    dns: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": version}
        if self.interfaces:
            out["interfaces"] = [i.to_dict(version) for i in self.interfaces]
        if self.ips:
            out["ips"] = [i.to_dict(version) for i in self.ips]
        if self.routes:
            out["routes"] = [r.to_dict(version) for r in self.routes]
        if any(self.dns.values()):
            out["dns"] = self.dns
        return out

    def to_json(self, version: str) -> str:
        """As upstream prints a result: 4-space indentation, no trailing newline."""
        return json.dumps(self.to_dict(version), indent=4)

    @classmethod
    def from_dict(cls, data: Any) -> Result:
        """Parse a result of any supported version (a `prevResult`); code 6 when malformed."""
        if not isinstance(data, dict):
            raise CNIError(Code.DECODING_FAILURE, "could not parse prevResult",
                           "prevResult must be an object")
        try:
            res = cls()
            for i in data.get("interfaces") or []:
                res.interfaces.append(Interface(
                    name=str(i["name"]), mac=str(i.get("mac", "")),
                    sandbox=str(i.get("sandbox", "")),
                    extra={k: v for k, v in i.items() if k not in ("name", "mac", "sandbox")}))
            for i in data.get("ips") or []:
                idx = i.get("interface")
                res.ips.append(IPConfig(address=str(i["address"]), gateway=str(i.get("gateway", "")),
                                        interface=None if idx is None else int(idx)))
            for r in data.get("routes") or []:
                res.routes.append(Route(dst=str(r["dst"]), gw=str(r.get("gw", "")),
                                        extra={k: v for k, v in r.items() if k not in ("dst", "gw")}))
            dns = data.get("dns")
            dns = {} if dns is None else dns
            if not isinstance(dns, dict):
                raise TypeError("dns must be an object")
            res.dns = dns
            return res
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CNIError(Code.DECODING_FAILURE, "could not parse prevResult", str(e)) from None


# --------------------------------------------------------------------------------------------
# Environment and config

# Which CNI_* variables each command needs (libcni skel, plus GC and STATUS from SPEC 1.1).
REQUIRED_ENV: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_COMMAND", "CNI_PATH"),
    "STATUS": ("CNI_COMMAND", "CNI_PATH"),
}


@dataclass
class CmdArgs:
    """One invocation's parameters: the `CNI_*` environment, parsed and validated."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: dict[str, str] = field(default_factory=dict)
    path: list[str] = field(default_factory=list)


def validate_container_id(container_id: str) -> None:
    if not _NAME_RE.match(container_id):
        raise CNIError(Code.INVALID_ENV, "invalid characters in containerID", container_id)


def validate_ifname(ifname: str) -> None:
    if not ifname:
        raise CNIError(Code.INVALID_ENV, "interface name is empty")
    if len(ifname.encode()) > 15:
        raise CNIError(Code.INVALID_ENV, "interface name is too long",
                       "interface name should be less than 16 characters")
    if ifname in (".", ".."):
        raise CNIError(Code.INVALID_ENV, "interface name is . or ..")
    if _IFNAME_BAD.search(ifname):
        raise CNIError(Code.INVALID_ENV,
                       "interface name contains / or : or whitespace characters", ifname)


def parse_cni_args(text: str) -> dict[str, str]:
    """`CNI_ARGS`: `K=V;K2=V2` (empty is fine); a pair without `=` is code 4."""
    out: dict[str, str] = {}
    for pair in text.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CNIError(Code.INVALID_ENV, "invalid CNI_ARGS pair", pair)
        out[key] = value
    return out


def parse_env(environ: Mapping[str, str]) -> CmdArgs:
    """Validate the environment for `CNI_COMMAND` (which the caller has checked is set)."""
    command = environ.get("CNI_COMMAND", "")
    required = REQUIRED_ENV.get(command)
    if required is None:
        raise CNIError(Code.INVALID_ENV, f"unknown CNI_COMMAND: {command}")
    missing = [k for k in required if not environ.get(k)]
    if missing:
        raise CNIError(Code.INVALID_ENV, f"required env variables [{','.join(missing)}] missing")
    cmd = CmdArgs(command=command,
                  container_id=environ.get("CNI_CONTAINERID", ""),
                  netns=environ.get("CNI_NETNS", ""),
                  ifname=environ.get("CNI_IFNAME", ""),
                  args=parse_cni_args(environ.get("CNI_ARGS", "")),
                  path=[p for p in environ.get("CNI_PATH", "").split(":") if p])
    if "CNI_CONTAINERID" in required:
        validate_container_id(cmd.container_id)
    if "CNI_IFNAME" in required:
        validate_ifname(cmd.ifname)
    return cmd


def parse_config(data: bytes | str) -> dict[str, Any]:
    """The network config from stdin: JSON object with a valid `name` (codes 6 and 7)."""
    try:
        conf = json.loads(data or b"null")
    except (ValueError, UnicodeDecodeError) as e:
        raise CNIError(Code.DECODING_FAILURE, f"error unmarshall network config: {e}") from None
    if not isinstance(conf, dict):
        raise CNIError(Code.DECODING_FAILURE,
                       "error unmarshall network config: the config must be a JSON object")
    name = conf.get("name")
    if not name:
        raise CNIError(Code.INVALID_CONFIG, "missing network name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise CNIError(Code.INVALID_CONFIG, "invalid characters found in network name",
                       str(name))
    version = conf.get("cniVersion", "0.1.0")
    if not isinstance(version, str):
        raise CNIError(Code.INVALID_CONFIG, "invalid config: key 'cniVersion' must be a string")
    return conf


def config_key(conf: Mapping[str, Any], key: str, kind: type, default: Any,
               minimum: int | None = None) -> Any:
    """A typed value of the plugin's config; a wrong type is code 7 naming the key."""
    value = conf.get(key, default)
    if value is None:
        return default
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        names = {int: "an integer", str: "a string", bool: "a boolean", list: "a list",
                 dict: "an object"}
        raise CNIError(Code.INVALID_CONFIG,
                       f"invalid config: key '{key}' must be {names.get(kind, kind.__name__)}")
    if minimum is not None and value < minimum:
        raise CNIError(Code.INVALID_CONFIG,
                       f"invalid config: key '{key}' must be at least {minimum}")
    return value
