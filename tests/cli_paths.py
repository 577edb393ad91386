"""Resolve a quoted `cfnet ...` command line against the real typer/click command tree.

Used by the docs and examples tests: a command line in a doc or a systemd unit must name
existing (sub)commands and options. Positional placeholders (SOURCE, PATH, ...) are not checked,
except the plugin name of `cfnet cni PLUGIN`, which the CNI fast path dispatches on.
"""

from __future__ import annotations

import functools
from typing import Any


class UnknownCommand(AssertionError):
    """A quoted command line names a command or option cfnet does not have."""


# typer 0.29 carries its own copy of click, and cfnet's lazy root uses the installed click: the
# command objects are handled by duck typing, not by isinstance against one of the two.
Command = Any


@functools.lru_cache(maxsize=1)
def root_command() -> Command:
    import typer

    from cfnet.cli.main import _build_app

    command = typer.main.get_command(_build_app())
    assert _is_group(command)
    return command


def _is_group(command: Command) -> bool:
    return hasattr(command, "list_commands") and hasattr(command, "get_command")


def _context(command: Command) -> Any:
    return command.context_class(command, info_name=command.name or "cfnet")


def _options(command: Command) -> list[Any]:
    ctx = _context(command)
    return [p for p in command.get_params(ctx) if getattr(p, "param_type_name", "") == "option"]


def _subcommand(group: Command, name: str) -> Command | None:
    sub = group.get_command(_context(group), name)
    if sub is not None and hasattr(sub, "load"):  # the root's lazy stand-in for a role's app
        sub = sub.load()
    return sub


def _option_names(command: Command) -> set[str]:
    names = {"--help"}
    for param in _options(command):
        names.update(param.opts)
        names.update(param.secondary_opts)
    return names


def _takes_value(command: Command, option: str) -> bool:
    for param in _options(command):
        if option in param.opts + param.secondary_opts:
            return not param.is_flag and not param.count
    return False


def _clean(token: str) -> str:
    """A synopsis token without its optional-brackets: `[--json]` -> `--json`."""
    return token.strip("[]()")


def resolve_cfnet_command(args: list[str]) -> tuple[list[str], Command]:
    """The command path (e.g. ['policy-server', 'serve']) and click command for the words after
    `cfnet`. `a/b` offers alternatives for a subcommand (each must exist); `...` stands for any
    further arguments. Raises UnknownCommand."""
    paths = _resolve(root_command(), [], [_clean(t) for t in args if _clean(t)])
    return paths[0]


def resolve_all(args: list[str]) -> list[tuple[list[str], Command]]:
    """Like resolve_cfnet_command, with one result per `a/b` alternative."""
    return _resolve(root_command(), [], [_clean(t) for t in args if _clean(t)])


def _resolve(command: Command, path: list[str],
             tokens: list[str]) -> list[tuple[list[str], Command]]:
    where = "cfnet " + " ".join(path) if path else "cfnet"
    if path == ["lab", "policy"]:  # passes its arguments on to `cfnet policy`
        return _resolve(_subcommand(root_command(), "policy"), ["policy"], tokens)  # type: ignore[arg-type]
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.startswith("...") or token.startswith("…"):
            if _is_group(command):  # any subcommand
                return [(path, command)]
            i += 1  # "more of the same" in a synopsis
            continue
        if token.startswith("-") and token != "-":
            name = token.split("=", 1)[0]
            if path == ["garden-hook"]:  # Garden's Go-style flags, parsed by the fast path
                _check_garden_flag(name)
                i += 1 if "=" in token else 2
                continue
            if name not in _option_names(command):
                raise UnknownCommand(f"`{where}` has no option {name}")
            if "=" not in token and _takes_value(command, name):
                i += 1
            i += 1
            continue
        if _is_group(command):
            results = []
            for alternative in token.split("/"):
                sub = _subcommand(command, alternative)
                if sub is None:
                    raise UnknownCommand(f"`{where}` has no subcommand {alternative!r}")
                results += _resolve(sub, path + [alternative], tokens[i + 1:])
            return results
        if path == ["cni"] and i == 0:  # `cfnet cni PLUGIN`: the fast path's plugin table
            from cfnet.cni.entry import PLUGINS

            if token.isidentifier() and token.lower() == token and token not in PLUGINS:
                raise UnknownCommand(f"`cfnet cni` has no plugin {token!r}")
        i += 1
    return [(path, command)]


def _check_garden_flag(name: str) -> None:
    """`cfnet garden-hook --configFile=F --action up --handle H` (what Guardian runs) never
    reaches typer: cfnet.garden.entry parses Go flags. Ask that parser."""
    from cfnet.garden.entry import UsageError, parse_flags

    if name == "--help":
        return
    try:
        parse_flags([f"{name}=x"])
    except UsageError as e:
        raise UnknownCommand(f"`cfnet garden-hook` has no flag {name}: {e}") from None


def command_help_ok(path: list[str]) -> tuple[bool, str]:
    """Run `cfnet PATH --help` through the typer app in-process: (exit 0?, output)."""
    from typer.testing import CliRunner

    from cfnet.cli.main import _build_app

    result: Any = CliRunner().invoke(_build_app(), [*path, "--help"])
    return result.exit_code == 0, result.output
