"""`cfnet iptables-logger`: parsing, enrichment, a rotated kernel log, a reopened output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cfnet.agent.iptables_logger import enrich, lager_line, parse_line
from cfnet.cni.datastore import Container, Datastore

INGRESS = ("Dec  3 17:00:00 cell1 kernel: [ 812.345] OK_0001_app-b IN=silk-vtep "
           "OUT=s-010255002002 MAC=ee:ee:0a:ff:02:00 SRC=10.255.1.2 DST=10.255.2.2 LEN=60 "
           "TOS=0x00 PREC=0x00 TTL=63 ID=4660 DF PROTO=TCP SPT=40000 DPT=8080 WINDOW=64240 "
           "RES=0x00 SYN URGP=0 MARK=0x1")
EGRESS_DENY = ("Dec  3 17:00:01 cell1 kernel: [ 813.000] DENY_handle-a IN=s-010255001002 "
               "OUT=eth0 SRC=10.255.1.2 DST=8.8.8.8 LEN=84 TOS=0x00 PREC=0x00 TTL=63 ID=1 DF "
               "PROTO=ICMP TYPE=8 CODE=0 ID=7 SEQ=1")
CONTAINERS = {
    "10.255.2.2": Container("handle-b", "10.255.2.2", {"app_id": "app-b", "space_id": "space-b",
                                                       "org_id": "org-b"}),
    "10.255.1.2": Container("handle-a", "10.255.1.2", {"app_id": "app-a", "space_id": "space-a",
                                                       "org_id": "org-a"}),
}


def test_parse_and_enrich_ingress_allowed() -> None:
    packet = parse_line(INGRESS)
    assert packet == {"direction": "ingress", "allowed": True, "src_ip": "10.255.1.2",
                      "dst_ip": "10.255.2.2", "src_port": 40000, "dst_port": 8080,
                      "protocol": "TCP", "mark": "0x1", "icmp_type": 0, "icmp_code": 0}
    data = enrich(packet, CONTAINERS, "10.0.0.5", "cell-guid")
    assert data["destination"] == {"container_id": "handle-b", "app_guid": "app-b",
                                   "space_guid": "space-b", "organization_guid": "org-b",
                                   "host_ip": "10.0.0.5", "host_guid": "cell-guid"}
    line = json.loads(lager_line("ingress-allowed", data, now=0))
    assert line == {"timestamp": "1970-01-01T00:00:00.000000Z", "level": "info",
                    "source": "cfnetworking.iptables",
                    "message": "cfnetworking.iptables.ingress-allowed", "data": data}
    old = json.loads(lager_line("ingress-allowed", data, "deprecated", now=1.5))
    assert old["timestamp"] == "1.500000000" and old["log_level"] == 1


def test_parse_egress_denied_icmp_and_unknown_container() -> None:
    packet = parse_line(EGRESS_DENY)
    assert packet is not None
    assert (packet["direction"], packet["allowed"], packet["icmp_type"], packet["mark"]) == (
        "egress", False, 8, "")
    assert enrich(packet, {}, "h", "g")["source"]["container_id"] == ""
    assert parse_line("Dec  3 kernel: something else SRC=1.2.3.4") is None


def wait_lines(path: Path, n: int, timeout: float = 20) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    lines: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        if path.exists():
            lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            if len(lines) >= n:
                return lines
        time.sleep(0.05)
    raise AssertionError(f"{path}: {len(lines)} lines, wanted {n}")


def test_follows_from_the_end_through_rotation_and_reopens_its_output(tmp_path: Path) -> None:
    kern, out = tmp_path / "kern.log", tmp_path / "out" / "iptables.log"
    kern.write_text(INGRESS + "\n")  # before start: not reported
    store = Datastore(str(tmp_path / "store.json"))
    for c in CONTAINERS.values():
        store.add(c.handle, c.ip, c.metadata)
    cfg = tmp_path / "logger.json"
    cfg.write_text(json.dumps({"kernel_log_file": str(kern), "container_metadata_file": store.path,
                               "output_log_file": str(out), "metron_address": "127.0.0.1:3457",
                               "host_ip": "10.0.0.5", "host_guid": "cell-guid",
                               "poll_interval_ms": 20}))
    proc = subprocess.Popen([sys.executable, "-m", "cfnet", "iptables-logger", "--config-file",
                             str(cfg)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not (out.exists() and out.stat().st_size) and time.monotonic() < deadline:
            with kern.open("a") as f:  # keep appending until the first line is reported
                f.write(EGRESS_DENY + "\n")
            time.sleep(0.1)
        first = wait_lines(out, 1)
        assert first[0]["message"] == "cfnetworking.iptables.egress-denied"
        assert first[0]["data"]["source"]["app_guid"] == "app-a"
        assert all(l["message"] != "cfnetworking.iptables.ingress-allowed" for l in first)

        os.rename(kern, tmp_path / "kern.log.1")  # logrotate
        kern.write_text(INGRESS + "\n")
        lines = wait_lines(out, len(first) + 1)
        assert lines[-1]["message"] == "cfnetworking.iptables.ingress-allowed"

        out.unlink()  # the sink reopens a deleted output file
        deadline = time.monotonic() + 20
        while not out.exists() and time.monotonic() < deadline:
            with kern.open("a") as f:
                f.write(INGRESS + "\n")
            time.sleep(0.2)
        assert wait_lines(out, 1)[-1]["data"]["destination"]["container_id"] == "handle-b"
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.returncode == 0


@pytest.mark.parametrize("change, message", [
    ({"host_ip": ""}, "key 'host_ip' must not be empty"),
    ({"kernel_log_file": "/nonexistent/kern.log"}, "open kernel log /nonexistent/kern.log"),
])
def test_bad_config_or_missing_kernel_log(tmp_path: Path, change: dict, message: str) -> None:
    kern = tmp_path / "kern.log"
    kern.write_text("")
    cfg = tmp_path / "logger.json"
    cfg.write_text(json.dumps({"kernel_log_file": str(kern), "container_metadata_file": "/x/s",
                               "output_log_file": str(tmp_path / "o"), "metron_address": "m",
                               "host_ip": "1.2.3.4", "host_guid": "g", **change}))
    proc = subprocess.run([sys.executable, "-m", "cfnet", "iptables-logger", "--config-file",
                           str(cfg)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert message in proc.stderr and proc.stderr.count("\n") == 1
