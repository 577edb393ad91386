"""`cfnet cni <plugin>`: the executable face of cfnet's CNI plugins, called once per container.

`cfnet.cli.main` imports this module directly (no typer, no rich) when the first argument is
`cni`, or when the program is invoked through a `silk-cni` symlink in a runtime's CNI_PATH.
Everything heavier (pyroute2, urllib) is imported only by the command that needs it.

stdout carries only the CNI result or error. Logs are lager-style JSON lines on stderr, or in the
file named by CFNET_CNI_LOG (`off` silences them); CFNET_CNI_LOG_LEVEL picks the level.
"""

from __future__ import annotations

import os
import sys
from typing import Any

# plugin name -> (module, class implementing cfnet.cni.plugin.Plugin). The wrapper plugin is
# registered here as `"wrapper": (<its module>, <its class>)` when it lands.
PLUGINS: dict[str, tuple[str, str]] = {
    "silk": ("cfnet.silk.cni", "SilkPlugin"),
    "wrapper": ("cfnet.cni.wrapper", "WrapperPlugin"),
    "bandwidth": ("cfnet.cni.bandwidth", "BandwidthPlugin"),
}

USAGE = ("usage: cfnet cni PLUGIN  (plugins: {names})\n"
         "A CNI plugin: run by a container runtime with CNI_* environment and the network config "
         "on stdin.\n")


def _logger(source: str) -> Any:
    target = os.environ.get("CFNET_CNI_LOG", "stderr")
    if target == "off":
        return None
    from cfnet.core.logs import LEVELS, setup_logging

    level = os.environ.get("CFNET_CNI_LOG_LEVEL", "info").lower()
    if level not in LEVELS:
        level = "info"
    stream = sys.stderr if target == "stderr" else open(target, "a", buffering=1)  # noqa: SIM115
    return setup_logging(source, level=level, stream=stream)


def load_plugin(name: str, log: Any = None) -> Any:
    """An instance of the named plugin (for in-process callers such as garden-hook)."""
    import importlib

    module, cls = PLUGINS[name]
    return getattr(importlib.import_module(module), cls)(log=log)


def main(args: list[str]) -> int:
    names = ", ".join(sorted(PLUGINS))
    if not args or args[0] in ("-h", "--help"):
        sys.stderr.write(USAGE.format(names=names))
        return 0 if args else 2
    name = args[0]
    if name not in PLUGINS:
        sys.stderr.write(f"cfnet cni: unknown plugin '{name}' (plugins: {names})\n")
        return 2
    from cfnet.cni.plugin import run

    plugin = load_plugin(name)
    if os.environ.get("CNI_COMMAND") not in (None, "", "VERSION"):
        try:
            plugin.log = _logger(f"cfnetworking.{plugin.name}")
        except OSError as e:  # an unwritable log file must not fail the container
            sys.stderr.write(f"cfnet cni: log file: {e}\n")
    return run(plugin, os.environ, sys.stdin.buffer, sys.stdout, sys.stderr)
