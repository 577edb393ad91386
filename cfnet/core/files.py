"""Small file primitives shared by the on-disk stores (CNI datastore, silk's store.json,
host-local IPAM, the port pool, the libcni cache).

Each store keeps its own format, lock file and error texts; only the byte-moving lives here:
reading a whole fd, overwriting an open (locked) file in place, and replacing a file by
rename so that readers see the old or the new content, never a partial one.
"""

from __future__ import annotations

import os
from _thread import get_ident  # threading's, without importing threading on the CNI path


def read_all(fd: int) -> bytes:
    """Everything from the fd's offset to its end."""
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data` (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def overwrite(fd: int, data: bytes) -> None:
    """Replace the content of the open file in place: the lock held on it stays valid."""
    os.lseek(fd, 0, os.SEEK_SET)
    os.ftruncate(fd, 0)
    write_all(fd, data)


def replace(path: str, data: bytes, mode: int = 0o600, durable: bool = False) -> None:
    """Write `data` to a temporary file beside `path` and rename it over `path`.

    `durable` also fsyncs the file before the rename and the directory after it, so the new
    content survives a crash. `mode` is subject to the umask, as with open().
    """
    tmp = f"{path}.{os.getpid()}.{get_ident()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        write_all(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    if durable:
        dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
