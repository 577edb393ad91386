"""`cfnet lab`: the whole system on one Linux box, cells and containers as network namespaces."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cfnet.cli.exit_codes import ExitCode
from cfnet.lab.state import DEFAULT_DIR

app = typer.Typer(
    no_args_is_help=True, add_completion=False,
    help="Run cfnet on one Linux box: a control plane and cells in network namespaces joined by "
         "a bridge, containers as namespaces on the cells. Needs root. Nothing is added to the "
         "machine's own network namespace.\n\nStart with `cfnet lab demo`.")
console = Console()
err = Console(stderr=True)

DirOption = typer.Option(DEFAULT_DIR, "--dir", envvar="CFNET_LAB_DIR",
                         help="Lab directory: state, certificates, databases and logs.")


def _fail(e: Exception) -> None:
    err.print(f"[red]error:[/red] {e}", markup=True, highlight=False)
    raise typer.Exit(ExitCode.ERROR)


def _require_root() -> None:
    import os

    if os.geteuid() != 0:
        _fail(PermissionError("cfnet lab needs root (it creates network namespaces)"))


@app.command()
def up(cells: int = typer.Option(2, "--cells", min=1, max=20, help="Number of cells."),
       directory: Path = DirOption) -> None:
    """Bring up a lab (does nothing if one is already up in --dir)."""
    from cfnet.lab import deploy

    _require_root()
    try:
        state = deploy.up(directory, cells=cells, progress=lambda m: console.print(f"• {m}"))
    except deploy.LabError as e:
        _fail(e)
    console.print(f"[green]lab up[/green] in {state.directory}")


@app.command()
def down(directory: Path = DirOption) -> None:
    """Remove every namespace, process and file of the lab. Safe to run twice, and after a crash."""
    from cfnet.lab import deploy

    _require_root()
    removed = deploy.down(directory, progress=lambda m: console.print(f"• {m}"))
    console.print(f"[green]lab down[/green] ({len(removed)} namespaces removed)")


@app.command()
def push(name: str = typer.Argument(..., help="App name."),
         instances: int = typer.Option(1, "--instances", "-i", min=1, help="Containers to start."),
         directory: Path = DirOption) -> None:
    """Start containers of an app, each answering HTTP on port 8080 with its name and instance."""
    from cfnet.lab import apps, deploy

    _require_root()
    try:
        for c in apps.push(name, instances, directory):
            console.print(f"• {c.app}/{c.instance} on {c.cell}: {c.ip}")
    except deploy.LabError as e:
        _fail(e)


@app.command()
def curl(source: str = typer.Argument(..., help="Source app."),
         dest: str = typer.Argument(..., help="Destination app."),
         port: int = typer.Option(8080, "--port", "-p", min=1, max=65535),
         directory: Path = DirOption) -> None:
    """Connect from the source app's first container to every container of the destination app."""
    from cfnet.lab import apps, deploy

    _require_root()
    try:
        results = apps.curl(source, dest, port, directory)
    except deploy.LabError as e:
        _fail(e)
    for src, dst, ok, answer in results:
        mark = "[green]ok[/green]" if ok else "[red]refused[/red]"
        console.print(f"{src.app}/{src.instance} -> {dst.app}/{dst.instance} ({dst.cell}, "
                      f"{dst.ip}:{port}): {mark} {answer}", highlight=False)
    if not all(ok for _, _, ok, _ in results):
        raise typer.Exit(ExitCode.ERROR)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def policy(ctx: typer.Context, directory: Path = DirOption) -> None:
    """`cfnet policy ...` against the lab's server, with lab app names for app guids.

    Examples: `cfnet lab policy add frontend backend --port 8080`, `cfnet lab policy list`.
    """
    from cfnet.lab import apps, deploy

    _require_root()
    try:
        state = deploy.require(directory)
    except deploy.LabError as e:
        _fail(e)
    args = [apps.app_guid(state, a) if a in state.apps else a for a in ctx.args]
    rc, out = apps.policy(state, *args)
    for name, ids in state.apps.items():
        out = out.replace(ids["app_id"], name)
    (console if rc == 0 else err).print(out, highlight=False, markup=False)
    raise typer.Exit(rc)


@app.command()
def status(directory: Path = DirOption) -> None:
    """Cells, subnets and containers of the running lab."""
    from cfnet.lab import deploy

    try:
        state = deploy.require(directory)
    except deploy.LabError as e:
        _fail(e)
    table = Table("host", "namespace", "underlay IP", "overlay subnet")
    for name, host in state.hosts.items():
        table.add_row(name, host.ns, host.ip, state.subnets.get(name, ""))
    console.print(table)
    if state.containers:
        ct = Table("app", "instance", "cell", "container IP", "handle")
        for c in state.containers:
            ct.add_row(c.app, str(c.instance), c.cell, c.ip, c.handle)
        console.print(ct)
    console.print(f"policy server: {state.policy_external_url} (token in {state.directory}/tokens.json)")


@app.command()
def demo(keep: bool = typer.Option(False, "--keep", help="Keep the lab up afterwards."),
         directory: Path = DirOption) -> None:
    """Bring up a two-cell lab, exercise it end to end, print the checks, tear it down.

    Exits non-zero if any check fails.
    """
    from cfnet.lab.demo import run_demo

    _require_root()
    checks = run_demo(directory, keep=keep, progress=lambda m: console.print(f"• {m}", highlight=False))
    table = Table("check", "result", "detail", title="cfnet lab demo")
    for c in checks:
        table.add_row(c.name, "[green]pass[/green]" if c.passed else "[red]FAIL[/red]", c.detail)
    console.print(table)
    if not checks or not all(c.passed for c in checks):
        raise typer.Exit(ExitCode.ERROR)
