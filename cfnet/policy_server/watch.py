"""The watch on policies_last_updated: long-polls wake as soon as the stamp moves (cfnet extension).

One `LastUpdatedWatch` per process keeps the latest known stamp and wakes every waiting request
when it grows. Sources of news:
- local writes (create, delete, cleaner) call `refresh()` right after their transaction;
- PostgreSQL: one LISTEN connection on channel `cfnet_policies` per process (the store runs
  `pg_notify('cfnet_policies', '<ns>')` inside every create/delete transaction), so a write on any
  replica wakes the waiters of every replica; a slow periodic check is only a safety net;
- SQLite: other processes may write the same file, so while anyone waits the stamp is re-read
  every `poll_interval` seconds (a one-row read).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool

from cfnet.core.logs import Logger

CHANNEL = "cfnet_policies"


class LastUpdatedWatch:
    def __init__(self, read: Callable[[], int], log: Logger, *, postgres_dsn: str = "",
                 poll_interval: float = 0.2, pg_safety_interval: float = 30.0) -> None:
        self._read = read  # blocking: the store's last_updated_ns
        self.log = log
        self.postgres_dsn = postgres_dsn
        self.poll_interval = pg_safety_interval if postgres_dsn else poll_interval
        self.latest = 0
        self.waiting = 0
        self.closing = False  # shutting down: waiters answer now instead of holding up exit
        self._event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _ensure(self) -> asyncio.Event:
        if self._event is None:
            self._event = asyncio.Event()
            self._loop = asyncio.get_running_loop()
        return self._event

    def publish(self, value: int) -> None:
        """Record a stamp seen anywhere; wakes every waiter when it is newer. Loop thread only."""
        event = self._ensure()
        if value > self.latest:
            self.latest = value
            self._event = asyncio.Event()
            event.set()

    async def refresh(self) -> int:
        """Read the stamp from the store and publish it."""
        value = await run_in_threadpool(self._read)
        self.publish(value)
        return value

    async def wait(self, since: int | None, timeout: float) -> int:
        """The stamp once it is newer than `since` (or, without `since`, than the stamp now), or the
        current stamp after `timeout` seconds."""
        self._ensure()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        current = await self.refresh()
        threshold = since if since is not None else current
        if current > threshold:
            return current
        self.waiting += 1
        try:
            while self.latest <= threshold and not self.closing:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                event = self._ensure()
                try:
                    await asyncio.wait_for(event.wait(), remaining)
                except TimeoutError:
                    break
            return self.latest if self.latest > threshold else await self.refresh()
        finally:
            self.waiting -= 1

    async def run(self) -> None:
        """Background task: the LISTEN connection (PostgreSQL) and the periodic check."""
        self._ensure()
        tasks = [asyncio.create_task(self._poll())]
        if self.postgres_dsn:
            tasks.append(asyncio.create_task(self._listen()))
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            self.close()

    def close(self) -> None:
        """Answer every waiting request now (at shutdown), with the stamp as it is."""
        self.closing = True
        if self._event is not None:
            self._event.set()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            if self.waiting:
                try:
                    await self.refresh()
                except Exception as e:  # noqa: BLE001 - a failed check must not end the watch
                    self.log.error("watch.check-failed", error=str(e))

    async def _listen(self) -> None:
        import psycopg

        backoff = 0.5
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.postgres_dsn, autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.log.info("watch.listening", channel=CHANNEL)
                    backoff = 0.5
                    await self.refresh()  # catch up with anything written while not listening
                    async for note in conn.notifies():
                        try:
                            self.publish(int(note.payload))
                        except ValueError:
                            await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - reconnect on any failure
                self.log.error("watch.listen-failed", error=str(e))
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)
