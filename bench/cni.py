"""Benchmark: ADD+DEL of `cfnet cni silk` against Debian's Go plugins (bridge + host-local).

    .venv/bin/python bench/cni.py [--iterations 40]

A one-cell Silk deployment (real controller and silk-daemon, in namespaces of a Sandbox) is the
cell. The measuring loop runs inside the cell's namespace, as a container runtime does, and execs
each plugin with CNI_* environment and its config on stdin: silk through a `silk-cni` symlink to
the `cfnet` executable in CNI_PATH, and /usr/lib/cni/bridge (which execs host-local) on a bridge
in the same cell. Each iteration makes a fresh container namespace per plugin (not timed: the
runtime makes it), then times ADD and DEL; the plugins alternate so that noise hits both alike.
A third row times the silk plugin called in-process (`cfnet.cni.plugin.invoke`), which is what
garden-hook pays instead of an exec. Printed: p50/p95 in ms and the ratios silk/bridge.
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
GO_PLUGINS = "/usr/lib/cni"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def exec_plugin(binary: str, command: str, cid: str, ns_path: str, conf: dict[str, Any],
                cni_path: str) -> float:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command,
           "CNI_CONTAINERID": cid, "CNI_NETNS": ns_path, "CNI_IFNAME": "eth0",
           "CNI_PATH": cni_path, "CFNET_CNI_LOG": "off"}
    start = time.perf_counter()
    proc = subprocess.run([binary], input=json.dumps(conf).encode(), env=env,
                          capture_output=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{binary} {command} failed: {proc.stdout.decode()} {proc.stderr.decode()}")
    return elapsed


def inner(args: argparse.Namespace) -> None:
    """The measuring loop; runs inside the cell's namespace."""
    from cfnet.cni.plugin import invoke
    from cfnet.cni.types import CmdArgs
    from cfnet.net import netns
    from cfnet.silk.cni import SilkPlugin

    work = Path(args.work)
    bin_dir = work / "bin"
    silk_conf = {"cniVersion": "1.0.0", "name": "silk", "type": "silk-cni", "daemonPort": 23954,
                 "dataDir": str(work / "host-local"), "datastore": str(work / "store.json"),
                 "mtu": 0}
    bridge_conf = {"cniVersion": "1.0.0", "name": "bench-bridge", "type": "bridge",
                   "bridge": "cni-bench", "isGateway": True, "ipMasq": False,
                   "ipam": {"type": "host-local", "subnet": "10.99.0.0/24",
                            "dataDir": str(work / "bridge-ipam")}}
    rows: dict[str, dict[str, list[float]]] = {
        k: {"add": [], "del": [], "total": []} for k in ("silk", "bridge", "silk-inproc")}
    plugin = SilkPlugin()
    for i in range(args.iterations + args.warmup):
        for kind in ("silk", "bridge", "silk-inproc"):
            ns = f"{args.prefix}-b{kind[0]}{kind[-1]}{i}"
            netns.create(ns)
            try:
                path = netns.path(ns)
                cid = f"bench-{kind}-{i}"
                if kind == "silk-inproc":
                    t0 = time.perf_counter()
                    invoke(plugin, "ADD", dict(silk_conf),
                           CmdArgs("ADD", container_id=cid, netns=path, ifname="eth0"))
                    t1 = time.perf_counter()
                    invoke(plugin, "DEL", dict(silk_conf),
                           CmdArgs("DEL", container_id=cid, netns=path, ifname="eth0"))
                    add, delete = t1 - t0, time.perf_counter() - t1
                elif kind == "silk":
                    cni_path = f"{bin_dir}:{GO_PLUGINS}"
                    add = exec_plugin(str(bin_dir / "silk-cni"), "ADD", cid, path, silk_conf,
                                      cni_path)
                    delete = exec_plugin(str(bin_dir / "silk-cni"), "DEL", cid, path, silk_conf,
                                         cni_path)
                else:
                    add = exec_plugin(f"{GO_PLUGINS}/bridge", "ADD", cid, path, bridge_conf,
                                      GO_PLUGINS)
                    delete = exec_plugin(f"{GO_PLUGINS}/bridge", "DEL", cid, path, bridge_conf,
                                         GO_PLUGINS)
            finally:
                netns.remove(ns)
            if i >= args.warmup:
                rows[kind]["add"].append(add * 1000)
                rows[kind]["del"].append(delete * 1000)
                rows[kind]["total"].append((add + delete) * 1000)
    print(json.dumps(rows))


def outer(args: argparse.Namespace) -> None:
    from cfnet.net import netns
    from cfnet.testing.netns import Sandbox
    from cfnet.testing.silk import silk_deployment

    if not Path(GO_PLUGINS, "bridge").exists():
        raise SystemExit(f"needs Debian's containernetworking-plugins in {GO_PLUGINS}")
    with tempfile.TemporaryDirectory(prefix="cfnet-bench-cni-") as tmp:
        work = Path(tmp)
        (work / "bin").mkdir()
        (work / "bin" / "silk-cni").symlink_to(Path(sys.executable).with_name("cfnet"))
        with Sandbox("bcni") as box, silk_deployment(box.topology(), work / "silk", cells=1) as silk:
            cell = next(iter(silk.cells.values()))
            proc = netns.run(cell.ns, [sys.executable, __file__, "--inner", "--work", str(work),
                                       "--prefix", box.prefix, "--iterations",
                                       str(args.iterations), "--warmup", str(args.warmup)],
                             timeout=3600)
            rows = json.loads(proc.stdout.strip().splitlines()[-1])
    kernel = os.uname().release
    print(f"CNI ADD+DEL, {args.iterations} iterations each (+{args.warmup} warm-up), "
          f"nproc {os.cpu_count()}, kernel {kernel}, {time.strftime('%Y-%m-%d')}")
    print(f"{'plugin':<34} {'ADD p50':>8} {'ADD p95':>8} {'DEL p50':>8} {'DEL p95':>8} "
          f"{'A+D p50':>8} {'A+D p95':>8}")
    labels = {"silk": "cfnet cni silk (exec)", "bridge": "bridge + host-local (Go, exec)",
              "silk-inproc": "cfnet silk in-process (garden-hook)"}
    for kind, label in labels.items():
        r = rows[kind]
        print(f"{label:<34} {statistics.median(r['add']):8.1f} {pct(r['add'], 95):8.1f} "
              f"{statistics.median(r['del']):8.1f} {pct(r['del'], 95):8.1f} "
              f"{statistics.median(r['total']):8.1f} {pct(r['total'], 95):8.1f}")
    for kind in ("silk", "silk-inproc"):
        p50 = statistics.median(rows[kind]["total"]) / statistics.median(rows["bridge"]["total"])
        p95 = pct(rows[kind]["total"], 95) / pct(rows["bridge"]["total"], 95)
        print(f"ratio {labels[kind]} / bridge: ADD+DEL p50 {p50:.2f}x, p95 {p95:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    (inner if args.inner else outer)(args)


if __name__ == "__main__":
    main()
