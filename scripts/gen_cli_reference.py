#!/usr/bin/env python3
"""Write docs/cli-reference.md from the real `cfnet` command tree.

    python scripts/gen_cli_reference.py            # (re)write docs/cli-reference.md
    python scripts/gen_cli_reference.py --check    # exit 1 if the file is stale
    python scripts/gen_cli_reference.py --stdout   # print instead of writing

The tree is cfnet/cli/main.py's root with every COMMANDS module loaded, walked through typer's
click objects: each command's usage line, arguments, options, defaults and help. The two
per-container commands (`cni`, `garden-hook`) do not run through typer: their sections come from
the fast paths' own usage texts (cfnet/cni/entry.py, cfnet/garden/entry.py).

The output depends only on the code: CFNET_* environment variables (which feed some defaults, such
as `cfnet lab --dir`) are dropped before cfnet is imported.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs" / "cli-reference.md"
REGENERATE = "python scripts/gen_cli_reference.py"

# typer 0.29 carries its own copy of click; its objects are used by duck typing, as in
# tests/cli_paths.py.
Command = Any
Param = Any

# Members of cfnet.cli.exit_codes.ExitCode whose line carries no comment.
EXIT_CODE_FALLBACKS = {"OK": "success", "INTERRUPTED": "interrupted (SIGINT, Ctrl-C)"}
VALUE_NAMES = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "Path": "PATH", "bool": ""}


@dataclass
class Node:
    path: list[str]  # words after `cfnet`
    command: Command

    @property
    def title(self) -> str:
        return " ".join(["cfnet", *self.path])


# -- walking the tree -----------------------------------------------------------------------------


def _root() -> Command:
    import typer

    from cfnet.cli.main import _build_app

    return typer.main.get_command(_build_app())


def _context(command: Command, name: str) -> Any:
    return command.context_class(command, info_name=name)


def _is_group(command: Command) -> bool:
    return hasattr(command, "list_commands") and hasattr(command, "get_command")


def _subcommand(group: Command, name: str) -> Command | None:
    sub = group.get_command(_context(group, group.name or "cfnet"), name)
    if sub is not None and hasattr(sub, "load"):  # the root's lazy stand-in for a role's app
        sub = sub.load()
    return sub


def walk(command: Command, path: list[str]) -> Iterator[Node]:
    """Every visible command, depth first, in the order `--help` lists them."""
    yield Node(path, command)
    if not _is_group(command):
        return
    ctx = _context(command, path[-1] if path else "cfnet")
    for name in command.list_commands(ctx):
        sub = _subcommand(command, name)
        if sub is not None and not getattr(sub, "hidden", False):
            yield from walk(sub, [*path, name])


def _params(node: Node) -> list[Param]:
    ctx = _context(node.command, node.path[-1] if node.path else "cfnet")
    return [p for p in node.command.get_params(ctx)
            if not getattr(p, "hidden", False) and "--help" not in p.opts]


# -- text -----------------------------------------------------------------------------------------

CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)


def _escape(text: str) -> str:
    """Markdown-escape prose, leaving `code spans` as they are."""
    out, last = [], 0
    for m in CODE_SPAN.finditer(text):
        out.append(_escape_plain(text[last:m.start()]))
        out.append(m.group(0))
        last = m.end()
    out.append(_escape_plain(text[last:]))
    return "".join(out)


def _escape_plain(text: str) -> str:
    text = text.replace("\\", "\\\\").replace("*", "\\*").replace("<", "&lt;")
    return re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", text)


def paragraphs(help_text: str | None) -> list[str]:
    """Help text as click shows it: paragraphs rewrapped, `\\b` paragraphs kept line by line."""
    if not help_text:
        return []
    text = inspect.cleandoc(help_text).split("\f", 1)[0]
    out = []
    for para in re.split(r"\n\s*\n", text):
        if para.startswith("\b\n"):
            out.append("  \n".join(_escape(line) for line in para[2:].splitlines()))
        elif para.strip():
            out.append(_escape(" ".join(line.strip() for line in para.splitlines())))
    return out


def _code(text: str) -> str:
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading (the same rule as tests/test_docs.py)."""
    text = re.sub(r"[`*_]", "", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


# -- one command ----------------------------------------------------------------------------------


def _annotation_name(param: Param) -> str:
    descriptor = getattr(param, "type_descriptor", None)
    annotation = getattr(descriptor, "annotation", None)
    if annotation is None:
        return "TEXT"
    args = getattr(annotation, "__args__", None)
    if args:  # list[str], Optional[...]
        annotation = next((a for a in args if a is not type(None)), annotation)
    name = getattr(annotation, "__name__", str(annotation))
    choices = getattr(annotation, "__members__", None)
    if choices:  # an Enum
        return "|".join(str(getattr(v, "value", v)) for v in choices.values())
    return VALUE_NAMES.get(name, name.upper())


def value_name(param: Param) -> str:
    """What follows an option (PATH, tcp|udp, ...), or an argument's placeholder."""
    if param.param_type_name == "argument":
        return param.metavar or param.name.upper()
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    return param.metavar or _annotation_name(param)


def _names(param: Param) -> str:
    names = ", ".join(param.opts)
    if param.secondary_opts:
        names += " / " + ", ".join(param.secondary_opts)
    value = value_name(param)
    return f"{names} {value}" if value else names


def _default(param: Param) -> str | None:
    show = getattr(param, "show_default", True)
    if isinstance(show, str):
        return show
    default = param.default
    if not show or default is None or callable(default) or param.required:
        return None
    if getattr(param, "is_flag", False) and default is False:
        return None
    if isinstance(default, (list, tuple)):
        return ", ".join(str(d) for d in default) or None
    return str(default) if default != "" else '""'


def _range(param: Param) -> str | None:
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    if low is not None and high is not None:
        return f"{low} to {high}"
    if low is not None:
        return f"at least {low}"
    if high is not None:
        return f"at most {high}"
    return None


def describe_param(param: Param) -> str:
    facts = []
    if param.required:
        facts.append("required")
    default = _default(param)
    if default is not None:
        facts.append(f"default {_code(default)}")
    bounds = _range(param)
    if bounds:
        facts.append(bounds)
    text = " ".join(paragraphs(getattr(param, "help", None)))
    repeatable = param.multiple or (param.nargs not in (1, None)
                                    and param.param_type_name == "option")
    if repeatable and "repeatable" not in text:
        facts.append("repeatable")
    if param.param_type_name == "argument" and param.nargs != 1:
        facts.append("one or more" if param.required else "any number")
    envvar = param.envvar
    if envvar:
        names = envvar if isinstance(envvar, (list, tuple)) else [envvar]
        facts.append("env " + ", ".join(_code(n) for n in names))
    head = _code(value_name(param) if param.param_type_name == "argument" else _names(param))
    if facts:
        head += f" ({'; '.join(facts)})"
    return f"- {head}: {text}" if text else f"- {head}"


def usage(node: Node) -> str:
    command = node.command
    params = _params(node)
    pieces = [node.title]
    for p in params:
        if p.param_type_name == "option" and p.required:
            pieces.append(" ".join(filter(None, [p.opts[0], value_name(p)])))
    if any(p.param_type_name == "option" and not p.required for p in params):
        pieces.append("[OPTIONS]")
    for p in params:
        if p.param_type_name == "argument":
            name = value_name(p) + ("..." if p.nargs != 1 else "")
            pieces.append(name if p.required else f"[{name}]")
    if command.context_settings.get("allow_extra_args"):
        pieces.append("[ARGS]...")
    if _is_group(command):
        sub = "COMMAND [ARGS]..."
        pieces.append(f"[{sub}]" if getattr(command, "invoke_without_command", False) else sub)
    return "Usage: " + " ".join(pieces)


def _subcommand_list(node: Node, children: list[Node]) -> list[str]:
    lines = ["Commands:", ""]
    for child in children:
        short = child.command.get_short_help_str(limit=300) if hasattr(
            child.command, "get_short_help_str") else (child.command.short_help or "")
        lines.append(f"- [{_code(child.path[-1])}](#{slug(child.title)}): {_escape(short)}")
    return lines


def section(node: Node, children: list[Node], invocation: list[str] | None = None) -> list[str]:
    """One command's heading, usage (or `invocation`, for a fast path), help, params, children."""
    level = "#" * min(2 + max(len(node.path) - 1, 0), 4)
    lines = [f"{level} {_code(node.title)}", ""]
    lines += invocation if invocation is not None else ["```text", usage(node), "```", ""]
    for para in paragraphs(node.command.help):
        lines += [para, ""]
    arguments = [p for p in _params(node) if p.param_type_name == "argument"]
    options = [p for p in _params(node) if p.param_type_name == "option"]
    if arguments:
        lines += ["Arguments:", "", *[describe_param(p) for p in arguments], ""]
    if options:
        lines += ["Options:", "", *[describe_param(p) for p in options], ""]
    if node.command.context_settings.get("allow_extra_args"):
        lines += ["Further arguments are passed on as they are.", ""]
    if children:
        lines += [*_subcommand_list(node, children), ""]
    return lines


# -- the fast paths -------------------------------------------------------------------------------


def cni_section() -> list[str]:
    """`cfnet cni PLUGIN`: never typer at run time; cfnet.cni.entry's usage and plugin table."""
    from cfnet.cli.main import ARGV0_ALIASES
    from cfnet.cni import entry

    names = ", ".join(sorted(entry.PLUGINS))
    text = entry.USAGE.format(names=names).rstrip("\n").splitlines()
    first = re.sub(r"^usage:\s*", "", text[0])
    lines = ["## `cfnet cni`", "", "```text", f"Usage: {first}", "```", ""]
    lines += [_escape(line) for line in text[1:]] + [""]
    aliases = {tuple(v[1:]): k for k, v in ARGV0_ALIASES.items() if v[:1] == ["cni"]}
    lines += ["| plugin | also runs as (a symlink to `cfnet` with this name in `CNI_PATH`) |",
              "|---|---|"]
    for name in sorted(entry.PLUGINS):
        alias = aliases.get((name,))
        lines.append(f"| `{name}` | {_code(alias) if alias else '-'} |")
    lines.append("")
    doc = inspect.getdoc(entry) or ""
    for para in re.split(r"\n\s*\n", doc):
        if "CFNET_" in para:
            lines += [_escape(" ".join(para.split())), ""]
    lines += [
        "`cfnet` hands `cni` to `cfnet.cni.entry` before typer is loaded (it runs for every "
        "container), so `cfnet cni --help` prints the usage above. The runtime passes "
        "`CNI_COMMAND` (ADD, DEL, CHECK, GC, STATUS, VERSION), `CNI_CONTAINERID`, `CNI_NETNS`, "
        "`CNI_IFNAME`, `CNI_PATH` and `CNI_ARGS` in the environment and the network config on "
        "stdin; stdout carries only the CNI result or error. An unknown plugin exits 2. "
        "Details: [cni.md](cni.md), [cni-wrapper.md](cni-wrapper.md).",
        "",
    ]
    return lines


def garden_hook_invocation() -> list[str]:
    """How Garden really runs `cfnet garden-hook` (cfnet.garden.entry, Go flag syntax)."""
    from cfnet.garden import entry

    doc = inspect.getdoc(entry) or ""
    spellings = [line.strip() for line in doc.splitlines()
                 if re.match(r"^\s{4,}cfnet garden-hook ", line)]
    lines = ["Invocation, as `cfnet.garden.entry` parses it before typer is loaded:", "",
             "```text"]
    lines += [("Usage: " if i == 0 else "   or: ") + s for i, s in enumerate(spellings)]
    lines += ["```", ""]
    flags = ", ".join(f"`-{f}`" for f in entry._FLAGS)
    lines += [f"Flags: {flags} (one or two dashes).", ""]
    for para in re.split(r"\n\s*\n", doc):
        if para.startswith("Flags follow"):
            lines += [_escape(" ".join(para.split())), ""]
    lines += [f"Without arguments it answers `{entry.DEFAULT_PREFIX}: {entry.NOT_DIRECTLY}` on "
              "stderr and exits 1. `--help` (alone, or after `up`/`down`) shows the typer help "
              "below. Details: [garden-hook.md](garden-hook.md).", ""]
    return lines


# -- the page -------------------------------------------------------------------------------------


def exit_codes() -> list[str]:
    """cfnet/cli/exit_codes.py's enum, with each member's comment."""
    from cfnet.cli import exit_codes as module

    comments = {**EXIT_CODE_FALLBACKS,
                **dict(re.findall(r"^\s+(\w+) = \d+\s*#\s*(.+)$", inspect.getsource(module), re.M))}
    lines = ["## Exit codes", "", _escape(inspect.getdoc(module) or ""), "",
             "| code | name | meaning |", "|---|---|---|"]
    for member in module.ExitCode:
        lines.append(f"| {int(member)} | `{member.name}` | "
                     f"{_escape(comments.get(member.name, ''))} |")
    return [*lines, ""]


def render() -> str:
    from cfnet.cli.main import COMMANDS, FAST_PATHS

    nodes = list(walk(_root(), []))
    children = {tuple(n.path): [c for c in nodes if c.path[:-1] == n.path and c.path]
                for n in nodes}
    out = [
        "# CLI reference",
        "",
        "<!-- Generated by scripts/gen_cli_reference.py from the command tree. Do not edit: run "
        f"`{REGENERATE}`. -->",
        "",
        "Every `cfnet` command and subcommand with its usage line, arguments, options, defaults "
        "and help, as the code defines them. Generated by "
        f"`{REGENERATE}`; `tests/test_cli_reference.py` fails when this page is stale. Every "
        "command also takes `--help`. How `cfnet policy` finds its server and token: "
        "[cli.md](cli.md). The HTTP APIs: [api-reference.md](api-reference.md).",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    for name, (_module, help_text) in COMMANDS.items():
        if (name,) in children:
            out.append(f"| [{_code('cfnet ' + name)}](#{slug('cfnet ' + name)}) | "
                       f"{_escape(help_text)} |")
    out.append("")
    for node in nodes:
        top = node.path[0] if node.path else None
        if top == "cni":
            if node.path == ["cni"]:
                out += cni_section()
            continue
        if node.path == ["garden-hook"] and "garden-hook" in FAST_PATHS:
            out += section(node, children[tuple(node.path)], garden_hook_invocation())
            continue
        out += section(node, children[tuple(node.path)])
    out += exit_codes()
    return "\n".join(out).rstrip("\n") + "\n"


def _clean_environment() -> None:
    for key in [k for k in os.environ if k.startswith("CFNET_")]:
        del os.environ[key]
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def stale_message(path: Path, current: str, expected: str) -> str:
    diff = list(difflib.unified_diff(current.splitlines(), expected.splitlines(),
                                     f"{path.name} (committed)", f"{path.name} (generated)",
                                     lineterm="", n=1))
    shown = "\n".join(diff[:40]) + ("\n..." if len(diff) > 40 else "")
    return (f"{path} is stale: the commands changed. Run `{REGENERATE}` and commit the result.\n"
            f"{shown}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write docs/cli-reference.md from the commands.")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("--stdout", action="store_true", help="print instead of writing")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"default {OUTPUT}")
    args = parser.parse_args(argv)
    _clean_environment()
    text = render()
    if args.stdout:
        sys.stdout.write(text)
        return 0
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            sys.stderr.write(stale_message(args.output, current, text) + "\n")
            return 1
        return 0
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
