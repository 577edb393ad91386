"""silk-daemon config, datastore reading and CLI errors: no root, no kernel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cfnet.cli.silk_daemon import app
from cfnet.core.errors import ConfigError
from cfnet.silk.daemon import DaemonError, count_containers, load_daemon_config
from cfnet.silk.teardown import format_errors

MINIMAL = {
    "underlay_ip": "10.0.16.5",
    "connectivity_server_url": "https://silk-controller.service.cf.internal:4103",
    "ca_cert_file": "/c/ca.crt", "client_cert_file": "/c/client.crt",
    "client_key_file": "/c/client.key",
}


def write(tmp_path: Path, data: dict, name: str = "daemon.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_defaults_are_the_bosh_values(tmp_path: Path) -> None:
    cfg = load_daemon_config(write(tmp_path, MINIMAL))
    assert (cfg.subnet_prefix_length, cfg.overlay, cfg.health_check_port, cfg.vtep_name, cfg.vni,
            cfg.vtep_port, cfg.poll_interval, cfg.debug_server_port, cfg.datastore,
            cfg.partition_tolerance_seconds, cfg.client_timeout_seconds, cfg.log_prefix,
            cfg.log_level, cfg.vxlan_interface_name, cfg.single_ip_only) == (
        24, "10.255.0.0/16", 23954, "silk-vtep", 1, 4789, 30, 22233,
        "/var/vcap/data/silk/store.json", 604800, 5, "cfnetworking", "info", "", False)


def test_toml_with_the_same_keys_and_a_list_of_overlay_cidrs(tmp_path: Path) -> None:
    lines = [f'{k} = "{v}"' for k, v in MINIMAL.items()]
    lines.append('overlay_network = ["10.255.0.0/16", "10.250.0.0/16"]')
    path = tmp_path / "daemon.toml"
    path.write_text("\n".join(lines))
    assert load_daemon_config(path).overlay == "10.255.0.0/16,10.250.0.0/16"


@pytest.mark.parametrize("change, error", [
    ({"underlay_ip": None}, "key 'underlay_ip' is required"),
    ({"underlay_ip": "10.0.16"}, "key 'underlay_ip': '10.0.16' is not an IPv4 address"),
    ({"overlay_network": "10.255.0.0/99"}, "key 'overlay_network': determine overlay network"),
    ({"subnet_prefix_length": 16}, "key 'subnet_prefix_length': 16 must be longer than the "
                                   "overlay prefix 16"),
    ({"vni": 0}, "key 'vni': 0 is less than 1"),
    ({"vtep_port": 70000}, "key 'vtep_port': 70000 is more than 65535"),
    ({"poll_interval": 0}, "key 'poll_interval': 0 is less than 1"),
    ({"vtep_name": ""}, "key 'vtep_name' must not be empty"),
    ({"log_level": "loud"}, "key 'log_level': 'loud' is not one of"),
    ({"connectivity_server_url": "http://x:4103"}, "key 'connectivity_server_url': must be https"),
    ({"flannel": 1}, "unknown key 'flannel'"),
])
def test_bad_config_is_one_line_naming_the_key(tmp_path: Path, change: dict, error: str) -> None:
    data = {k: v for k, v in {**MINIMAL, **change}.items() if v is not None}
    with pytest.raises(ConfigError, match="invalid config: " + error.replace("(", r"\(")):
        load_daemon_config(write(tmp_path, data))


def test_cli_reports_config_and_tls_errors_on_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["--config-file", str(tmp_path / "missing.json")])
    assert result.exit_code == 1
    assert result.stderr.startswith("cfnetworking.silk-daemon error: load config file: reading "
                                    "config: ")
    assert len(result.stderr.strip().splitlines()) == 1

    from cfnet.web.tls import generate_bundle

    bundle = generate_bundle(tmp_path / "certs")
    cfg = {**MINIMAL, "ca_cert_file": "/dev/null", "client_cert_file": str(bundle.client.cert),
           "client_key_file": str(bundle.client.key), "log_prefix": "acme"}
    for args in (["run"], ["teardown"], []):
        result = runner.invoke(app, [*args, "-config", str(write(tmp_path, cfg))])
        assert result.exit_code == 1
        assert result.stderr.endswith(" error: create tls config: invalid config: "
                                      "key 'ca_cert_file': /dev/null holds no PEM certificate\n")
        assert len(result.stderr.splitlines()) == 1
    assert runner.invoke(app, []).exit_code == 2  # no config: usage


@pytest.mark.parametrize("change, key, problem", [
    ({"ca_cert_file": "/nonexist"}, "ca_cert_file",
     "cannot read /nonexist: No such file or directory"),
    ({"ca_cert_file": "{certs}/client.key"}, "ca_cert_file",
     "{certs}/client.key holds no PEM certificate"),
    ({"client_cert_file": "{certs}/client.key"}, "client_cert_file",
     "{certs}/client.key holds no PEM certificate"),
    ({"client_key_file": "{certs}/client.crt"}, "client_key_file",
     "{certs}/client.crt holds no PEM private key"),
    ({"client_key_file": "{certs}/server.key"}, "client_key_file",
     "{certs}/server.key does not match the certificate in {certs}/client.crt"),
])
def test_tls_file_errors_name_the_key(tmp_path: Path, change: dict, key: str,
                                      problem: str) -> None:
    from cfnet.web.tls import generate_bundle

    certs = tmp_path / "certs"
    bundle = generate_bundle(certs)
    cfg = {**MINIMAL, "ca_cert_file": str(bundle.ca_cert),
           "client_cert_file": str(bundle.client.cert), "client_key_file": str(bundle.client.key)}
    cfg.update({k: v.format(certs=certs) for k, v in change.items()})
    result = CliRunner().invoke(app, ["-config", str(write(tmp_path, cfg))])
    assert result.exit_code == 1
    assert result.stderr == (f"cfnetworking.silk-daemon error: create tls config: invalid "
                             f"config: key '{key}': {problem.format(certs=certs)}\n")


def test_datastore_counts_containers(tmp_path: Path) -> None:
    store = tmp_path / "store.json"
    assert count_containers(str(store)) == 0
    store.write_text("")
    assert count_containers(str(store)) == 0
    store.write_text('{"a":{"handle":"a","ip":"10.255.30.2","metadata":null},'
                     '"b":{"handle":"b","ip":"10.255.30.3","metadata":null}}\n')
    assert count_containers(str(store)) == 2
    store.write_bytes(b"\x00\xff garbage")
    with pytest.raises(DaemonError, match="read datastore: decoding file: "):
        count_containers(str(store))


def test_teardown_errors_read_as_go_multierror() -> None:
    assert format_errors(["release subnet lease: http status 500: potato",
                          "delete vtep: find link silk-vtep: Link not found"]) == (
        "2 errors occurred: * release subnet lease: http status 500: potato "
        "* delete vtep: find link silk-vtep: Link not found")
