"""Output and error handling shared by the `cfnet` client commands.

Human output is a rich table on stdout; `--json` output is indented JSON with the API's own keys.
Errors are one line, `error: <text>`, on stderr, followed by an exit code from `ExitCode`. Text
that came from a server or a user is never read as rich markup (`[network.admin]` stays as is),
and its control characters are shown escaped (`safe`), so an app id cannot drive the terminal.
`--json` output is exact: JSON escapes control characters itself.
"""

from __future__ import annotations

import json
import sys
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from cfnet.cli.exit_codes import ExitCode, exit_code_for_status
from cfnet.core.errors import CfnetError, ConfigError

if TYPE_CHECKING:
    from rich.console import Console

    from cfnet.clients.policy_api import Policy, Tag


def safe(text: str) -> str:
    """`text` with control and format characters escaped (`\\x1b`, `\\u202e`), for a terminal."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch == " " or unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co",
                                                         "Cn", "Zs"):
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def fail(message: str, code: ExitCode) -> NoReturn:
    """Print `error: message` as one line on stderr and exit with `code`."""
    line = safe(" ".join(str(message).split()))
    sys.stderr.write(f"error: {line}\n")
    sys.stderr.flush()
    raise typer.Exit(int(code))


def api_exit_code(status: int | None) -> ExitCode:
    """The exit code for a failed request: unreachable, auth, other 4xx, 5xx, or a bad reply."""
    if status is None:
        return ExitCode.UNREACHABLE
    if status >= 400:
        return exit_code_for_status(status)
    return ExitCode.ERROR  # a 2xx reply this client could not read


@contextmanager
def errors_to_exit() -> Iterator[None]:
    """Turn every expected failure inside the block into one error line and its exit code."""
    from cfnet.clients.http import ApiError, InvalidInput

    try:
        yield
    except ApiError as e:
        fail(e.error, api_exit_code(e.status))
    except InvalidInput as e:
        fail(str(e), ExitCode.USAGE)
    except ConfigError as e:
        fail(str(e), ExitCode.CONFIG)
    except CfnetError as e:
        fail(str(e), ExitCode.ERROR)
    except KeyboardInterrupt:
        fail("interrupted", ExitCode.INTERRUPTED)


def console() -> Console:
    """A console on the current stdout; wide when not a terminal, so piped rows are not cut."""
    from rich.console import Console

    out = Console(file=sys.stdout, markup=False, highlight=False, emoji=False)
    if not out.is_terminal:
        out = Console(file=sys.stdout, markup=False, highlight=False, emoji=False, width=400)
    return out


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    sys.stdout.flush()


def print_line(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def policy_table(policies: Sequence[Policy]) -> None:
    """Policies as a table: source, destination, protocol, ports."""
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, show_edge=False, pad_edge=False)
    for name in ("source", "destination", "protocol", "ports"):
        table.add_column(name, no_wrap=True)
    for p in policies:
        table.add_row(Text(safe(p.source)), Text(safe(p.destination)), Text(safe(p.protocol)),
                      Text(p.ports))
    console().print(table)


def tag_table(tags: Sequence[Tag]) -> None:
    """Tags as a table: group id, tag, type."""
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, show_edge=False, pad_edge=False)
    for name in ("id", "tag", "type"):
        table.add_column(name, no_wrap=True)
    for t in tags:
        table.add_row(Text(safe(t.id)), Text(safe(t.tag)), Text(safe(t.type)))
    console().print(table)


def describe(policy: Policy) -> str:
    """`app-a -> app-b tcp 8080`, for one-line messages (ids escaped, see `safe`)."""
    return f"{safe(policy.source)} -> {safe(policy.destination)} {safe(policy.protocol)} " \
        f"{policy.ports}"
