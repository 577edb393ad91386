"""Benchmark: `cfnet garden-hook up` + `down` with one port mapping, cfnet's chain against Debian's.

    .venv/bin/python bench/garden_hook.py [--iterations 40] [--warmup 3]

One Silk cell (real silk-controller and silk-daemon in namespaces of a Sandbox). The hook is run
as Garden runs it: the `cfnet` executable with `--configFile --action --handle`, Garden's JSON on
stdin, the container's namespace as fd 3, entered into the cell's network namespace. Three
adapter.json files differ only in their CNI config dir:

- cfnet, silk only: the silk-cni plugin (called in-process by the hook);
- cfnet, real chain: cni-wrapper-plugin (port mapping DNAT, netout, metadata store: one nft
  transaction) delegating to silk-cni, both in-process; no policy agent listens, so the wrapper
  takes its static-netout path (the agent's address refuses at once);
- Debian: bridge + host-local + portmap from containernetworking-plugins (exec'd, /usr/lib/cni).

Each iteration makes a fresh container namespace per chain (not timed: Garden makes it), then
times `up` and `down` (whole processes). The chains rotate so that noise hits all alike.
The hook runs with cached bytecode, as an installed package does (a PYTHONDONTWRITEBYTECODE in the
environment is dropped for it; the cache goes to a temporary PYTHONPYCACHEPREFIX, filled during
the warm-up), since compiling cfnet's modules on every start is not what a cell pays.
Printed: p50/p95 of up, down and up+down in ms, and the ratios of both cfnet chains to Debian's
(target <= 1.5x, aim 1.0x).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
GO_PLUGINS = Path("/usr/lib/cni")
CFNET = str(Path(sys.executable).with_name("cfnet"))


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def write_chain(work: Path, kind: str, cell: Any) -> Path:
    """An adapter.json for one chain; returns its path."""
    d = work / kind
    (d / "net.d").mkdir(parents=True)
    silk: dict[str, Any] = {"type": "silk-cni", "daemonPort": 23954, "dataDir": str(d / "ipam"),
                            "datastore": str(d / "store.json"), "mtu": 0}
    if kind == "cfnet":
        plugins: list[dict[str, Any]] = [silk]
    elif kind == "wrapper":
        # cfnet's real chain: the CF wrapper (netin DNAT, netout, metadata store, one nft
        # transaction) delegating to silk, both in-process. No policy agent listens on the
        # force-poll address (connection refused at once), so the wrapper writes the static
        # netout rules itself: its slowest ADD path.
        plugins = [{
            "type": "cni-wrapper-plugin", "datastore": str(d / "metadata.json"),
            "iptables_lock_file": str(d / "iptables.lock"),
            "instance_address": cell.underlay_ip, "underlay_ips": [cell.underlay_ip],
            "no_masquerade_cidr_range": "10.255.0.0/16", "dns_servers": [],
            "host_tcp_services": [], "host_udp_services": [],
            "deny_networks": {"always": [], "running": [], "staging": []},
            "ingress_tag": "ffff0000", "vtep_name": "silk-vtep",
            "policy_agent_force_poll_address": "127.0.0.1:8722",
            "policy_agent_timeout_seconds": 2,
            "delegate": {"cniVersion": "1.0.0", "name": "silk", **silk}}]
    else:
        plugins = [
            {"type": "bridge", "bridge": "cni-bench", "isGateway": True, "isDefaultGateway": True,
             "ipMasq": False,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.98.0.0/24"}]],
                      "dataDir": str(d / "ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": True}}]
    (d / "net.d" / "10-bench.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": f"bench-{kind}", "plugins": plugins}))
    adapter = {
        "cni_plugin_dir": str(GO_PLUGINS), "cni_config_dir": str(d / "net.d"),
        "bind_mount_dir": str(d / "netns"), "state_file": str(d / "ports.json"),
        "start_port": 61000, "total_ports": 5000, "log_prefix": "cfnetworking",
        "iptables_lock_file": str(d / "iptables.lock"), "proxy_port": 15001, "proxy_uid": 0,
        "cni_cache_dir": str(d / "cache")}
    path = d / "adapter.json"
    path.write_text(json.dumps(adapter))
    return path


def run_hook(cell_ns: str, adapter: Path, action: str, handle: str,
             container_path: str | None, env: dict[str, str]) -> float:
    from cfnet.net import netns

    argv = ["nsenter", f"--net={netns.path(cell_ns)}", CFNET, "garden-hook",
            f"--configFile={adapter}", "--action", action, "--handle", handle]
    stdin = json.dumps({"Pid": 0, "Properties": {"app_id": "bench"},
                        "netin": [{"host_port": 0, "container_port": 8080}]}) if action == "up" \
        else "null"
    fd = os.open(container_path, os.O_RDONLY) if container_path else None
    try:
        start = time.perf_counter()
        proc = subprocess.run(argv, input=stdin.encode(), capture_output=True, env=env,
                              pass_fds=(fd, 3) if fd is not None else (),
                              preexec_fn=(lambda: os.dup2(fd, 3)) if fd is not None else None)
        elapsed = time.perf_counter() - start
    finally:
        if fd is not None:
            os.close(fd)
    if proc.returncode != 0:
        raise SystemExit(f"{action} {handle} failed: {proc.stderr.decode().strip()}")
    return elapsed


def detach_mounts(root: Path) -> None:
    import ctypes

    libc = ctypes.CDLL(None)
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f if line.split()[4].startswith(str(root))]
    for point in reversed(points):
        libc.umount2(point.encode(), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    if not (GO_PLUGINS / "bridge").exists():
        raise SystemExit(f"needs Debian's containernetworking-plugins in {GO_PLUGINS}")
    from cfnet.net import netns
    from cfnet.testing.netns import Sandbox
    from cfnet.testing.silk import silk_deployment

    kinds = ("cfnet", "wrapper", "debian")
    rows: dict[str, dict[str, list[float]]] = {
        k: {"up": [], "down": [], "total": []} for k in kinds}
    with tempfile.TemporaryDirectory(prefix="cfnet-bench-gh-") as tmp:
        work = Path(tmp)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
        try:
            with Sandbox("bgh") as box, \
                    silk_deployment(box.topology(), work / "silk", cells=1) as silk:
                cell = next(iter(silk.cells.values()))
                adapters = {k: write_chain(work, k, cell) for k in kinds}
                for i in range(args.iterations + args.warmup):
                    for kind in kinds[i % 3:] + kinds[:i % 3]:  # rotate the order
                        ns = box.netns(f"{kind[0]}{i}")
                        handle = f"bench-{kind}-{i}"
                        try:
                            up = run_hook(cell.ns, adapters[kind], "up", handle,
                                          netns.path(ns), env)
                            down = run_hook(cell.ns, adapters[kind], "down", handle, None, env)
                        finally:
                            netns.remove(ns)
                        if i >= args.warmup:
                            rows[kind]["up"].append(up * 1000)
                            rows[kind]["down"].append(down * 1000)
                            rows[kind]["total"].append((up + down) * 1000)
        finally:
            detach_mounts(work)
    print(f"garden-hook up+down (one port mapping), {args.iterations} iterations each "
          f"(+{args.warmup} warm-up), nproc {os.cpu_count()}, kernel {os.uname().release}, "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"{'chain':<42} {'up p50':>7} {'up p95':>7} {'dn p50':>7} {'dn p95':>7} "
          f"{'u+d p50':>8} {'u+d p95':>8}")
    labels = {"cfnet": "cfnet: silk only (in-process)",
              "wrapper": "cfnet: wrapper -> silk (in-process)",
              "debian": "Debian: bridge + host-local + portmap (Go)"}
    for kind, label in labels.items():
        r = rows[kind]
        print(f"{label:<42} {statistics.median(r['up']):7.1f} {pct(r['up'], 95):7.1f} "
              f"{statistics.median(r['down']):7.1f} {pct(r['down'], 95):7.1f} "
              f"{statistics.median(r['total']):8.1f} {pct(r['total'], 95):8.1f}")
    for kind in ("wrapper", "cfnet"):
        d = rows["debian"]
        p50 = statistics.median(rows[kind]["total"]) / statistics.median(d["total"])
        p95 = pct(rows[kind]["total"], 95) / pct(d["total"], 95)
        up = statistics.median(rows[kind]["up"]) / statistics.median(d["up"])
        down = statistics.median(rows[kind]["down"]) / statistics.median(d["down"])
        print(f"ratio {labels[kind]} / Debian: up+down p50 {p50:.2f}x, p95 {p95:.2f}x "
              f"(up p50 {up:.2f}x, down p50 {down:.2f}x; target <= 1.5x)")


if __name__ == "__main__":
    main()
