"""The `cfnet` root: every role listed, cheap to start, per-container paths without heavy imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("starlette", "uvicorn", "pyroute2", "psycopg", "cfnet.store", "requests", "nftables")


def loaded_modules(argv: list[str], env: dict[str, str] | None = None, stdin: str = "") -> set[str]:
    """Run cfnet's main in a fresh interpreter and return the modules it imported."""
    code = ("import sys, json, atexit\n"
            "atexit.register(lambda: sys.__stderr__.write('MODULES=' + json.dumps(sorted(sys.modules)) + '\\n'))\n"
            "from cfnet.cli.main import main\n"
            f"sys.argv = ['cfnet'] + {argv!r}\n"
            "main()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, input=stdin, timeout=60)
    line = next(l for l in proc.stderr.splitlines() if l.startswith("MODULES="))
    return set(json.loads(line[len("MODULES="):]))


def test_help_lists_every_available_role_without_importing_them() -> None:
    proc = subprocess.run([sys.executable, "-m", "cfnet", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    for name in ("policy-server", "policy", "certs", "silk-controller", "silk-daemon", "lab"):
        assert name in proc.stdout
    modules = loaded_modules(["--help"])
    assert not [m for m in modules if m.split(".")[0] in HEAVY or m.startswith("cfnet.store")]


def test_cni_version_path_skips_typer_and_the_web_stack() -> None:
    modules = loaded_modules(["cni", "silk"], env={"CNI_COMMAND": "VERSION"},
                             stdin='{"cniVersion": "1.0.0"}')
    assert "typer" not in modules and "rich" not in modules
    assert not [m for m in modules if m.split(".")[0] in HEAVY]


def test_unknown_command_is_a_usage_error() -> None:
    proc = subprocess.run([sys.executable, "-m", "cfnet", "no-such-role"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert "No such command" in proc.stderr


def test_version() -> None:
    from cfnet import __version__

    proc = subprocess.run([sys.executable, "-m", "cfnet", "--version"], capture_output=True,
                          text=True, timeout=60)
    assert proc.stdout.strip() == f"cfnet {__version__}"


@pytest.mark.parametrize("alias", ["silk-cni"])
def test_plugin_symlink_dispatches_on_argv0(tmp_path: Path, alias: str) -> None:
    link = tmp_path / alias
    script = tmp_path / "cfnet"
    script.write_text(f"#!{sys.executable}\nfrom cfnet.cli.main import main\nmain()\n")
    script.chmod(0o755)
    link.symlink_to(script)
    proc = subprocess.run([str(link)], capture_output=True, text=True, input='{"cniVersion":"1.0.0"}',
                          env={**os.environ, "CNI_COMMAND": "VERSION"}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "supportedVersions" in json.loads(proc.stdout)
