"""Garden's side of the protocol: arguments, config and stdin errors, byte for byte.

Every error here happens before the hook changes anything, so these run without root: one line
`<prefix>: <error>` on stderr, nothing on stdout, exit status 1.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

NOT_DIRECTLY = "this is a plugin for Garden-runC.  Don't run it directly."
REQUIRED = ["cni_plugin_dir", "cni_config_dir", "bind_mount_dir", "state_file", "start_port",
            "total_ports", "log_prefix", "iptables_lock_file", "proxy_port", "proxy_uid"]


def hook(args: list[str], stdin: bytes = b"") -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "cfnet", "garden-hook", *args], input=stdin,
                          capture_output=True, timeout=30)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def adapter(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    (tmp_path / "net.d").mkdir(exist_ok=True)
    cfg: dict[str, Any] = {
        "cni_plugin_dir": str(tmp_path / "bin"), "cni_config_dir": str(tmp_path / "net.d"),
        "bind_mount_dir": str(tmp_path / "netns"), "state_file": str(tmp_path / "state.json"),
        "start_port": 61000, "total_ports": 10, "log_prefix": "my-prefix",
        "iptables_lock_file": str(tmp_path / "lock"), "proxy_port": 15001, "proxy_uid": 0,
        "cni_cache_dir": str(tmp_path / "cache")}
    cfg.update(changes)
    return cfg


def write(tmp_path: Path, cfg: dict[str, Any] | str) -> str:
    path = tmp_path / "adapter.json"
    path.write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
    return str(path)


def fails(args: list[str], line: str, stdin: bytes = b"") -> None:
    rc, out, err = hook(args, stdin)
    assert (rc, out, err) == (1, "", line + "\n")


@pytest.mark.parametrize("args", [[], ["-h"]])
def test_run_directly(args: list[str]) -> None:
    fails(args, f"cfnetworking: {NOT_DIRECTLY}")


def test_help_teaches() -> None:
    rc, out, _ = hook(["--help"])
    assert rc == 0 and "Garden" in out and "up" in out and "down" in out


@pytest.mark.parametrize("args,line", [
    (["--nope"], "parse args: flag provided but not defined: -nope"),
    (["-nope=1"], "parse args: flag provided but not defined: -nope"),
    (["--action", "up"], "parse args: missing required flag 'configFile'"),
    (["--configFile"], "parse args: flag needs an argument: -configFile"),
    (["---configFile=x"], "parse args: bad flag syntax: ---configFile=x"),
    (["--configFile=/no/such/file", "--action=up", "--handle=h"],
     "parse args: file does not exist: stat /no/such/file: no such file or directory"),
])
def test_argument_errors(args: list[str], line: str) -> None:
    fails(args, f"cfnetworking: {line}")


def test_errors_after_the_config_carry_its_prefix(tmp_path: Path) -> None:
    path = write(tmp_path, adapter(tmp_path))
    fails(["--configFile", path, "--action", "up", "--handle", "h", "extra", "args"],
          "my-prefix: parse args: unexpected extra args: [extra args]")
    fails(["--configFile", path, "--action", "up"],
          "my-prefix: parse args: missing required flag 'handle'")
    fails(["-configFile", path, "-handle", "h"],
          "my-prefix: parse args: missing required flag 'action'")
    fails(["--configFile", path, "--action", "net-in", "--handle", "h"],
          "my-prefix: unrecognized action: net-in")
    fails(["up", "--configFile", path], "my-prefix: parse args: missing required flag 'handle'")
    fails(["up", "--configFile", path, "--handle", "../escape"],
          "my-prefix: cni up failed: add network list failed: invalid characters in "
          "containerID; ../escape", stdin=b"{}")


@pytest.mark.parametrize("key", REQUIRED)
def test_missing_required_config(tmp_path: Path, key: str) -> None:
    cfg = adapter(tmp_path)
    del cfg[key]
    prefix = "cfnetworking" if key == "log_prefix" else "my-prefix"
    fails(["--configFile", write(tmp_path, cfg), "--action", "up", "--handle", "h"],
          f"{prefix}: parse args: missing required config '{key}'")


@pytest.mark.parametrize("key", ["start_port", "total_ports", "proxy_port", "cni_plugin_dir"])
def test_zero_values_are_missing(tmp_path: Path, key: str) -> None:
    cfg = adapter(tmp_path, **{key: "" if key == "cni_plugin_dir" else 0})
    fails(["--configFile", write(tmp_path, cfg), "--action", "down", "--handle", "h"],
          f"my-prefix: parse args: missing required config '{key}'")


def test_config_keys_match_case_insensitively(tmp_path: Path) -> None:
    cfg = {k.upper(): v for k, v in adapter(tmp_path).items()}
    path = write(tmp_path, cfg)
    rc, out, err = hook(["--configFile", path, "--action", "down", "--handle", "h"])
    assert (rc, out, err) == (0, "", "")


@pytest.mark.parametrize("text,line", [
    ("{", "cfnetworking: parse args: parsing config ({path}): unexpected end of JSON input"),
    ("nope", "cfnetworking: parse args: parsing config ({path}): invalid character 'o' in "
             "literal null (expecting 'u')"),
    ('{"log_prefix": "p", "start_port": "61000"}',
     "p: parse args: parsing config ({path}): json: cannot unmarshal string into Go struct "
     "field Config.start_port of type uint32"),
    ('{"start_port": -1}',
     "cfnetworking: parse args: parsing config ({path}): json: cannot unmarshal number -1 into "
     "Go struct field Config.start_port of type uint32"),
])
def test_bad_config_json(tmp_path: Path, text: str, line: str) -> None:
    path = write(tmp_path, text)
    fails(["--configFile", path, "--action", "up", "--handle", "h"], line.format(path=path))


@pytest.mark.parametrize("stdin,line", [
    (b"", "EOF"),
    (b"{", "unexpected EOF"),
    (b"nope", "invalid character 'o' in literal null (expecting 'u')"),
    (b"x", "invalid character 'x' looking for beginning of value"),
    (b'{"pid": "x"}',
     "json: cannot unmarshal string into Go struct field UpInputs.Pid of type int"),
    (b'{"Pid": 0, "netin": [{"host_port": "80"}]}',
     "json: cannot unmarshal string into Go struct field NetIn.netin.host_port of type uint32"),
    (b'{"Properties": []}', "json: cannot unmarshal array into Go struct field "
                            "UpInputs.Properties of type map[string]interface {}"),
])
def test_bad_stdin(tmp_path: Path, stdin: bytes, line: str) -> None:
    path = write(tmp_path, adapter(tmp_path))
    fails(["--configFile", path, "--action", "up", "--handle", "h"], f"my-prefix: {line}",
          stdin=stdin)


def test_cni_config_dir_missing(tmp_path: Path) -> None:
    missing = tmp_path / "none"
    path = write(tmp_path, adapter(tmp_path, cni_config_dir=str(missing)))
    fails(["--configFile", path, "--action", "down", "--handle", "h"],
          f"my-prefix: load cni config: error walking config directory: lstat {missing}: "
          "no such file or directory")


def test_down_reads_no_stdin_and_is_quiet(tmp_path: Path) -> None:
    path = write(tmp_path, adapter(tmp_path))
    assert hook(["--configFile", path, "--action", "down", "--handle", "h"], b"null") == (0, "", "")
    assert hook(["down", "--handle", "h", "--configFile", path], b"garbage") == (0, "", "")
