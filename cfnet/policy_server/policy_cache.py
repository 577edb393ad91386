"""Rendered internal policies per app id, valid for one last-updated stamp (I1's `id` fetch).

A cell fetches the policies of its ~100 apps; every app is asked for by several cells, and the
answer changes only when the stamp moves. So each fetch reads the stamp first (one indexed row;
any replica's write moves it, and on SQLite so does another process's), drops everything when
it moved, and serves each app id from its cached fragments or, for the ids not cached yet, from
one store query whose rows are rendered once and kept. The answer is the union of the ids'
policies, each policy once, in policy-row-id order: byte for byte what the store's `by_ids` and
the direct rendering give.

Freshness: a fetch answers with the state at the stamp it read at its start, never older. Rows
fetched for missing ids carry the stamp read after them in the same transaction; when that is
not the stamp the fetch started from, a write committed in between and the fetch starts again
(after a few tries it answers uncached, straight from the store). Only such checked entries are
kept, and only while the cache is still at their stamp.

Memory is bounded: least recently used app ids are evicted past `max_bytes` (an estimate of the
fragments and their bookkeeping; about 100k policies fit in the default).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

Entry = dict[int, str]  # policy row id -> rendered policy, in row-id order (a dict: the union
# of a fetch is then `dict.update`, the fastest merge Python has)

DEFAULT_MAX_BYTES = 96 * 1024 * 1024  # all of 100k policies over 20k apps: estimated 62 MiB
ATTEMPTS = 3  # fetches that keep losing the race with writes answer uncached after this
# Calibrated with tracemalloc on 100k policies over 20k apps: 64 MiB allocated when no text is
# shared; the estimate counts every text in full, so it stays above the real use (41 MiB).
_ENTRY_OVERHEAD = 300  # bytes per cached app id: the key, its dict, the LRU node
_PAIR_OVERHEAD = 100  # bytes per cached policy besides its text: the slot, the int, the str header

_POLICY = ('{"source":{"id":%s,"tag":"%s"},"destination":{"id":%s,"tag":"%s","protocol":%s,'
           '"ports":{"start":%d,"end":%d}}}')


def tag_format(tag_length: int) -> str:
    return f"%0{2 * tag_length}X"


def render_row(row: Sequence[Any], tag: str) -> str:
    """One policy of I1's body from a store row (see `PolicyStore.policy_rows`)."""
    _, src, stag, dst, dtag, proto, start, end = row
    esc = encode_basestring_ascii
    return _POLICY % (esc(src), tag % stag, esc(dst), tag % dtag, esc(proto), start, end)


def policies_body(parts: list[str]) -> bytes:
    """I1's body around rendered policies."""
    return f'{{"total_policies":{len(parts)},"policies":[{",".join(parts)}]}}'.encode()


def render_rows(rows: Iterable[Sequence[Any]], tag_length: int) -> bytes:
    tag = tag_format(tag_length)
    return policies_body([render_row(row, tag) for row in rows])


class PolicyCache:
    """Thread-safe; `fetch` blocks on the store (call it from a worker thread)."""

    def __init__(self, store: Any, tag_length: int, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.store = store  # cfnet.store.policies.PolicyStore
        self.tag = tag_format(tag_length)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._stamp: int | None = None  # the stamp every entry is valid for
        self._entries: OrderedDict[str, tuple[Entry, int]] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def fetch(self, ids: list[str] | None) -> bytes:
        """I1's body for `ids` (None: every policy, uncached)."""
        if ids is None:
            rows, _ = self.store.policy_rows(None)
            return policies_body([render_row(row, self.tag) for row in rows])
        unique = list(dict.fromkeys(ids))
        if not unique:
            return policies_body([])
        for _ in range(ATTEMPTS):
            stamp = self.store.last_updated_ns()
            found, missing = self._lookup(stamp, unique)
            if missing:
                rows, after = self.store.policy_rows(missing)
                if after != stamp:
                    continue  # a write committed since `stamp`: these rows are newer than it
                fresh = self._split(rows, missing)
                self._keep(stamp, fresh)
                found.extend(fresh.values())
            return self._union(found)
        rows, _ = self.store.policy_rows(unique)
        return policies_body([render_row(row, self.tag) for row in rows])

    def clear(self) -> None:
        with self._lock:
            self._stamp = None
            self._entries.clear()
            self.bytes = 0

    # -- internals -------------------------------------------------------------------------------

    def _lookup(self, stamp: int, ids: list[str]) -> tuple[list[Entry], list[str]]:
        """Cached entries of `ids` at `stamp` (everything dropped if the cache is at another
        one), and the ids not cached."""
        found: list[Entry] = []
        missing: list[str] = []
        with self._lock:
            if stamp != self._stamp:
                self._entries.clear()
                self.bytes = 0
                self._stamp = stamp
            entries = self._entries
            for app in ids:
                cached = entries.get(app)
                if cached is None:
                    missing.append(app)
                else:
                    entries.move_to_end(app)
                    found.append(cached[0])
            self.hits += len(found)
            self.misses += len(missing)
        return found, missing

    def _split(self, rows: list[tuple[Any, ...]], ids: list[str]) -> dict[str, Entry]:
        """Each id's policies (as source or destination) from rows in row-id order."""
        entries: dict[str, Entry] = {app: {} for app in ids}
        tag = self.tag
        # A policy row never changes while it exists (writes insert and delete rows, and ids are
        # never reused), so its text is shared with the entry of its other app when that one is
        # cached: half the memory, and no second rendering. Read without the lock: a stored
        # entry is never changed.
        cached = self._entries
        for row in rows:
            rid, src, dst = int(row[0]), row[1], row[3]
            other = cached.get(dst if src in entries else src)
            text = other[0].get(rid) if other is not None else None
            if text is None:
                text = render_row(row, tag)
            if src in entries:
                entries[src][rid] = text
            if dst in entries:
                entries[dst][rid] = text
        return entries

    def _keep(self, stamp: int, fresh: dict[str, Entry]) -> None:
        with self._lock:
            if stamp != self._stamp:  # another fetch saw a newer stamp meanwhile
                return
            entries = self._entries
            for app, entry in fresh.items():
                size = _ENTRY_OVERHEAD + len(app) + sum(_PAIR_OVERHEAD + len(text)
                                                        for text in entry.values())
                if size > self.max_bytes:
                    continue
                old = entries.pop(app, None)
                if old is not None:
                    self.bytes -= old[1]
                entries[app] = (entry, size)
                self.bytes += size
            while self.bytes > self.max_bytes and entries:
                _, (_, size) = entries.popitem(last=False)
                self.bytes -= size

    @staticmethod
    def _union(entries: list[Entry]) -> bytes:
        if len(entries) == 1:
            return policies_body(list(entries[0].values()))
        merged: dict[int, str] = {}
        for entry in entries:
            merged.update(entry)
        return policies_body([merged[k] for k in sorted(merged)])
