"""Driving a lab through its CLI: `cfnet lab ...` subprocesses with a prefix and a directory of
their own, so labs of different test modules (and anyone's own lab) never meet."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from cfnet.net import netns
from cfnet.testing.agent import wait_for  # noqa: F401 (the tests import it from here)


class Lab:
    def __init__(self, directory: Path, up_args: tuple[str, ...] = ()) -> None:
        self.directory = directory
        self.prefix = f"cfnlt{uuid.uuid4().hex[:5]}"
        self.up_args = up_args

    def run(self, *args: str, check: bool = True,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "cfnet", "lab", *args, "--dir",
                               str(self.directory)], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, "CFNET_LAB_PREFIX": self.prefix})
        if check:
            assert proc.returncode == 0, f"cfnet lab {' '.join(args)}: {proc.stdout}{proc.stderr}"
        return proc

    def up(self) -> None:
        self.run("up", *self.up_args)

    def down(self) -> None:
        self.run("down", check=False)

    def state(self) -> dict[str, Any]:
        return json.loads((self.directory / "state.json").read_text())

    def status(self) -> dict[str, Any]:
        """The status document (the command exits non-zero while a process is stopped)."""
        return json.loads(self.run("status", "--json", check=False).stdout)

    def containers(self, app: str) -> list[dict[str, Any]]:
        return [c for c in self.state()["containers"] if c["app"] == app]

    def host(self, name: str) -> dict[str, Any]:
        return self.state()["hosts"][name]

    def namespaces(self) -> list[str]:
        return [n for n in netns.names() if n.startswith(self.prefix + "-")]

    def push(self, app: str, instances: int = 1) -> list[dict[str, Any]]:
        self.run("push", app, "--instances", str(instances))
        return self.containers(app)


def app_name(base: str) -> str:
    """App names unique per test, so tests sharing a lab never see each other's policies."""
    return f"{base}{uuid.uuid4().hex[:4]}"


def reaches(src: dict[str, Any], host: str, port: int, timeout: float = 0.5) -> bool:
    """One TCP connection attempt from inside a container namespace (a denied one is rejected)."""
    def attempt() -> bool:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            return True
        except OSError:
            return False

    return netns.call_in(src["ns"], attempt, timeout=timeout + 10)


def connect(src: dict[str, Any], host: str, port: int) -> socket.socket:
    """A TCP connection opened inside `src`'s namespace (it stays there), usable from here."""
    return netns.call_in(src["ns"], lambda: socket.create_connection((host, port), timeout=3),
                         timeout=15)


def echo(sock: socket.socket, payload: bytes) -> bool:
    try:
        sock.sendall(payload)
        data = b""
        while len(data) < len(payload):
            chunk = sock.recv(65536)
            if not chunk:
                return False
            data += chunk
        return data == payload
    except OSError:
        return False
