"""What a CNI plugin implements, and the `skel` that runs one as an executable.

A plugin is a small object with one method per CNI command. It is called two ways:

- in-process, by `garden-hook` (no exec, no re-import, sockets it already has):
  `invoke(plugin, "ADD", conf, CmdArgs(...))` returns a `Result` or raises `CNIError`;
- as an executable, by any CNI runtime: `run(plugin, os.environ, stdin, stdout, stderr)` reads
  the `CNI_*` environment and the config, and writes the result or error JSON to stdout.

Both paths share validation and version rules (`prepare`), so they behave the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any, Protocol

from cfnet.cni.types import (
    SUPPORTED_VERSIONS,
    CmdArgs,
    CNIError,
    Code,
    Result,
    at_least,
    check_version,
    parse_config,
    parse_env,
    validate_container_id,
    validate_ifname,
    version_json,
)


class Plugin(Protocol):
    """One CNI plugin. `conf` is the network config as a dict (with injected keys)."""

    name: str  # e.g. "silk-cni", printed by the about text
    supported_versions: tuple[str, ...]

    def add(self, conf: dict[str, Any], args: CmdArgs) -> Result: ...

    def delete(self, conf: dict[str, Any], args: CmdArgs) -> None: ...

    def check(self, conf: dict[str, Any], args: CmdArgs) -> None: ...

    def gc(self, conf: dict[str, Any], args: CmdArgs) -> None: ...

    def status(self, conf: dict[str, Any], args: CmdArgs) -> None: ...


# The lowest config version that allows each command (SPEC: CHECK 0.4.0, GC/STATUS 1.1.0).
MIN_VERSION = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}


def prepare(plugin: Plugin, command: str, conf: dict[str, Any]) -> str:
    """Check that the config's version allows `command`; returns the version to answer in."""
    version = check_version(str(conf.get("cniVersion", "0.1.0")), plugin.supported_versions)
    minimum = MIN_VERSION.get(command)
    if minimum and not at_least(version, minimum):
        raise CNIError(Code.INCOMPATIBLE_VERSION, f"config version does not allow {command}")
    return version


def invoke(plugin: Plugin, command: str, conf: dict[str, Any], args: CmdArgs) -> Result | None:
    """Run one command in-process with the same checks as the executable path."""
    if command in ("ADD", "CHECK", "DEL"):
        validate_container_id(args.container_id)
        validate_ifname(args.ifname)
    prepare(plugin, command, conf)
    args.command = command
    if command == "ADD":
        return plugin.add(conf, args)
    if command == "DEL":
        plugin.delete(conf, args)
    elif command == "CHECK":
        plugin.check(conf, args)
    elif command == "GC":
        plugin.gc(conf, args)
    elif command == "STATUS":
        plugin.status(conf, args)
    else:
        raise CNIError(Code.INVALID_ENV, f"unknown CNI_COMMAND: {command}")
    return None


def run(plugin: Plugin, environ: Mapping[str, str], stdin: IO[bytes], stdout: IO[str],
        stderr: IO[str]) -> int:
    """The executable protocol: exit status 0 with the result, or 1 with the error JSON."""
    command = environ.get("CNI_COMMAND", "")
    if not command:
        versions = ", ".join(plugin.supported_versions)
        stderr.write(f"CNI Plugin {plugin.name}\nCNI protocol versions supported: {versions}\n")
        return 0
    if command == "VERSION":
        stdout.write(version_json(plugin.supported_versions))
        return 0
    version: str | None = None
    try:
        args = parse_env(environ)
        conf = parse_config(stdin.read())
        version = prepare(plugin, command, conf)
        result = invoke(plugin, command, conf, args)
        if result is not None:
            stdout.write(result.to_json(version))
        return 0
    except CNIError as e:
        stdout.write(e.to_json(version))
        return 1
    except Exception as e:  # a bug: still answer in the protocol, never with a traceback
        stdout.write(CNIError(Code.INTERNAL, str(e) or type(e).__name__).to_json(version))
        return 1


__all__ = ["Plugin", "invoke", "prepare", "run", "SUPPORTED_VERSIONS"]
