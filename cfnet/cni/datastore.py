"""The container-metadata datastore (spec silk.md 4.2, dataplane 1.4), byte-compatible.

    store = Datastore("/var/vcap/data/container-metadata/store.json")
    store.add("handle-1", "10.255.1.2", {"policy_group_id": "app-guid", "space_id": "space"})
    store.read_all()      # {"handle-1": Container("handle-1", "10.255.1.2", {...})}
    store.delete("handle-1")

The CNI wrapper writes it, the vxlan-agent and the traffic logger read it. Files, as upstream:

- `<path>`: one JSON object keyed by handle, `{"<h>": {"handle": .., "ip": .., "metadata": {..}}}`,
  compact with sorted keys and a trailing newline (Go's encoder), rewritten whole (seek 0,
  truncate, write) while `<path>_lock` is held; mode 0600;
- `<path>_version`: a decimal counter without newline; missing or empty counts as 1 and every
  add, update and delete writes version + 1 (so the first write yields 2);
- `<path>_lock`: an exclusive flock held for every read-modify-write, plus an in-process mutex
  (flock is per open file description, so threads of one process need the mutex too).

Readers cache by version: `read_all` reads the version file without the lock and returns the
cached map when it has not moved; otherwise it locks and re-reads data and version together.
Errors are `DatastoreError` with upstream's wording (`invalid handle`, `invalid ip: <ip>`,
`decoding file: <json error>`, `entry does not exist`).
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from cfnet.core import files
from cfnet.core.errors import CfnetError

# Go's encoder escapes these inside strings; they can only occur inside strings in our output.
_GO_ESCAPES = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
               ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))
_MUTEXES: dict[str, threading.Lock] = {}
_MUTEXES_LOCK = threading.Lock()


class DatastoreError(CfnetError):
    """The datastore could not be read or written, or an entry was invalid."""


@dataclass(frozen=True)
class Container:
    handle: str
    ip: str
    metadata: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)

    def to_json(self) -> dict[str, Any]:
        return {"handle": self.handle, "ip": self.ip, "metadata": self.metadata}

    def meta(self, key: str) -> str:
        """A metadata value as a string ("" when absent or not a string)."""
        value = (self.metadata or {}).get(key)
        return value if isinstance(value, str) else ""


def encode(data: Mapping[str, Container]) -> bytes:
    """The data file's bytes: Go's json.Encoder output for the map (sorted keys, newline)."""
    text = json.dumps({h: c.to_json() for h, c in data.items()}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False)
    for raw, escaped in _GO_ESCAPES:
        text = text.replace(raw, escaped)
    return (text + "\n").encode()


def decode(raw: bytes) -> dict[str, Container]:
    """Parse the data file (empty: no entries); DatastoreError `decoding file: ...`."""
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise DatastoreError(f"decoding file: {e}") from None
    if not isinstance(data, dict):
        raise DatastoreError("decoding file: top level is not a JSON object")
    out = {}
    for key, value in data.items():
        if not isinstance(value, dict):
            raise DatastoreError(f"decoding file: entry {key!r} is not a JSON object")
        metadata = value.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise DatastoreError(f"decoding file: metadata of {key!r} is not a JSON object")
        out[key] = Container(str(value.get("handle", key)), str(value.get("ip", "")), metadata)
    return out


def _mutex(path: str) -> threading.Lock:
    key = os.path.abspath(path)
    with _MUTEXES_LOCK:
        return _MUTEXES.setdefault(key, threading.Lock())


def _validate(handle: str, ip: str) -> None:
    if not handle:
        raise DatastoreError("invalid handle")
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise DatastoreError(f"invalid ip: {ip}") from None


class Datastore:
    """One datastore file; safe across threads and processes (see the module doc).

    `owner`/`group` (names or ids), when given, are applied to the three files after each write,
    as the CNI does with `datastore_file_owner`/`datastore_file_group`.
    """

    def __init__(self, path: str, owner: str | int | None = None,
                 group: str | int | None = None) -> None:
        if not path:
            raise DatastoreError("datastore path is empty")
        self.path = path
        self.version_path = path + "_version"
        self.lock_path = path + "_lock"
        self.owner = owner
        self.group = group
        self._cache: dict[str, Container] | None = None
        self._cache_version: int | None = None
        self._cache_mutex = threading.Lock()

    # -- locking and files ----------------------------------------------------------------------

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the in-process mutex and the exclusive flock on `<path>_lock`."""
        with _mutex(self.path):
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as e:
                raise DatastoreError(f"open lock: {self.lock_path}: {e.strerror or e}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the flock

    def version(self) -> int:
        """The version counter (missing or empty file: 1). Read without the lock."""
        try:
            with open(self.version_path, "rb") as f:
                text = f.read().strip()
        except FileNotFoundError:
            return 1
        except OSError as e:
            raise DatastoreError(f"read version: {self.version_path}: {e.strerror or e}") from None
        if not text:
            return 1
        try:
            return int(text)
        except ValueError:
            raise DatastoreError(f"read version: {self.version_path}: not an integer: "
                                 f"{text[:20]!r}") from None

    def _read_data(self) -> dict[str, Container]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise DatastoreError(f"open datastore: {self.path}: {e.strerror or e}") from None
        try:
            raw = files.read_all(fd)
        finally:
            os.close(fd)
        return decode(raw)

    def _write(self, data: Mapping[str, Container], version: int) -> None:
        body = encode(data)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            try:
                files.overwrite(fd, body)
            finally:
                os.close(fd)
            # readers never see an empty version file
            files.replace(self.version_path, str(version + 1).encode(), mode=0o666)
        except OSError as e:
            raise DatastoreError(f"encode and overwrite: {e.strerror or e}") from None
        if self.owner is not None or self.group is not None:
            self._chown()

    def _chown(self) -> None:
        import grp
        import pwd

        try:
            uid = (pwd.getpwnam(self.owner).pw_uid if isinstance(self.owner, str)
                   else -1 if self.owner is None else self.owner)
            gid = (grp.getgrnam(self.group).gr_gid if isinstance(self.group, str)
                   else -1 if self.group is None else self.group)
            for p in (self.lock_path, self.path, self.version_path):
                os.chown(p, uid, gid)
        except (KeyError, OSError) as e:
            raise DatastoreError(f"chown datastore files: {e}") from None

    @contextmanager
    def _modify(self) -> Iterator[dict[str, Container]]:
        """Locked read-modify-write: yields the current map, writes it back on success."""
        with self.locked():
            data = self._read_data()
            version = self.version()
            yield data
            self._write(data, version)

    # -- the API --------------------------------------------------------------------------------

    def add(self, handle: str, ip: str, metadata: Mapping[str, Any] | None = None) -> Container:
        """Insert or replace the entry of `handle`."""
        _validate(handle, ip)
        entry = Container(handle, ip, dict(metadata or {}))
        with self._modify() as data:
            data[handle] = entry
        return entry

    def update(self, handle: str, ip: str, metadata: Mapping[str, Any] | None = None) -> Container:
        """Replace an existing entry; `entry does not exist` if `handle` is absent."""
        _validate(handle, ip)
        entry = Container(handle, ip, dict(metadata or {}))
        with self._modify() as data:
            if handle not in data:
                raise DatastoreError("entry does not exist")
            data[handle] = entry
        return entry

    def delete(self, handle: str) -> Container:
        """Remove `handle`; an unknown handle is no error (an empty record, ip "")."""
        with self._modify() as data:
            return data.pop(handle, None) or Container(handle, "", {})

    def read_all(self) -> dict[str, Container]:
        """Every entry, from the cache while the version file has not moved."""
        current = self.version()
        with self._cache_mutex:
            if self._cache is not None and current == self._cache_version:
                return dict(self._cache)
        with self.locked():
            data = self._read_data()
            version = self.version()
        with self._cache_mutex:
            self._cache, self._cache_version = data, version
        return dict(data)

    def get(self, handle: str) -> Container | None:
        return self.read_all().get(handle)


__all__ = ["Container", "Datastore", "DatastoreError", "decode", "encode"]
