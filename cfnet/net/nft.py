"""nftables transactions through libnftables, in-process, optionally inside a named namespace.

One `Nft.run()` call is one kernel batch: the whole script (or JSON command list) applies, or
nothing does, and a failure raises `NftError` carrying nft's own message and the failing line.

libnftables talks netlink from the network namespace of the *calling thread*. To work inside
another namespace without moving the caller, each namespace gets one worker thread that has
called setns(2) into it once and then runs every request for that namespace, one at a time,
through its own libnftables context. Workers are shared per namespace inode and reference
counted: the last `close()` stops the thread, which releases the namespace. A process that
already runs inside the target namespace uses `Nft()` (no worker, calls on the caller's thread).
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cfnet.core.errors import CfnetError
from cfnet.net import netns as netns_mod
T = TypeVar("T")


class NftError(CfnetError):
    """nft refused a command; `message` is nft's text, `line` the offending input line if known."""

    def __init__(self, message: str, line: str | None = None, script: str | None = None) -> None:
        self.message = message
        self.line = line
        self.script = script
        shown = line.strip() if line else ""
        if len(shown) > 200:  # element lists make long lines; the start names the command
            shown = shown[:200] + "..."
        super().__init__(f"nft: {message}" + (f" (in: {shown})" if shown else ""))


def _parse_error(err: str, script: str | None) -> NftError:
    """Turn libnftables' stderr (message, echoed input line, ^^^ marker) into an NftError."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    messages = [ln for ln in lines if "Error:" in ln]
    if messages:
        message = messages[0].split("Error:", 1)[1].strip()
    else:
        message = lines[0] if lines else "failed"
    failing = None
    if messages:
        i = lines.index(messages[0])
        # The location prefix ("/proc/self/fd/5:3:1-10: Error:") names the line.
        loc = messages[0].split("Error:", 1)[0].rstrip(": ").split(":")
        if script is not None and len(loc) >= 2 and loc[1].isdigit():
            src = script.splitlines()
            n = int(loc[1])
            if 0 < n <= len(src):
                failing = src[n - 1]
        if failing is None and i + 1 < len(lines) and not set(lines[i + 1].strip()) <= {"^", "~"}:
            failing = lines[i + 1]
    return NftError(message, failing, script)


def _new_context() -> Any:
    import nftables

    ctx = nftables.Nftables()
    ctx.set_json_output(False)
    ctx.set_handle_output(True)
    return ctx


class _Worker:
    """A thread living in one network namespace, running callables on its libnftables context."""

    def __init__(self, ns_path: str, key: tuple[int, int]) -> None:
        self.key = key
        self.refs = 0
        self._q: queue.SimpleQueue[tuple[Callable[[Any], Any], Future[Any], bool] | None] = \
            queue.SimpleQueue()
        ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._main, args=(ns_path, ready),
                                        name=f"nft-netns-{key[1]}", daemon=True)
        self._thread.start()
        ready.result()

    def _main(self, ns_path: str, ready: Future[None]) -> None:
        try:
            netns_mod.setns(ns_path)
            # Created after setns, so their netlink sockets live in the namespace. Two contexts:
            # a listing leaves a large element cache behind whose teardown the next command on
            # the same context pays (0.1 s at 60k elements), so reads and writes are kept apart.
            writer, reader = _new_context(), _new_context()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            ready.set_exception(e)
            return
        ready.set_result(None)
        while True:
            item = self._q.get()
            if item is None:
                return
            fn, fut, read = item
            try:
                fut.set_result(fn(reader if read else writer))
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                fut.set_exception(e)

    def call(self, fn: Callable[[Any], T], read: bool = False) -> T:
        fut: Future[T] = Future()
        self._q.put((fn, fut, read))
        return fut.result()

    def stop(self) -> None:
        self._q.put(None)
        self._thread.join()


_workers: dict[tuple[int, int], _Worker] = {}
_workers_lock = threading.Lock()


def _acquire_worker(name: str) -> _Worker:
    path = netns_mod.path(name)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NftError(f"network namespace {name} does not exist") from None
    key = (st.st_dev, st.st_ino)
    with _workers_lock:
        w = _workers.get(key)
        if w is None:
            w = _Worker(path, key)
            _workers[key] = w
        w.refs += 1
        return w


def _release_worker(w: _Worker) -> None:
    with _workers_lock:
        w.refs -= 1
        if w.refs > 0:
            return
        _workers.pop(w.key, None)
    w.stop()


class Nft:
    """libnftables for one network namespace (`netns=None`: the caller's own)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._worker: _Worker | None = None
        self._ctx: Any = None
        self._reader: Any = None
        self._lock = threading.Lock()
        if netns is None:
            self._ctx, self._reader = _new_context(), _new_context()
        else:
            self._worker = _acquire_worker(netns)

    def _call(self, fn: Callable[[Any], T], read: bool = False) -> T:
        if self._worker is not None:
            return self._worker.call(fn, read)
        if self._ctx is None:
            raise NftError("nftables handle is closed")
        with self._lock:
            return fn(self._reader if read else self._ctx)

    def run(self, script: str) -> str:
        """Apply an nft script as one transaction; returns nft's text output (usually empty)."""
        if not script.strip():
            return ""

        def go(ctx: Any) -> tuple[int, str, str]:
            ctx.set_json_output(False)
            # Through an in-memory file, not a buffer: nft 1.0.6 reports errors in a buffer
            # against its first line, but names file:line correctly for an included file.
            fd = os.memfd_create("cfnet-nft", os.MFD_CLOEXEC)
            try:
                data = script.encode()
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                return ctx.cmd(f'include "/proc/self/fd/{fd}"')
            finally:
                os.close(fd)

        rc, out, err = self._call(go)
        if rc != 0:
            raise _parse_error(err, script)
        return out

    def run_json(self, commands: list[dict[str, Any]]) -> dict[str, Any]:
        """Apply a libnftables JSON command list ({"add": ...}, ...) as one transaction."""
        if not commands:
            return {}
        doc = {"nftables": commands}

        def go(ctx: Any) -> tuple[int, str, str]:
            ctx.set_json_output(True)
            try:
                return ctx.cmd(json.dumps(doc))
            finally:
                ctx.set_json_output(False)

        rc, out, err = self._call(go)
        if rc != 0:
            raise _parse_error(err, None)
        return json.loads(out) if out.strip() else {}

    def list_json(self, what: str) -> list[dict[str, Any]]:
        """`list <what>` as parsed JSON objects (metainfo dropped). One list command per call:
        nft 1.0.6 mis-resolves several list commands in one buffer."""

        def go(ctx: Any) -> tuple[int, str, str]:
            ctx.set_json_output(True)
            try:
                return ctx.cmd(f"list {what}")
            finally:
                ctx.set_json_output(False)

        rc, out, err = self._call(go, read=True)
        if rc != 0:
            raise _parse_error(err, f"list {what}")
        return [o for o in json.loads(out)["nftables"] if "metainfo" not in o]

    def list_table(self, family: str = "ip", name: str = "cfnet") -> TableState | None:
        """The table's chains, rules, sets and maps, or None if it does not exist."""
        if not self.table_exists(family, name):
            return None
        return TableState.from_json(self.list_json(f"table {family} {name}"))

    def table_exists(self, family: str = "ip", name: str = "cfnet") -> bool:
        return any(o["table"]["name"] == name for o in self.list_json(f"tables {family}"))

    def close(self) -> None:
        """Release the namespace worker (stops it when this was the last user)."""
        if self._worker is not None:
            w, self._worker = self._worker, None
            _release_worker(w)
        self._ctx = self._reader = None

    def __enter__(self) -> Nft:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- listed state ---------------------------------------------------------------------------


@dataclass
class SetState:
    """A set or map as listed: key types, flags, data type (maps) and elements in canonical text."""

    name: str
    key: list[str]
    flags: list[str] = field(default_factory=list)
    data: str | None = None  # map data type ("verdict", "mark", "ipv4_addr . inet_service")
    elements: list[str] = field(default_factory=list)  # canonical: key [comment "c"] [: data]
    keys: dict[str, str | None] = field(default_factory=dict)  # key text -> data text (maps) / None
    comments: dict[str, str] = field(default_factory=dict)  # key text -> element comment
    handle: int = 0

    @property
    def interval(self) -> bool:
        return "interval" in self.flags


@dataclass
class RuleState:
    chain: str
    handle: int
    expr: list[dict[str, Any]]
    comment: str | None = None


@dataclass
class ChainState:
    name: str
    handle: int
    hook: str | None = None
    rules: list[RuleState] = field(default_factory=list)


@dataclass
class TableState:
    """A listed table, parsed into plain structures (see `cfnet.core.nft_syntax.json_element`)."""

    chains: dict[str, ChainState] = field(default_factory=dict)
    sets: dict[str, SetState] = field(default_factory=dict)  # sets and maps by name

    @classmethod
    def from_json(cls, objs: list[dict[str, Any]]) -> TableState:
        from cfnet.core import nft_syntax

        st = cls()
        for o in objs:
            if "chain" in o:
                c = o["chain"]
                st.chains[c["name"]] = ChainState(c["name"], c.get("handle", 0), c.get("hook"))
            elif "rule" in o:
                r = o["rule"]
                ch = st.chains.setdefault(r["chain"], ChainState(r["chain"], 0))
                ch.rules.append(RuleState(r["chain"], r.get("handle", 0), r.get("expr", []),
                                          r.get("comment")))
            elif "set" in o or "map" in o:
                s = o.get("set") or o["map"]
                key = s["type"] if isinstance(s["type"], list) else [s["type"]]
                data = s.get("map")
                ss = SetState(s["name"], key, list(s.get("flags", [])), data,
                              handle=s.get("handle", 0))
                for e in s.get("elem", []):
                    k, v, comment = nft_syntax.json_element(e, key, ss.interval, data)
                    ss.keys[k] = v
                    if comment is not None:
                        ss.comments[k] = comment
                    text = k + (f' comment "{comment}"' if comment is not None else "")
                    ss.elements.append(text + (f" : {v}" if v is not None else ""))
                st.sets[s["name"]] = ss
        return st
