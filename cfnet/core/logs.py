"""JSON log lines in the lager shape CF operators grep for.

Each line: {"timestamp": RFC 3339, "level": "info", "source": "cfnetworking.policy-server",
"message": "cfnetworking.policy-server.created-policies", "data": {...}}. The `message` is
`<source>.<event>`, so `grep created-policies` works as it does upstream.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "error": logging.ERROR, "fatal": logging.CRITICAL}
# Upstream's /log-level accepts these spellings (lager).
LEVEL_ALIASES = {
    "debug": "debug", "d": "debug", "0": "debug",
    "info": "info", "i": "info", "1": "info",
    "error": "error", "e": "error", "2": "error",
    "fatal": "fatal", "f": "fatal", "3": "fatal",
}
_LEVEL_NAMES = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "info",
                logging.ERROR: "error", logging.CRITICAL: "fatal"}


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = dict(getattr(record, "data", None) or {})
        if record.exc_info and record.exc_info[1] is not None:
            data.setdefault("error", str(record.exc_info[1]))
        line = {
            "timestamp": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="microseconds").replace("+00:00", "Z"),
            "level": _LEVEL_NAMES.get(record.levelno, "info"),
            "source": record.name,
            "message": f"{record.name}.{record.getMessage()}",
            "data": data,
        }
        return json.dumps(line, default=str, separators=(",", ":"))


class Logger:
    """A thin wrapper: `log.info("event", key=value)` writes one JSON line."""

    def __init__(self, source: str) -> None:
        self._logger = logging.getLogger(source)
        self.source = source

    def _log(self, level: int, event: str, data: dict[str, Any], exc: bool = False) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, extra={"data": data}, exc_info=exc)

    def debug(self, event: str, **data: Any) -> None:
        self._log(logging.DEBUG, event, data)

    def info(self, event: str, **data: Any) -> None:
        self._log(logging.INFO, event, data)

    def error(self, event: str, **data: Any) -> None:
        self._log(logging.ERROR, event, data)

    def exception(self, event: str, **data: Any) -> None:
        self._log(logging.ERROR, event, data, exc=True)

    def set_level(self, level: str) -> None:
        self._logger.setLevel(LEVELS[level])


def setup_logging(source: str, level: str = "info", stream: TextIO | None = None) -> Logger:
    """Send the JSON lines of `source` (and its children) to `stream` (stdout by default)."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JSONFormatter())
    logger = logging.getLogger(source)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(LEVELS[level])
    return Logger(source)


def get_logger(source: str) -> Logger:
    return Logger(source)


def parse_level(text: str) -> str | None:
    """The canonical level for an upstream /log-level body, or None for an unknown one."""
    return LEVEL_ALIASES.get(text.strip().lower())
