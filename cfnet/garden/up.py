"""`up`: give a new container its network (spec dataplane 4.3), or leave nothing behind.

Each step that changes something registers its undo before the next step runs; any failure
(including one of ours after the plugins succeeded) runs the undos in reverse, so a failed `up`
leaves no bind mount, port, plugin state (IP, link, rules), cache entry or proxy table. Upstream
keeps the ports and everything the plugins did until Garden calls `down` (QUIRK Q16, Q10).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from cfnet.garden import bindmount, libcni, proxy
from cfnet.garden.config import AdapterConfig
from cfnet.garden.inputs import UpInputs, port_mappings
from cfnet.garden.ports import PortError, PortPool

IFNAME = "eth0"
HOST_IP = "255.255.255.255"
_HANDLE_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")


class HookError(Exception):
    """One line for Garden (printed after the log prefix)."""


def check_handle(handle: str, action: str) -> None:
    """Upstream's empty-handle error; a handle libcni would refuse is refused before any change."""
    if not handle:
        raise HookError(f"{action} missing container handle")
    if not _HANDLE_RE.match(handle):
        where = "cni up failed: add network list failed" if action == "up" else \
            "cni down: del network failed"
        raise HookError(f"{where}: invalid characters in containerID; {handle}")


def _undo_all(undo: list[tuple[str, Callable[[], None]]]) -> None:
    for what, fn in reversed(undo):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - keep undoing; say what could not be undone
            sys.stderr.write(f"rollback: {what}: {e}\n")


def up(cfg: AdapterConfig, handle: str, inputs: UpInputs, conflist: libcni.ConfList | None,
       runtime: libcni.Runtime) -> dict[str, Any]:
    check_handle(handle, "up")
    source = f"/proc/{inputs.pid}/ns/net" if inputs.pid else "/proc/self/fd/3"
    target = os.path.join(cfg.bind_mount_dir, handle)
    undo: list[tuple[str, Callable[[], None]]] = []
    try:
        try:
            bindmount.mount(source, target)
        except bindmount.MountError as e:
            raise HookError(f"failed mounting {source} to {target}: {e}") from None
        undo.append((f"removing bind mount {target}", lambda: bindmount.remove(target)))

        netin = [dict(m) for m in inputs.netin]
        wanted = sum(1 for m in netin if m["host_port"] == 0)
        pool = PortPool(cfg.state_file, cfg.start_port, cfg.total_ports)
        try:
            got = pool.acquire(handle, wanted)
        except (PortError, OSError) as e:
            raise HookError(f"allocating port: {e}") from None
        undo.append(("releasing ports", lambda: pool.release(handle, got)))
        free = iter(got)
        for m in netin:
            if m["host_port"] == 0:
                m["host_port"] = next(free)
        mapped = [{"HostPort": m["host_port"], "ContainerPort": m["container_port"]} for m in netin]

        if conflist is None:
            raise HookError("cni up failed: no ip allocated")
        extra: dict[str, Any] = {}
        if inputs.properties:
            extra["metadata"] = inputs.properties
        extra["runtimeConfig"] = {"portMappings": port_mappings(netin),
                                  "netOutRules": inputs.netout_rules}
        att = libcni.Attachment(container_id=handle, netns=target, ifname=IFNAME, extra=extra)
        try:
            result = runtime.add_list(conflist, att)
        except libcni.CNIFailure as e:
            raise HookError(f"cni up failed: add network list failed: {e}") from None
        undo.append(("cni del", lambda: runtime.del_list(conflist, att)))
        if result is None:
            raise HookError("cni up failed: no ip allocated")
        r040 = libcni.as_040(result)

        try:
            if proxy.apply(target, cfg.proxy_redirect_cidr, cfg.enable_ingress_proxy_redirect,
                           cfg.proxy_port):
                undo.append(("removing proxy redirect", lambda: proxy.remove(target)))
        except Exception as e:  # noqa: BLE001 - nft or namespace errors, one line
            raise HookError(f"proxy redirect apply: {e}") from None

        return _outputs(r040, mapped, cfg.search_domains)
    except BaseException:
        _undo_all(undo)
        raise


def _outputs(r040: dict[str, Any], mapped: list[dict[str, int]],
             search_domains: list[str]) -> dict[str, Any]:
    ips = r040.get("ips") or []
    ip = next((i for i in ips if str(i.get("version")) == "4"), None)
    if ip is None:
        raise HookError("expected an IPv4 address in the CNI result")
    interfaces = r040.get("interfaces") or []
    ifname = ""
    index = ip.get("interface")
    if index is not None:
        if not isinstance(index, int) or index < 0 or index >= len(interfaces):
            raise HookError(f"no corresponding interface found, interface index: {index}, "
                            f"number of interfaces: {len(interfaces)}")
        ifname = str(interfaces[index].get("name", ""))
    props: dict[str, str] = {
        "garden.network.container-ip": str(ip.get("address", "")).split("/")[0],
        "garden.network.host-ip": HOST_IP,
        "garden.network.mapped-ports": json.dumps(mapped, separators=(",", ":")),
    }
    if ifname:
        props["garden.network.interface"] = ifname
    out: dict[str, Any] = {"properties": props}
    nameservers = (r040.get("dns") or {}).get("nameservers") or []
    if nameservers:
        out["dns_servers"] = list(nameservers)
    if search_domains:
        out["search_domains"] = list(search_domains)
    return out
