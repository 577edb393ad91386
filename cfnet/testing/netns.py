"""Test harness for kernel tests: unique namespace names, and everything removed afterwards.

`Sandbox` hands out namespaces and topologies whose names share one unique prefix, records every
process started in them, and on close stops the processes and deletes every namespace with that
prefix, even those a test created by hand or a crashed step left half-made.
"""

from __future__ import annotations

import uuid
from types import TracebackType

from cfnet.net import netns
from cfnet.net.topology import Topology, destroy_prefix


class Sandbox:
    def __init__(self, label: str = "t") -> None:
        self.prefix = f"cfn{label}{uuid.uuid4().hex[:6]}"
        self.topologies: list[Topology] = []

    def name(self, suffix: str) -> str:
        """A namespace name owned by this sandbox."""
        return f"{self.prefix}-{suffix}"

    def netns(self, suffix: str) -> str:
        """Create and return a bare namespace with its loopback up."""
        from pyroute2 import IPRoute

        name = self.name(suffix)
        netns.create(name)
        with IPRoute(netns=name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        return name

    def topology(self, network: str = "10.10.0.0/24") -> Topology:
        """A new topology (switch + hosts) whose namespaces belong to this sandbox."""
        topo = Topology(prefix=f"{self.prefix}{len(self.topologies)}", network=network).create()
        self.topologies.append(topo)
        return topo

    def close(self) -> None:
        for topo in self.topologies:
            topo.destroy()
        destroy_prefix(self.prefix)
        for topo in self.topologies:
            destroy_prefix(topo.prefix)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
