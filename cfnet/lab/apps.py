"""Apps in the lab: containers created by `cfnet garden-hook up`, exactly as Garden does it.

A container is a network namespace with the lab responder running in it (Garden's container
process). The hook runs in the cell's network namespace with the container process's pid,
app/space/org ids in the properties and one port mapping, and runs the cell's CNI chain
(cni-wrapper-plugin -> silk-cni); the agent then writes the container's egress rules from the
ASGs.

`kill` makes a container die the hard way: its processes are killed and its namespace is gone
(the `ip netns` name and Garden's bind mount, as after a reboot), without `garden-hook down`.
Its IP, port, datastore entry and nftables state stay behind until `gc` runs `garden-hook down`
for every container whose namespace is gone, as Garden does for containers it finds dead.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from cfnet.lab.deploy import LabError, adapter_path, require
from cfnet.lab.state import DEFAULT_DIR, PREFIX, LabContainer, LabState
from cfnet.net import netns

APP_PORT = 8080
OTHER_PORT = 9090  # also served, never named in a policy by the demo
ECHO_PORT = 7007  # a byte echo, for long-lived connections
INTERNET_PORTS = (80, 8081)  # the demo's ASG allows the first and not the second


def garden_hook(state: LabState, cell: str, action: str, handle: str,
                stdin: Any = None) -> dict[str, Any]:
    """Run `cfnet garden-hook` in the cell as Garden runs it; its parsed stdout."""
    # nsenter, not `ip netns exec`: the hook's bind mount must outlive the hook's process.
    argv = ["nsenter", f"--net={netns.path(state.hosts[cell].ns)}", sys.executable, "-m",
            "cfnet", "garden-hook", "--action", action, "--handle", handle,
            "--configFile", str(adapter_path(state, cell))]
    proc = subprocess.run(argv, input=json.dumps(stdin), capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        raise LabError(f"garden-hook {action} of {handle} on {cell} failed: "
                       f"{proc.stderr.strip() or proc.stdout.strip()}")
    return json.loads(proc.stdout) if proc.stdout.strip() else {}


def push(app: str, instances: int = 1, directory: Path = DEFAULT_DIR) -> list[LabContainer]:
    """Start `instances` containers of `app`, spread over the cells round-robin."""
    from cfnet.lab.ownership import check_app_name

    try:
        check_app_name(app)
    except ValueError as e:
        raise LabError(str(e)) from None
    state = require(directory)
    if instances < 1:
        raise LabError("--instances must be at least 1")
    ids = state.apps.setdefault(app, {"app_id": str(uuid.uuid4()), "space_id": str(uuid.uuid4()),
                                      "org_id": str(uuid.uuid4())})
    created = []
    start = len(state.containers_of(app))
    for i in range(start, start + instances):
        cell = state.cells[len(state.containers) % len(state.cells)]
        handle = f"{app}-{i}-{uuid.uuid4().hex[:6]}"
        ns = f"{PREFIX}-c-{handle}"
        netns.create(ns)
        with open(state.logs / f"{handle}.log", "ab") as log:
            process = netns.spawn(ns, [sys.executable, "-m", "cfnet.lab.responder", "serve",
                                       app, str(i), str(APP_PORT),
                                       str(OTHER_PORT), f"echo:{ECHO_PORT}"], log=log)
        stdin = {"Pid": process.pid,
                 "Properties": {"app_id": ids["app_id"], "space_id": ids["space_id"],
                                "org_id": ids["org_id"], "policy_group_id": ids["app_id"],
                                "ports": str(APP_PORT), "container_workload": "app"},
                 "netin": [{"host_port": 0, "container_port": APP_PORT}],
                 # Egress comes from the ASGs the agents sync (`cfnet lab asg`), not from Garden.
                 "netout_rules": []}
        try:
            out = garden_hook(state, cell, "up", handle, stdin)
            props = out["properties"]
            mapped = json.loads(props.get("garden.network.mapped-ports") or "[]")
        except BaseException:
            try:
                garden_hook(state, cell, "down", handle)
            except LabError:
                pass  # the hook rolls a failed up back itself; the up error is the one to show
            finally:
                process.kill()
                netns.remove(ns)
            raise
        container = LabContainer(handle=handle, app=app, instance=i, cell=cell, ns=ns,
                                 ip=props["garden.network.container-ip"], port=APP_PORT,
                                 host_port=mapped[0]["HostPort"] if mapped else 0)
        state.containers.append(container)
        state.save()
        created.append(container)
    return created


def probe(source_ns: str, host: str, port: int, timeout: float = 1.0) -> tuple[bool, str]:
    """Connect from inside `source_ns` to host:port; (reached, answer or error)."""
    from cfnet.lab.responder import fetch

    return netns.call_in(source_ns, lambda: fetch(host, port, timeout), timeout=timeout + 10)


def curl(source_app: str, dest_app: str, port: int = APP_PORT,
         directory: Path = DEFAULT_DIR) -> list[tuple[LabContainer, LabContainer, bool, str]]:
    """From the first instance of `source_app` to every instance of `dest_app`."""
    state = require(directory)
    sources, dests = state.containers_of(source_app), state.containers_of(dest_app)
    if not sources:
        raise LabError(f"no app {source_app!r} in the lab: `cfnet lab push {source_app}` first")
    if not dests:
        raise LabError(f"no app {dest_app!r} in the lab: `cfnet lab push {dest_app}` first")
    return [(sources[0], d, *probe(sources[0].ns, d.ip, port)) for d in dests]


def app_guid(state: LabState, app: str) -> str:
    """An app's guid (its policy group id); names unknown to the lab are taken as guids."""
    return state.apps.get(app, {}).get("app_id", app)


def policy(state: LabState, *args: str, url: str | None = None) -> tuple[int, str]:
    """Run `cfnet policy ...` in the control plane against the lab's server (or `url`, one
    replica), as its admin."""
    proc = netns.run(state.hosts["cp"].ns, [sys.executable, "-m", "cfnet", "policy", *args,
                                            "--api", url or state.policy_external_url,
                                            "--token", state.admin_token], check=False)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def find(state: LabState, ref: str) -> LabContainer:
    """A container by handle or by APP/INSTANCE (APP alone means instance 0)."""
    app, _, inst = ref.partition("/")
    for c in state.containers:
        if c.handle == ref or (c.app == app and str(c.instance) == (inst or "0")):
            return c
    raise LabError(f"no container {ref!r} in the lab (see `cfnet lab status`)")


def _bind_mount(state: LabState, c: LabContainer) -> Path:
    adapter = json.loads(adapter_path(state, c.cell).read_text())
    return Path(adapter["bind_mount_dir"]) / c.handle


def kill(ref: str, directory: Path = DEFAULT_DIR) -> LabContainer:
    """Kill a container's processes and drop its namespace, without `garden-hook down`."""
    import ctypes
    import os
    import signal

    state = require(directory)
    c = find(state, ref)
    for pid in netns.pids_in(c.ns):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    mount = _bind_mount(state, c)
    if mount.exists():
        ctypes.CDLL(None, use_errno=True).umount2(str(mount).encode(), 2)  # MNT_DETACH
    netns.remove(c.ns)
    return c


def dead(state: LabState, c: LabContainer) -> bool:
    return not netns.exists(c.ns) or not netns.pids_in(c.ns)


def gc(directory: Path = DEFAULT_DIR) -> list[LabContainer]:
    """`garden-hook down` for every container whose namespace or processes are gone."""
    state = require(directory)
    cleaned = []
    for c in [c for c in state.containers if dead(state, c)]:
        garden_hook(state, c.cell, "down", c.handle)
        netns.remove(c.ns)
        state.containers = [x for x in state.containers if x.handle != c.handle]
        state.save()
        cleaned.append(c)
    return cleaned
