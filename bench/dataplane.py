"""Data-plane cost of cfnet's rules: container-to-container TCP across two cells, with 10k
policies installed, against the same path with no rules at all and with upstream's iptables rules.

    sudo .venv/bin/python bench/dataplane.py [--policies 10050] [--rounds 6]

A two-cell lab in throw-away namespaces (Silk controller and daemons, a real policy server, real
`cfnet vxlan-agent`s with upstream's BOSH poll intervals); a source container on cell 1 and a
destination on cell 2. Phases:

- no rules: the containers are plugged (silk's veth shape) but no `ip cfnet` table exists
  (agents stopped, tables deleted);
- cfnet: the agents run, both containers have their per-container structure (as the CNI
  wrapper makes it) and about 10k policies from 67 source apps target the destination app
  (150 non-adjacent ports each, so nothing merges), plus the measured source's own policy;
- cfnet, agents stopped: the same, but both agents are stopped once the rules are in (the
  table stays): the kernel's per-packet share alone, without the agents' and the policy
  server's CPU use on this small machine;
- iptables: agents stopped, no `ip cfnet` table; instead upstream's rules with the same content
  (spec dataplane 0.1, 1.6, 1.8, 3.3), loaded with `iptables-restore` (Debian's iptables-nft by
  default, `--iptables iptables-legacy-restore` for the legacy backend) into both cells: FORWARD
  jumps to the `vpa--<ts>` chain (one MARK rule per local source, one ACCEPT rule per
  destination entry, in upstream's order: sorted by the entry's JSON text, which puts the
  measured pair's ports 5201/7000 after the 10k ports 20000-40098), then per container the
  `netout--<h>` jump per underlay interface and the unconditional `overlay--<h>` jump with their
  rules, the `input--<h>` chain and the (empty) nat/mangle `netin--<h>` chains with their
  PREROUTING jumps. Removed again by deleting the backend's tables.

The phases rotate `--rounds` times (a shared machine drifts as much as the effect). Each phase
of a round measures TCP throughput with iperf3 (4 s, one stream) and new TCP connections per
second (connect + RST-close in a loop for 3 s). Printed: medians, min-max, the ratio of the
medians, and the median and range of the per-round ratios (each round's phases ran within
about a minute of each other). The spread of the no-rules phase over the rounds is the noise
floor of this machine at the time (target: cfnet throughput at least 0.95x of no rules). The
CPU the agents and the policy server used while each phase was measured is printed too.
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

from _common import cpu_seconds, machine  # noqa: E402

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


def ipt_chain(name: str) -> str:
    """Upstream's per-container chain names: `Prefix(p, body)` = (`p--body`)[:28] (spec 3.5)."""
    return name[:28]


def ipt_cell_rules(vpa: str, sources: list[tuple[str, int, str]],
                   dests: list[dict[str, object]], containers: list[tuple[str, str]],
                   underlay_if: str, vtep: str = "silk-vtep") -> str:
    """An iptables-restore batch of upstream's rules on one cell.

    sources: (ip, tag, app guid) of local source containers; dests: destination entries as the
    VPA builds them (IP, StartPort, EndPort, GUID, SourceGUID, Protocol, SourceTag), sorted here
    by their JSON text as the VPA sorts them (spec 1.6 step 4); containers: (handle, ip) of the
    local containers, in creation order (spec 0.1, 3.3 steps 11-12).
    """
    filt = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
            f":{vpa} - [0:0]"]
    body = [f"-A FORWARD -j {vpa}"]
    for ip, tag, guid in sources:
        body.append(f"-A {vpa} -s {ip}/32 -m comment --comment \"src:{guid}\" "
                    f"-j MARK --set-xmark 0x{tag:x}/0xffffffff")
    for d in sorted(dests, key=lambda e: json.dumps(e, separators=(",", ":"))):
        proto, ports = d["Protocol"], f"{d['StartPort']}:{d['EndPort']}"
        if d["StartPort"] == d["EndPort"]:
            ports = str(d["StartPort"])
        body.append(f"-A {vpa} -d {d['IP']}/32 -p {proto} -m {proto} --dport {ports} "
                    f"-m mark --mark 0x{d['SourceTag']:x} -m comment --comment "
                    f"\"src:{d['SourceGUID']}_dst:{d['GUID']}\" -j ACCEPT")
    nat, mangle = ["*nat", ":PREROUTING ACCEPT [0:0]"], ["*mangle", ":PREROUTING ACCEPT [0:0]"]
    for handle, ip in containers:
        inp, out, ovl = (ipt_chain(f"input--{handle}"), ipt_chain(f"netout--{handle}"),
                         ipt_chain(f"overlay--{handle}"))
        log = f"netout--{handle}"[:28 - 5] + "--log"  # Postfix(body, "log"), never jumped to
        netin = ipt_chain(f"netin--{handle}")
        filt += [f":{c} - [0:0]" for c in (inp, out, ovl, log)]
        body += [f"-A INPUT -s {ip}/32 -j {inp}",
                 f"-A {inp} -m state --state RELATED,ESTABLISHED -j ACCEPT",
                 f"-A {inp} -j REJECT --reject-with icmp-port-unreachable",
                 f"-A FORWARD -s {ip}/32 -o {underlay_if} -j {out}",
                 f"-A {out} -m state --state RELATED,ESTABLISHED -j ACCEPT",
                 f"-A {out} -p tcp -m state --state INVALID -j DROP",
                 f"-A {out} -j REJECT --reject-with icmp-port-unreachable",
                 f"-A FORWARD -j {ovl}",
                 f"-A {ovl} -s {ip}/32 -o {vtep} -m mark ! --mark 0x0 -j ACCEPT",
                 f"-A {ovl} -d {ip}/32 -m state --state RELATED,ESTABLISHED -j ACCEPT",
                 f"-A {ovl} -d {ip}/32 -m mark --mark 0xffff0000 -j ACCEPT",
                 f"-A {ovl} -d {ip}/32 -j REJECT --reject-with icmp-port-unreachable"]
        nat += [f":{netin} - [0:0]", f"-A PREROUTING -j {netin}"]
        mangle += [f":{netin} - [0:0]", f"-A PREROUTING -j {netin}"]
    return "\n".join(filt + body + ["COMMIT"] + nat + ["COMMIT"] + mangle + ["COMMIT"]) + "\n"


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


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
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--iptables", default="iptables-restore",
                        help="iptables-restore (Debian: iptables-nft) or iptables-legacy-restore")
    args = parser.parse_args()
    ipt = shutil.which(args.iptables) or args.iptables
    ipt_version = subprocess.run([ipt, "--version"], capture_output=True,
                                 text=True).stdout.strip()
    legacy = "legacy" in ipt_version

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
    print(ipt_version)
    results: dict[str, list[tuple[float, float]]] = {}
    control: dict[str, float] = {}  # CPU seconds of the agents and the policy server per phase
    seconds: dict[str, float] = {}
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
            # Upstream's BOSH defaults (spec dataplane 1.2), not the tests' 1 s / 2 s: the
            # agents' periodic work shares this machine's two CPUs with the traffic.
            agents = [ta.start_agent(c, work / c.name, ps, start=False, log_level="info",
                                     poll_interval=5, asg_poll_interval=60)
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

            # Upstream's rules with the same content; tags are ours (the same on both cells).
            src_apps = ["bench-src"] + [f"bench-s{i}" for i in range(-(-args.policies // 150))]
            tag = {app: n + 1 for n, app in enumerate(src_apps)}
            dests: list[dict[str, object]] = [
                {"IP": dst_ip, "StartPort": p, "EndPort": p, "GUID": "bench-dst",
                 "SourceGUID": "bench-src", "Protocol": "tcp", "SourceTag": tag["bench-src"]}
                for p in (5201, 7000)]
            for i in range(args.policies):
                app, port = f"bench-s{i // 150}", 20000 + 2 * (i % 150)
                dests.append({"IP": dst_ip, "StartPort": port, "EndPort": port,
                              "GUID": "bench-dst", "SourceGUID": app, "Protocol": "tcp",
                              "SourceTag": tag[app]})
            vpa = f"vpa--{int(time.time() * 1e6)}"
            ipt_text = {
                c1.ns: ipt_cell_rules(vpa, [(src_ip, tag["bench-src"], "bench-src")], [],
                                      [("src", src_ip)], c1.host.ifname),
                c2.ns: ipt_cell_rules(vpa, [], dests, [("dst", dst_ip)], c2.host.ifname)}
            ipt_tables = ("filter", "nat", "mangle")

            def ipt_on() -> None:
                for ns, text in ipt_text.items():
                    netns.run(ns, [ipt, "--noflush"], input=text, timeout=120)

            def ipt_off() -> None:
                for ns in ipt_text:
                    if legacy:  # legacy tables cannot be removed; flush them and drop chains
                        netns.run(ns, [ipt], input="".join(
                            f"*{t}\nCOMMIT\n" for t in ipt_tables))
                        continue
                    with Nft(ns) as nft:
                        for t in ipt_tables:
                            if nft.run("list tables ip\n").find(f"table ip {t}\n") >= 0:
                                nft.run(f"delete table ip {t}\n")

            def ipt_rules() -> int:
                out = netns.run(c2.ns, ["iptables-legacy" if legacy else "iptables", "-S",
                                        vpa]).stdout
                return out.count("-j ACCEPT")

            def phase(name: str) -> None:
                """Everything off, then `name` on."""
                rules_off()
                ipt_off()
                if name.startswith("cfnet"):
                    rules_on()
                    ta.wait_for("policies reinstalled", lambda: installed() >= args.policies + 2,
                                timeout=600)
                    if name == "cfnet, agents stopped":  # the kernel's share alone
                        for a in agents:
                            a.stop()
                        assert installed() >= args.policies + 2, "the rules left with the agents"
                elif name == "iptables":
                    ipt_on()

            try:
                for ns in (c1.ns, c2.ns):
                    with Nft(ns) as nft:
                        tables = nft.run("list tables\n")
                    assert "ip filter" not in tables and "ip nat" not in tables \
                        and "ip mangle" not in tables, f"{ns} has iptables tables: {tables}"
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
                rules_off()
                t0 = time.monotonic()
                ipt_on()
                print(f"{ipt_rules()} ACCEPT rules in {vpa} on the destination cell "
                      f"(iptables-restore of both cells: {time.monotonic() - t0:.1f} s)")
                # Rotate the phases: on a shared machine the drift is as large as the effect.
                phases = ("no rules", "cfnet", "cfnet, agents stopped", "iptables")
                for r in range(args.rounds):
                    for name in phases[r % 4:] + phases[:r % 4]:
                        phase(name)
                        pids = [p.pid for p in [ps.process] + [a.process for a in agents]
                                if p is not None and p.poll() is None]
                        before = sum(cpu_seconds(p) for p in pids)
                        t0 = time.monotonic()
                        results.setdefault(name, []).append(measure(src_ns, dst_ip))
                        control[name] = control.get(name, 0.0) + (
                            sum(cpu_seconds(p) for p in pids) - before)
                        seconds[name] = seconds.get(name, 0.0) + time.monotonic() - t0
                    print(f"round {r + 1}:", {k: (round(v[-1][0], 2), round(v[-1][1]))
                                              for k, v in results.items()}, flush=True)
            finally:
                for a in agents:
                    a.stop()
                ipt_off()
                ps.stop()
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)

    if not results.get("no rules"):
        return
    base = results["no rules"]
    print("| phase | rounds | throughput (Gbit/s), median | min-max | new connections/s, median "
          "| min-max |")
    print("|---|---|---|---|---|---|")
    for name, v in results.items():
        g, c = [x for x, _ in v], [y for _, y in v]
        print(f"| {name} | {len(v)} | {statistics.median(g):.2f} | {spread(g)} | "
              f"{statistics.median(c):.0f} | {min(c):.0f}-{max(c):.0f} |")
    for name in ("cfnet", "cfnet, agents stopped", "iptables"):
        v = results.get(name, [])
        if not v:
            continue
        n = min(len(v), len(base))
        per_g = [v[i][0] / base[i][0] for i in range(n)]
        per_c = [v[i][1] / base[i][1] for i in range(n)]
        g_ratio = (statistics.median(x for x, _ in v)
                   / statistics.median(x for x, _ in base))
        c_ratio = (statistics.median(y for _, y in v)
                   / statistics.median(y for _, y in base))
        print(f"{name} / no rules: throughput {g_ratio:.3f}x (per round: median "
              f"{statistics.median(per_g):.3f}x, range {spread(per_g)}), connections/s "
              f"{c_ratio:.3f}x (per round: median {statistics.median(per_c):.3f}x, "
              f"range {spread(per_c)})")
    for name, cpu in control.items():
        print(f"{name}: agents + policy server used {cpu / seconds[name] * 100:.1f}% of one CPU "
              "while measuring")
    g = [x for x, _ in base]
    c = [y for _, y in base]
    print(f"noise floor (no-rules phase over {len(base)} rounds): throughput "
          f"{(max(g) - min(g)) / statistics.median(g) * 100:.0f}% of the median (min-max), "
          f"stdev {statistics.pstdev(g) / statistics.mean(g) * 100:.0f}%; connections/s "
          f"{(max(c) - min(c)) / statistics.median(c) * 100:.0f}%, "
          f"stdev {statistics.pstdev(c) / statistics.mean(c) * 100:.0f}%")


if __name__ == "__main__":
    main()
