"""`cfnet silk-controller --config-file F`: run the Silk subnet lease controller.

Upstream's Go flag spellings `-config F` and `--config F` are accepted too, so existing job
templates and scripts work unchanged.
"""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, help="Run the Silk subnet lease controller.")


@app.command()
def silk_controller(
    config_file: str = typer.Option(
        ..., "--config-file", "--config", "-config", metavar="PATH",
        help="Config file: upstream silk-controller JSON, or TOML with the same keys.",
    ),
) -> None:
    """Serve the lease API (mutual TLS), health and debug listeners until SIGTERM."""
    from cfnet.silk.controller import run

    raise typer.Exit(int(run(config_file)))
