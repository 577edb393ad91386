"""Bind-mounting a container's network namespace to `<bind_mount_dir>/<handle>`.

The mount keeps the namespace alive and gives CNI plugins a path (CNI_NETNS) to it. mount(2) and
umount2(2) are called directly (no `mount` process per container). A second `up` of the same
handle replaces the mount instead of stacking another one on top (upstream QUIRK Q16).
"""

from __future__ import annotations

import ctypes
import errno
import os

MS_BIND = 4096
MNT_DETACH = 2
NSFS_MAGIC = 0x6E736673

_libc: ctypes.CDLL | None = None


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                                ctypes.c_ulong, ctypes.c_void_p]
        _libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return _libc


class MountError(Exception):
    pass


def _go_errno(err: int) -> str:
    text = os.strerror(err)
    return text[:1].lower() + text[1:]


def is_netns(path: str) -> bool:
    """True when `path` is a mounted network namespace (an nsfs file), not a plain file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        buf = (ctypes.c_long * 16)()
        libc = _c()
        libc.fstatfs.argtypes = [ctypes.c_int, ctypes.c_void_p]
        if libc.fstatfs(fd, buf) != 0:
            return False
        return (buf[0] & 0xFFFFFFFF) == NSFS_MAGIC
    finally:
        os.close(fd)


def mount(source: str, target: str) -> bool:
    """Bind `source` onto `target` (created empty); True when the target file was created here."""
    parent = os.path.dirname(target)
    try:
        os.makedirs(parent, mode=0o700, exist_ok=True)
        created = not os.path.exists(target)
        if is_netns(target):
            unmount(target)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.close(fd)
    except OSError as e:
        raise MountError(_go_errno(e.errno) if e.errno else str(e)) from None
    if _c().mount(source.encode(), target.encode(), None, MS_BIND, None) != 0:
        err = ctypes.get_errno()
        if created:
            _remove_file(target)
        raise MountError(_go_errno(err))
    return created


def unmount(target: str) -> None:
    """Detach every mount on `target` (none is fine)."""
    for _ in range(16):  # mounts stacked by upstream's quirk are peeled one by one
        if _c().umount2(target.encode(), MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err in (errno.EINVAL, errno.ENOENT):
                return
            raise MountError(f"unmount {target}: {_go_errno(err)}")


def remove(target: str) -> None:
    """Unmount and delete `target`; a missing one is fine."""
    unmount(target)
    _remove_file(target)


def _remove_file(target: str) -> None:
    try:
        os.remove(target)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        import shutil

        shutil.rmtree(target, ignore_errors=True)
