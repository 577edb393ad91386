"""The lab on PostgreSQL: a server of the lab's own in the control plane, two policy-server
replicas behind the lab's balancer; one replica dies while the cells keep converging. And
`lab down` leaves the machine as it found it: no namespaces, mounts, processes or files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.lab_driver import Lab, app_name, reaches, wait_for

pytestmark = pytest.mark.privileged


@pytest.fixture(scope="module")
def module_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = Lab(tmp_path_factory.mktemp("lab-pg") / "lab",
              ("--cells", "2", "--db", "postgres", "--policy-servers", "2"))
    yield lab
    lab.down()


@pytest.fixture
def lab(module_lab: Lab) -> Lab:
    module_lab.up()  # restarts whatever a failed test left stopped; a no-op otherwise
    return module_lab


def lab_traces(lab: Lab) -> dict[str, list[str]]:
    """Whatever of this lab exists on the machine: namespaces, mounts, processes, files."""
    root = str(lab.directory)
    with open("/proc/self/mounts") as f:
        mounts = [line.split()[1] for line in f if root in line.split()[1]]
    processes = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if root in cmd or lab.prefix in cmd:
            processes.append(f"{pid}: {cmd[:120]}")
    files = [str(p) for p in (lab.directory, Path("/var/tmp") / f"{lab.prefix}-postgres")
             if p.exists()]
    return {"namespaces": lab.namespaces(), "mounts": mounts, "processes": processes,
            "files": files}


def test_replicas_on_postgres_one_killed_cells_keep_converging(lab: Lab) -> None:
    doc = lab.status()
    assert doc["database"] == "postgres" and doc["policy_servers"] == 2
    assert {"postgres", "policy-server-1", "policy-server-2", "balancer"} <= set(doc["processes"])
    src_app, dst_app = app_name("src"), app_name("dst")
    lab.push(dst_app, 2)
    src = lab.push(src_app)[0]
    dsts = lab.containers(dst_app)
    assert {d["cell"] for d in dsts} == set(lab.state()["cells"])

    for dead, alive in (("policy-server-2", "policy-server-1"),
                        ("policy-server-1", "policy-server-2")):
        lab.run("stop", dead, "--kill")
        assert not lab.status()["processes"][dead]["running"]
        port = "8080" if dead.endswith("2") else "9090"
        assert lab.run("policy", "--replica", dead[-1], "list", check=False).returncode != 0
        # Through the surviving replica itself; then through the balancer, which skips the dead.
        lab.run("policy", "--replica", alive[-1], "add", src_app, dst_app, "--port", port)
        for d in dsts:  # both cells converge
            wait_for(f"{src_app} -> {d['cell']}:{port} with {dead} down",
                     lambda d=d: reaches(src, d["ip"], int(port)))
        assert port in lab.run("policy", "list").stdout
        lab.run("start", dead)
    listed = lab.run("policy", "list").stdout
    assert "8080" in listed and "9090" in listed


def test_asg_through_postgres(lab: Lab) -> None:
    app = app_name("egress")
    c = lab.push(app)[0]
    internet = lab.host("internet")["ip"]
    group = app_name("asg")
    lab.run("asg", "add", group, "--destination", internet, "--protocol", "tcp", "--ports", "80",
            "--running-default")
    wait_for("ASG applied", lambda: reaches(c, internet, 80))
    lab.run("asg", "remove", group)
    wait_for("ASG removed", lambda: not reaches(c, internet, 80))


def test_down_leaves_the_machine_as_it_found_it(lab: Lab) -> None:
    traces = lab_traces(lab)
    assert traces["namespaces"] and traces["processes"] and traces["files"]  # the lab is there
    lab.run("push", app_name("c"))  # a container, with its bind mount
    assert lab_traces(lab)["mounts"]
    lab.run("down")
    assert lab_traces(lab) == {"namespaces": [], "mounts": [], "processes": [], "files": []}
    lab.run("down")  # twice is fine
