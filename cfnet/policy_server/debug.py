"""The debug listener (spec 1.3): the shared one (cfnet/web/debug.py) over the server's metrics."""

from __future__ import annotations

from collections.abc import Callable

from cfnet.core.logs import Logger
from cfnet.policy_server.metrics import Metrics
from cfnet.web import debug
from cfnet.web.router import Router

CONTENT_TYPE_PROMETHEUS = debug.CONTENT_TYPE_PROMETHEUS


def debug_app(metrics: Metrics, set_level: Callable[[str], None],
              log: Logger | None = None) -> Router:
    return debug.debug_app(set_level, log, metrics.render)
