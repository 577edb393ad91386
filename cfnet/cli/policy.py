"""`cfnet policy`: add, list and remove app-to-app policies through the external API.

The commands only parse arguments and render; the work is `cfnet.clients.policy_api`. Each
setting comes from its flag (`--api`, `--token`, `--timeout`, `--ca-cert`), else the environment
(`CFNET_API`, `CFNET_TOKEN`, `CFNET_TIMEOUT`, `CFNET_CA_CERT`), else the config file (`--config`,
default `~/.config/cfnet/cli.toml`, keys `api`, `token`, `timeout`, `ca_cert`), and is checked
before any request (`resolve_settings`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from cfnet.cli import render
from cfnet.clients.http import DEFAULT_TIMEOUT, InvalidInput
from cfnet.core.errors import ConfigError

if TYPE_CHECKING:
    from cfnet.clients.policy_api import PolicyClient

ENV_API = "CFNET_API"
ENV_TOKEN = "CFNET_TOKEN"
ENV_CA_CERT = "CFNET_CA_CERT"
ENV_TIMEOUT = "CFNET_TIMEOUT"
# One rule for the flag, the environment and the config file.
MIN_TIMEOUT = 0.001
MAX_TIMEOUT = 3600.0


@dataclass
class CliConfig:
    """Keys of the CLI config file (TOML, or JSON when the name ends in .json)."""

    api: str = ""
    token: str = ""
    timeout: float = DEFAULT_TIMEOUT  # checked by resolve_settings, as flag and env are
    ca_cert: str = ""


@dataclass(frozen=True)
class Settings:
    api: str
    token: str | None
    timeout: float
    ca_cert: str | None


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    """`$XDG_CONFIG_HOME/cfnet/cli.toml`, normally `~/.config/cfnet/cli.toml`."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "cfnet" / "cli.toml"


def load_cli_config(path: Path | None, env: Mapping[str, str] | None = None) -> CliConfig:
    """Read the config file: a missing default file is an empty config, a missing --config not."""
    from cfnet.core.config import build_config, read_config_file

    target = path if path is not None else default_config_path(env)
    if path is None and not target.exists():
        return CliConfig()
    return build_config(read_config_file(target), CliConfig)


def timeout_problem(value: float) -> str | None:
    """Why `value` is not a usable timeout, or None when it is."""
    if not math.isfinite(value) or not MIN_TIMEOUT <= value <= MAX_TIMEOUT:
        return f"must be a number of seconds from {MIN_TIMEOUT:g} to {MAX_TIMEOUT:g}"
    return None


def _parse_timeout(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    problem = timeout_problem(value)
    if problem:
        raise InvalidInput(f"invalid timeout {text!r} from {where}: {problem}")
    return value


def _checked(check: Callable[[str], object], value: str, key: str, from_file: bool,
             where: str) -> None:
    """Run `check`; a problem with a config file value is a ConfigError naming the key."""
    try:
        check(value)
    except InvalidInput as e:
        if from_file:
            raise ConfigError(f"invalid config: key '{key}': {e}") from None
        raise InvalidInput(f"{e} (from {where})") from None


def resolve_settings(api: str | None = None, token: str | None = None, *,
                     config: Path | None = None, timeout: float | str | None = None,
                     ca_cert: str | None = None,
                     env: Mapping[str, str] | None = None) -> Settings:
    """Each setting from the flag, else the environment, else the config file (empty = unset).

    Every value is checked here, before any request: a bad flag or environment value is
    `InvalidInput` (usage), a bad config file value a `ConfigError` naming the key.
    """
    from cfnet.clients.policy_api import check_token, external_base

    env = os.environ if env is None else env
    file = load_cli_config(config, env)
    chosen_api = api or env.get(ENV_API) or file.api
    if not chosen_api:
        raise InvalidInput(f"no policy server URL: pass --api URL, set {ENV_API}, "
                           f"or set 'api' in {config or default_config_path(env)}")
    _checked(external_base, chosen_api, "api", not (api or env.get(ENV_API)),
             "--api" if api else ENV_API)
    chosen_token = token or env.get(ENV_TOKEN) or file.token or None
    if chosen_token is not None:
        _checked(check_token, chosen_token, "token", not (token or env.get(ENV_TOKEN)),
                 "--token" if token else ENV_TOKEN)
    if timeout is not None:
        chosen_timeout = _parse_timeout(str(timeout), "--timeout")
    elif env.get(ENV_TIMEOUT):
        chosen_timeout = _parse_timeout(env[ENV_TIMEOUT], ENV_TIMEOUT)
    else:
        chosen_timeout = file.timeout
        problem = timeout_problem(chosen_timeout)
        if problem:
            raise ConfigError(f"invalid config: key 'timeout': {chosen_timeout:g} {problem}")
    chosen_ca = ca_cert or env.get(ENV_CA_CERT) or file.ca_cert or None
    if chosen_ca is not None and not Path(chosen_ca).is_file():
        what = "is not a file" if Path(chosen_ca).exists() else "does not exist"
        raise InvalidInput(f"CA certificate file {chosen_ca} {what}")
    return Settings(api=chosen_api, token=chosen_token, timeout=chosen_timeout, ca_cert=chosen_ca)


def make_client(settings: Settings) -> PolicyClient:
    from cfnet.clients.policy_api import PolicyClient

    return PolicyClient(settings.api, settings.token, timeout=settings.timeout,
                        ca_cert=settings.ca_cert)


# Options every command takes.
ApiOpt = Annotated[Optional[str], typer.Option(
    "--api", metavar="URL", show_default=False,
    help=f"Policy server external URL, e.g. http://127.0.0.1:4002 (env {ENV_API}).")]
TokenOpt = Annotated[Optional[str], typer.Option(
    "--token", metavar="TOKEN", show_default=False,
    help=f"Bearer token (UAA or a static token) (env {ENV_TOKEN}).")]
# A directory or unreadable file is reported by the loader as a config error (exit 3).
ConfigOpt = Annotated[Optional[Path], typer.Option(
    "--config", metavar="FILE", show_default=False,
    help="CLI config file with keys api, token, timeout, ca_cert "
         "(default ~/.config/cfnet/cli.toml).")]
# A string, checked by resolve_settings, so `nan` or `abc` get the same one-line error.
TimeoutOpt = Annotated[Optional[str], typer.Option(
    "--timeout", metavar="SECONDS", show_default=False,
    help=f"Connect and read timeout, {MIN_TIMEOUT:g} to {MAX_TIMEOUT:g} "
         f"(default {DEFAULT_TIMEOUT:g}) (env {ENV_TIMEOUT}).")]
CaCertOpt = Annotated[Optional[str], typer.Option(
    "--ca-cert", metavar="FILE", show_default=False,
    help=f"CA to verify an https server with (env {ENV_CA_CERT}).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (the API's v1 shapes).")]
ProtocolOpt = Annotated[str, typer.Option("--protocol", metavar="tcp|udp",
                                          help="Protocol the destination accepts.")]
PortOpt = Annotated[str, typer.Option("--port", metavar="PORT[-PORT]",
                                      help="Destination port or range, e.g. 8080 or 8080-8090.")]

app = typer.Typer(
    name="policy",
    help="Add, list and remove app-to-app network policies.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _connect(api: str | None, token: str | None, config: Path | None, timeout: str | None,
             ca_cert: str | None) -> PolicyClient:
    return make_client(resolve_settings(api, token, config=config, timeout=timeout,
                                        ca_cert=ca_cert))


@app.command("add")
def add(
    source: Annotated[str, typer.Argument(help="Source app GUID.", show_default=False)],
    destination: Annotated[str, typer.Argument(help="Destination app GUID.", show_default=False)],
    protocol: ProtocolOpt = "tcp",
    port: PortOpt = "8080",
    as_json: JsonOpt = False,
    api: ApiOpt = None, token: TokenOpt = None, config: ConfigOpt = None,
    timeout: TimeoutOpt = None, ca_cert: CaCertOpt = None,
) -> None:
    """Allow SOURCE to reach DESTINATION on a protocol and port (default tcp 8080)."""
    from cfnet.clients.policy_api import make_policy, policies_listing

    with render.errors_to_exit():
        policy = make_policy(source, destination, protocol, port)
        with _connect(api, token, config, timeout, ca_cert) as client:
            client.create([policy])
        if as_json:
            render.print_json(policies_listing([policy]))
        else:
            render.print_line(f"Added policy {render.describe(policy)}")


@app.command("list")
def list_(
    app_ids: Annotated[Optional[list[str]], typer.Option(
        "--app", metavar="GUID", show_default=False,
        help="Only policies with this app as source or destination (repeatable).")] = None,
    as_json: JsonOpt = False,
    api: ApiOpt = None, token: TokenOpt = None, config: ConfigOpt = None,
    timeout: TimeoutOpt = None, ca_cert: CaCertOpt = None,
) -> None:
    """List policies, all of them or those of one or more apps."""
    from cfnet.clients.policy_api import policies_listing

    with render.errors_to_exit():
        with _connect(api, token, config, timeout, ca_cert) as client:
            policies = client.list(ids=app_ids or None)
        if as_json:
            render.print_json(policies_listing(policies))
        elif policies:
            render.policy_table(policies)
        else:
            render.print_line("No policies.")


@app.command("remove")
def remove(
    source: Annotated[str, typer.Argument(help="Source app GUID.", show_default=False)],
    destination: Annotated[str, typer.Argument(help="Destination app GUID.", show_default=False)],
    protocol: ProtocolOpt = "tcp",
    port: PortOpt = "8080",
    as_json: JsonOpt = False,
    api: ApiOpt = None, token: TokenOpt = None, config: ConfigOpt = None,
    timeout: TimeoutOpt = None, ca_cert: CaCertOpt = None,
) -> None:
    """Remove exactly this policy; says so (exit 0) when it does not exist, like the cf CLI.

    A single port above 65535 is accepted here (not in add): the v0 API stores such ports.
    """
    from cfnet.clients.policy_api import make_policy

    with render.errors_to_exit():
        policy = make_policy(source, destination, protocol, port, allow_v0_port=True)
        with _connect(api, token, config, timeout, ca_cert) as client:
            removed = client.remove(policy)
        if as_json:
            render.print_json({"removed": removed, "policy": policy.to_v1()})
        elif removed:
            render.print_line(f"Removed policy {render.describe(policy)}")
        else:
            render.print_line(f"Policy does not exist: {render.describe(policy)}")


@app.command("tags")
def tags(
    as_json: JsonOpt = False,
    api: ApiOpt = None, token: TokenOpt = None, config: ConfigOpt = None,
    timeout: TimeoutOpt = None, ca_cert: CaCertOpt = None,
) -> None:
    """List every allocated tag (needs network.admin)."""
    with render.errors_to_exit():
        with _connect(api, token, config, timeout, ca_cert) as client:
            found = client.tags()
        if as_json:
            render.print_json({"tags": [t.to_json() for t in found]})
        elif found:
            render.tag_table(found)
        else:
            render.print_line("No tags.")


@app.command("whoami")
def whoami(
    as_json: JsonOpt = False,
    api: ApiOpt = None, token: TokenOpt = None, config: ConfigOpt = None,
    timeout: TimeoutOpt = None, ca_cert: CaCertOpt = None,
) -> None:
    """Show whom the token belongs to (needs network.admin)."""
    with render.errors_to_exit():
        with _connect(api, token, config, timeout, ca_cert) as client:
            subject = client.whoami()
        if as_json:
            render.print_json({"subject": subject})
        else:
            render.print_line(render.safe(subject))


@app.command("cleanup")
def cleanup(
    as_json: JsonOpt = False,
    api: ApiOpt = None, token: TokenOpt = None, config: ConfigOpt = None,
    timeout: TimeoutOpt = None, ca_cert: CaCertOpt = None,
) -> None:
    """Delete policies of apps that no longer exist, now (needs network.admin)."""
    from cfnet.clients.policy_api import policies_listing

    with render.errors_to_exit():
        with _connect(api, token, config, timeout, ca_cert) as client:
            deleted = client.cleanup()
        if as_json:
            render.print_json(policies_listing(deleted))
        elif deleted:
            render.print_line(f"Deleted {len(deleted)} stale policies:")
            render.policy_table(deleted)
        else:
            render.print_line("No stale policies.")


__all__ = ["app", "resolve_settings", "Settings", "CliConfig"]
