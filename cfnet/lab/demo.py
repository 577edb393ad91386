"""`cfnet lab demo`: bring a two-cell lab up, exercise it, print a table of checks.

Each check is a name, a pass/fail and a detail line. The demo stops at the first check whose
failure makes the rest meaningless (the lab did not come up), and otherwise runs them all.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cfnet.lab import apps, deploy
from cfnet.lab.state import DEFAULT_DIR, LabState
from cfnet.net import netns


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


def policy_cli(state: LabState, *args: str) -> tuple[int, str]:
    """Run `cfnet policy ...` inside the control-plane namespace against the lab's server."""
    proc = netns.run(state.hosts["cp"].ns, [sys.executable, "-m", "cfnet", "policy", *args,
                                            "--api", state.policy_external_url,
                                            "--token", state.admin_token], check=False)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def run_demo(directory: Path = DEFAULT_DIR, keep: bool = False,
             progress: Callable[[str], None] = print) -> list[Check]:
    checks: list[Check] = []

    def check(name: str, passed: bool, detail: str) -> bool:
        checks.append(Check(name, passed, detail))
        progress(f"{'PASS' if passed else 'FAIL'}  {name}: {detail}")
        return passed

    try:
        started = time.monotonic()
        state = deploy.up(directory, cells=2, progress=progress)
        if not check("lab up", True, f"control plane and {len(state.cells)} cells in "
                                     f"{time.monotonic() - started:.1f} s"):
            return checks
        subnets = list(state.subnets.values())
        check("each cell leased its own subnet", len(set(subnets)) == len(subnets),
              ", ".join(f"{c}={s}" for c, s in state.subnets.items()))

        progress("pushing app frontend (1 instance) and backend (2 instances)")
        apps.push("frontend", 1, directory)
        apps.push("backend", 2, directory)
        state = deploy.require(directory)
        placed = {c.cell for c in state.containers_of("backend")}
        check("containers on both cells", len(placed) == 2,
              ", ".join(f"{c.app}/{c.instance}@{c.cell}={c.ip}" for c in state.containers))

        results = apps.curl("frontend", "backend", directory=directory)
        reached = [ok for _, _, ok, _ in results]
        check("overlay carries traffic across cells and on one cell", all(reached),
              "; ".join(f"{d.cell}: {answer}" for _, d, _, answer in results))

        front, back = state.apps["frontend"]["app_id"], state.apps["backend"]["app_id"]
        rc, out = policy_cli(state, "add", front, back, "--protocol", "tcp", "--port", "8080")
        check("cfnet policy add", rc == 0, out.splitlines()[-1] if out else f"exit {rc}")
        rc, out = policy_cli(state, "list", "--json")
        try:
            listed = json.loads(out)
            policies = listed.get("policies", listed) if isinstance(listed, dict) else listed
            found = any(p["source"]["id"] == front and p["destination"]["id"] == back
                        for p in policies)
        except (ValueError, KeyError, TypeError):
            found = False
        check("cfnet policy list shows it", rc == 0 and found, f"{len(out)} bytes of JSON")
        rc, out = policy_cli(state, "add", front, back, "--port", "0")
        check("bad input is refused with a clear error", rc != 0 and "port" in out.lower(),
              out.splitlines()[-1] if out else f"exit {rc}")
        rc, out = policy_cli(state, "remove", front, back, "--protocol", "tcp", "--port", "8080")
        check("cfnet policy remove", rc == 0, out.splitlines()[-1] if out else f"exit {rc}")
    except deploy.LabError as e:
        check("lab", False, str(e))
    finally:
        if not keep:
            deploy.down(directory, progress=lambda _m: None)
            progress("lab removed (use --keep to keep it)")
    return checks
