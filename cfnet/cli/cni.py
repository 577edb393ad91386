"""`cfnet cni`: listed by the typer root, but run through the fast path (cfnet.cni.entry).

`cfnet.cli.main` sends `cfnet cni ...` straight to `cfnet.cni.entry.main` without typer; this app
exists so that the command shows up in `cfnet --help` and works if called through typer anyway.
"""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False,
                  help="CNI plugins (silk, wrapper, bandwidth) as a container runtime calls them.")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def cni(ctx: typer.Context, plugin: str = typer.Argument(..., help="Plugin name, e.g. silk.")) -> None:
    """Run a CNI plugin with CNI_* environment and the network config on stdin."""
    from cfnet.cni.entry import main

    raise typer.Exit(main([plugin, *ctx.args]))
