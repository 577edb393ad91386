"""Named network namespaces (the `ip netns` convention: bind mounts under /run/netns).

Cells, containers and the lab's helper hosts are namespaces. Kernel work inside one goes through
`pyroute2.IPRoute(netns=name)` (one socket per namespace, opened once and reused); processes run
inside one through `ip netns exec`, which also gives them the namespace's own /sys.
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

from cfnet.net.setns import enter_fd

T = TypeVar("T")

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


def setns(target: str) -> None:
    """Move the calling thread into a namespace, by name or by path (e.g. /proc/PID/ns/net).

    Network namespaces are per thread: only this thread moves, and sockets it opens afterwards
    live in the target. Use it on a thread of its own (see `call_in`), never on the main thread.
    """
    ns_path = target if "/" in target else path(target)
    fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter_fd(fd)
    except OSError as e:
        raise OSError(e.errno, f"setns {target}: {e.strerror}") from None
    finally:
        os.close(fd)


def call_in(target: str, fn: Callable[[], T], timeout: float | None = 30.0) -> T:
    """Run `fn` on a fresh thread inside namespace `target` (name or path) and return its result.

    The caller's threads stay where they are; the helper thread ends with `fn`. A `timeout` of
    None waits for `fn` however long it takes.
    """
    box: dict[str, Any] = {}

    def run_inside() -> None:
        try:
            setns(target)
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    thread = threading.Thread(target=run_inside, name=f"netns-{os.path.basename(target)}",
                              daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"call in netns {target} did not finish within {timeout} s")
    if "error" in box:
        raise box["error"]
    return box["value"]
