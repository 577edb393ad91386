"""The ASG syncer (spec 6.1): mirrors Cloud Controller's security groups into the store.

Every `asg_poll_interval_seconds` (the first poll after one interval, as upstream): ask CC's
internal mTLS API for `asg_latest_update`; when it moved (or is zero), read every page of
`/v3/security_groups`, re-reading `last_update` after each page so a list that changed while we
read it is retried (3 attempts), then replace the stored groups in one transaction.

Deviation (documented): upstream exits on any poll error and relies on monit to restart it. Here
an error is logged and the next poll comes after a growing back-off (1 s doubling, capped at the
poll interval); the syncer never exits on its own. Run one syncer per deployment: two would both
write the same data (harmless, but wasteful); nothing enforces a single one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from starlette.concurrency import run_in_threadpool

from cfnet.core.logs import Logger
from cfnet.core.security_groups import SecurityGroup, rules_json
from cfnet.policy_server.cc import CloudController
from cfnet.policy_server.metrics import Metrics

ATTEMPTS = 3


class SyncError(Exception):
    pass


def parse_cc_time(text: str) -> datetime | None:
    """RFC 3339 from CC; None for the zero time (CC's 404, or Go's zero value)."""
    if not text or text.startswith("0001-01-01"):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SyncError(f"asg_latest_update: bad time {text!r}") from None


def _spaces(resource: dict[str, Any], rel: str) -> tuple[str, ...]:
    data = ((resource.get("relationships") or {}).get(rel) or {}).get("data") or []
    out = []
    for entry in data:
        guid = entry.get("guid") if isinstance(entry, dict) else None
        if not isinstance(guid, str):
            raise SyncError(f"security group {resource.get('guid')!r}: {rel} entry without guid")
        out.append(guid)
    return tuple(out)


def to_security_group(resource: Any) -> SecurityGroup:
    """A `/v3/security_groups` resource as stored (spec 6.1 step 5)."""
    if not isinstance(resource, dict):
        raise SyncError("security group is not an object")
    guid, name = resource.get("guid"), resource.get("name")
    if not isinstance(guid, str) or not guid or not isinstance(name, str):
        raise SyncError(f"security group without guid or name: {str(resource)[:200]}")
    enabled = resource.get("globally_enabled") or {}
    try:
        rules = rules_json(resource.get("rules"))
    except (ValueError, AttributeError, TypeError) as e:
        raise SyncError(f"security group {guid!r}: {e}") from None
    return SecurityGroup(guid=guid, name=name, rules=rules,
                         staging_default=bool(enabled.get("staging")),
                         running_default=bool(enabled.get("running")),
                         staging_spaces=_spaces(resource, "staging_spaces"),
                         running_spaces=_spaces(resource, "running_spaces"))


class AsgSyncer:
    def __init__(self, store: Any, cc: CloudController, cc_internal: CloudController,
                 token_source: Callable[[], str], metrics: Metrics, log: Logger,
                 interval: float) -> None:
        self.store = store
        self.cc = cc
        self.cc_internal = cc_internal
        self.token_source = token_source
        self.metrics = metrics
        self.log = log
        self.interval = interval
        self.remembered: datetime | None = None
        self.synced = 0  # completed syncs, for tests and logs

    def _fetch(self, token: str) -> list[dict[str, Any]]:
        last_error = ""
        for _ in range(ATTEMPTS):
            before = self.cc_internal.asg_latest_update(token)
            resources: list[dict[str, Any]] = []
            page, stable = 1, True
            while True:
                items, has_next = self.cc.security_groups_page(page, token)
                after = self.cc_internal.asg_latest_update(token)
                if items is None:
                    break
                if after != before:
                    stable = False
                    break
                resources.extend(items)
                if not has_next:
                    break
                page += 1
            if stable:
                return resources
            last_error = "security groups changed while they were read"
        raise SyncError(f"Ran out of retry attempts. Last error was: {last_error}")

    def poll(self) -> bool:
        """One cycle; True when the store was replaced. Blocking; raises SyncError/UpstreamError/
        StoreError."""
        start = time.perf_counter()
        token = self.token_source()
        latest = parse_cc_time(self.cc_internal.asg_latest_update(token))
        if latest is not None and self.remembered is not None and latest <= self.remembered:
            return False
        with self.metrics.asg_retrieval.time():
            resources = self._fetch(token)
        groups = [to_security_group(r) for r in resources]
        with self.metrics.store_op("SecurityGroupsReplace"):
            self.store.replace_security_groups(groups)
        self.remembered = latest
        self.synced += 1
        self.metrics.asg_sync.observe(time.perf_counter() - start)
        self.log.info("asg-sync.done", security_groups=len(groups),
                      duration_s=round(time.perf_counter() - start, 3))
        return True

    async def run(self) -> None:
        delay = self.interval
        backoff = 1.0
        while True:
            await asyncio.sleep(delay)
            try:
                await run_in_threadpool(self.poll)
                delay, backoff = self.interval, 1.0
            except Exception as e:  # noqa: BLE001 - log, back off, keep running (see module doc)
                self.metrics.asg_sync_failures.inc()
                delay = min(backoff, self.interval)
                backoff = min(backoff * 2, self.interval)
                self.log.error("asg-sync.failed", error=str(e), retry_in_s=delay)
