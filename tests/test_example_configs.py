"""The files under examples/ stay true: each loads through the loader and dataclass its role uses.

Every example file must be claimed by one of the loaders below, so an example added without a
check fails here. JSON and TOML twins must give equal configs; the configs of the roles that
talk to each other must agree (ports, overlay network, datastore); every systemd unit must start
a real `cfnet` command with options it has, and pass `systemd-analyze verify` where available.
"""

from __future__ import annotations

import fnmatch
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.cli_paths import resolve_cfnet_command

ROOT = Path(__file__).parents[1]
EXAMPLES = ROOT / "examples"
CFNET = Path(sys.executable).with_name("cfnet")


# -- loaders: the functions the roles themselves call on their config files ------------------------


def _policy_server_one_file(p: Path) -> Any:
    from cfnet.policy_server.config import load_serve

    return load_serve(p)


def _policy_server_external(p: Path) -> Any:
    from cfnet.policy_server.config import load_external

    return load_external(p)[0]


def _policy_server_internal(p: Path) -> Any:
    from cfnet.policy_server.config import load_internal

    return load_internal(p)


def _policy_server_syncer(p: Path) -> Any:
    from cfnet.policy_server.config import load_syncer

    return load_syncer(p)


def _static_tokens(p: Path) -> Any:
    from cfnet.policy_server.config import load_static_tokens

    return load_static_tokens(p)


def _silk_controller(p: Path) -> Any:
    from cfnet.silk.controller import load_controller_config

    return load_controller_config(p)


def _silk_daemon(p: Path) -> Any:
    from cfnet.silk.daemon import load_daemon_config

    return load_daemon_config(p)


def _vxlan_agent(p: Path) -> Any:
    from cfnet.agent.config import load_agent_config

    return load_agent_config(p)


def _iptables_logger(p: Path) -> Any:
    from cfnet.agent.iptables_logger import LoggerConfig
    from cfnet.core.config import load_config

    return load_config(p, LoggerConfig)


def _policy_cli(p: Path) -> Any:
    from cfnet.cli.policy import load_cli_config

    return load_cli_config(p)


def _cni_conflist(p: Path) -> Any:
    """The list as garden-hook's libcni reads it, and each plugin's config as that plugin parses
    it (with the `name` and `cniVersion` a runtime injects)."""
    from cfnet.garden.libcni import conflist_from_bytes

    conflist = conflist_from_bytes(p.read_bytes())
    return conflist, [_plugin_config(conflist, plugin) for plugin in conflist.plugins]


def _plugin_config(conflist: Any, plugin: dict[str, Any]) -> Any:
    """A cfnet plugin's parsed config; a third-party plugin's entry as it is (it is exec'd)."""
    from cfnet.cli.main import ARGV0_ALIASES
    from cfnet.silk.cni import SilkConfig

    alias = ARGV0_ALIASES.get(plugin["type"])
    if alias is None:
        assert plugin["type"] in THIRD_PARTY_PLUGINS, f"unknown CNI plugin type {plugin['type']!r}"
        return plugin
    conf = {**plugin, "name": conflist.name, "cniVersion": conflist.cni_version}
    from cfnet.cni.bandwidth import parse_limits
    from cfnet.cni.wrapper_config import load as load_wrapper

    parsers: dict[str, Callable[[dict[str, Any]], Any]] = {
        "silk": SilkConfig.from_conf, "wrapper": load_wrapper, "bandwidth": parse_limits}
    assert alias[1] in parsers, f"no config parser known for cfnet cni {alias[1]}: add it here"
    return parsers[alias[1]](conf)


def _garden_adapter(p: Path) -> Any:
    from cfnet.garden.config import load

    return load(str(p))


# The reference plugins (Debian's containernetworking-plugins) an example chain may exec.
THIRD_PARTY_PLUGINS = {"bridge", "host-local", "portmap", "loopback", "ptp",
                       "macvlan", "ipvlan", "tuning", "firewall", "static", "dhcp", "vlan"}


# file name (relative to examples/) -> loader. Every file under examples/ must be listed.
LOADERS: dict[str, Callable[[Path], Any]] = {
    "policy-server.json": _policy_server_one_file,
    "policy-server.toml": _policy_server_one_file,
    "policy-server-uaa.json": _policy_server_external,
    "policy-server-uaa.toml": _policy_server_external,
    "policy-server-internal.json": _policy_server_internal,
    "policy-server-internal.toml": _policy_server_internal,
    "policy-server-asg-syncer.json": _policy_server_syncer,
    "policy-server-asg-syncer.toml": _policy_server_syncer,
    "policy-server-tokens.json": _static_tokens,
    "policy-server-tokens.toml": _static_tokens,
    "silk-controller/silk-controller.json": _silk_controller,
    "silk-controller/silk-controller.toml": _silk_controller,
    "silk-controller/silk-controller-postgres.json": _silk_controller,
    "silk-daemon/silk-daemon.json": _silk_daemon,
    "silk-daemon/silk-daemon.toml": _silk_daemon,
    "vxlan-agent/vxlan-agent.json": _vxlan_agent,
    "vxlan-agent/vxlan-agent.toml": _vxlan_agent,
    "iptables-logger/iptables-logger.json": _iptables_logger,
    "iptables-logger/iptables-logger.toml": _iptables_logger,
    "cli/cli.toml": _policy_cli,
    "cli/cli.json": _policy_cli,
    "cni/silk.conflist": _cni_conflist,
}
# Examples of roles documented by their own authors (garden-hook): claimed by pattern, so that
# they are loaded once they exist.
PATTERN_LOADERS: dict[str, Callable[[Path], Any]] = {
    "garden-hook/adapter*.json": _garden_adapter,
    "*.conflist": _cni_conflist,
}
UNITS = sorted((EXAMPLES / "systemd").glob("*.service"))


def _example_files() -> set[str]:
    return {str(p.relative_to(EXAMPLES)) for p in EXAMPLES.rglob("*") if p.is_file()}


def loader_for(name: str) -> Callable[[Path], Any] | None:
    if name in LOADERS:
        return LOADERS[name]
    for pattern, loader in PATTERN_LOADERS.items():
        if fnmatch.fnmatch(name, pattern):
            return loader
    return None


def load(name: str) -> Any:
    loader = loader_for(name)
    assert loader is not None, name
    return loader(EXAMPLES / name)


def test_every_example_file_is_checked() -> None:
    units = {str(p.relative_to(EXAMPLES)) for p in UNITS}
    unchecked = sorted(n for n in _example_files() - units if loader_for(n) is None)
    assert not unchecked, f"example files no test loads (add them to LOADERS): {unchecked}"
    missing = sorted(set(LOADERS) - _example_files())
    assert not missing, f"LOADERS names files that do not exist: {missing}"


@pytest.mark.parametrize("name", sorted(_example_files() - {str(p.relative_to(EXAMPLES))
                                                             for p in UNITS}))
def test_example_loads_with_the_roles_own_loader(name: str) -> None:
    assert load(name) is not None


TWINS = sorted(n for n in LOADERS if n.endswith(".toml") and n[:-5] + ".json" in LOADERS)


def test_there_is_a_toml_twin_for_every_role() -> None:
    twinned = {LOADERS[n] for n in TWINS}
    assert set(LOADERS.values()) - twinned == {_cni_conflist}  # CNI configs are JSON by spec


@pytest.mark.parametrize("toml_name", TWINS)
def test_json_and_toml_twins_are_equal(toml_name: str) -> None:
    assert load(toml_name) == load(toml_name[:-5] + ".json")


# -- the roles agree with each other --------------------------------------------------------------


def test_cell_and_control_plane_configs_agree() -> None:
    controller = load("silk-controller/silk-controller.json")
    daemon = load("silk-daemon/silk-daemon.json")
    url = urlsplit(daemon.connectivity_server_url)
    assert url.scheme == "https" and url.port == controller.listen_port
    assert daemon.overlay_network == controller.network
    assert daemon.subnet_prefix_length == controller.subnet_prefix_length
    # one CA signs the controller's server certificate and the daemons' client certificates
    assert daemon.ca_cert_file == controller.ca_cert_file


def test_cni_config_points_at_the_daemon_of_its_cell() -> None:
    daemon = load("silk-daemon/silk-daemon.json")
    conflist, (silk,) = load("cni/silk.conflist")
    assert silk.daemon_port == daemon.health_check_port
    assert silk.datastore == daemon.datastore  # the daemon counts the containers the CNI stores
    assert silk.mtu == 0  # 0: the VTEP's MTU, as the daemon reports it
    assert conflist.cni_version == "1.0.0"


def test_agent_agrees_with_the_control_plane_and_the_wrapper() -> None:
    agent = load("vxlan-agent/vxlan-agent.json")
    serve = load("policy-server.json")
    controller = load("silk-controller/silk-controller.json")
    daemon = load("silk-daemon/silk-daemon.json")
    url = urlsplit(agent.policy_server_url)
    assert url.scheme == "https" and url.port == serve.internal.internal_listen_port
    assert url.hostname == urlsplit(daemon.connectivity_server_url).hostname
    assert agent.overlay_network == controller.network
    assert agent.underlay_ips == [daemon.underlay_ip]
    assert agent.ca_cert_file == serve.internal.ca_cert_file
    _, (wrapper, _bandwidth) = load("cni/cni-wrapper.conflist")
    assert wrapper.policy_agent_force_poll_address == (
        f"{agent.force_policy_poll_cycle_host}:{agent.force_policy_poll_cycle_port}")
    assert wrapper.vtep_name == agent.vtep_name == daemon.vtep_name
    logger = load("iptables-logger/iptables-logger.json")
    assert logger.container_metadata_file == agent.cni_datastore_path
    assert logger.host_ip == daemon.underlay_ip


def test_cni_type_is_a_plugin_cfnet_runs() -> None:
    from cfnet.cli.main import ARGV0_ALIASES
    from cfnet.cni.entry import PLUGINS

    conflist, _ = load("cni/silk.conflist")
    for plugin in conflist.plugins:
        command, name = ARGV0_ALIASES[plugin["type"]]
        assert command == "cni" and name in PLUGINS


def test_policy_server_example_names_the_example_tokens_file() -> None:
    serve = load("policy-server.json")
    assert Path(serve.external.static_tokens_file).name == "policy-server-tokens.json"


def test_cli_example_uses_an_example_admin_token() -> None:
    cli = load("cli/cli.toml")
    tokens = load("policy-server-tokens.json")
    assert tokens[cli.token].scopes == ("network.admin",)
    external = load("policy-server.json").external
    assert urlsplit(cli.api).port == external.listen_port
    assert urlsplit(cli.api).scheme == ("https" if external.enable_tls else "http")


# -- systemd units --------------------------------------------------------------------------------


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values (a key may repeat), as systemd reads a unit file."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: {line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a key=value line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit_value(unit: dict[str, dict[str, list[str]]], key: str) -> str:
    (value,) = unit["Service"][key]
    return value


def exec_start(path: Path) -> list[str]:
    return shlex.split(unit_value(parse_unit(path), "ExecStart"))


def test_there_is_a_unit_for_every_long_running_role() -> None:
    commands = {exec_start(p)[1] for p in UNITS}
    assert commands == {"policy-server", "silk-controller", "silk-daemon", "vxlan-agent",
                        "iptables-logger"}


@pytest.mark.parametrize("unit_path", UNITS, ids=lambda p: p.name)
def test_unit_runs_a_real_cfnet_command(unit_path: Path) -> None:
    argv = exec_start(unit_path)
    assert Path(argv[0]).name == "cfnet" and Path(argv[0]).is_absolute()
    command, _ = resolve_cfnet_command(argv[1:])  # raises on an unknown command or option
    help_run = subprocess.run([str(CFNET), *command, "--help"], capture_output=True, text=True,
                              timeout=60)
    assert help_run.returncode == 0, help_run.stderr


@pytest.mark.parametrize("unit_path", UNITS, ids=lambda p: p.name)
def test_unit_settings(unit_path: Path) -> None:
    unit = parse_unit(unit_path)
    assert unit_value(unit, "Restart") == "on-failure"
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    state = Path("/var/lib") / unit_value(unit, "StateDirectory")
    caps = set(unit_value(unit, "AmbientCapabilities").split())
    assert caps == set(unit_value(unit, "CapabilityBoundingSet").split())
    argv = exec_start(unit_path)
    config_path = Path(argv[argv.index("--config-file") + 1])
    # the unit's config file is one of the examples, and what it keeps lives in StateDirectory
    (example,) = [n for n in LOADERS if Path(n).name == config_path.name]
    loaded = load(example)
    if argv[1] == "policy-server":
        database_path = loaded.external.database.path
        assert caps == set() and unit_value(unit, "User") == "cfnet"
    elif argv[1] == "silk-controller":
        database_path = loaded.database.path
        assert caps == set() and unit_value(unit, "User") == "cfnet"
    elif argv[1] == "iptables-logger":
        logs = Path("/var/log") / unit_value(unit, "LogsDirectory")
        assert Path(loaded.output_log_file).parent == logs
        database_path = str(Path(loaded.container_metadata_file).parent)
        assert caps == set() and unit_value(unit, "User") == "root"
    elif argv[1] == "silk-daemon":
        database_path = loaded.datastore
        assert caps == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    else:
        assert Path(loaded.iptables_lock_file).parent == state
        database_path = str(Path(loaded.cni_datastore_path).parent)
        assert caps == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert Path(database_path).parent == state


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize("unit_path", UNITS, ids=lambda p: p.name)
def test_unit_passes_systemd_analyze_verify(unit_path: Path, tmp_path: Path) -> None:
    """systemd's own parser: unknown keys, bad values and a missing ExecStart binary all fail."""
    argv0 = exec_start(unit_path)[0]
    copy = tmp_path / unit_path.name
    copy.write_text(unit_path.read_text().replace(argv0, str(CFNET)))
    run = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert run.returncode == 0 and not run.stderr.strip(), run.stderr
