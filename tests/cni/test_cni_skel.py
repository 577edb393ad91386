"""The executable protocol (`cfnet.cni.plugin.run`, `cfnet cni`) and the in-process `invoke`.

A small plugin defined here implements the Plugin interface, so the skel is tested on its own;
the real silk plugin is exercised in-process for its config errors, and as an executable for the
light start-up path.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from typing import Any

import pytest

from cfnet.cni.plugin import invoke, run
from cfnet.cni.types import SUPPORTED_VERSIONS, CmdArgs, CNIError, Code, IPConfig, Result


class Echo:
    """Records each call; ADD answers with one address; `fail` makes every command fail."""

    name = "echo-cni"
    supported_versions = SUPPORTED_VERSIONS

    def __init__(self, fail: BaseException | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any], CmdArgs]] = []
        self.fail = fail

    def _call(self, command: str, conf: dict[str, Any], args: CmdArgs) -> None:
        self.calls.append((command, conf, args))
        if self.fail is not None:
            raise self.fail

    def add(self, conf: dict[str, Any], args: CmdArgs) -> Result:
        self._call("ADD", conf, args)
        return Result(ips=[IPConfig(address="10.0.0.2/32", gateway="10.0.0.1")])

    def delete(self, conf: dict[str, Any], args: CmdArgs) -> None:
        self._call("DEL", conf, args)

    def check(self, conf: dict[str, Any], args: CmdArgs) -> None:
        self._call("CHECK", conf, args)

    def gc(self, conf: dict[str, Any], args: CmdArgs) -> None:
        self._call("GC", conf, args)

    def status(self, conf: dict[str, Any], args: CmdArgs) -> None:
        self._call("STATUS", conf, args)


ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/c1",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}


def execute(plugin: Any, env: dict[str, str], conf: Any) -> tuple[int, str, str]:
    stdin = io.BytesIO(conf if isinstance(conf, bytes) else json.dumps(conf).encode())
    out, err = io.StringIO(), io.StringIO()
    code = run(plugin, env, stdin, out, err)
    return code, out.getvalue(), err.getvalue()


def test_without_a_command_it_describes_itself_on_stderr() -> None:
    code, out, err = execute(Echo(), {}, b"")
    assert (code, out) == (0, "")
    assert err == "CNI Plugin echo-cni\nCNI protocol versions supported: 0.4.0, 1.0.0, 1.1.0\n"


def test_version_ignores_stdin() -> None:
    code, out, _ = execute(Echo(), {"CNI_COMMAND": "VERSION"}, b"not json")
    assert (code, out) == (0, '{"cniVersion":"1.1.0","supportedVersions":'
                              '["0.4.0","1.0.0","1.1.0"]}\n')


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_add_answers_in_the_config_version(version: str) -> None:
    plugin = Echo()
    code, out, _ = execute(plugin, ENV, {"cniVersion": version, "name": "net", "type": "echo"})
    assert code == 0
    result = json.loads(out)
    assert result["cniVersion"] == version
    assert ("version" in result["ips"][0]) == (version == "0.4.0")
    command, conf, args = plugin.calls[0]
    assert (command, conf["name"], args.container_id, args.netns, args.ifname) == \
        ("ADD", "net", "c1", "/run/netns/c1", "eth0")


def test_errors_are_json_on_stdout_with_exit_1() -> None:
    plugin = Echo(fail=CNIError(Code.TRY_AGAIN_LATER, "busy", "try later"))
    code, out, _ = execute(plugin, ENV, {"cniVersion": "1.0.0", "name": "net"})
    assert code == 1
    assert json.loads(out) == {"cniVersion": "1.0.0", "code": 11, "msg": "busy",
                               "details": "try later"}


def test_a_bug_is_code_999_not_a_traceback() -> None:
    code, out, err = execute(Echo(fail=KeyError("boom")), ENV, {"cniVersion": "1.0.0", "name": "n"})
    assert code == 1 and json.loads(out) == {"cniVersion": "1.0.0", "code": 999, "msg": "'boom'"}
    assert "Traceback" not in err


def test_env_errors_come_before_the_config() -> None:
    code, out, _ = execute(Echo(), {"CNI_COMMAND": "ADD"}, b"{bad")
    assert code == 1 and json.loads(out)["msg"] == \
        "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH] missing"
    code, out, _ = execute(Echo(), ENV, b"{bad")
    assert json.loads(out)["code"] == 6


@pytest.mark.parametrize("command, version", [("GC", "1.0.0"), ("STATUS", "1.0.0"),
                                               ("CHECK", "0.4.0"), ("GC", "1.1.0"),
                                               ("STATUS", "1.1.0"), ("CHECK", "1.0.0")])
def test_commands_need_a_version_that_has_them(command: str, version: str) -> None:
    plugin = Echo()
    env = {**ENV, "CNI_COMMAND": command}
    code, out, _ = execute(plugin, env, {"cniVersion": version, "name": "n"})
    allowed = not (command in ("GC", "STATUS") and version != "1.1.0")
    assert code == (0 if allowed else 1), out
    if allowed:
        assert out == "" and plugin.calls[0][0] == command
    else:
        assert json.loads(out)["code"] == 1 and not plugin.calls


def test_invoke_in_process_validates_like_the_executable() -> None:
    plugin = Echo()
    conf = {"cniVersion": "1.0.0", "name": "net"}
    result = invoke(plugin, "ADD", conf, CmdArgs(command="", container_id="c1",
                                                 netns="/run/netns/c1", ifname="eth0"))
    assert isinstance(result, Result) and plugin.calls[0][2].command == "ADD"
    with pytest.raises(CNIError) as info:
        invoke(plugin, "DEL", conf, CmdArgs(command="", container_id="-bad", ifname="eth0"))
    assert info.value.code == 4
    with pytest.raises(CNIError) as info:
        invoke(plugin, "GC", conf, CmdArgs(command=""))
    assert info.value.code == 1


# The real silk plugin: config errors need no kernel, and happen before anything is done.

@pytest.mark.parametrize("changes, msg", [
    ({"mtu": -1}, "invalid config: key 'mtu' must be at least 0"),
    ({"mtu": "1400"}, "invalid config: key 'mtu' must be an integer"),
    ({"daemonPort": 0}, "invalid config: key 'daemonPort' must be at least 1"),
    ({"dataDir": 5}, "invalid config: key 'dataDir' must be a string"),
    ({"datastore": []}, "invalid config: key 'datastore' must be a string"),
    ({"subnetFile": False}, "invalid config: key 'subnetFile' must be a string"),
])
def test_silk_config_errors_name_the_key(changes: dict[str, Any], msg: str) -> None:
    from cfnet.silk.cni import SilkPlugin

    conf = {"cniVersion": "1.0.0", "name": "silk", "type": "silk-cni", **changes}
    for command in ("ADD", "DEL"):
        code, out, _ = execute(SilkPlugin(), {**ENV, "CNI_COMMAND": command}, conf)
        assert code == 1
        assert json.loads(out) == {"cniVersion": "1.0.0", "code": 7, "msg": msg}


def run_cfnet(args: list[str], env: dict[str, str], stdin: str = "",
              code: str | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    argv = [sys.executable, "-c", code] if code else [sys.executable, "-m", "cfnet", *args]
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60,
                          env={**clean, **env})


def test_cfnet_cni_entry_point() -> None:
    version = run_cfnet(["cni", "silk"], {"CNI_COMMAND": "VERSION"})
    assert (version.returncode, version.stdout) == \
        (0, '{"cniVersion":"1.1.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]}\n')
    about = run_cfnet(["cni", "silk"], {})
    assert about.returncode == 0 and about.stdout == ""
    assert about.stderr.startswith("CNI Plugin silk-cni\n")
    assert run_cfnet(["cni"], {}).returncode == 2
    unknown = run_cfnet(["cni", "nope"], {})
    assert unknown.returncode == 2 and "unknown plugin 'nope'" in unknown.stderr
    missing = run_cfnet(["cni", "silk"], {"CNI_COMMAND": "ADD"}, stdin="{}")
    assert missing.returncode == 1 and json.loads(missing.stdout)["code"] == 4


def test_the_per_container_path_imports_nothing_heavy() -> None:
    """`cfnet cni silk` through the real entry point: no typer, rich, web stack or requests,
    and no pyroute2 for commands that do not touch the kernel."""
    probe = (
        "import sys\n"
        "from cfnet.cli.main import main\n"
        "try:\n    main(['cni', 'silk'])\n"
        "except SystemExit:\n    pass\n"
        "heavy = ('typer', 'click', 'rich', 'starlette', 'uvicorn', 'requests', 'pyroute2')\n"
        "sys.stderr.write('LOADED=' + ','.join(m for m in heavy if m in sys.modules))\n"
    )
    conf = json.dumps({"cniVersion": "1.0.0", "name": "silk", "mtu": -1})
    for env in ({"CNI_COMMAND": "VERSION"}, {**ENV, "CNI_COMMAND": "ADD"},
                {**ENV, "CNI_COMMAND": "DEL"}):
        proc = run_cfnet([], env, stdin=conf, code=probe)
        assert proc.stderr.rstrip().endswith("LOADED="), proc.stderr
