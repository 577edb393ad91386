"""The stale-policy cleaner (spec 7): deletes policies whose apps Cloud Controller no longer knows.

It runs every `cleanup_interval` seconds inside every external server (deletes are idempotent, so
replicas need no lock) and synchronously for E8. A failed cycle is logged and the loop goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool

from cfnet.core.errors import StoreError
from cfnet.core.logs import Logger
from cfnet.core.policy import Policy, policy_to_v1
from cfnet.policy_server.cc import APP_CHUNK, CloudController
from cfnet.policy_server.metrics import Metrics
from cfnet.policy_server.uaa import UpstreamError


class CleanupError(Exception):
    pass


class StaleCleaner:
    def __init__(self, store: Any, cc: CloudController | None, token_source: Callable[[], str],
                 metrics: Metrics, log: Logger) -> None:
        self.store = store
        self.cc = cc
        self.token_source = token_source
        self.metrics = metrics
        self.log = log

    def run_once(self) -> list[Policy]:
        """Delete the stale policies; returns them. Blocking; raises CleanupError."""
        if self.cc is None:  # standalone mode: nothing tells us an app is gone
            return []
        try:
            with self.metrics.store_op("All"):
                policies = [tp.policy for tp in self.store.all()]
        except StoreError as e:
            raise CleanupError(f"database read failed for c2c policies: {e}") from None
        try:
            token = self.token_source()
        except UpstreamError as e:
            raise CleanupError(f"get UAA token failed: {e}") from None
        guids = list(dict.fromkeys(g for p in policies for g in (p.source, p.destination)))
        stale: set[str] = set()
        try:
            for i in range(0, len(guids), APP_CHUNK):
                chunk = guids[i:i + APP_CHUNK]
                live = self.cc.app_spaces(chunk, token)
                stale.update(g for g in chunk if g not in live)
        except UpstreamError as e:
            raise CleanupError(f"get app guids from Cloud-Controller failed: {e}") from None
        doomed = [p for p in policies if p.source in stale or p.destination in stale]
        if doomed:
            self.log.info("deleting stale policies:",
                          stale_policies=[policy_to_v1(p) for p in doomed])
            try:
                with self.metrics.store_op("Delete"):
                    self.store.delete(doomed)
            except StoreError as e:
                raise CleanupError(f"database write failed: {e}") from None
            self.metrics.cleaner_deleted.inc(len(doomed))
        return doomed

    async def loop(self, interval: float, on_change: Callable[[], Awaitable[Any]]) -> None:
        """Every `interval` seconds (the first run after one interval, as upstream)."""
        while True:
            await asyncio.sleep(interval)
            try:
                deleted = await run_in_threadpool(self.run_once)
                if deleted:
                    await on_change()
            except Exception as e:  # noqa: BLE001 - log and keep polling, as upstream
                self.log.error("poll-cycle", error=str(e))
