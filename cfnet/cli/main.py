"""The `cfnet` entry point: one executable with a subcommand per role.

Sub-apps are imported only when their command runs, so `cfnet --help` stays cheap, and the
per-container commands (`cni`, `garden-hook`) bypass typer altogether: Garden and CNI runtimes call
them for every container, where each millisecond of start-up counts.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any

# name -> (module defining `app`, one-line help). The help is repeated here so that listing the
# commands never imports them.
COMMANDS: dict[str, tuple[str, str]] = {
    "policy-server": ("cfnet.cli.policy_server", "Run the policy server (external and internal APIs)."),
    "policy": ("cfnet.cli.policy", "Add, list and remove app-to-app network policies."),
    "certs": ("cfnet.cli.certs", "Generate a CA and certificates for the mutual-TLS APIs."),
    "silk-controller": ("cfnet.cli.silk_controller", "Run the Silk subnet lease controller."),
    "silk-daemon": ("cfnet.cli.silk_daemon", "Run the Silk daemon that wires a cell into the overlay."),
    "cni": ("cfnet.cli.cni",
            "CNI plugins (silk, wrapper, bandwidth) as a container runtime calls them."),
    "garden-hook": ("cfnet.cli.garden_hook", "Set up or tear down a container's network for Garden."),
    "vxlan-agent": ("cfnet.cli.vxlan_agent", "Enforce policies and egress rules on a cell."),
    "iptables-logger": ("cfnet.cli.iptables_logger",
                        "Turn kernel packet-log lines into JSON with app, space and org ids."),
    "lab": ("cfnet.cli.lab", "The whole system on one Linux box, in network namespaces."),
}

# Commands run once per container: a plain function, no typer, no rich.
FAST_PATHS: dict[str, str] = {
    "cni": "cfnet.cni.entry",
    "garden-hook": "cfnet.garden.entry",
}

# CNI runtimes find plugins by type name in CNI_PATH: a symlink of that name to `cfnet` runs the
# plugin, as if called as `cfnet cni <plugin>`.
ARGV0_ALIASES: dict[str, list[str]] = {
    "silk-cni": ["cni", "silk"],
    "cni-wrapper-plugin": ["cni", "wrapper"],
    "bandwidth": ["cni", "bandwidth"],  # upstream's plugin type name, same config keys
}


def _available(name: str) -> bool:
    module = COMMANDS[name][0]
    return importlib.util.find_spec(module) is not None


def _build_app() -> Any:
    import click
    import typer
    from typer.core import TyperGroup

    class LazyCommand(click.Command):
        """Stands in for a sub-app in listings; loads the real one when it is run."""

        def __init__(self, name: str, module: str, help_text: str) -> None:
            super().__init__(name, help=help_text, short_help=help_text)
            self.module = module

        def load(self) -> click.Command:
            sub = importlib.import_module(self.module).app
            command = typer.main.get_command(sub)
            command.name = self.name
            return command

        def make_context(self, info_name: Any, args: Any, parent: Any = None, **extra: Any) -> Any:
            return self.load().make_context(info_name, args, parent=parent, **extra)

    class LazyGroup(TyperGroup):
        def list_commands(self, ctx: click.Context) -> list[str]:
            return [name for name in COMMANDS if _available(name)]

        def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
            if name not in COMMANDS or not _available(name):
                return None
            module, help_text = COMMANDS[name]
            return LazyCommand(name, module, help_text)

    app = typer.Typer(
        cls=LazyGroup,
        name="cfnet",
        no_args_is_help=True,
        add_completion=False,
        help="Policy-driven container networking for Cloud Foundry-style platforms.\n\n"
        "One executable, a subcommand for every role. Every command takes --help, e.g. "
        "`cfnet policy-server --help`.",
    )

    @app.callback(invoke_without_command=True)
    def root(
        version: bool = typer.Option(False, "--version", help="Print the version and exit."),
    ) -> None:
        if version:
            from cfnet import __version__

            typer.echo(f"cfnet {__version__}")
            raise typer.Exit()

    return app


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    alias = ARGV0_ALIASES.get(os.path.basename(sys.argv[0])) if argv is None else None
    if alias:
        args = alias + args
    if args and args[0] in FAST_PATHS and _available(args[0]):
        entry = importlib.import_module(FAST_PATHS[args[0]])
        sys.exit(entry.main(args[1:]))
    app = _build_app()
    app(args=args, prog_name="cfnet")


if __name__ == "__main__":
    main()
