"""`cfnet silk-daemon [run] --config-file F` and `cfnet silk-daemon teardown --config-file F`.

`run` is also the default, so `cfnet silk-daemon --config-file F` works; upstream's Go flag
spellings `-config F` and `--config F` are accepted too.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    add_completion=False,
    help="Run the Silk daemon that wires a cell into the overlay: it keeps this cell's subnet "
         "lease and its VTEP, routes and neighbours up to date, and answers the CNI's netinfo "
         "requests.\n\n`cfnet silk-daemon --config-file F` is the same as `run`; `teardown` "
         "releases the lease.")

_CONFIG_HELP = "Daemon config file: upstream silk-daemon JSON, or TOML with the same keys."


def _config_option(required: bool) -> typer.models.OptionInfo:
    return typer.Option(... if required else None, "--config-file", "--config", "-config",
                        metavar="PATH", help=_CONFIG_HELP)


@app.callback(invoke_without_command=True)
def main(ctx: typer.Context, config_file: str = _config_option(required=False)) -> None:
    """Keep this cell's subnet lease and its VTEP, routes and neighbours up to date."""
    if ctx.invoked_subcommand is not None:
        return
    if config_file is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(2)
    _run(config_file)


@app.command("run")
def run_command(config_file: str = _config_option(required=True)) -> None:
    """Run until SIGTERM (which keeps the lease and the VTEP) or a fatal lease error."""
    _run(config_file)


@app.command("teardown")
def teardown_command(config_file: str = _config_option(required=True)) -> None:
    """Release this cell's lease and delete the VTEP with everything on it."""
    from cfnet.silk.teardown import run

    raise typer.Exit(int(run(config_file)))


def _run(config_file: str) -> None:
    from cfnet.silk.daemon import run

    raise typer.Exit(int(run(config_file)))
