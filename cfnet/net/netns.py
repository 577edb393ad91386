"""Named network namespaces (the `ip netns` convention: bind mounts under /run/netns).

Cells, containers and the lab's helper hosts are namespaces. Kernel work inside one goes through
`pyroute2.IPRoute(netns=name)` (one socket per namespace, opened once and reused); processes run
inside one through `ip netns exec`, which also gives them the namespace's own /sys.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

NETNS_DIR = Path("/run/netns")


def path(name: str) -> str:
    return str(NETNS_DIR / name)


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def names() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def create(name: str) -> None:
    """Create namespace `name` (an error if it exists: names are owned by their creator)."""
    from pyroute2 import netns

    if exists(name):
        raise FileExistsError(errno.EEXIST, f"network namespace {name} already exists")
    netns.create(name)


def remove(name: str) -> None:
    """Remove namespace `name`; a missing one is fine. Links inside it go with it."""
    from pyroute2 import netns

    if not exists(name):
        return
    try:
        netns.remove(name)
    except FileNotFoundError:
        pass


def exec_argv(name: str, argv: Sequence[str]) -> list[str]:
    """The command line that runs `argv` inside namespace `name`."""
    return ["ip", "netns", "exec", name, *argv]


def run(name: str, argv: Sequence[str], check: bool = True, timeout: float = 30,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command inside the namespace and wait for it; output is captured as text."""
    proc = subprocess.run(exec_argv(name, argv), capture_output=True, text=True,
                          timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise RuntimeError(f"in netns {name}: {' '.join(argv)} failed ({proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()}")
    return proc


def spawn(name: str, argv: Sequence[str], log: IO[Any] | int | None = None,
          env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a long-running process inside the namespace, in its own process group."""
    return subprocess.Popen(exec_argv(name, argv), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)


def sysctl(name: str, key: str, value: str | int) -> None:
    """Set a sysctl of the namespace (net.* keys are per namespace)."""
    run(name, ["sysctl", "-qw", f"{key}={value}"])


def pids_in(name: str) -> list[int]:
    """Processes whose network namespace is `name` (to stop what a crashed run left behind)."""
    try:
        target = os.stat(path(name))
    except FileNotFoundError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            found.append(int(entry))
    return found
