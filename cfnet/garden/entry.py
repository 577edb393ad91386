"""`cfnet garden-hook`: Garden's external network plugin protocol (spec dataplane 4.1).

Two spellings, same behaviour:

    cfnet garden-hook up|down --handle H --configFile F          (cfnet's)
    cfnet garden-hook --configFile=F --action up|down --handle H  (what Guardian runs upstream)

Flags follow Go's `flag` package (one or two dashes, `--flag value` or `--flag=value`, parsing
stops at the first non-flag). `up` reads Guardian's JSON on stdin and writes one JSON line on
stdout; every error is one line `<log_prefix>: <error>` on stderr, nothing on stdout, exit 1.

This module is what `cfnet.cli.main` imports for `cfnet garden-hook` (no typer, no rich): it runs
for every container. `--help` shows the typer help of `cfnet.cli.garden_hook`.
"""

from __future__ import annotations

import sys
from typing import IO

DEFAULT_PREFIX = "cfnetworking"
NOT_DIRECTLY = "this is a plugin for Garden-runC.  Don't run it directly."
_FLAGS = ("action", "handle", "configFile")


class UsageError(Exception):
    pass


class Terminated(BaseException):
    """SIGTERM or SIGINT arrived: unwind so that `up` undoes what it did."""


def _terminate_on_signals() -> None:
    import signal

    def handler(signum: int, _frame: object) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):  # the rollback must not be cut short
            signal.signal(sig, signal.SIG_IGN)
        raise Terminated(f"terminated by signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def parse_flags(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """Go's flag.FlagSet.Parse for three string flags: (values, remaining args)."""
    values: dict[str, str] = {}
    rest = list(args)
    while rest:
        s = rest[0]
        if len(s) < 2 or s[0] != "-":
            break
        dashes = 2 if s[1] == "-" else 1
        if s == "--":
            rest.pop(0)
            break
        name = s[dashes:]
        if not name or name[0] in "-=":
            raise UsageError(f"bad flag syntax: {s}")
        rest.pop(0)
        name, has_value, value = name.partition("=")
        if name not in _FLAGS:
            if name in ("help", "h"):
                raise UsageError("flag: help requested")
            raise UsageError(f"flag provided but not defined: -{name}")
        if not has_value:
            if not rest:
                raise UsageError(f"flag needs an argument: -{name}")
            value = rest.pop(0)
        values[name] = value
    return values, rest


def _wants_help(args: list[str]) -> bool:
    if args[:1] == ["--help"]:
        return True
    return args[:1] in (["up"], ["down"]) and "--help" in args[1:]


def _show_help(args: list[str]) -> int:
    from cfnet.cli.garden_hook import app

    try:
        app(args=args, prog_name="cfnet garden-hook")
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def run(args: list[str], stdin: IO[bytes], stdout: IO[str], stderr: IO[str]) -> int:
    prefix = DEFAULT_PREFIX

    def fail(message: str) -> int:
        stderr.write(f"{prefix}: {message}\n")
        return 1

    if not args or args[0] == "-h":
        return fail(NOT_DIRECTLY)
    if _wants_help(args):
        return _show_help(args)

    positional_action = ""
    if args[0] in ("up", "down"):
        positional_action, args = args[0], args[1:]
    try:
        values, extra = parse_flags(args)
    except UsageError as e:
        return fail(f"parse args: {e}")
    if positional_action:
        if values.get("action", positional_action) != positional_action:
            return fail(f"parse args: action given twice: {positional_action} and "
                        f"{values['action']}")
        values["action"] = positional_action

    config_path = values.get("configFile", "")
    if not config_path:
        return fail("parse args: missing required flag 'configFile'")
    from cfnet.garden import config

    try:
        cfg = config.load(config_path)
    except config.ConfigError as e:
        prefix = e.log_prefix or prefix
        return fail(f"parse args: {e}")
    prefix = cfg.log_prefix
    if extra:
        return fail(f"parse args: unexpected extra args: [{' '.join(extra)}]")
    handle, action = values.get("handle", ""), values.get("action", "")
    if not handle:
        return fail("parse args: missing required flag 'handle'")
    if not action:
        return fail("parse args: missing required flag 'action'")

    from cfnet.garden import libcni

    try:
        conflist = libcni.load_conflist(cfg.cni_config_dir)
    except libcni.CNIFailure as e:
        return fail(f"load cni config: {e}")
    runtime = libcni.Runtime(cfg.plugin_path, cfg.cni_cache_dir)

    from cfnet.garden.up import HookError

    _terminate_on_signals()
    try:
        if action == "up":
            from cfnet.garden import inputs as inputs_mod
            from cfnet.garden.up import up

            try:
                inputs = inputs_mod.decode_up(stdin.read())
            except inputs_mod.GoJSONError as e:
                return fail(str(e))
            out = up(cfg, handle, inputs, conflist, runtime)
            stdout.write(inputs_mod.encode(out))
            stdout.flush()
            return 0
        if action == "down":
            from cfnet.garden.down import down

            down(cfg, handle, conflist, runtime)
            return 0
        return fail(f"unrecognized action: {action}")
    except (HookError, Terminated) as e:
        return fail(str(e))
    except Exception as e:  # noqa: BLE001 - a bug still answers in the protocol, one line
        return fail(f"{action}: {type(e).__name__}: {e}")


def main(args: list[str]) -> int:
    """The fast path of `cfnet garden-hook` (see cfnet.cli.main)."""
    return run(args, sys.stdin.buffer, sys.stdout, sys.stderr)
