"""The lab through its CLI, as a newcomer runs it: demo, up, push, curl, status, down."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from cfnet.net import netns

pytestmark = pytest.mark.privileged

# A prefix of its own, so a lab someone runs on the same machine is never touched.
PREFIX = f"cfnlt{uuid.uuid4().hex[:5]}"


def cfnet(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cfnet", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "CFNET_LAB_PREFIX": PREFIX})


def lab_namespaces() -> list[str]:
    return [n for n in netns.names() if n.startswith(PREFIX + "-")]


@pytest.fixture
def lab_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "lab"
    yield directory
    cfnet("lab", "down", "--dir", str(directory))


def test_demo_passes_and_leaves_nothing(lab_dir: Path) -> None:
    proc = cfnet("lab", "demo", "--dir", str(lab_dir))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAIL" not in proc.stdout
    assert "ASG added" in proc.stdout and "egress denied without an ASG" in proc.stdout
    assert lab_namespaces() == []
    assert not lab_dir.exists()


def test_up_push_curl_status_down(lab_dir: Path) -> None:
    d = ["--dir", str(lab_dir)]
    assert cfnet("lab", "curl", "a", "b", *d).returncode != 0  # no lab yet: a clear error
    proc = cfnet("lab", "up", "--cells", "2", *d)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert cfnet("lab", "up", *d).stdout.count("already up") == 1  # idempotent
    assert cfnet("lab", "push", "web", "--instances", "2", *d).returncode == 0
    assert cfnet("lab", "push", "api", *d).returncode == 0
    proc = cfnet("lab", "curl", "api", "web", *d)
    assert proc.returncode != 0 and "refused" in proc.stdout  # no policy yet
    proc = cfnet("lab", "policy", "add", "api", "web", "--port", "8080", *d)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "api -> web" in proc.stdout
    proc = cfnet("lab", "curl", "api", "web", *d)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "web/0" in proc.stdout and "web/1" in proc.stdout
    proc = cfnet("lab", "curl", "api", "web", "--port", "9090", *d)
    assert proc.returncode != 0 and "refused" in proc.stdout
    proc = cfnet("lab", "policy", "list", *d)
    assert proc.returncode == 0 and "api" in proc.stdout and "web" in proc.stdout
    proc = cfnet("lab", "curl", "api", "nope", *d)
    assert proc.returncode != 0 and "no app 'nope'" in proc.stderr
    status = cfnet("lab", "status", *d)
    assert status.returncode == 0 and "cell1" in status.stdout and "web" in status.stdout
    assert cfnet("lab", "down", *d).returncode == 0
    assert lab_namespaces() == []
    assert cfnet("lab", "down", *d).returncode == 0  # twice is fine


def test_up_refuses_bad_database_options(lab_dir: Path) -> None:
    for args, message in ((["--db", "mysql://x"], "expected sqlite, postgres"),
                          (["--policy-servers", "2"], "needs a shared database")):
        proc = cfnet("lab", "up", *args, "--dir", str(lab_dir))
        assert proc.returncode != 0 and message in proc.stderr, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
    assert lab_namespaces() == []
