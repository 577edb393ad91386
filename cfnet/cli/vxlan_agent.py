"""`cfnet vxlan-agent --config-file F`: enforce c2c policies and dynamic ASGs on this cell.

Upstream's Go flag spelling `-config-file F` is accepted too. `--reset` (the pre-start
equivalent) drops and rebuilds the `ip cfnet` table instead of running; never use it on a cell
with running containers.
"""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False,
                  help="Enforce policies and egress rules on a cell.")


@app.command()
def main(
    config_file: str = typer.Option(..., "--config-file", "-config-file", metavar="PATH",
                                    help="Agent config: upstream vxlan-policy-agent JSON, or "
                                         "TOML with the same keys."),
    reset: bool = typer.Option(False, "--reset",
                               help="Drop and rebuild the cell's nftables table (`ip cfnet`), "
                                    "then exit: what pre-start does. It removes every "
                                    "container's rules; never on a cell with running "
                                    "containers."),
) -> None:
    """Run until SIGTERM: watch the policy server, program nftables, serve the force endpoints."""
    if reset:
        from cfnet.agent.service import reset_table

        raise typer.Exit(int(reset_table(config_file)))
    from cfnet.agent.service import run

    raise typer.Exit(int(run(config_file)))
