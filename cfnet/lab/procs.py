"""The lab's long-running processes: start one in its host's namespace, wait until it is healthy,
stop it (SIGTERM, or SIGKILL to simulate a crash), start it again.

`cfnet lab up` exits while its processes keep running, so a process is known by the pid and
command line recorded in the lab state, not by a Popen object. Before a recorded pid is
signalled, its command line is compared with the recorded one (pids are reused).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from cfnet.lab.state import LabProcess, LabState
from cfnet.net import netns


class ProcessError(RuntimeError):
    """A lab process did not start, stop or become healthy."""


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return []
    if state == "Z":  # a zombie of ours: reap it
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return []
    if not raw:
        return []
    return [a.decode(errors="replace") for a in raw.removesuffix(b"\0").split(b"\0")]


def alive(proc: LabProcess) -> bool:
    """The recorded pid still runs the recorded program (`ip netns exec` execs into it)."""
    if not proc.pid:
        return False
    cmd = _cmdline(proc.pid)
    # The program's own arguments end the recorded argv (a wrapper such as setpriv execs into
    # the program); the program's path may be spelled differently.
    return len(cmd) >= 2 and len(cmd) <= len(proc.argv) and \
        proc.argv[len(proc.argv) - len(cmd) + 1:] == cmd[1:]


def healthy(ns: str, check: str, timeout: float = 2.0) -> bool:
    """An HTTP 200 from `http://...`, or an accepted connection for `tcp://HOST:PORT`."""
    from cfnet.testing.silk import http_in_netns

    try:
        if check.startswith("tcp://"):
            host, port = check[len("tcp://"):].rsplit(":", 1)
            netns.call_in(ns, lambda: socket.create_connection((host, int(port)), timeout).close(),
                          timeout=timeout + 5)
            return True
        return http_in_netns(ns, check, timeout=timeout)[0] == 200
    except (OSError, TimeoutError):
        return False


def start(state: LabState, proc: LabProcess, timeout: float = 60.0) -> LabProcess:
    """Start `proc` in its host and wait until its health check passes; records its pid."""
    ns = state.hosts[proc.host].ns if proc.host in state.hosts else proc.host
    if alive(proc):
        raise ProcessError(f"{proc.name} is already running (pid {proc.pid})")
    with open(proc.log, "ab") as log:
        popen = netns.spawn(ns, proc.argv, log=log,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    proc.pid = popen.pid
    state.processes[proc.name] = proc
    state.save()
    if proc.health:
        deadline = time.monotonic() + timeout
        while not healthy(ns, proc.health):
            if popen.poll() is not None:
                tail = Path(proc.log).read_text(errors="replace")[-600:]
                raise ProcessError(f"{proc.name} exited during start-up: {tail}")
            if time.monotonic() > deadline:
                raise ProcessError(f"{proc.name} not healthy within {timeout:.0f} s")
            time.sleep(0.1)
    return proc


def stop(proc: LabProcess, kill: bool = False, timeout: float = 15.0) -> None:
    """SIGTERM (or SIGKILL with `kill`) and wait until the process is gone; SIGKILL on timeout."""
    if not alive(proc):
        return
    sig = signal.SIGKILL if kill else signal.SIGTERM
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while alive(proc):
        if time.monotonic() > deadline:
            if sig == signal.SIGKILL:
                raise ProcessError(f"{proc.name} (pid {proc.pid}) did not exit")
            os.kill(proc.pid, signal.SIGKILL)
            sig, deadline = signal.SIGKILL, time.monotonic() + 5
        time.sleep(0.05)


def record(state: LabState, name: str, host: str, argv: list[str], log: Path, pid: int,
           health: str = "") -> LabProcess:
    """Remember a process a harness started, so that the lab can restart it later."""
    proc = LabProcess(name=name, host=host, argv=list(argv), log=str(log), pid=pid, health=health)
    state.processes[name] = proc
    return proc
