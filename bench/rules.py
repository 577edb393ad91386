"""Rule programming: cfnet's nftables cell table against upstream-shaped iptables-restore.

Content (same on both sides): N apps with one container each on the cell (source IP + 16-bit
tag) and P policies (source app -> destination app, tcp|udp, port or port range).

- cfnet: one libnftables transaction (base table + `c2c_src_tag` map with one element per
  source + `c2c_allow` interval set with one element per merged destination entry), in-process,
  inside a fresh network namespace.
- upstream (spec dataplane 1.6/1.8): `iptables-restore --noflush` of a `vpa--<ts>` chain with one
  MARK rule per source and one ACCEPT rule per destination entry (with the upstream comments),
  plus the FORWARD jump, in a fresh network namespace, using Debian's `iptables-restore`.

The full-load ratio compares the transaction with the iptables-restore run (neither side's
text generation counted); cfnet's planning (merging port ranges, rendering) is printed apart.
Then one incremental change with everything present: cfnet adds one allow element (and removes
one); upstream's VPA rewrites the whole rule set into a new timestamped chain and deletes the
old one (what it does on every change). A single appended iptables rule is printed as well.

Run as root: `.venv/bin/python bench/rules.py [--apps 20000 --policies 60000 --repeat 3]`.
Everything happens in namespaces this script creates and removes.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cfnet.core import nft_syntax as nx  # noqa: E402
from cfnet.net import cell_table as ct  # noqa: E402
from cfnet.net import netns  # noqa: E402
from cfnet.net.nft import Nft  # noqa: E402
from cfnet.testing.netns import Sandbox  # noqa: E402

from _common import machine  # noqa: E402


@dataclass(frozen=True)
class Policy:
    src: int
    dst: int
    proto: str
    lo: int
    hi: int


def app_ip(i: int) -> str:
    return f"10.255.{i // 250}.{i % 250 + 2}"


def app_guid(i: int) -> str:
    return f"{i:08x}-aaaa-bbbb-cccc-{i:012x}"


def make_policies(apps: int, count: int, seed: int = 7) -> list[Policy]:
    rnd = random.Random(seed)
    out: set[Policy] = set()
    while len(out) < count:
        src, dst = rnd.randrange(apps), rnd.randrange(apps)
        lo = rnd.randrange(1024, 60000)
        hi = lo if rnd.random() < 0.8 else lo + rnd.randrange(1, 100)
        out.add(Policy(src, dst, rnd.choice(("tcp", "udp")), lo, hi))
    return sorted(out, key=lambda p: (p.src, p.dst, p.proto, p.lo))


def c2c_state(policies: list[Policy]) -> ct.C2CState:
    sources = {app_ip(p.src): p.src + 1 for p in policies}
    return ct.C2CState.build(sources, [nx.C2CAllow(app_ip(p.dst), p.src + 1, p.proto, p.lo, p.hi)
                                       for p in policies])


def iptables_restore_text(chain: str, policies: list[Policy], old: str | None = None) -> str:
    """The VPA's batch: new chain, jump at FORWARD 1, marks then accepts (spec 1.6/1.8)."""
    lines = ["*filter", f":{chain} - [0:0]", f"-I FORWARD 1 -j {chain}"]
    seen = set()
    for p in policies:
        if p.src not in seen:
            seen.add(p.src)
            lines.append(f"-A {chain} -s {app_ip(p.src)}/32 -m comment --comment "
                         f"\"src:{app_guid(p.src)}\" -j MARK "
                         f"--set-xmark 0x{p.src + 1:x}/0xffffffff")
    for p in policies:
        ports = str(p.lo) if p.lo == p.hi else f"{p.lo}:{p.hi}"
        lines.append(f"-A {chain} -d {app_ip(p.dst)}/32 -p {p.proto} -m {p.proto} --dport {ports} "
                     f"-m mark --mark 0x{p.src + 1:x} -m comment --comment "
                     f"\"src:{app_guid(p.src)}_dst:{app_guid(p.dst)}\" -j ACCEPT")
    if old is not None:  # cleanup of the previous timestamped chain, as the VPA does after
        lines += [f"-D FORWARD -j {old}", f"-F {old}", f"-X {old}"]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def restore(ns: str, text: str, binary: str) -> None:
    proc = subprocess.run(netns.exec_argv(ns, [binary, "--noflush"]), input=text, text=True,
                          capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(f"{binary} failed: {proc.stderr.strip()[:500]}")


CPU: dict[str, list[float]] = {}  # key -> CPU seconds of the timed step, beside its wall time


def cpu_now(child: bool) -> float:
    """CPU seconds (user + system) of this process (all threads: libnftables runs in a worker
    thread, and the kernel processes the netlink batch in its system call) or of its waited-for
    children (iptables-restore; the kernel's share again in its system time)."""
    if not child:
        return time.process_time()
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed(fn: Callable[[], object], key: str = "", child: bool = False) -> float:
    gc.collect()
    gc.disable()  # a collection of the planner's garbage is not rule programming
    try:
        c = cpu_now(child)
        t = time.perf_counter()
        fn()
        wall = time.perf_counter() - t
        if key:
            CPU.setdefault(key, []).append(cpu_now(child) - c)
        return wall
    finally:
        gc.enable()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--apps", type=int, default=20000)
    ap.add_argument("--policies", type=int, default=60000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--iptables", default="iptables-restore")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/rules.py: run as root (it creates network namespaces)")
    ipt = shutil.which(args.iptables) or args.iptables
    ipt_version = subprocess.run([ipt, "--version"], capture_output=True, text=True).stdout.strip()

    print(machine())
    policies = make_policies(args.apps, args.policies)
    extra = Policy(0, 1, "tcp", 65000, 65000)
    removed = policies[len(policies) // 2]
    state = c2c_state(policies)
    print(f"content: {args.apps} apps, {len(policies)} policies -> "
          f"{len(state.src_tags)} source tags, {len(state.allow)} allow elements")

    results: dict[str, list[float]] = {k: [] for k in (
        "nft_full", "ipt_full", "nft_add_one", "nft_remove_one", "ipt_rewrite", "ipt_append_one",
        "nft_resync_swap", "nft_plan")}
    with Sandbox("bench") as box:
        for r in range(args.repeat):
            ns = box.netns(f"nft{r}")
            nft = Nft(ns)
            try:
                text = ""

                def plan() -> None:
                    nonlocal text
                    text = ct.render_base() + ct.render_c2c_replace(
                        c2c_state(policies), ct.C2CListing(None, ct.C2CState()))
                results["nft_plan"].append(timed(plan))
                results["nft_full"].append(timed(lambda: nft.run(text), "nft_full"))
                listing = ct.list_c2c(nft)
                assert listing.state == state, "kernel state differs from the desired state"
                live = ct.C2CSets(listing.exact_set or "", listing.allow_set or "")
                grown = c2c_state(policies + [extra])
                results["nft_add_one"].append(timed(
                    lambda: nft.run(ct.render_c2c_diff(state, grown, live)), "nft_add_one"))
                shrunk = c2c_state([p for p in policies if p != removed] + [extra])
                results["nft_remove_one"].append(timed(
                    lambda: nft.run(ct.render_c2c_diff(grown, shrunk, live))))
                other = c2c_state(make_policies(args.apps, args.policies, seed=100 + r))
                results["nft_resync_swap"].append(timed(
                    lambda: ct.replace_c2c(nft, other, last=shrunk)))
            finally:
                nft.close()

            ns = box.netns(f"ipt{r}")
            first = iptables_restore_text("vpa--1000000000000001", policies)
            results["ipt_full"].append(timed(lambda: restore(ns, first, ipt), "ipt_full", True))
            second = iptables_restore_text("vpa--1000000000000002", policies + [extra],
                                           old="vpa--1000000000000001")
            results["ipt_rewrite"].append(timed(lambda: restore(ns, second, ipt), "ipt_rewrite",
                                                 True))
            one = ("*filter\n-A vpa--1000000000000002 -d 10.255.0.3/32 -p tcp -m tcp --dport 65001 "
                   "-m mark --mark 0x1 -j ACCEPT\nCOMMIT\n")
            results["ipt_append_one"].append(timed(lambda: restore(ns, one, ipt)))

    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"machine: nproc={os.cpu_count()} kernel={platform.release()} "
          f"python={platform.python_version()} {ipt_version}; median of {args.repeat}")
    rows = [
        ("full load, cfnet (1 nft transaction)", med["nft_full"]),
        ("  cfnet planning + rendering in Python (before the transaction)", med["nft_plan"]),
        ("full load, upstream iptables-restore", med["ipt_full"]),
        ("+1 policy, cfnet (add 1 element)", med["nft_add_one"]),
        ("-1 policy, cfnet (delete 1 element)", med["nft_remove_one"]),
        ("+1 policy, upstream (new vpa chain, old deleted)", med["ipt_rewrite"]),
        ("+1 rule appended with iptables-restore (not what upstream does)", med["ipt_append_one"]),
        ("full resync to a different 60k set, cfnet (set swap)", med["nft_resync_swap"]),
    ]
    for label, secs in rows:
        print(f"  {label:<66} {secs * 1000:9.1f} ms")
    print(f"ratio full load      cfnet/upstream = {med['nft_full'] / med['ipt_full']:.3f}x "
          "(target <= 0.3x; with planning: "
          f"{(med['nft_full'] + med['nft_plan']) / med['ipt_full']:.3f}x)")
    cpu = {k: statistics.median(v) for k, v in CPU.items()}
    print(f"CPU time (user + system, this process / iptables-restore's): full load cfnet "
          f"{cpu['nft_full'] * 1000:.0f} ms, upstream {cpu['ipt_full'] * 1000:.0f} ms, ratio "
          f"{cpu['nft_full'] / cpu['ipt_full']:.3f}x; +1 policy cfnet "
          f"{cpu['nft_add_one'] * 1000:.1f} ms, upstream {cpu['ipt_rewrite'] * 1000:.0f} ms")
    print(f"ratio incremental    cfnet/upstream = {med['nft_add_one'] / med['ipt_rewrite']:.4f}x "
          f"(remove: {med['nft_remove_one'] / med['ipt_rewrite']:.4f}x; against a single appended "
          f"rule: {med['nft_add_one'] / med['ipt_append_one']:.3f}x)")
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
