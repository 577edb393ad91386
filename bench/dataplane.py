"""Data-plane cost of cfnet's rules: container-to-container TCP across two cells, with 10k
policies installed, against the same path with no cfnet rules at all, in the same run.

    sudo .venv/bin/python bench/dataplane.py [--policies 10050] [--rounds 3]

A two-cell lab in throw-away namespaces (Silk controller and daemons, a real policy server, real
`cfnet vxlan-agent`s); a source container on cell 1 and a destination on cell 2. Phases:

- no rules: the containers are plugged (silk's veth shape) but no `ip cfnet` table exists
  (agents stopped, tables deleted);
- with rules: the agents run, both containers have their per-container structure (as the CNI
  wrapper makes it) and about 10k policies from 67 source apps target the destination app
  (150 non-adjacent ports each, so nothing merges), plus the measured source's own policy.

The phases alternate `--rounds` times (a shared machine drifts as much as the effect). Each
round measures TCP throughput with iperf3 (4 s, one stream) and new TCP connections per second
(connect + RST-close in a loop for 3 s); medians and the ratios with-rules / no-rules are
reported (target: throughput at least 0.95x).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import machine  # noqa: E402

# Closed with RST (SO_LINGER 0): no TIME_WAIT on the client, so rounds never run short of
# ephemeral ports and later phases are not slowed by earlier ones.
CPS = r"""
import socket, struct, sys, time
ip, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
linger = struct.pack("ii", 1, 0)
n, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    s = socket.socket(); s.settimeout(2)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    s.connect((ip, port)); s.close(); n += 1
print(n / seconds)
"""
ACCEPT = r"""
import socket, sys
s = socket.create_server((sys.argv[1], int(sys.argv[2])), backlog=512)
print("ready", flush=True)
while True:
    s.accept()[0].close()
"""


def measure(src_ns: str, dst_ip: str) -> tuple[float, float]:
    """(Gbit/s, new connections/s) of one round."""
    from cfnet.net import netns

    out = netns.run(src_ns, ["iperf3", "-c", dst_ip, "-p", "5201", "-t", "4", "-J"],
                    timeout=60).stdout
    gbps = json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9
    cps = float(netns.run(src_ns, [sys.executable, "-c", CPS, dst_ip, "7000", "3"],
                          timeout=60).stdout)
    return gbps, cps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", type=int, default=10050)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from cfnet.clients.policy_api import make_policy
    from cfnet.cni.datastore import Datastore
    from cfnet.core import asg_rules as ar
    from cfnet.net import cell_table as ct
    from cfnet.net import netns
    from cfnet.net.nft import Nft
    from cfnet.testing import agent as ta
    from cfnet.testing.netns import Sandbox
    from cfnet.testing.silk import silk_deployment

    work = Path(tempfile.mkdtemp(prefix="cfnet-bench-dp-"))
    print(machine())
    results: dict[str, list[tuple[float, float]]] = {}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with Sandbox("bd") as box, silk_deployment(box.topology(), work, cells=2) as silk:
            silk.wait_converged()
            c1, c2 = silk.cells["cell1"], silk.cells["cell2"]
            net1 = c1.overlay_subnet.split("/")[0].rsplit(".", 1)[0]
            net2 = c2.overlay_subnet.split("/")[0].rsplit(".", 1)[0]
            src_ip, dst_ip = f"{net1}.2", f"{net2}.2"
            src_ns, dst_ns = box.netns("src"), box.netns("dst")
            ta.plug(c1.ns, src_ns, ta.host_veth(src_ip), src_ip, c1.mtu)
            ta.plug(c2.ns, dst_ns, ta.host_veth(dst_ip), dst_ip, c2.mtu)
            procs.append(subprocess.Popen(netns.exec_argv(dst_ns, ["iperf3", "-s", "-B", dst_ip,
                                                                   "-p", "5201"]),
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            acceptor = subprocess.Popen(netns.exec_argv(dst_ns, [sys.executable, "-c", ACCEPT,
                                                                 dst_ip, "7000"]),
                                        stdout=subprocess.PIPE)
            procs.append(acceptor)
            assert acceptor.stdout and acceptor.stdout.readline().strip() == b"ready"
            time.sleep(0.5)  # iperf3 binds
            ps = ta.start_policy_server_in(silk, work / "ps", external={"max_policies": 150})
            agents = [ta.start_agent(c, work / c.name, ps, start=False, log_level="info")
                      for c in (c1, c2)]
            members = ((agents[0], "src", src_ip, "bench-src"),
                       (agents[1], "dst", dst_ip, "bench-dst"))

            def rules_on() -> None:
                for a in agents:
                    a.start()
                for agent, handle, ip, app in members:  # as the CNI wrapper does
                    Datastore(agent.datastore_path).add(handle, ip, {"policy_group_id": app})
                    with Nft(agent.ns) as nft:
                        nft.run(ct.render_container_add(ct.ContainerNet(
                            handle, ip, ar.netout_chains(handle, "app", []),
                            underlay_ifs=[agent.cell.host.ifname])))
                    agent.force("/force-policy-poll-cycle")

            def rules_off() -> None:
                for a in agents:
                    a.stop()
                for c in (c1, c2):
                    with Nft(c.ns) as nft:
                        if nft.table_exists():
                            nft.run("delete table ip cfnet\n")

            def installed() -> int:
                with Nft(c2.ns) as nft:
                    state = ct.list_c2c(nft).state
                return len(state.allow) if state else 0

            try:
                rules_on()
                create = ta.policy_client(silk, ps)
                create(lambda c: c.create([make_policy("bench-src", "bench-dst", "tcp", "5201"),
                                           make_policy("bench-src", "bench-dst", "tcp", "7000")]))
                t0 = time.monotonic()
                for i in range(0, args.policies, 150):
                    batch = [make_policy(f"bench-s{i // 150}", "bench-dst", "tcp",
                                         str(20000 + 2 * j))
                             for j in range(min(150, args.policies - i))]
                    create(lambda c, b=batch: c.create(b))
                ta.wait_for("policies installed", lambda: installed() >= args.policies + 2,
                            timeout=600)
                print(f"{installed()} allow elements on the destination cell "
                      f"({time.monotonic() - t0:.1f} s from the first create)")
                # Alternate the phases: on a shared machine the drift is as large as the effect.
                for _ in range(args.rounds):
                    rules_off()
                    results.setdefault("no rules", []).append(measure(src_ns, dst_ip))
                    rules_on()
                    ta.wait_for("policies reinstalled", lambda: installed() >= args.policies + 2,
                                timeout=600)
                    results.setdefault("with rules", []).append(measure(src_ns, dst_ip))
                    print({k: v[-1] for k, v in results.items()})
            finally:
                for a in agents:
                    a.stop()
                ps.stop()
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)

    med = {k: (statistics.median(g for g, _ in v), statistics.median(c for _, c in v))
           for k, v in results.items()}
    print("| phase | rounds | throughput (Gbit/s), median | new connections/s, median |")
    print("|---|---|---|---|")
    for name, (g, c) in med.items():
        print(f"| {name} | {len(results[name])} | {g:.2f} | {c:.0f} |")
    print(f"with rules / no rules: throughput {med['with rules'][0] / med['no rules'][0]:.3f}x, "
          f"connections/s {med['with rules'][1] / med['no rules'][1]:.3f}x")

if __name__ == "__main__":
    main()
