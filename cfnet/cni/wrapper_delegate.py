"""Calling the wrapper's delegate plugin: cfnet's own plugins in-process, any other one exec'd
from CNI_PATH with the same CNI_* environment and `JSON(delegate)` on stdin, as CNI requires."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from cfnet.cni.types import CmdArgs, CNIError, Code, Result, parse_config

# delegate `type` -> cfnet plugin name (cfnet.cni.entry.PLUGINS) run without an exec
IN_PROCESS = {"silk-cni": "silk"}
EXEC_TIMEOUT = 120.0


def find_in_path(plugin_type: str, path: list[str]) -> str:
    for d in path:
        candidate = os.path.join(d, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CNIError(Code.INTERNAL,
                   f'failed to find plugin "{plugin_type}" in path [{" ".join(path)}]')


def _env(command: str, args: CmdArgs) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update(CNI_COMMAND=command, CNI_CONTAINERID=args.container_id, CNI_NETNS=args.netns,
               CNI_IFNAME=args.ifname, CNI_PATH=":".join(args.path),
               CNI_ARGS=";".join(f"{k}={v}" for k, v in args.args.items()))
    return env


def _exec(command: str, conf: dict[str, Any], args: CmdArgs) -> dict[str, Any] | None:
    binary = find_in_path(str(conf["type"]), args.path)
    try:
        proc = subprocess.run([binary], input=json.dumps(conf).encode(), capture_output=True,
                              env=_env(command, args), timeout=EXEC_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CNIError(Code.INTERNAL, f"exec {binary}: {e}") from None
    out = proc.stdout.decode("utf-8", "replace").strip()
    parsed: Any = None
    if out:
        try:
            parsed = json.loads(out)
        except ValueError:
            parsed = None
    if proc.returncode != 0:
        if isinstance(parsed, dict) and "code" in parsed:
            raise CNIError(int(parsed.get("code") or Code.INTERNAL), str(parsed.get("msg", "")),
                           str(parsed.get("details", "")))
        err = proc.stderr.decode("utf-8", "replace").strip()
        raise CNIError(Code.INTERNAL, f"netplugin failed: {out or err or proc.returncode}")
    if out and not isinstance(parsed, dict):
        raise CNIError(Code.DECODING_FAILURE, f"netplugin failed with no valid result: {out[:200]}")
    return parsed


def call(command: str, conf: dict[str, Any], args: CmdArgs, log: Any = None) -> Result | None:
    """Run `command` on the delegate; its Result for ADD. Raises the delegate's CNIError."""
    plugin_type = str(conf["type"])
    sub = CmdArgs(command=command, container_id=args.container_id, netns=args.netns,
                  ifname=args.ifname, args=dict(args.args), path=list(args.path))
    name = IN_PROCESS.get(plugin_type)
    if name is not None:
        from cfnet.cni.entry import load_plugin
        from cfnet.cni.plugin import invoke

        plugin = load_plugin(name, log=log)
        checked = parse_config(json.dumps(conf))  # the same checks an exec'd plugin makes
        return invoke(plugin, command, checked, sub)
    parsed = _exec(command, conf, sub)
    if command == "ADD":
        if parsed is None:
            raise CNIError(Code.DECODING_FAILURE, "netplugin failed with no result")
        return Result.from_dict(parsed)
    return None
