"""`cfnet certs`: a CA plus server and client certificates for the mutual-TLS APIs.

The work is `cfnet.web.tls.generate_bundle`; this only checks the arguments, refuses to overwrite
existing files unless `--force` is given, and says what it wrote.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from cfnet.cli import render
from cfnet.cli.exit_codes import ExitCode

# What generate_bundle writes, with a description for the report.
BUNDLE_FILES: tuple[tuple[str, str], ...] = (
    ("ca.crt", "CA certificate (give to both sides as ca_cert_file)"),
    ("ca.key", "CA private key (keep it away from servers and clients)"),
    ("server.crt", "server certificate"),
    ("server.key", "server private key"),
    ("client.crt", "client certificate"),
    ("client.key", "client private key"),
)

# 100 years: far enough for a lab, and well inside X.509's last date (9999-12-31).
MAX_DAYS = 36500
MAX_COMMON_NAME = 64  # X.509 ub-common-name

app = typer.Typer(
    name="certs",
    help="Generate a CA and certificates for the mutual-TLS APIs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _group() -> None:
    """Generate a CA and certificates for the mutual-TLS APIs."""


def existing_files(directory: Path) -> list[Path]:
    """The bundle files already present in `directory`."""
    return [directory / name for name, _ in BUNDLE_FILES if (directory / name).exists()]


def name_problem(name: str, option: str, *, common_name: bool) -> str | None:
    """Why `name` cannot go in a certificate, or None."""
    if not name:
        return f"invalid {option}: must not be empty"
    if common_name and len(name) > MAX_COMMON_NAME:
        return f"invalid {option} {name!r}: longer than {MAX_COMMON_NAME} characters"
    try:
        ipaddress.ip_address(name)
        return None
    except ValueError:
        pass
    if not name.isascii() or not name.isprintable():
        return (f"invalid {option} {name!r}: use printable ASCII (an internationalised DNS "
                "name in its xn-- form)")
    return None


def _missing_dirs(directory: Path) -> list[Path]:
    """`directory` and its ancestors that do not exist yet, deepest first."""
    missing = []
    d = directory.absolute()
    while not d.exists() and d != d.parent:
        missing.append(d)
        d = d.parent
    return missing


def generate_atomically(directory: Path, names: list[str] | None, client_name: str,
                        days: int) -> None:
    """Generate the bundle in a staging directory inside DIR, then move the files into place.

    Any failure leaves nothing behind: no staging files, and no directory this call created.
    """
    from cfnet.web.tls import generate_bundle

    created = _missing_dirs(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".cfnet-certs-", dir=directory))
        try:
            generate_bundle(staging, names, client_name=client_name, days=days)
            for name, _ in BUNDLE_FILES:
                os.replace(staging / name, directory / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        for d in created:
            try:
                d.rmdir()
            except OSError:
                break
        raise


@app.command("generate")
def generate(
    directory: Annotated[Path, typer.Option(
        "--dir", metavar="DIR", show_default=False,
        help="Directory to write into (created if missing).")],
    server_names: Annotated[Optional[list[str]], typer.Option(
        "--server-name", metavar="NAME", show_default=False,
        help="DNS name or IP the server certificate is valid for (repeatable) "
             "(default localhost and 127.0.0.1).")] = None,
    client_name: Annotated[str, typer.Option(
        "--client-name", metavar="NAME", help="Common name of the client certificate.")]
        = "cfnet-client",
    days: Annotated[int, typer.Option("--days", metavar="N", help="Validity in days.")] = 365,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
) -> None:
    """Write ca.crt/ca.key, server.crt/server.key and client.crt/client.key into DIR."""
    with render.errors_to_exit():
        if not 1 <= days <= MAX_DAYS:
            render.fail(f"invalid --days {days}: must be from 1 to {MAX_DAYS} (100 years)",
                        ExitCode.USAGE)
        names = [n.strip() for n in server_names or []]
        problems = [name_problem(n, "--server-name", common_name=i == 0)
                    for i, n in enumerate(names)]
        problems.append(name_problem(client_name.strip(), "--client-name", common_name=True))
        for problem in problems:
            if problem:
                render.fail(problem, ExitCode.USAGE)
        if directory.exists() and not directory.is_dir():
            render.fail(f"{directory} exists and is not a directory", ExitCode.USAGE)
        present = existing_files(directory)
        if present and not force:
            render.fail(f"refusing to overwrite {', '.join(map(str, present))} "
                        "(pass --force to replace them)", ExitCode.ERROR)
        try:
            generate_atomically(directory, names or None, client_name.strip(), days)
        except OSError as e:
            render.fail(f"writing certificates to {directory}: {e.strerror or e}", ExitCode.ERROR)
        except (ValueError, OverflowError) as e:  # a value the checks above did not foresee
            render.fail(f"generating certificates: {e}", ExitCode.USAGE)
        for name, what in BUNDLE_FILES:
            render.print_line(f"wrote {render.safe(str(directory / name))}  {what}")
