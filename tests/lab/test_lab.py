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
    namespaces = lab_namespaces()
    other = lab_dir.parent / "other"
    proc = cfnet("lab", "up", "--dir", str(other))  # same prefix, another directory
    assert proc.returncode != 0 and f"a lab in {lab_dir}" in proc.stderr, proc.stdout + proc.stderr
    assert "CFNET_LAB_PREFIX" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = cfnet("lab", "down", "--dir", str(other))
    assert proc.returncode == 0 and "left alone" in proc.stdout, proc.stdout + proc.stderr
    proc = cfnet("lab", "demo", "--dir", str(lab_dir))  # never reuses, then removes, this lab
    assert proc.returncode != 0 and "already holds a lab" in proc.stdout, proc.stdout
    assert lab_namespaces() == namespaces and not other.exists()
    for bad in ("a/b", "../x", "ünï", "a b", "", "-i", "UPPER", "x" * 33):
        proc = cfnet("lab", "push", *d, "--", bad)
        assert proc.returncode != 0 and "bad app name" in proc.stderr, (bad, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1
    assert lab_namespaces() == namespaces and not list(Path.cwd().glob(f"{PREFIX}*"))
    assert cfnet("lab", "push", "web", "--instances", "2", *d).returncode == 0
    assert cfnet("lab", "push", "api", *d).returncode == 0
    proc = cfnet("lab", "curl", "api", "web", *d)
    assert proc.returncode != 0 and "refused" in proc.stdout  # no policy yet
    assert proc.stdout.count("refused") == proc.stdout.count("\n") == 2, proc.stdout
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
    header, row = proc.stdout.splitlines()[:2]  # columns sized for the names, not the guids
    assert header.split() == ["source", "destination", "protocol", "ports"]
    assert row.split() == ["api", "web", "tcp", "8080"]
    assert header.index("destination") == row.index("web"), proc.stdout
    proc = cfnet("lab", "curl", "api", "nope", *d)
    assert proc.returncode != 0 and "no app 'nope'" in proc.stderr
    status = cfnet("lab", "status", *d)
    assert status.returncode == 0 and "cell1" in status.stdout and "web" in status.stdout
    assert cfnet("lab", "down", *d).returncode == 0
    assert lab_namespaces() == []
    assert not lab_dir.exists()  # the lab made it
    assert cfnet("lab", "down", *d).returncode == 0  # twice is fine


def test_up_refuses_bad_database_options(lab_dir: Path) -> None:
    for args, message in ((["--db", "mysql://x"], "expected sqlite, postgres"),
                          (["--policy-servers", "2"], "needs a shared database")):
        proc = cfnet("lab", "up", *args, "--dir", str(lab_dir))
        assert proc.returncode != 0 and message in proc.stderr, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
    assert lab_namespaces() == []


def test_down_and_up_leave_a_directory_that_is_not_a_labs_alone(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes").write_text("data")
    proc = cfnet("lab", "down", "--dir", str(precious))
    assert proc.returncode == 0 and "holds no lab: nothing removed" in proc.stdout, proc.stdout
    proc = cfnet("lab", "up", "--dir", str(precious))
    assert proc.returncode != 0 and "is not empty and holds no lab" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert (precious / "notes").read_text() == "data"
    assert sorted(p.name for p in precious.iterdir()) == ["notes"]
    assert lab_namespaces() == []


def test_sigterm_during_up_removes_what_it_started(lab_dir: Path) -> None:
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "cfnet", "lab", "up", "--dir", str(lab_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "CFNET_LAB_PREFIX": PREFIX})
    assert proc.stdout is not None
    for line in proc.stdout:  # the control plane runs: interrupt the rest
        if "policy-server on" in line:
            break
    proc.send_signal(signal.SIGTERM)
    out, errors = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "Traceback" not in errors, errors
    assert "interrupted" in errors
    assert lab_namespaces() == []
    with open("/proc/self/mounts") as f:
        assert str(lab_dir) not in f.read()
    assert "lab up" not in out
