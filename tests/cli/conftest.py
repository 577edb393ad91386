"""Helpers for the client CLI tests: run `cfnet` in-process or as a subprocess, local dead ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """No CFNET_* settings and an empty config home, so the user's real config never leaks in."""
    for name in ("CFNET_API", "CFNET_TOKEN", "CFNET_CA_CERT", "CFNET_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "config-home"
    home.mkdir()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return {"XDG_CONFIG_HOME": str(home)}


@pytest.fixture
def cfnet(clean_env: dict[str, str]):  # type: ignore[no-untyped-def]
    """Run the real `cfnet` root command in-process with typer's CliRunner."""
    from cfnet.cli.main import _build_app

    app = _build_app()

    def run(*args: str, env: dict[str, str] | None = None) -> Run:
        result = CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)
        return Run(result.exit_code, result.stdout, result.stderr)

    return run


@pytest.fixture
def cfnet_proc(clean_env: dict[str, str]):  # type: ignore[no-untyped-def]
    """Run `python -m cfnet ARGS` as a real process (no CFNET_* settings, empty config home)."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> Run:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("CFNET_")}
        full_env.update(clean_env)
        full_env.update(env or {})
        proc = subprocess.run([sys.executable, "-m", "cfnet", *args], cwd=REPO, env=full_env,
                              capture_output=True, text=True, timeout=timeout)
        return Run(proc.returncode, proc.stdout, proc.stderr)

    return run


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A local port bound but not listening: connecting to it is refused, and nobody can take it."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A local port that accepts connections (kernel backlog) but never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    try:
        yield s.getsockname()[1]
    finally:
        s.close()
