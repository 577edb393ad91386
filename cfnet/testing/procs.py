"""Start, watch and stop the cfnet server processes the test harnesses run (policy-server,
silk-controller): one copy of the start-up polling, the log reading and the stop sequence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# failure(what) -> the harness's own exception, naming the process and its stderr tail
Failure = Callable[[str], Exception]


def launch(command: Sequence[str], out: Path, err: Path) -> subprocess.Popen[bytes]:
    """Start `command` with unbuffered Python output into the files `out` and `err`."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        return subprocess.Popen(list(command), stdout=stdout, stderr=stderr,
                                stdin=subprocess.DEVNULL, env=env)


def failure_text(name: str, what: str, process: subprocess.Popen[bytes], err: Path) -> str:
    """`NAME WHAT (exit N): last | stderr | lines`."""
    tail = err.read_text(errors="replace").strip().splitlines()[-5:]
    return f"{name} {what} (exit {process.poll()}): " + " | ".join(tail)


def json_log_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines written to `path` so far (anything else is skipped)."""
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
    return lines


def wait_for_servers(process: subprocess.Popen[bytes], out: Path, failure: Failure,
                     timeout: float) -> dict[str, str]:
    """The listener addresses from the `starting-servers` log line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in out.read_text(errors="replace").splitlines():
            if '"starting-servers"' in line or ".starting-servers" in line:
                try:
                    return json.loads(line)["data"]
                except (ValueError, KeyError):
                    continue
        if process.poll() is not None:
            raise failure("exited during start-up")
        time.sleep(0.05)
    raise failure(f"did not start its listeners within {timeout:.0f} s")


def wait_healthy(process: subprocess.Popen[bytes], healthy: Callable[[], bool],
                 failure: Failure, timeout: float) -> None:
    """Poll `healthy` until true; the failure if the process exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise failure("exited during start-up")
        if healthy():
            return
        time.sleep(0.05)
    raise failure(f"not healthy within {timeout:.0f} s")


def kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process that is still running (a failed start) and reap it."""
    if process.poll() is None:
        process.kill()
        process.wait()


def stop(process: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM, wait, SIGKILL if needed; the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            kill(process)
    return process.returncode  # type: ignore[return-value]


class ConfiguredProcess:
    """What the cell harnesses (silk-daemon, agent) share: a JSON config file for the next start,
    the current process and the file its output goes to. Mixed into their dataclasses, which
    declare these three fields."""

    config_path: Path
    process: subprocess.Popen[bytes] | None
    output_path: Path | None

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self.config_path.read_text())

    def write_config(self, **changes: Any) -> None:
        """Change config keys for the next start."""
        self.config_path.write_text(json.dumps({**self.config, **changes}, indent=2))

    def output(self) -> str:
        """Everything the current process wrote (JSON log lines and the stderr error line)."""
        return self.output_path.read_text(errors="replace") if self.output_path else ""

    def log_lines(self, event: str | None = None) -> list[dict[str, Any]]:
        """The current process's JSON log lines, optionally only those of one event."""
        lines = json_log_lines(self.output_path) if self.output_path else []
        if event is None:
            return lines
        return [l for l in lines if l.get("message", "").endswith("." + event)]

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None
