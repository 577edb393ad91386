"""Policy propagation: from the policy API's 200 to the first allowed packet across two cells.

    sudo .venv/bin/python bench/propagation.py [--samples 40] [--poll-samples 5]

Builds a two-cell lab in throw-away namespaces (Silk controller and daemons, a real policy
server in the control-plane host, a real `cfnet vxlan-agent` per cell), one source container on
cell 1 and one destination container on cell 2 with listeners on a range of ports. For each
sample a new policy (source app -> destination app, a port not yet allowed) is created through
the external API; the time of its 200 is taken, and a prober inside the source container, which
has been trying to connect to that port every 2 ms (each attempt is rejected at once until the
destination cell allows it), reports the time of its first successful connection. Both use
CLOCK_MONOTONIC, which is the same in every network namespace.

Anchor: upstream's agent polls `policies_last_updated` every 5 s (`poll_interval`), so its
propagation is up to 5 s plus a cycle; the ratio printed is our p99 / 5 s. With
`--poll-samples N` the same measurement is repeated with the agents polling (watch off,
poll_interval 5, no jitter), as upstream does, for a measured anchor.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import machine, percentile  # noqa: E402

PROBER = r"""
import socket, sys, time
ip = sys.argv[1]
for line in sys.stdin:
    port = int(line)
    while True:
        s = socket.socket(); s.settimeout(0.2)
        try:
            s.connect((ip, port)); s.close(); break
        except OSError:
            s.close(); time.sleep(0.002)
    print(time.monotonic(), flush=True)
"""


def measure(silk: object, ps: object, src: object, dst: object, ports: list[int],
            spread: float = 0.0) -> list[float]:
    """Propagation delays; `spread`: a random pause (0..spread s) before each policy, so a
    polling agent is caught at a random point of its interval."""
    from cfnet.clients.policy_api import make_policy
    from cfnet.net import netns
    from cfnet.testing import agent as ta

    create = ta.policy_client(silk, ps)
    prober = subprocess.Popen(netns.exec_argv(src.ns, [sys.executable, "-c", PROBER, dst.ip]),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    out = []
    try:
        assert prober.stdin and prober.stdout
        for port in ports:
            prober.stdin.write(f"{port}\n")
            prober.stdin.flush()
            time.sleep(0.05 + random.uniform(0, spread))  # the prober is being rejected
            p = make_policy("bench-src", "bench-dst", "tcp", str(port))
            done = create(lambda c: (c.create([p]), time.monotonic())[1])
            first = float(prober.stdout.readline())
            out.append(first - done)
    finally:
        prober.kill()
        prober.wait()
    return out


def report(name: str, values: list[float]) -> tuple[float, float]:
    p50, p99 = percentile(values, 50), percentile(values, 99)
    print(f"{name}: n={len(values)} p50 {p50 * 1000:.0f} ms  p99 {p99 * 1000:.0f} ms  "
          f"max {max(values) * 1000:.0f} ms  min {min(values) * 1000:.0f} ms")
    return p50, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--poll-samples", type=int, default=5)
    args = parser.parse_args()

    from cfnet.testing import agent as ta
    from cfnet.testing.netns import Sandbox
    from cfnet.testing.silk import silk_deployment

    work = Path(tempfile.mkdtemp(prefix="cfnet-bench-prop-"))
    total = args.samples + args.poll_samples
    ports = list(range(30000, 30000 + total))
    print(machine())
    try:
        with Sandbox("bp") as box, silk_deployment(box.topology(), work, cells=2) as silk:
            silk.wait_converged()
            ps = ta.start_policy_server_in(silk, work / "ps")
            agents = []
            try:
                for name in ("cell1", "cell2"):
                    agents.append(ta.start_agent(silk.cells[name], work / name, ps,
                                                 log_level="info", policy_watch_seconds=30))
                src = ta.Containers(box, agents[0]).add("bench-src", app_id="bench-src")
                dst = ta.Containers(box, agents[1]).add("bench-dst", app_id="bench-dst")
                server = ta.serve(dst, *(f"tcp:{p}" for p in ports))
                try:
                    watch = measure(silk, ps, src, dst, ports[:args.samples])
                    _, p99 = report("watch (cfnet default)", watch)
                    print(f"p99 / upstream poll interval (5 s): {p99 / 5:.3f}x")
                    if args.poll_samples:
                        for a in agents:
                            a.stop()
                            a.write_config(policy_watch=False, poll_interval=5, poll_jitter=0.0)
                            a.start()
                        polled = measure(silk, ps, src, dst, ports[args.samples:], spread=5.0)
                        _, pp99 = report("polling every 5 s (upstream's contract)", polled)
                        print(f"watch p99 / measured polling p99: {p99 / pp99:.3f}x")
                finally:
                    server.kill()
            finally:
                for a in agents:
                    a.stop()
                ps.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
