"""`cfnet cni bandwidth`: config checks (no root), and on a real Silk cell, chained after the
wrapper as in the conflist: qdiscs and IFB as spec 5, a rate limit measured with iperf3 in both
directions, collision-free IFB names, DEL (twice) leaving the cell as it was."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from wrapper_env import Env, deployment, wait_listening

from cfnet.cni.bandwidth import (Limits, check_mtu, ifb_alias, ifb_candidates, parse_limits,
                                 tbf_params)
from cfnet.cni.types import CNIError
from cfnet.net import netns

IPERF_PORT = 5201
RATE = 10_000_000  # bits per second
BURST = 200_000  # bits (25 KB, well above one MTU)


# ---- config (no root) -----------------------------------------------------------------------


def test_limits_from_entry_or_runtime_config() -> None:
    assert parse_limits({"name": "n"}).zero
    assert parse_limits({"ingressRate": 8000, "ingressBurst": 16000}) == Limits(8000, 16000, 0, 0)
    rc = {"runtimeConfig": {"bandwidth": {"egressRate": 1000, "egressBurst": 2000}}}
    assert parse_limits(rc) == Limits(0, 0, 1000, 2000)
    # Keys in the entry win over runtimeConfig (upstream's order).
    assert parse_limits({**rc, "ingressRate": 5, "ingressBurst": 6}) == Limits(5, 6, 0, 0)


@pytest.mark.parametrize("conf, msg", [
    ({"ingressRate": 1000}, "if rate is set, burst must also be set"),
    ({"egressBurst": 1000}, "if burst is set, rate must also be set"),
    ({"egressRate": 1, "egressBurst": 8 * 2**32}, "burst cannot be more than 4GB"),
    ({"ingressRate": -1}, "invalid config: key 'ingressRate' must be a non-negative integer"),
    ({"ingressRate": "1mbit", "ingressBurst": 1}, "invalid config: key 'ingressRate' must be a "
                                                  "non-negative integer"),
    ({"runtimeConfig": {"bandwidth": [1]}}, "invalid config: key 'runtimeConfig.bandwidth' must "
                                             "be an object"),
])
def test_bad_limits_are_error_7(conf: dict[str, Any], msg: str) -> None:
    with pytest.raises(CNIError) as err:
        parse_limits(conf)
    assert (err.value.code, err.value.msg) == (7, msg)


def test_burst_must_hold_one_mtu() -> None:
    check_mtu(Limits(1000, 1450 * 8, 1000, 1450 * 8), 1450)
    with pytest.raises(CNIError) as err:
        check_mtu(Limits(0, 0, 1000, 1449 * 8), 1450)
    assert err.value.code == 7
    assert err.value.msg == ("egressBurst 11592 bits is less than one MTU of the host interface "
                             "(1450 bytes = 11600 bits)")


def test_ifb_names_fit_and_differ() -> None:
    names = ifb_candidates("cni-wrapper", "handle-1")
    assert len(names) == 10 and len(set(names)) == 10
    assert all(n.startswith("bwp") and len(n.encode()) == 15 for n in names)
    assert names[0] != ifb_candidates("cni-wrapper", "handle-2")[0]
    assert ifb_alias("cni-wrapper", "h") == "cfnet-bandwidth cni-wrapper h"


def test_tbf_parameters_as_upstream() -> None:
    assert tbf_params(8_000_000, 80_000) == {"rate": 1_000_000, "burst": 10_000, "latency": 25_000}


# ---- on a cell ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    if sys.platform != "linux":
        pytest.skip("Linux only")
    with deployment(tmp_path_factory.mktemp("bandwidth"), "bw") as e:
        cell = e.cell
        server = netns.spawn(cell.ns, ["iperf3", "-s", "-B", cell.underlay_ip,
                                       "-p", str(IPERF_PORT)])
        e.procs.append(server)
        wait_listening(cell.ns, [IPERF_PORT])
        yield e


@pytest.fixture
def e(env: Env) -> Iterator[Env]:
    env.containers = []
    yield env
    for name in env.containers:
        netns.remove(name)


def bw_conf(prev: dict[str, Any] | None, **limits: int) -> dict[str, Any]:
    conf: dict[str, Any] = {"cniVersion": "1.0.0", "name": "cni-wrapper", "type": "bandwidth",
                            **limits}
    if prev is not None:
        conf["prevResult"] = prev
    return conf


def wrapper_conf(e: Env, handle: str) -> dict[str, Any]:
    return e.wrapper_conf(handle, host_tcp_services=[f"{e.cell.underlay_ip}:{IPERF_PORT}"])


def qdiscs(ns: str, dev: str) -> list[str]:
    out = json.loads(netns.run(ns, ["tc", "-j", "qdisc", "show", "dev", dev]).stdout)
    return sorted(q["kind"] for q in out if q["kind"] in ("tbf", "ingress"))


def ifbs(ns: str) -> dict[str, str]:
    out = json.loads(netns.run(ns, ["ip", "-j", "-d", "link", "show", "type", "ifb"]).stdout)
    return {l["ifname"]: l.get("ifalias", "") for l in out}


def iperf(ns: str, server: str, reverse: bool = False) -> float:
    argv = ["iperf3", "-c", server, "-p", str(IPERF_PORT), "-t", "2", "-J"]
    out = json.loads(netns.run(ns, argv + (["-R"] if reverse else []), timeout=60).stdout)
    return float(out["end"]["sum_received"]["bits_per_second"])



@pytest.mark.privileged
def test_rate_limit_measured_both_ways_and_del_restores_the_cell(e: Env) -> None:
    before = e.snapshot()
    ns = e.container_ns("bw1")
    run = e.cni("wrapper", "ADD", "bw1", ns, wrapper_conf(e, "bw1"))
    assert run.code == 0, run.stdout + run.stderr
    prev = run.out
    host_if = prev["interfaces"][0]["name"]  # type: ignore[index]
    cell_ip = e.cell.underlay_ip
    unlimited = iperf(ns, cell_ip)

    limits = {"ingressRate": RATE, "ingressBurst": BURST, "egressRate": RATE, "egressBurst": BURST}
    bw = e.cni("bandwidth", "ADD", "bw1", ns, bw_conf(prev, **limits))
    assert bw.code == 0, bw.stdout + bw.stderr
    ifb = ifb_candidates("cni-wrapper", "bw1")[0]
    assert bw.out["interfaces"][:2] == prev["interfaces"]  # type: ignore[index]
    assert bw.out["interfaces"][2]["name"] == ifb  # type: ignore[index]
    assert qdiscs(e.cell.ns, host_if) == ["ingress", "tbf"]
    assert qdiscs(e.cell.ns, ifb) == ["tbf"]
    assert ifbs(e.cell.ns)[ifb] == ifb_alias("cni-wrapper", "bw1")

    egress = iperf(ns, cell_ip)  # container -> cell: through the IFB
    ingress = iperf(ns, cell_ip, reverse=True)  # cell -> container: the host veth's tbf
    assert unlimited > 5 * RATE  # the limit is what slows traffic down, not the test bed
    assert 0.3 * RATE < egress < 1.5 * RATE, egress
    assert 0.3 * RATE < ingress < 1.5 * RATE, ingress

    check = e.cni("bandwidth", "CHECK", "bw1", ns, bw_conf(bw.out, **limits))
    assert check.code == 0, check.stdout

    for _ in range(2):  # DEL twice
        gone = e.cni("bandwidth", "DEL", "bw1", ns, bw_conf(None, **limits))
        assert (gone.code, gone.stdout) == (0, "")
        assert ifb not in ifbs(e.cell.ns)
        assert qdiscs(e.cell.ns, host_if) == []
    e.delete("bw1", ns)
    assert e.snapshot() == before


@pytest.mark.privileged
def test_bad_burst_and_name_collision(e: Env) -> None:
    before = e.snapshot()
    ns = e.container_ns("bw2")
    run = e.cni("wrapper", "ADD", "bw2", ns, wrapper_conf(e, "bw2"))
    assert run.code == 0, run.stdout + run.stderr
    prev = run.out
    host_if = prev["interfaces"][0]["name"]  # type: ignore[index]
    links_before = ifbs(e.cell.ns)

    # A burst below one MTU: code 7, nothing made.
    small = e.cni("bandwidth", "ADD", "bw2", ns, bw_conf(prev, egressRate=RATE, egressBurst=800))
    assert small.code == 1 and small.out["code"] == 7  # type: ignore[index]
    assert "less than one MTU" in small.out["msg"]  # type: ignore[index]
    assert qdiscs(e.cell.ns, host_if) == [] and ifbs(e.cell.ns) == links_before

    # Someone else's device already has our first-choice name: the next candidate is used, and
    # DEL removes only ours.
    first, second = ifb_candidates("cni-wrapper", "bw2")[:2]
    netns.run(e.cell.ns, ["ip", "link", "add", first, "type", "ifb"])
    netns.run(e.cell.ns, ["ip", "link", "set", first, "alias", "somebody else"])
    try:
        ok = e.cni("bandwidth", "ADD", "bw2", ns, bw_conf(prev, egressRate=RATE,
                                                          egressBurst=BURST))
        assert ok.code == 0, ok.stdout + ok.stderr
        assert ok.out["interfaces"][-1]["name"] == second  # type: ignore[index]
        gone = e.cni("bandwidth", "DEL", "bw2", ns, bw_conf(None))
        assert gone.code == 0
        assert first in ifbs(e.cell.ns) and second not in ifbs(e.cell.ns)
    finally:
        netns.run(e.cell.ns, ["ip", "link", "del", first])
    e.delete("bw2", ns)
    assert e.snapshot() == before


@pytest.mark.privileged
def test_zero_limits_pass_the_result_through(e: Env) -> None:
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "x"}],
            "ips": [{"address": "10.255.0.9/32"}]}
    run = e.cni("bandwidth", "ADD", "bw3", None, bw_conf(prev))
    assert run.code == 1  # CNI_NETNS is required for ADD...
    ns = e.container_ns("bw3")
    run = e.cni("bandwidth", "ADD", "bw3", ns, bw_conf(prev))
    assert run.code == 0 and run.out == prev  # ...but with no limits nothing is looked at


@pytest.mark.parametrize("alias, name", [("bandwidth", "bandwidth"),
                                         ("cni-wrapper-plugin", "cni-wrapper-plugin")])
def test_runtime_symlinks_run_the_plugins(tmp_path: Any, alias: str, name: str) -> None:
    """A runtime finds plugins by type in CNI_PATH: a symlink of that name to cfnet runs ours."""
    import os
    import subprocess
    from pathlib import Path

    link = tmp_path / alias
    link.symlink_to(Path(sys.executable).with_name("cfnet"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    about = subprocess.run([str(link)], capture_output=True, text=True, env=env, timeout=30)
    assert about.returncode == 0 and about.stderr.startswith(f"CNI Plugin {name}\n")
    version = subprocess.run([str(link)], capture_output=True, text=True, timeout=30,
                             env={**env, "CNI_COMMAND": "VERSION"})
    assert json.loads(version.stdout)["supportedVersions"] == ["0.4.0", "1.0.0", "1.1.0"]


@pytest.mark.privileged
def test_a_failure_half_way_removes_what_the_call_made(e: Env) -> None:
    """The host veth already has an ingress qdisc (someone else's): the egress half fails after
    the ingress tbf and the IFB were made, and both are removed again."""
    ns = e.container_ns("bw4")
    run = e.cni("wrapper", "ADD", "bw4", ns, wrapper_conf(e, "bw4"))
    assert run.code == 0, run.stdout + run.stderr
    prev = run.out
    host_if = prev["interfaces"][0]["name"]  # type: ignore[index]
    netns.run(e.cell.ns, ["tc", "qdisc", "add", "dev", host_if, "ingress"])
    ifbs_before = ifbs(e.cell.ns)
    limits = {"ingressRate": RATE, "ingressBurst": BURST, "egressRate": RATE, "egressBurst": BURST}
    bw = e.cni("bandwidth", "ADD", "bw4", ns, bw_conf(prev, **limits))
    assert bw.code == 1 and bw.out is not None
    assert bw.out["msg"].startswith("bandwidth: ")
    assert qdiscs(e.cell.ns, host_if) == ["ingress"]  # only the one that was there before
    assert ifbs(e.cell.ns) == ifbs_before
    netns.run(e.cell.ns, ["tc", "qdisc", "del", "dev", host_if, "ingress"])
    e.delete("bw4", ns)
