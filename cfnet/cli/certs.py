"""`cfnet certs`: a CA plus server and client certificates for the mutual-TLS APIs.

The work is `cfnet.web.tls.generate_bundle`; this only checks the arguments, refuses to overwrite
existing files unless `--force` is given, and says what it wrote.
"""

from __future__ import annotations

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
    from cfnet.web.tls import generate_bundle

    with render.errors_to_exit():
        if days < 1:
            render.fail(f"invalid --days {days}: must be 1 or more", ExitCode.USAGE)
        names = [n.strip() for n in server_names or []]
        if any(not n for n in names):
            render.fail("invalid --server-name: must not be empty", ExitCode.USAGE)
        if not client_name.strip():
            render.fail("invalid --client-name: must not be empty", ExitCode.USAGE)
        if directory.exists() and not directory.is_dir():
            render.fail(f"{directory} exists and is not a directory", ExitCode.USAGE)
        present = existing_files(directory)
        if present and not force:
            render.fail(f"refusing to overwrite {', '.join(map(str, present))} "
                        "(pass --force to replace them)", ExitCode.ERROR)
        try:
            generate_bundle(directory, names or None, client_name=client_name.strip(), days=days)
        except OSError as e:
            render.fail(f"writing certificates to {directory}: {e.strerror or e}", ExitCode.ERROR)
        for name, what in BUNDLE_FILES:
            render.print_line(f"wrote {directory / name}  {what}")
