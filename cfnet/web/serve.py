"""Run several ASGI apps on several listeners in one process, with background tasks.

A role such as the policy server has an external listener, an internal mutual-TLS listener, a
health listener and a debug listener, plus pollers. `run` serves them all on one asyncio loop and
stops them together on SIGTERM or SIGINT: listeners stop accepting, idle keep-alive connections
are closed at once, in-flight requests finish (up to `grace` seconds), background tasks are
cancelled, and `run` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn

# How long a closing TLS connection may wait for the peer's close_notify during shutdown. asyncio
# waits for it (up to 30 s) before it reports the connection lost, and uvicorn waits for every
# connection to be lost; an idle keep-alive connection whose client never reads (a requests pool)
# would otherwise hold the process for the whole grace period.
CLOSE_NOTIFY_WAIT = 0.5

@dataclass
class Listener:
    name: str
    app: Any
    host: str
    port: int
    ssl: ssl.SSLContext | None = None
    sock: socket.socket | None = field(default=None, repr=False)

    def bind(self) -> None:
        """Bind now, so that a bad address fails before anything starts and port 0 resolves."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP explicitly: accepted sockets inherit it, and asyncio sets TCP_NODELAY only on
        # sockets whose proto is IPPROTO_TCP. Without it every response whose headers and body are
        # written separately waits ~40 ms for a delayed ACK (Nagle).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as e:
            sock.close()
            raise OSError(e.errno, f"{self.name} listener: cannot bind {self.host}:{self.port}: "
                                   f"{e.strerror}") from None
        sock.listen(2048)
        sock.set_inheritable(False)
        self.sock = sock
        self.port = sock.getsockname()[1]


class _Server(uvicorn.Server):
    # The signals are ours (one handler for all listeners), not uvicorn's.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's shutdown (idle connections closed, in-flight ones finish their response),
        plus a reaper that aborts connections stuck in their TLS close."""
        reaper = asyncio.create_task(self._abort_lingering_closes())
        try:
            await super().shutdown(sockets)
        finally:
            reaper.cancel()

    async def _abort_lingering_closes(self) -> None:
        loop = asyncio.get_running_loop()
        closing_since: dict[int, float] = {}
        while True:
            now = loop.time()
            for conn in list(self.server_state.connections):
                transport = getattr(conn, "transport", None)
                # A connection still serving a request is not closing yet: it is left alone.
                if transport is None or not transport.is_closing():
                    continue
                since = closing_since.setdefault(id(conn), now)
                # Abort only once everything written has left (the response is out); what is
                # left is the close_notify exchange.
                if now - since >= CLOSE_NOTIFY_WAIT and transport.get_write_buffer_size() == 0:
                    transport.abort()
            await asyncio.sleep(0.05)


def _server(listener: Listener, grace: float) -> _Server:
    config = uvicorn.Config(
        listener.app, log_config=None, access_log=False, lifespan="off",
        server_header=False, date_header=True, proxy_headers=False,
        timeout_graceful_shutdown=int(grace) or 1,
    )
    config.load()
    config.ssl = listener.ssl  # our own context: uvicorn's file options cannot pin ciphers + CA
    return _Server(config)


async def serve(
    listeners: list[Listener],
    background: list[Callable[[], Awaitable[None]]] | None = None,
    stop: asyncio.Event | None = None,
    grace: float = 10.0,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Serve until `stop` is set (or SIGTERM/SIGINT arrives when `stop` is None)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    for listener in listeners:
        if listener.sock is None:
            listener.bind()
    servers = [_server(listener, grace) for listener in listeners]
    serving = [asyncio.create_task(s.serve(sockets=[l.sock]))  # type: ignore[list-item]
               for s, l in zip(servers, listeners)]
    tasks = [asyncio.create_task(_guard(job)) for job in background or []]
    while not all(s.started for s in servers):
        if any(t.done() for t in serving):
            break
        await asyncio.sleep(0.01)
    if on_ready is not None:
        on_ready()
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([stopper, *serving], return_when=asyncio.FIRST_COMPLETED)
    for s in servers:
        s.should_exit = True
    for t in tasks:
        t.cancel()
    await asyncio.gather(*serving, *tasks, return_exceptions=True)
    stopper.cancel()
    for listener in listeners:
        if listener.sock is not None:
            listener.sock.close()


async def _guard(job: Callable[[], Awaitable[None]]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        await job()


def run(listeners: list[Listener], background: list[Callable[[], Awaitable[None]]] | None = None,
        grace: float = 10.0, on_ready: Callable[[], None] | None = None) -> None:
    """Blocking form of `serve`, for a process's main thread."""
    asyncio.run(serve(listeners, background, grace=grace, on_ready=on_ready))
