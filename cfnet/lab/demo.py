"""`cfnet lab demo`: bring a two-cell lab up, exercise it end to end, print a table of checks.

Each check is a name, a pass/fail and a detail line, and each one looks at real traffic between
namespaces: container to container across cells and on one cell, router to container through a
mapped host port, container to the "internet" host through an ASG the demo adds while the
containers run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cfnet.lab import apps, asgs, deploy
from cfnet.lab.state import DEFAULT_DIR, LabContainer, LabState

PROPAGATION_TARGET_S = 1.0


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


def _wait_reachable(src: LabContainer, dst: LabContainer, port: int,
                    deadline_s: float) -> float | None:
    """Seconds until src reaches dst:port, or None if not within `deadline_s`."""
    start = time.monotonic()
    while time.monotonic() - start < deadline_s:
        if apps.probe(src.ns, dst.ip, port, timeout=0.3)[0]:
            return time.monotonic() - start
    return None


def _wait_egress(src: LabContainer, host: str, port: int, deadline_s: float) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < deadline_s:
        if apps.probe(src.ns, host, port, timeout=0.3)[0]:
            return time.monotonic() - start
        time.sleep(0.1)
    return None


def _add_and_time(state: LabState, src: str, dst: str, front: LabContainer,
                  remote: LabContainer) -> tuple[str | None, float | None]:
    """Create src -> dst tcp 8080 through the API; (error or None, seconds to first success)."""
    from cfnet.clients.http import ApiError
    from cfnet.clients.policy_api import PolicyClient, make_policy
    from cfnet.net import netns

    def create() -> None:
        with PolicyClient(state.policy_external_url, state.admin_token) as client:
            client.create([make_policy(src, dst, "tcp", str(apps.APP_PORT))])

    try:
        netns.call_in(state.hosts["cp"].ns, create)
    except ApiError as e:
        return str(e), None
    return None, _wait_reachable(front, remote, apps.APP_PORT, deadline_s=10)


def run_demo(directory: Path = DEFAULT_DIR, keep: bool = False,
             progress: Callable[[str], None] = print) -> list[Check]:
    checks: list[Check] = []

    def check(name: str, passed: bool, detail: str) -> bool:
        checks.append(Check(name, passed, detail))
        progress(f"{'PASS' if passed else 'FAIL'}  {name}: {detail}")
        return passed

    from cfnet.lab.ownership import is_lab_dir

    if directory.exists() and is_lab_dir(directory):  # never reuse, then remove, a user's lab
        check("lab", False, f"{directory} already holds a lab: `cfnet lab down --dir "
                            f"{directory}` first, or give the demo another --dir")
        return checks
    try:
        started = time.monotonic()
        state = deploy.up(directory, cells=2, progress=progress)
        check("lab up", True, f"control plane and {len(state.cells)} cells in "
                              f"{time.monotonic() - started:.1f} s")
        subnets = list(state.subnets.values())
        check("each cell leased its own subnet", len(set(subnets)) == len(subnets),
              ", ".join(f"{c}={s}" for c, s in state.subnets.items()))

        progress("pushing frontend (1 instance) and backend (2 instances) through garden-hook")
        apps.push("frontend", 1, directory)
        apps.push("backend", 2, directory)
        state = deploy.require(directory)
        front = state.containers_of("frontend")[0]
        remote = next(c for c in state.containers_of("backend") if c.cell != front.cell)
        local = next(c for c in state.containers_of("backend") if c.cell == front.cell)
        check("containers on both cells", remote.cell != local.cell,
              ", ".join(f"{c.app}/{c.instance}@{c.cell}={c.ip}" for c in state.containers))

        denied = [apps.probe(front.ns, c.ip, apps.APP_PORT) for c in (remote, local)]
        check("c2c denied without a policy", not any(ok for ok, _ in denied),
              "; ".join(text for _, text in denied))

        src, dst = apps.app_guid(state, "frontend"), apps.app_guid(state, "backend")
        # The policy is created through the API from inside the control plane, so the clock
        # starts at the server's 200, not when a CLI process has finished exiting.
        created, took = _add_and_time(state, src, dst, front, remote)
        if check("policy frontend -> backend tcp 8080 created (API 200)", created is None,
                 created or "200 {}"):
            check("allowed across cells (VXLAN-GBP tag)", took is not None,
                  apps.probe(front.ns, remote.ip, apps.APP_PORT)[1])
            check(f"policy propagation under {PROPAGATION_TARGET_S:.0f} s",
                  took is not None and took < PROPAGATION_TARGET_S,
                  f"{took * 1000:.0f} ms from the API's 200 to the first allowed connection"
                  if took is not None else "never")
            ok, text = apps.probe(front.ns, local.ip, apps.APP_PORT)
            check("allowed on one cell", ok, text)
            ok, text = apps.probe(front.ns, remote.ip, apps.OTHER_PORT)
            check("other ports still denied", not ok, f"port {apps.OTHER_PORT}: {text}")
            ok, text = apps.probe(remote.ns, front.ip, apps.APP_PORT)
            check("the reverse direction still denied", not ok, text)

        router = state.hosts["router"]
        cell_ip = state.hosts[remote.cell].ip
        ok, text = apps.probe(router.ns, cell_ip, remote.host_port)
        check("port forwarding from the router", ok and text.startswith("backend/"),
              f"{cell_ip}:{remote.host_port} -> {remote.ip}:{apps.APP_PORT}: {text}")

        internet = state.hosts["internet"].ip
        web, other = apps.INTERNET_PORTS
        ok, text = apps.probe(front.ns, internet, web)
        check("egress denied without an ASG", not ok, f"{internet}:{web}: {text}")
        group = asgs.add("demo-egress", internet, "tcp", str(web), space_app="frontend",
                         directory=directory)
        took = _wait_egress(front, internet, web, deadline_s=15)
        check("ASG added (cfnet lab asg add) allows egress, no restart", took is not None,
              f"tcp {internet}:{web} for {group['bound_to']}, "
              + (f"applied in {took:.1f} s" if took is not None else "never applied"))
        ok, text = apps.probe(front.ns, internet, other)
        check("egress denied where no ASG allows it", not ok, f"{internet}:{other}: {text}")
        ok, text = apps.probe(local.ns, internet, web)
        check("egress denied for apps in other spaces", not ok, f"backend: {text}")

        rc, out = apps.policy(state, "list", "--json")  # the CLI, as a developer uses it
        try:
            found = any(p["source"]["id"] == src and p["destination"]["id"] == dst
                        for p in json.loads(out)["policies"])
        except (ValueError, KeyError, TypeError):
            found = False
        check("cfnet policy list shows it", rc == 0 and found, "frontend -> backend")
        rc, out = apps.policy(state, "add", src, dst, "--port", "0")
        check("bad input refused with a clear error", rc != 0 and "port" in out.lower(),
              out.splitlines()[-1] if out else f"exit {rc}")
        rc, out = apps.policy(state, "remove", src, dst, "--protocol", "tcp", "--port",
                              str(apps.APP_PORT))
        check("cfnet policy remove", rc == 0, out.splitlines()[-1] if out else f"exit {rc}")
        deadline = time.monotonic() + 10
        while apps.probe(front.ns, remote.ip, apps.APP_PORT, timeout=0.3)[0]:
            if time.monotonic() > deadline:
                break
        ok, text = apps.probe(front.ns, remote.ip, apps.APP_PORT)
        check("new connections denied after remove", not ok, text)
    except deploy.LabError as e:
        check("lab", False, str(e))
    finally:
        if not keep:
            deploy.down(directory, progress=lambda _m: None)
            progress("lab removed (use --keep to keep it)")
    return checks
