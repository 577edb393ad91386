"""docs/cli-reference.md is what scripts/gen_cli_reference.py makes of the current commands.

The generator runs in a subprocess, as a developer runs it, so that modules other tests imported
(or CFNET_* variables they set) cannot change what it sees. Nothing is written to docs/.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "scripts" / "gen_cli_reference.py"
PAGE = ROOT / "docs" / "cli-reference.md"
REGENERATE = "python scripts/gen_cli_reference.py"


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=env)


def _generated() -> str:
    result = _run("--stdout")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_cli_reference_is_up_to_date() -> None:
    result = _run("--check")
    assert result.returncode == 0, (
        f"docs/cli-reference.md is stale. Regenerate it with `{REGENERATE}` and commit it.\n"
        f"{result.stderr}")


def test_a_stale_page_is_reported_with_the_command_to_fix_it(tmp_path: Path) -> None:
    stale = tmp_path / "cli-reference.md"
    stale.write_text(PAGE.read_text().replace("Print the version and exit.", "Old text."))
    result = _run("--check", "--output", str(stale))
    assert result.returncode == 1
    assert f"Run `{REGENERATE}`" in result.stderr
    assert "-- `--version`: Old text." in result.stderr  # the diff shows what changed
    assert "+- `--version`: Print the version and exit." in result.stderr


def test_output_does_not_depend_on_the_environment(tmp_path: Path) -> None:
    """`cfnet lab --dir` defaults to $CFNET_LAB_DIR: the generator must not pick that up."""
    env = dict(os.environ, CFNET_LAB_DIR=str(tmp_path / "elsewhere"), COLUMNS="40")
    result = _run("--stdout", env=env)
    assert result.returncode == 0, result.stderr
    assert str(tmp_path) not in result.stdout
    assert result.stdout == _generated()


def test_every_command_of_the_tree_has_a_section() -> None:
    """Walked independently of the generator: every (sub)command of the typer tree is there."""
    from tests.cli_paths import _context, _is_group, _subcommand, root_command

    def paths(command: Any, path: list[str]) -> list[list[str]]:
        found = [path]
        if _is_group(command):
            for name in command.list_commands(_context(command)):
                found += paths(_subcommand(command, name), [*path, name])
        return found

    text = _generated()
    headings = set(re.findall(r"^#{2,4} `(cfnet[^`]*)`$", text, re.M))
    expected = {" ".join(["cfnet", *p]) for p in paths(root_command(), [])}
    assert {"cfnet lab demo", "cfnet policy add", "cfnet certs generate"} <= expected
    assert expected - headings == set()


def test_options_defaults_and_fast_paths_are_documented() -> None:
    from cfnet.cni.entry import PLUGINS

    text = _generated()
    assert "Usage: cfnet policy add [OPTIONS] SOURCE DESTINATION" in text
    assert "- `--protocol tcp|udp` (default `tcp`): Protocol the destination accepts." in text
    assert "- `--config-file, --config, -config PATH` (required):" in text
    assert "(default `/var/lib/cfnet/lab`; env `CFNET_LAB_DIR`)" in text
    # cni and garden-hook are documented as their fast paths parse them, not as typer sees them
    assert "Usage: cfnet cni PLUGIN" in text
    for name in PLUGINS:
        assert f"| `{name}` |" in text
    assert "cfnet garden-hook --configFile=F --action up|down --handle H" in text
    assert "Flags: `-action`, `-handle`, `-configFile`" in text
    assert "| 3 | `CONFIG` | missing or invalid config file |" in text
