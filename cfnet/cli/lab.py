"""`cfnet lab`: the whole system on one Linux box, cells and containers as network namespaces."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import typer
from rich.console import Console
from rich.table import Table

from cfnet.cli.exit_codes import ExitCode
from cfnet.lab.state import DEFAULT_DIR

app = typer.Typer(
    no_args_is_help=True, add_completion=False,
    help="Run cfnet on one Linux box: a control plane and cells in network namespaces joined by "
         "a bridge, containers as namespaces on the cells. Needs root. Nothing is added to the "
         "machine's own network namespace.\n\nStart with `cfnet lab demo`.\n\n"
         "Namespaces are named PREFIX-* (PREFIX is `cfnlab`, or CFNET_LAB_PREFIX); a prefix "
         "belongs to one lab directory at a time, so several labs can run side by side with "
         "different CFNET_LAB_PREFIX values and --dir directories.")
console = Console(soft_wrap=True)  # one line per message: easy to grep, never split mid-path
err = Console(stderr=True, soft_wrap=True)

DirOption = typer.Option(DEFAULT_DIR, "--dir", envvar="CFNET_LAB_DIR",
                         help="Lab directory: state, certificates, databases and logs.")


def _fail(e: Exception) -> None:
    err.print(f"[red]error:[/red] {e}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(ExitCode.ERROR)


@contextmanager
def _errors() -> Iterator[None]:
    """Every expected failure of a lab command as one line and a non-zero exit."""
    try:
        yield
    except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
        raise
    except KeyboardInterrupt:
        _fail(RuntimeError("interrupted"))
    except Exception as e:  # noqa: BLE001 - one line for the user; details are in the logs
        _fail(e)


def _term_as_interrupt() -> None:
    """SIGTERM unwinds like Ctrl-C, so that a half-built lab is removed."""
    import os
    import signal

    me = os.getpid()

    def handler(_signum: int, _frame: object) -> None:
        if os.getpid() != me:  # a forked helper (netns.call_in) dies as with no handler
            os._exit(128 + signal.SIGTERM)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _progress(message: str) -> None:
    console.print(f"• {message}", highlight=False, soft_wrap=True)


def _require_root() -> None:
    import os

    if os.geteuid() != 0:
        _fail(PermissionError("cfnet lab needs root (it creates network namespaces)"))


@app.command()
def up(cells: int = typer.Option(2, "--cells", min=1, max=20, help="Number of cells."),
       db: str = typer.Option("sqlite", "--db", help="sqlite; postgres (a PostgreSQL server of "
                              "the lab's own, in the control plane); or a postgresql://USER"
                              "[:PASSWORD]@HOST[:PORT]/DB URL reachable from the control plane "
                              "(`down` leaves its data in place)."),
       policy_servers: int = typer.Option(1, "--policy-servers", min=1, max=5,
                                          help="Policy-server replicas (more than 1 needs "
                                               "PostgreSQL); a TCP balancer fronts them."),
       directory: Path = DirOption) -> None:
    """Bring up a lab (if one is already up in --dir: restart its stopped processes, if any)."""
    from cfnet.lab import deploy

    _require_root()
    _term_as_interrupt()
    with _errors():
        state = deploy.up(directory, cells=cells, db=db, policy_servers=policy_servers,
                          progress=_progress)
    console.print(f"[green]lab up[/green] in {state.directory}")


@app.command()
def down(force_prefix: bool = typer.Option(
        False, "--force-prefix", help="Also remove every namespace of the prefix "
        "(CFNET_LAB_PREFIX), whichever lab owns it: for a lab whose directory or state is lost."),
        directory: Path = DirOption) -> None:
    """Remove the lab's namespaces, processes and files. Safe to run twice, and after a crash.

    Only a lab's directory is touched (one a lab created or took while empty); namespaces are
    removed only if this directory's lab owns their prefix.
    """
    from cfnet.lab import deploy

    _require_root()
    with _errors():
        removed = deploy.down(directory, progress=_progress, force_prefix=force_prefix)
    console.print(f"[green]lab down[/green] ({len(removed)} namespaces removed)")


@app.command()
def push(name: str = typer.Argument(..., help="App name."),
         instances: int = typer.Option(1, "--instances", "-i", min=1, help="Containers to start."),
         directory: Path = DirOption) -> None:
    """Start containers of an app, each answering HTTP on port 8080 with its name and instance."""
    from cfnet.lab import apps

    _require_root()
    with _errors():
        for c in apps.push(name, instances, directory):
            console.print(f"• {c.app}/{c.instance} on {c.cell}: {c.ip}")


@app.command()
def curl(source: str = typer.Argument(..., help="Source app."),
         dest: str = typer.Argument(..., help="Destination app."),
         port: int = typer.Option(8080, "--port", "-p", min=1, max=65535,
                                  help="Destination port (the apps answer on 8080 and 9090)."),
         directory: Path = DirOption) -> None:
    """Connect from the source app's first container to every container of the destination app."""
    from cfnet.lab import apps

    _require_root()
    with _errors():
        results = apps.curl(source, dest, port, directory)
    for src, dst, ok, answer in results:
        result = (f"[green]ok[/green] {answer}" if ok
                  else f"[red]not reached[/red] ({answer.removeprefix('failed: ')})")
        console.print(f"{src.app}/{src.instance} -> {dst.app}/{dst.instance} ({dst.cell}, "
                      f"{dst.ip}:{port}): {result}", highlight=False)
    if not all(ok for _, _, ok, _ in results):
        raise typer.Exit(ExitCode.ERROR)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def policy(ctx: typer.Context,
           replica: int = typer.Option(0, "--replica", min=0,
                                       help="Talk to this policy-server replica (1, 2, ...) "
                                            "directly instead of through the balancer."),
           directory: Path = DirOption) -> None:
    """`cfnet policy ...` against the lab's server, with lab app names for app guids.

    Examples: `cfnet lab policy add frontend backend --port 8080`, `cfnet lab policy list`.
    """
    from cfnet.lab import apps, deploy

    _require_root()
    with _errors():
        state = deploy.require(directory)
        if replica > state.policy_servers:
            raise deploy.LabError(f"--replica {replica}: the lab runs {state.policy_servers} "
                                  "policy server(s)")
    args = [apps.app_guid(state, a) if a in state.apps else a for a in ctx.args]
    url = deploy.replica_external_url(state, replica) if replica else None
    # A table is rendered here, after guids became names, so that its columns fit the names.
    table = args[:1] == ["list"] and not {"--json", "-h", "--help"} & set(args)
    with _errors():
        rc, out = apps.policy(state, *args, *(["--json"] if table else []), url=url)
    for name, ids in state.apps.items():
        out = out.replace(ids["app_id"], name)
    if table and rc == 0:
        _policy_table(out)
        raise typer.Exit(0)
    (console if rc == 0 else err).print(out, highlight=False, markup=False)
    raise typer.Exit(rc)


def _policy_table(listing: str) -> None:
    import json

    from cfnet.cli import render
    from cfnet.clients.policy_api import Policy

    policies = [Policy.from_v1(p) for p in json.loads(listing).get("policies", [])]
    if policies:
        render.policy_table(policies)
    else:
        render.print_line("No policies.")


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="One JSON document."),
           directory: Path = DirOption) -> None:
    """Hosts, processes, leases, containers, policies, ASGs and nftables counts per cell."""
    import json

    from cfnet.lab import status as lab_status

    _require_root()
    with _errors():
        doc = lab_status.collect(directory)
    stopped = [name for name, proc in doc["processes"].items() if not proc["running"]]
    if as_json:
        print(json.dumps(doc, indent=2))
        if stopped:
            raise typer.Exit(ExitCode.ERROR)
        return
    table = Table("host", "namespace", "underlay IP", "overlay subnet", title="hosts")
    for name, host in doc["hosts"].items():
        table.add_row(name, host["namespace"], host["ip"], host["subnet"])
    console.print(table)
    pt = Table("process", "pid", "state", title="processes")
    for name, proc in doc["processes"].items():
        pt.add_row(name, str(proc["pid"]),
                   "[green]running[/green]" if proc["running"] else "[red]stopped[/red]")
    console.print(pt)
    if isinstance(doc["leases"], str):
        console.print(f"leases: {doc['leases']}", highlight=False)
    else:
        lt = Table("underlay IP", "overlay subnet", "VTEP MAC", title="leases (silk-controller)")
        for lease in doc["leases"]:
            lt.add_row(lease["underlay_ip"], lease["overlay_subnet"],
                       lease["overlay_hardware_addr"])
        console.print(lt)
    if doc["containers"]:
        ct = Table("app", "instance", "cell", "container IP", "host port", "handle",
                   title="containers")
        for c in doc["containers"]:
            ct.add_row(c["app"], str(c["instance"]), c["cell"], c["ip"], str(c["host_port"]),
                       c["handle"])
        console.print(ct)
    nt = Table("cell", "chains", "rules", "set elements", title="nftables")
    for cell, counts in doc["nftables"].items():
        if "error" in counts:
            nt.add_row(cell, "", "", counts["error"])
        else:
            nt.add_row(cell, str(counts["chains"]), str(counts["rules"]), str(counts["elements"]))
    console.print(nt)
    for g in doc["asgs"]:
        console.print(f"ASG {g['name']} ({g['bound_to']}): {json.dumps(g['rules'])}",
                      highlight=False)
    console.print(f"policies: {doc['policies']}; policy server: {doc['policy_server']} "
                  f"({doc['database']}, {doc['policy_servers']} replica(s)); admin token in "
                  f"{doc['directory']}/tokens.json", highlight=False)
    if stopped:
        _fail(RuntimeError(f"not running: {', '.join(stopped)} (`cfnet lab up` restarts them)"))


asg_app = typer.Typer(no_args_is_help=True, add_completion=False,
                      help="Egress security groups (ASGs): the lab stands in for Cloud Controller. "
                           "The cells' agents apply changes to running containers within seconds.")
app.add_typer(asg_app, name="asg")


@asg_app.command("add")
def asg_add(name: str = typer.Argument(..., help="Group name."),
            destination: str = typer.Option(..., "--destination", help="IP, CIDR or range "
                                            "A-B, comma-separated."),
            protocol: str = typer.Option("tcp", "--protocol", help="tcp, udp, icmp or all."),
            ports: str = typer.Option("", "--ports", help="For tcp/udp: 80, 80,443 or 8000-9000."),
            space: str = typer.Option(None, "--space", help="Bind to the space of this lab app."),
            running_default: bool = typer.Option(False, "--running-default",
                                                 help="Bind to every running app."),
            directory: Path = DirOption) -> None:
    """Add a group with one rule, bound to an app's space or to every running app."""
    from cfnet.lab import asgs

    _require_root()
    with _errors():
        group = asgs.add(name, destination, protocol, ports, space, running_default, directory)
    console.print(f"Added ASG {group['name']} ({group['bound_to']})", highlight=False)


@asg_app.command("remove")
def asg_remove(name: str = typer.Argument(..., help="Group name."),
               directory: Path = DirOption) -> None:
    """Remove a group; its egress is denied again within seconds."""
    from cfnet.lab import asgs

    _require_root()
    with _errors():
        asgs.remove(name, directory)
    console.print(f"Removed ASG {name}", highlight=False)


@asg_app.command("list")
def asg_list(directory: Path = DirOption) -> None:
    """The lab's groups and their rules."""
    import json

    from cfnet.lab import asgs

    with _errors():
        groups = asgs.groups(directory)
    table = Table("name", "bound to", "rules")
    for g in groups:
        table.add_row(g["name"], g.get("bound_to", ""), json.dumps(g["rules"]))
    console.print(table)


def _process(directory: Path, name: str) -> tuple[object, object]:
    from cfnet.lab import deploy

    with _errors():
        state = deploy.require(directory)
    if name not in state.processes:
        _fail(ValueError(f"no process {name!r} in the lab; one of: "
                         f"{', '.join(state.processes)}"))
    return state, state.processes[name]


ProcessArg = typer.Argument(..., help="A process as `cfnet lab status` names it, e.g. "
                                      "policy-server, silk-controller, cell1/vxlan-agent.")


@app.command()
def stop(name: str = ProcessArg,
         kill: bool = typer.Option(False, "--kill", help="SIGKILL: a crash, not a shutdown."),
         directory: Path = DirOption) -> None:
    """Stop one lab process (SIGTERM, or SIGKILL with --kill)."""
    from cfnet.lab import procs

    _require_root()
    _state, proc = _process(directory, name)
    with _errors():
        procs.stop(proc, kill=kill)
    console.print(f"stopped {name}", highlight=False)


@app.command()
def start(name: str = ProcessArg, directory: Path = DirOption) -> None:
    """Start a stopped lab process again and wait until it is healthy."""
    from cfnet.lab import procs

    _require_root()
    state, proc = _process(directory, name)
    with _errors():
        procs.start(state, proc)
    console.print(f"started {name} (pid {proc.pid})", highlight=False)


@app.command()
def restart(name: str = ProcessArg,
            kill: bool = typer.Option(False, "--kill", help="SIGKILL instead of SIGTERM."),
            directory: Path = DirOption) -> None:
    """Stop a lab process and start it again (same config, address and state)."""
    from cfnet.lab import procs

    _require_root()
    state, proc = _process(directory, name)
    with _errors():
        procs.stop(proc, kill=kill)
        procs.start(state, proc)
    console.print(f"restarted {name} (pid {proc.pid})", highlight=False)


@app.command()
def kill(container: str = typer.Argument(..., help="APP/INSTANCE or a handle."),
         directory: Path = DirOption) -> None:
    """Kill a container the hard way: processes killed, namespace gone, no garden-hook down.

    Its IP, port and rules stay until `cfnet lab gc`.
    """
    from cfnet.lab import apps

    _require_root()
    with _errors():
        c = apps.kill(container, directory)
    console.print(f"killed {c.app}/{c.instance} ({c.handle}) on {c.cell}", highlight=False)


@app.command()
def gc(directory: Path = DirOption) -> None:
    """Clean up dead containers with `garden-hook down`, as Garden does for containers it lost."""
    from cfnet.lab import apps

    _require_root()
    with _errors():
        cleaned = apps.gc(directory)
    for c in cleaned:
        console.print(f"• cleaned {c.app}/{c.instance} ({c.handle}, {c.ip}) on {c.cell}",
                      highlight=False)
    console.print(f"{len(cleaned)} dead container(s) cleaned up", highlight=False)


@app.command()
def demo(keep: bool = typer.Option(False, "--keep", help="Keep the lab up afterwards."),
         directory: Path = DirOption) -> None:
    """Bring up a two-cell lab, exercise it end to end, print the checks, tear it down.

    Exits non-zero if any check fails.
    """
    from cfnet.lab.demo import run_demo

    _require_root()
    _term_as_interrupt()
    with _errors():
        checks = run_demo(directory, keep=keep,
                          progress=_progress)
    table = Table("check", "result", "detail", title="cfnet lab demo")
    for c in checks:
        table.add_row(c.name, "[green]pass[/green]" if c.passed else "[red]FAIL[/red]", c.detail)
    console.print(table)
    if not checks or not all(c.passed for c in checks):
        raise typer.Exit(ExitCode.ERROR)
