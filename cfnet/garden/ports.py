"""The host port pool: `{"acquired_ports": {"<handle>": [61000, 61003]}}` in a state file.

Every read-modify-write holds `flock(LOCK_EX)` on the state file itself, as upstream does, so
concurrent hooks never see each other's half-done work. Unlike upstream (seek, truncate, write in
place, where a crash leaves an empty file and an empty pool that hands out live ports again), the
new state is written to a temporary file, fsynced and renamed over the old one. A waiter that
locked the replaced file notices (the path now names another inode) and locks again. An
unreadable state file is an error, never an empty pool.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable
from typing import Any

from cfnet.core import files


class PortError(Exception):
    pass


class PortPool:
    def __init__(self, state_file: str, start_port: int, total_ports: int) -> None:
        self.state_file = state_file
        self.start = start_port
        self.total = total_ports

    # -- public operations ------------------------------------------------------------------

    def acquire(self, handle: str, count: int) -> list[int]:
        """`count` lowest free ports, recorded for `handle` in one locked transaction."""
        if count <= 0:
            return []

        def change(state: dict[str, list[int]]) -> list[int]:
            used = {p for ports in state.values() for p in ports}
            got: list[int] = []
            for port in range(self.start, self.start + self.total):
                if port not in used:
                    got.append(port)
                    if len(got) == count:
                        break
            if len(got) < count:
                raise PortError("acquire port: port pool exhausted")
            state.setdefault(handle, []).extend(got)
            return got

        return self._transaction(change)

    def release(self, handle: str, ports: list[int] | None = None) -> None:
        """Forget `ports` of `handle` (all of its ports when None)."""

        def change(state: dict[str, list[int]]) -> None:
            if handle not in state:
                return None
            if ports is None:
                del state[handle]
            else:
                left = [p for p in state[handle] if p not in ports]
                if left:
                    state[handle] = left
                else:
                    del state[handle]
            return None

        self._transaction(change)

    def acquired(self) -> dict[str, list[int]]:
        return self._transaction(lambda state: {h: list(p) for h, p in state.items()},
                                 write=False)

    # -- the locked transaction -------------------------------------------------------------

    def _open_locked(self) -> int:
        parent = os.path.dirname(self.state_file)
        if parent:
            os.makedirs(parent, mode=0o700, exist_ok=True)
        while True:
            fd = os.open(self.state_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                # Renamed over while we waited: lock the file the path names now.
                if os.fstat(fd).st_ino == os.stat(self.state_file).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)

    def _transaction(self, change: Callable[[dict[str, list[int]]], Any],
                     write: bool = True) -> Any:
        fd = self._open_locked()
        try:
            state = self._read(fd)
            before = json.dumps(state, sort_keys=True)
            out = change(state)
            if write and json.dumps(state, sort_keys=True) != before:
                self._write(state)
            return out
        finally:
            os.close(fd)  # releases the lock

    def _read(self, fd: int) -> dict[str, list[int]]:
        data = files.read_all(fd)
        if not data.strip():
            return {}
        try:
            raw = json.loads(data)
            acquired = raw.get("acquired_ports") or {}
            return {str(h): [int(p) for p in ports] for h, ports in acquired.items()}
        except (ValueError, AttributeError, TypeError) as e:
            raise PortError(f"reading port state {self.state_file}: {e}") from None

    def _write(self, state: dict[str, list[int]]) -> None:
        data = json.dumps({"acquired_ports": state}, separators=(",", ":")).encode()
        files.replace(self.state_file, data, durable=True)
