"""Apps in the lab: containers on cells, each running the lab responder.

A container is a network namespace (Garden would create it) wired by the cell's CNI chain, run
inside the cell namespace exactly as a runtime runs it.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path

from cfnet.lab.deploy import LabError, require
from cfnet.lab.state import DEFAULT_DIR, PREFIX, LabContainer, LabState
from cfnet.net import netns

APP_PORT = 8080


def cni_config(state: LabState, cell: str) -> dict[str, object]:
    work = Path(state.directory) / "logs" / cell
    return {"cniVersion": "1.0.0", "name": "silk", "type": "silk-cni", "daemonPort": 23954,
            "dataDir": str(work / "host-local"), "datastore": str(work / "silk-store.json")}


def _cni(state: LabState, cell: str, command: str, handle: str, container_ns: str) -> dict:
    env = dict(os.environ, CNI_COMMAND=command, CNI_CONTAINERID=handle,
               CNI_NETNS=netns.path(container_ns) if command != "DEL" or netns.exists(container_ns) else "",
               CNI_IFNAME="eth0", CNI_PATH="/opt/cni/bin", CFNET_CNI_LOG="off")
    import subprocess

    proc = subprocess.run(netns.exec_argv(state.hosts[cell].ns, [sys.executable, "-m", "cfnet", "cni", "silk"]),
                          input=json.dumps(cni_config(state, cell)), capture_output=True,
                          text=True, env=env, timeout=60)
    if proc.returncode != 0:
        try:
            msg = json.loads(proc.stdout)["msg"]
        except (ValueError, KeyError):
            msg = (proc.stdout + proc.stderr).strip()
        raise LabError(f"CNI {command} of {handle} on {cell} failed: {msg}")
    return json.loads(proc.stdout) if proc.stdout.strip() else {}


def push(app: str, instances: int = 1, directory: Path = DEFAULT_DIR) -> list[LabContainer]:
    """Start `instances` containers of `app`, spread over the cells round-robin."""
    state = require(directory)
    if instances < 1:
        raise LabError("--instances must be at least 1")
    meta = state.apps.setdefault(app, {"app_id": str(uuid.uuid4()), "space_id": str(uuid.uuid4()),
                                       "org_id": str(uuid.uuid4())})
    created = []
    start = len(state.containers_of(app))
    for i in range(start, start + instances):
        cell = state.cells[(len(state.containers)) % len(state.cells)]
        handle = f"{app}-{i}-{uuid.uuid4().hex[:6]}"
        ns = f"{PREFIX}-c-{handle}"
        netns.create(ns)
        try:
            result = _cni(state, cell, "ADD", handle, ns)
            ip = result["ips"][0]["address"].split("/")[0]
            netns.spawn(ns, [sys.executable, "-m", "cfnet.lab.responder", "serve", app, str(i),
                             str(APP_PORT)], log=open(state.logs / f"{handle}.log", "ab"))
        except BaseException:
            try:
                _cni(state, cell, "DEL", handle, ns)
            finally:
                netns.remove(ns)
            raise
        container = LabContainer(handle=handle, app=app, instance=i, cell=cell, ns=ns, ip=ip,
                                 port=APP_PORT)
        state.containers.append(container)
        state.save()
        created.append(container)
    _ = meta
    return created


def probe(state: LabState, source_ns: str, host: str, port: int, timeout: float = 2.0) -> tuple[bool, str]:
    """Connect from inside `source_ns` to host:port; (reached, answer or error)."""
    proc = netns.run(source_ns, [sys.executable, "-m", "cfnet.lab.responder", "probe", host,
                                 str(port), "--timeout", str(timeout)], check=False,
                     timeout=timeout + 30)
    return proc.returncode == 0, proc.stdout.strip() or proc.stderr.strip()


def curl(source_app: str, dest_app: str, port: int = APP_PORT,
         directory: Path = DEFAULT_DIR) -> list[tuple[LabContainer, LabContainer, bool, str]]:
    """From the first instance of `source_app` to every instance of `dest_app`."""
    state = require(directory)
    sources, dests = state.containers_of(source_app), state.containers_of(dest_app)
    if not sources:
        raise LabError(f"no app {source_app!r} in the lab: `cfnet lab push {source_app}` first")
    if not dests:
        raise LabError(f"no app {dest_app!r} in the lab: `cfnet lab push {dest_app}` first")
    return [(sources[0], d, *probe(state, sources[0].ns, d.ip, port)) for d in dests]
