"""setns(2) on the calling thread: the one place that enters a network namespace.

Deliberately stdlib-only and tiny (ctypes, os): the per-container CNI path imports it, and
`cfnet.net.netns` (which pulls in subprocess and threading) builds its helpers on it.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CLONE_NEWNET = 0x40000000

_libc: Any = None


def enter_fd(fd: int) -> None:
    """Move this thread into the network namespace open at `fd`; OSError(errno, strerror)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextmanager
def inside(ns_fd: int) -> Iterator[None]:
    """Run the block with this thread in the namespace of `ns_fd` (sockets and /proc/sys/net
    opened in it stay bound to it); always come back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter_fd(ns_fd)
        try:
            yield
        finally:
            enter_fd(home)
    finally:
        os.close(home)
