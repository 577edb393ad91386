"""`down`: take a container's network away (spec dataplane 4.4); idempotent.

The plugins' DEL runs with the cached result; when the container's namespace is already gone
(the bind mount is missing or no longer a namespace) the plugins get an empty CNI_NETNS, which
CNI allows for DEL, and clean up what lives outside the container. Unmounting and releasing the
ports only report problems on stderr, as upstream does.
"""

from __future__ import annotations

import os
import sys

from cfnet.garden import bindmount, libcni
from cfnet.garden.config import AdapterConfig
from cfnet.garden.ports import PortPool
from cfnet.garden.up import IFNAME, HookError, check_handle


def down(cfg: AdapterConfig, handle: str, conflist: libcni.ConfList | None,
         runtime: libcni.Runtime) -> None:
    check_handle(handle, "down")
    target = os.path.join(cfg.bind_mount_dir, handle)
    if conflist is not None:
        netns = target if bindmount.is_netns(target) else ""
        att = libcni.Attachment(container_id=handle, netns=netns, ifname=IFNAME)
        try:
            runtime.del_list(conflist, att)
        except libcni.CNIFailure as e:
            raise HookError(f"cni down: del network failed: {e}") from None
    try:
        bindmount.remove(target)
    except Exception as e:  # noqa: BLE001 - reported, not fatal (upstream)
        sys.stderr.write(f"removing bind mount {target}: {e}\n")
    try:
        PortPool(cfg.state_file, cfg.start_port, cfg.total_ports).release(handle)
    except Exception as e:  # noqa: BLE001 - reported, not fatal (upstream)
        sys.stderr.write(f"releasing ports: {e}\n")
