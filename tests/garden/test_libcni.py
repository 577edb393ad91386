"""The CNI runtime's libcni semantics, with small exec'd plugins (no kernel changes, no root)."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from cfnet.garden import libcni

# Records (command, env, conf); ADD returns prevResult with one more IP (or a fresh result).
RECORDER = """
import json, os, sys
conf = json.load(sys.stdin)
env = {k: v for k, v in os.environ.items() if k.startswith("CNI_")}
with open(conf["record"], "a") as f:
    f.write(json.dumps({"type": conf["type"], "command": env["CNI_COMMAND"], "env": env,
                        "conf": conf}) + "\\n")
if env["CNI_COMMAND"] == "ADD":
    result = conf.get("prevResult") or {"cniVersion": conf["cniVersion"], "ips": []}
    result["ips"].append({"address": conf["ip"]})
    print(json.dumps(result))
"""


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("one", "two", "three"):
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{RECORDER}")
        path.chmod(0o755)
    return bin_dir


def conflist(tmp_path: Path, version: str = "1.0.0", types: tuple[str, ...] = ("one", "two")
             ) -> libcni.ConfList:
    record = str(tmp_path / "calls")
    doc = {"cniVersion": version, "name": "net1",
           "plugins": [{"type": t, "record": record, "ip": f"10.0.0.{i + 1}/24"}
                       for i, t in enumerate(types)]}
    return libcni.conflist_from_bytes(json.dumps(doc).encode())


def calls(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "calls"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_add_injects_and_chains_results_then_del_reverses_with_the_cache(tmp_path: Path,
                                                                         plugins: Path) -> None:
    cl = conflist(tmp_path)
    rt = libcni.Runtime([str(plugins)], str(tmp_path / "cache"))
    extra = {"metadata": {"app_id": "a"}, "runtimeConfig": {"portMappings": [{"hostPort": 1}]}}
    att = libcni.Attachment("handle-1", "/run/netns/x", "eth0", extra)
    result = rt.add_list(cl, att)
    assert [ip["address"] for ip in result["ips"]] == ["10.0.0.1/24", "10.0.0.2/24"]
    first, second = calls(tmp_path)
    assert first["env"] == {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "handle-1",
                            "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
                            "CNI_PATH": str(plugins), "CNI_ARGS": ""}
    assert first["conf"]["name"] == "net1" and first["conf"]["cniVersion"] == "1.0.0"
    assert first["conf"]["metadata"] == {"app_id": "a"}
    assert first["conf"]["runtimeConfig"] == {"portMappings": [{"hostPort": 1}]}
    assert "prevResult" not in first["conf"]
    assert second["conf"]["prevResult"]["ips"] == [{"address": "10.0.0.1/24"}]

    cache = tmp_path / "cache" / "results" / "net1-handle-1-eth0"
    entry = json.loads(cache.read_text())
    assert entry["kind"] == "cniCacheV1" and entry["result"] == result
    assert (entry["containerId"], entry["ifName"], entry["networkName"], entry["netns"]) == (
        "handle-1", "eth0", "net1", "/run/netns/x")
    assert json.loads(base64.b64decode(entry["config"]))["name"] == "net1"

    # a new runtime (a restart) deletes with the cached result, in reverse order
    libcni.Runtime([str(plugins)], str(tmp_path / "cache")).del_list(
        cl, libcni.Attachment("handle-1", "", "eth0"))
    dels = [c for c in calls(tmp_path) if c["command"] == "DEL"]
    assert [d["type"] for d in dels] == ["two", "one"]
    assert all(d["conf"]["prevResult"] == result for d in dels)
    assert all("metadata" not in d["conf"] for d in dels)
    assert dels[0]["conf"]["runtimeConfig"] == {"portMappings": [{"hostPort": 1}]}
    assert dels[0]["env"]["CNI_NETNS"] == ""
    assert not cache.exists()


def test_del_without_or_with_a_broken_cache(tmp_path: Path, plugins: Path) -> None:
    cl = conflist(tmp_path)
    rt = libcni.Runtime([str(plugins)], str(tmp_path / "cache"))
    att = libcni.Attachment("h", "", "eth0")
    rt.del_list(cl, att)  # nothing cached: plugins still get DEL, without prevResult
    assert ["prevResult" in c["conf"] for c in calls(tmp_path)] == [False, False]
    path = Path(rt.cache_path(cl, att))
    path.parent.mkdir(parents=True)
    path.write_text("{broken")
    rt.del_list(cl, att)
    assert not path.exists()


def test_versions_before_040_get_no_cached_prev_result(tmp_path: Path, plugins: Path) -> None:
    cl = conflist(tmp_path, version="0.3.1")
    rt = libcni.Runtime([str(plugins)], str(tmp_path / "cache"))
    att = libcni.Attachment("h", "/x", "eth0")
    rt.add_list(cl, att)
    rt.del_list(cl, att)
    assert [("prevResult" in c["conf"]) for c in calls(tmp_path) if c["command"] == "DEL"] == [
        False, False]


def test_a_failed_add_deletes_what_ran_and_names_the_plugin(tmp_path: Path, plugins: Path) -> None:
    bad = plugins / "bad"
    bad.write_text("#!/bin/sh\ncat >/dev/null\n[ \"$CNI_COMMAND\" = DEL ] && exit 0\n"
                   "echo 'not json'\nexit 3\n")
    bad.chmod(0o755)
    cl = conflist(tmp_path, types=("one", "two", "bad"))
    rt = libcni.Runtime([str(plugins)], str(tmp_path / "cache"))
    with pytest.raises(libcni.CNIFailure) as e:
        rt.add_list(cl, libcni.Attachment("h", "/x", "eth0"))
    assert str(e.value) == ('plugin type="bad" failed (add): netplugin failed but error parsing '
                            'its diagnostic message "not json\\n": invalid character \'o\' in '
                            'literal null (expecting \'u\')')
    assert [(c["type"], c["command"]) for c in calls(tmp_path)] == [
        ("one", "ADD"), ("two", "ADD"), ("two", "DEL"), ("one", "DEL")]
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


def test_plugin_error_texts(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in {
        "quiet": "exit 1",
        "stderr": "echo 'oops' >&2; exit 1",
        "json": "echo '{\"code\": 7, \"msg\": \"bad config\", \"details\": \"key x\"}'; exit 1",
    }.items():
        (bin_dir / name).write_text(f"#!/bin/sh\ncat >/dev/null\n{body}\n")
        (bin_dir / name).chmod(0o755)
    rt = libcni.Runtime([str(bin_dir), "/nonexistent"], str(tmp_path / "cache"))
    expected = {
        "quiet": "netplugin failed with no error message: exit status 1",
        "stderr": 'netplugin failed: "oops\\n"',
        "json": "bad config; key x",
        "gone": f'failed to find plugin "gone" in path [{bin_dir} /nonexistent]',
    }
    for name, text in expected.items():
        cl = libcni.conflist_from_bytes(json.dumps(
            {"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": name}]}).encode())
        with pytest.raises(libcni.CNIFailure) as e:
            rt.add_list(cl, libcni.Attachment("h", "/x", "eth0"))
        assert str(e.value) == f'plugin type="{name}" failed (add): {text}'


def test_config_discovery(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "net.d"
    d.mkdir()
    assert libcni.load_conflist(str(d)) is None
    (d / "20-single.conf").write_text(json.dumps(
        {"cniVersion": "0.4.0", "name": "single", "type": "one"}))
    only = libcni.load_conflist(str(d))
    assert only is not None and (only.name, only.cni_version) == ("single", "0.4.0")
    assert [p["type"] for p in only.plugins] == ["one"]
    assert capsys.readouterr().err == ""
    (d / "sub").mkdir()
    (d / "sub" / "00-a.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "nested", "plugins": [{"type": "x"}]}))
    (d / "30-b.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "second", "plugins": [{"type": "y"}]}))
    chosen = libcni.load_conflist(str(d))
    # a conflist wins over a .conf; among them the first in lexical walk order
    assert chosen is not None and chosen.name == "second"
    warning = "Only one CNI config file or conflist (chain) will be executed"
    assert warning in capsys.readouterr().err
    (d / "10-a.conflist").write_text('{"name": "broken"}')
    with pytest.raises(libcni.CNIFailure,
                       match=r"unable to load config from .*10-a.conflist: "
                             r"error parsing configuration list: no 'plugins' key"):
        libcni.load_conflist(str(d))


def test_as_040_names_ip_versions() -> None:
    r = libcni.as_040({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"},
                                                      {"address": "fd00::2/64"}]})
    assert r["cniVersion"] == "0.4.0"
    assert [ip["version"] for ip in r["ips"]] == ["4", "6"]


def test_names_are_checked_before_anything_runs(tmp_path: Path, plugins: Path) -> None:
    rt = libcni.Runtime([str(plugins)], str(tmp_path / "cache"))
    bad_net = libcni.ConfList(name="../escape", cni_version="1.0.0",
                              plugins=[{"type": "one", "record": str(tmp_path / "calls")}])
    with pytest.raises(libcni.CNIFailure,
                       match=r"^invalid characters found in network name; \.\./escape$"):
        rt.add_list(bad_net, libcni.Attachment("h", "/x", "eth0"))
    with pytest.raises(libcni.CNIFailure, match=r"^invalid characters in containerID; a/b$"):
        rt.del_list(conflist(tmp_path), libcni.Attachment("a/b", "", "eth0"))
    assert calls(tmp_path) == []
