"""`cfnet silk-daemon teardown`: give the cell's lease back and remove what the daemon made.

Upstream silk-teardown (spec silk.md 5.1), run by drain and before every start: release the lease
for `underlay_ip`, then delete the VTEP, even if the release failed; the routes, ARP and FDB
entries the daemon programmed live on the VTEP and go with it. Every failure is collected and
reported together; the exit code is 1 if there was any. Unlike upstream, the release has a
timeout (`client_timeout_seconds`), so a drain never hangs on an unreachable controller.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from cfnet.cli.exit_codes import ExitCode
from cfnet.core.errors import ConfigError
from cfnet.core.logs import Logger, setup_logging
from cfnet.net import vtep
from cfnet.silk.daemon import DEFAULT_PREFIX, DaemonConfig, lease_client, load_daemon_config

SERVICE = "silk-teardown"


def teardown(config: DaemonConfig, client: Any, ipr: Any, log: Logger) -> list[str]:
    """Release the lease and delete the VTEP; the errors, in order (empty when all went well)."""
    errors = []
    try:
        client.release(config.underlay_ip)
        log.info("released-lease", underlay_ip=config.underlay_ip)
    except Exception as e:  # noqa: BLE001 - collected, and the VTEP is still removed
        errors.append(f"release subnet lease: {e}")
    try:
        if vtep.delete(ipr, config.vtep_name):
            log.info("deleted-vtep", name=config.vtep_name)
        else:
            errors.append(f"delete vtep: find link {config.vtep_name}: Link not found")
    except vtep.VtepError as e:
        errors.append(str(e))
    return errors


def format_errors(errors: list[str]) -> str:
    """hashicorp/go-multierror's summary, on one line."""
    head = f"{len(errors)} error{'s' if len(errors) != 1 else ''} occurred:"
    return " ".join([head, *(f"* {e}" for e in errors)])


def run(config_path: str | Path) -> int:
    from pyroute2 import IPRoute

    try:
        config = load_daemon_config(config_path)
    except ConfigError as e:
        print(f"{SERVICE} error: load config file: {e}", file=sys.stderr)
        return ExitCode.ERROR
    log = setup_logging(f"{config.log_prefix or DEFAULT_PREFIX}.{SERVICE}", config.log_level)
    try:
        client = lease_client(config)
    except ConfigError as e:
        print(f"{SERVICE} error: {e}", file=sys.stderr)
        return ExitCode.ERROR
    with client, IPRoute() as ipr:
        errors = teardown(config, client, ipr, log)
    log.info("complete", errors=len(errors))
    if errors:
        print(f"{SERVICE} error: {format_errors(errors)}", file=sys.stderr)
        return ExitCode.ERROR
    return ExitCode.OK
