"""`cfnet iptables-logger --config-file F`: kernel packet-log lines as enriched JSON (spec 6.1)."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False,
                  help="Turn kernel packet-log lines into JSON with app, space and org ids.")


@app.command()
def main(
    config_file: str = typer.Option(..., "--config-file", "-config-file", metavar="PATH",
                                    help="Upstream iptables-logger JSON, or TOML with the same "
                                         "keys."),
) -> None:
    """Follow the kernel log until SIGTERM."""
    from cfnet.agent.iptables_logger import run

    raise typer.Exit(run(config_file))
