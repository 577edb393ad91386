"""`cfnet iptables-logger`: kernel packet-log lines as enriched JSON (spec dataplane 6.1).

nftables' `log prefix` writes the same `IN= OUT= MAC= SRC= ... MARK=` lines as iptables' LOG
target, and cfnet keeps upstream's `OK_`/`DENY_` prefixes (c2c-log, netout log chains, overlay
deny log), so this is upstream's iptables-logger: follow the kernel log from its end (reopening
it when rotated), and for each line with `OK_` or `DENY_` write one lager line

    {"timestamp": ..., "level": "info", "source": "cfnetworking.iptables",
     "message": "cfnetworking.iptables.ingress-allowed",
     "data": {"packet": {"direction", "allowed", "src_ip", "dst_ip", "src_port", "dst_port",
                         "protocol", "mark", "icmp_type", "icmp_code"},
              "destination": {"container_id", "app_guid", "space_guid", "organization_guid",
                              "host_ip", "host_guid"}}}

`direction` is ingress when the packet leaves on a container veth (`OUT=s-...`), else egress; the
container is looked up by DST (ingress) or SRC (egress) in the container-metadata datastore and
reported under `destination` or `source`. The output file is reopened when it disappears or is
replaced (checked every second), so logrotate works without a signal.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from cfnet.cni.datastore import Container, Datastore
from cfnet.core.config import load_config
from cfnet.core.errors import CfnetError, ConfigError

SOURCE = "cfnetworking.iptables"
REQUIRED = {"required": True}
_WORD = re.compile(r"\b([A-Z]+)=(\S*)")


@dataclass
class LoggerConfig:
    kernel_log_file: str = field(default="/var/log/kern.log", metadata=REQUIRED)
    container_metadata_file: str = field(default="", metadata=REQUIRED)
    output_log_file: str = field(default="", metadata=REQUIRED)
    metron_address: str = field(default="", metadata=REQUIRED)  # accepted; no dropsonde here
    host_ip: str = field(default="", metadata=REQUIRED)
    host_guid: str = field(default="", metadata=REQUIRED)
    log_timestamp_format: str = field(default="rfc3339",
                                      metadata={"choices": ("rfc3339", "deprecated")})
    poll_interval_ms: int = field(default=100, metadata={"min": 1})  # cfnet: tail poll period


def parse_line(line: str) -> dict[str, Any] | None:
    """The packet of one kernel log line, or None when it is not a cfnet packet log."""
    if "OK_" not in line and "DENY_" not in line:
        return None
    words: dict[str, str] = {}
    for key, value in _WORD.findall(line):
        words.setdefault(key, value)  # the first occurrence (an ICMP error quotes another header)

    def num(key: str) -> int:
        try:
            return int(words.get(key, "0"))
        except ValueError:
            return 0

    return {
        "direction": "ingress" if "s-" in words.get("OUT", "") else "egress",
        "allowed": "OK_" in line,
        "src_ip": words.get("SRC", ""),
        "dst_ip": words.get("DST", ""),
        "src_port": num("SPT"),
        "dst_port": num("DPT"),
        "protocol": words.get("PROTO", ""),
        "mark": words.get("MARK", ""),
        "icmp_type": num("TYPE"),
        "icmp_code": num("CODE"),
    }


def enrich(packet: dict[str, Any], by_ip: dict[str, Container], host_ip: str,
           host_guid: str) -> dict[str, Any]:
    ingress = packet["direction"] == "ingress"
    c = by_ip.get(packet["dst_ip"] if ingress else packet["src_ip"])
    who = {"container_id": c.handle if c else "", "app_guid": c.meta("app_id") if c else "",
           "space_guid": c.meta("space_id") if c else "",
           "organization_guid": c.meta("org_id") if c else "",
           "host_ip": host_ip, "host_guid": host_guid}
    return {"packet": packet, "destination" if ingress else "source": who}


def lager_line(event: str, data: dict[str, Any], fmt: str = "rfc3339",
               now: float | None = None) -> str:
    now = time.time() if now is None else now
    if fmt == "deprecated":
        line: dict[str, Any] = {"timestamp": f"{now:.9f}", "source": SOURCE,
                                "message": f"{SOURCE}.{event}", "log_level": 1, "data": data}
    else:
        stamp = datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="microseconds")
        line = {"timestamp": stamp.replace("+00:00", "Z"), "level": "info", "source": SOURCE,
                "message": f"{SOURCE}.{event}", "data": data}
    return json.dumps(line, separators=(",", ":"))


class Follower:
    """Lines appended to a file from now on; reopens (from the start) after a rotation."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._f: IO[str] = open(path, errors="replace")  # noqa: SIM115 - held while following
        self._f.seek(0, os.SEEK_END)
        self._partial = ""

    def lines(self) -> list[str]:
        out = []
        data = self._f.read()
        if data:
            data = self._partial + data
            *complete, self._partial = data.split("\n")
            out.extend(complete)
            return out
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return out  # rotated, the new file is not there yet
        mine = os.fstat(self._f.fileno())
        if (st.st_dev, st.st_ino) != (mine.st_dev, mine.st_ino) or st.st_size < self._f.tell():
            self._f.close()
            self._f = open(self.path, errors="replace")  # noqa: SIM115
            self._partial = ""
            return self.lines()
        return out

    def close(self) -> None:
        self._f.close()


class Sink:
    """Appends lines to a file, reopening it when it disappears or is replaced."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._f = self._open()
        self._checked = time.monotonic()

    def _open(self) -> IO[str]:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        return open(self.path, "a", buffering=1)  # noqa: SIM115 - line buffered, held

    def write(self, line: str) -> None:
        now = time.monotonic()
        if now - self._checked >= 1.0:
            self._checked = now
            try:
                st = os.stat(self.path)
                mine = os.fstat(self._f.fileno())
                stale = (st.st_dev, st.st_ino) != (mine.st_dev, mine.st_ino)
            except FileNotFoundError:
                stale = True
            if stale:
                self._f.close()
                self._f = self._open()
        self._f.write(line + "\n")

    def close(self) -> None:
        self._f.close()


def run(config_path: str | Path, stop: Any = None) -> int:
    """Follow the kernel log until SIGTERM/SIGINT (or `stop()` returns true)."""
    import signal

    try:
        cfg = load_config(config_path, LoggerConfig)
    except ConfigError as e:
        print(f"iptables-logger: {e}", file=sys.stderr, flush=True)
        return 1
    try:
        follower = Follower(cfg.kernel_log_file)
    except OSError as e:
        print(f"iptables-logger: open kernel log {cfg.kernel_log_file}: {e.strerror or e}",
              file=sys.stderr, flush=True)
        return 1
    stopped = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.append(True))
    store = Datastore(cfg.container_metadata_file)
    sink = Sink(cfg.output_log_file)
    by_ip: dict[str, Container] = {}
    version = None
    try:
        while not stopped and not (stop and stop()):
            lines = follower.lines()
            for line in lines:
                packet = parse_line(line)
                if packet is None:
                    continue
                try:
                    if store.version() != version:
                        version = store.version()
                        by_ip = {c.ip: c for c in store.read_all().values()}
                except CfnetError:
                    pass  # keep the last good view of the containers
                verdict = "allowed" if packet["allowed"] else "denied"
                sink.write(lager_line(f"{packet['direction']}-{verdict}",
                                      enrich(packet, by_ip, cfg.host_ip, cfg.host_guid),
                                      cfg.log_timestamp_format))
            if not lines:
                time.sleep(cfg.poll_interval_ms / 1000)
    finally:
        follower.close()
        sink.close()
    return 0
