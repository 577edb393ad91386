"""`cfnet vxlan-agent --reset`: the pre-start rebuild of the cell table, in a namespace."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cfnet.core import asg_rules as ar
from cfnet.net import cell_table as ct
from cfnet.net import netns
from cfnet.net.nft import Nft

pytestmark = pytest.mark.privileged


def test_reset_drops_container_structure_and_rebuilds_the_base(sandbox: object,
                                                               tmp_path: Path) -> None:
    ns = sandbox.netns("cell")  # type: ignore[attr-defined]
    with Nft(ns) as nft:
        nft.run(ct.render_base())
        nft.run(ct.render_container_add(ct.ContainerNet(
            "h1", "10.255.1.2", ar.netout_chains("h1", "app", []))))
        assert "h1" in ct.handles_in(ct.list_cell(nft))
    cfg = tmp_path / "agent.json"
    cfg.write_text(json.dumps({"policy_server_url": "https://ps:4003",
                               "cni_datastore_path": str(tmp_path / "store.json"),
                               "ca_cert_file": "a", "client_cert_file": "b",
                               "client_key_file": "c", "overlay_network": "10.254.0.0/16"}))
    proc = netns.run(ns, [sys.executable, "-m", "cfnet", "vxlan-agent", "--config-file",
                          str(cfg), "--reset"], check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    with Nft(ns) as nft:
        state = ct.list_cell(nft)
        assert state is not None and ct.handles_in(state) == set()
        assert set(ct.BASE_CHAINS) <= set(state.chains)
        assert "10.254.0.0/16" in nft.run("list chain ip cfnet postrouting_nat")
