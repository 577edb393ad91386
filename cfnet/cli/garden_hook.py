"""`cfnet garden-hook --help`: what the hook does and how Garden calls it.

Garden never goes through typer: `cfnet.cli.main` sends `cfnet garden-hook ...` straight to
`cfnet.garden.entry.main` (Go flag syntax, upstream error lines). This app only teaches, and if
its commands are run they hand over to that same entry point.
"""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    name="garden-hook",
    add_completion=False,
    no_args_is_help=True,
    help=(
        "Set up or tear down a container's network for Garden (garden-external-networker).\n\n"
        "Garden runs it per container: `cfnet garden-hook --configFile=adapter.json --action up "
        "--handle H` with its JSON on stdin (pid, properties, netin, netout_rules); the hook "
        "bind-mounts the container's namespace, allocates host ports, runs the CNI config list "
        "and prints the container IP, mapped ports and DNS servers as one JSON line. "
        "`down` undoes all of it and may be repeated. See docs/garden-hook.md."
    ),
)


def _hand_over(action: str, handle: str, config_file: str) -> None:
    from cfnet.garden.entry import main

    sys.exit(main([action, "--handle", handle, "--configFile", config_file]))


@app.command()
def up(
    handle: str = typer.Option(..., "--handle", metavar="HANDLE",
                               help="Garden's container handle."),
    config_file: str = typer.Option(..., "--configFile", metavar="PATH",
                                    help="adapter.json (upstream keys)."),
) -> None:
    """Create the container's network. stdin: Garden's JSON; stdout: one JSON line."""
    _hand_over("up", handle, config_file)


@app.command()
def down(
    handle: str = typer.Option(..., "--handle", metavar="HANDLE",
                               help="Garden's container handle."),
    config_file: str = typer.Option(..., "--configFile", metavar="PATH",
                                    help="adapter.json (upstream keys)."),
) -> None:
    """Remove the container's network (idempotent: succeeds when it is already gone)."""
    _hand_over("down", handle, config_file)
