"""`cfnet policy-server`: run the network policy server (spec docs/policy-server.md).

Only argument parsing here; cfnet.policy_server.server does the work. Config files take the
upstream JSON keys (as the BOSH job templates render them) or TOML with the same keys.
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

from cfnet.cli.exit_codes import ExitCode

HELP = "\n\n".join([
    "Run the network policy server: the external API (policies, tags, cleanup; UAA or static "
    "tokens), the internal API for cell agents (mutual TLS), health and debug listeners, the "
    "stale-policy cleaner and, optionally, the ASG syncer.",
    "Quick start (SQLite, static tokens, no UAA or Cloud Controller): write certificates with "
    "`cfnet certs generate --dir DIR`, point the `internal` *_file keys of examples/policy-server.json "
    "at them and `static_tokens_file` at a copy of examples/policy-server-tokens.json, then run "
    "`cfnet policy-server serve --config-file policy-server.json`.",
    "`serve` runs every role it has a config for; `serve-external`, `serve-internal` and "
    "`asg-syncer` run one role each, as the upstream jobs do; `migrate` only updates the schema. "
    "The store is migrated on every start. SIGTERM stops it gracefully. "
    "Details: docs/policy-server.md.",
])

app = typer.Typer(add_completion=False, no_args_is_help=True, help=HELP)

CONFIG_HELP = ("External (policy-server) config: upstream JSON keys, or TOML with the same keys. "
               "May hold `internal` and `asg_syncer` blocks for a one-file setup.")
INTERNAL_HELP = "Internal (policy-server-internal) config; overrides the `internal` block."
SYNCER_HELP = "ASG syncer (policy-server-asg-syncer) config; overrides the `asg_syncer` block."


def _fail(job: str, error: Exception, prefix: str = "cfnetworking") -> None:
    from cfnet.policy_server.server import config_error_line

    print(config_error_line(prefix, job, error), file=sys.stderr)
    raise typer.Exit(ExitCode.CONFIG)


def _run(config_file: Optional[str], internal_file: Optional[str], syncer_file: Optional[str],
         roles: tuple[str, ...], job: str) -> None:
    from cfnet.core.errors import ConfigError
    from cfnet.policy_server import server
    from cfnet.policy_server.config import load_serve

    try:
        config = load_serve(config_file, internal_file, syncer_file)
    except ConfigError as e:
        _fail(job, e)
    wanted = {server.EXTERNAL: config.external, server.INTERNAL: config.internal,
              server.SYNCER: config.syncer}
    present = tuple(r for r in roles if wanted[r] is not None)
    if not present:
        _fail(job, ValueError("no config for " + " or ".join(roles)))
    raise typer.Exit(server.run(config, present))


@app.command(help="Run every configured role in one process: the external API (with its debug "
             "listener and the stale-policy cleaner), the internal mTLS API (with health and "
             "debug listeners and the watch), and the ASG syncer.")
def serve(
    config_file: Optional[str] = typer.Option(None, "--config-file", "--config", "-c",
                                              metavar="PATH", help=CONFIG_HELP),
    internal_config_file: Optional[str] = typer.Option(None, "--internal-config-file",
                                                       metavar="PATH", help=INTERNAL_HELP),
    asg_syncer_config_file: Optional[str] = typer.Option(None, "--asg-syncer-config-file",
                                                         metavar="PATH", help=SYNCER_HELP),
) -> None:
    if not (config_file or internal_config_file or asg_syncer_config_file):
        _fail("policy-server", ValueError("give --config-file (and optionally "
                                          "--internal-config-file, --asg-syncer-config-file)"))
    _run(config_file, internal_config_file, asg_syncer_config_file,
         ("external", "internal", "asg-syncer"), "policy-server")


@app.command("serve-external", help="Run only the external API, its debug listener and the "
             "stale-policy cleaner (upstream job policy-server).")
def serve_external(
    config_file: str = typer.Option(..., "--config-file", "--config", "-c", metavar="PATH",
                                    help="policy-server config (upstream JSON keys, or TOML)."),
) -> None:
    _run(config_file, None, None, ("external",), "policy-server")


@app.command("serve-internal", help="Run only the internal mutual-TLS API with its health and "
             "debug listeners (upstream job policy-server-internal).")
def serve_internal(
    config_file: str = typer.Option(..., "--config-file", "--config", "-c", metavar="PATH",
                                    help="policy-server-internal config (JSON or TOML)."),
) -> None:
    _run(None, config_file, None, ("internal",), "policy-server-internal")


@app.command("asg-syncer", help="Mirror Cloud Controller's security groups into the store "
             "(upstream job policy-server-asg-syncer); keeps running through errors, "
             "with back-off.")
def asg_syncer(
    config_file: str = typer.Option(..., "--config-file", "--config", "-c", metavar="PATH",
                                    help="policy-server-asg-syncer config (JSON or TOML)."),
) -> None:
    _run(None, None, config_file, ("asg-syncer",), "policy-server-asg-syncer")


@app.command()
def migrate(
    config_file: str = typer.Option(..., "--config-file", "--config", "-c", metavar="PATH",
                                    help="Any policy-server role's config (its `database`)."),
) -> None:
    """Create or update the database schema, then exit (upstream `migrate-db`). Safe to re-run."""
    from cfnet.core.config import read_config_file
    from cfnet.core.errors import ConfigError
    from cfnet.policy_server import config as c
    from cfnet.policy_server.server import migrate_only

    try:
        data = read_config_file(config_file)
        if "internal_listen_port" in data:
            cfg: object = c.load_internal(config_file)
            timeout = 600.0
        elif "cc_internal_url" in data:
            cfg = c.load_syncer(config_file)
            timeout = 600.0
        else:
            cfg, _ = c.load_external(config_file)
            timeout = float(cfg.database_migration_timeout)  # type: ignore[attr-defined]
    except ConfigError as e:
        _fail("policy-server", e)
    raise typer.Exit(migrate_only(cfg, timeout))  # type: ignore[arg-type]
