"""The controller harness runs a real controller inside a network namespace (for the lab)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cfnet.store.db import DatabaseConfig
from cfnet.testing.netns import Sandbox
from cfnet.testing.silk_controller import silk_controller

CLIENT = """
import sys
from cfnet.silk.lease_client import LeaseClient
from cfnet.web.tls import TLSFiles
url, cert, key, ca = sys.argv[1:]
with LeaseClient(url, TLSFiles(cert, key, ca)) as c:
    print(c.acquire("10.244.0.1").overlay_subnet)
"""


@pytest.mark.privileged
def test_controller_in_a_namespace(sqlite_config: DatabaseConfig, tmp_path: Path) -> None:
    with Sandbox("sc") as sandbox:
        ns = sandbox.netns("cp")
        with silk_controller(tmp_path, sqlite_config, netns=ns) as ctl:
            tls = ctl.client_tls
            # The API is reachable inside the namespace only: ask from there.
            result = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, ctl.url,
                                     str(tls.cert), str(tls.key), str(tls.ca)],
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            assert result.stdout.strip().startswith("10.255.")
        assert ctl.process.returncode == 0
