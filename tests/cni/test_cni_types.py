"""The CNI protocol types: errors, versions, results and their conversion, env and config."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cfnet.cni.types import (
    CNIError,
    Code,
    Result,
    check_version,
    config_key,
    parse_cni_args,
    parse_config,
    parse_env,
    version_json,
)


def error_of(fn: Any, *args: Any) -> CNIError:
    with pytest.raises(CNIError) as info:
        fn(*args)
    return info.value


def test_codes_are_the_specs() -> None:
    assert {c.name: int(c) for c in Code if int(c) < 100} == {
        "INCOMPATIBLE_VERSION": 1, "UNSUPPORTED_FIELD": 2, "UNKNOWN_CONTAINER": 3,
        "INVALID_ENV": 4, "IO_FAILURE": 5, "DECODING_FAILURE": 6, "INVALID_CONFIG": 7,
        "INVALID_NETNS": 8, "TRY_AGAIN_LATER": 11, "PLUGIN_NOT_AVAILABLE": 50,
        "LIMITED_CONNECTIVITY": 51}


def test_error_json_omits_empty_details_and_carries_the_version() -> None:
    assert json.loads(CNIError(Code.INVALID_ENV, "bad").to_json()) == {"code": 4, "msg": "bad"}
    err = CNIError(100, "run ipam plugin", "no IP addresses available")
    assert err.to_json("1.0.0") == ('{\n    "cniVersion": "1.0.0",\n    "code": 100,\n'
                                    '    "msg": "run ipam plugin",\n'
                                    '    "details": "no IP addresses available"\n}')
    assert str(err) == "run ipam plugin: no IP addresses available"


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_supported_versions_answer_in_their_own_version(version: str) -> None:
    assert check_version(version) == version


def test_unsupported_and_malformed_versions_are_code_1() -> None:
    err = error_of(check_version, "0.3.1")
    assert (err.code, err.msg) == (1, "incompatible CNI versions")
    assert err.details == 'config is "0.3.1", plugin supports ["0.4.0" "1.0.0" "1.1.0"]'
    assert error_of(check_version, "1.x.0").details == 'invalid version "1.x.0"'


def test_a_restricted_plugin_refuses_other_versions() -> None:
    assert check_version("1.0.0", ("1.0.0",)) == "1.0.0"
    err = error_of(check_version, "1.1.0", ("1.0.0",))
    assert err.details == 'config is "1.1.0", plugin supports ["1.0.0"]'
    assert error_of(check_version, "one").details == 'invalid version "one"'


def test_version_output_is_compact_with_a_newline() -> None:
    assert version_json(("1.0.0",)) == '{"cniVersion":"1.1.0","supportedVersions":["1.0.0"]}\n'


PREV = {
    "cniVersion": "1.1.0",
    "interfaces": [{"name": "s-010255030002", "mac": "aa:aa:0a:ff:1e:02", "mtu": 1450},
                   {"name": "eth0", "mac": "ee:ee:0a:ff:1e:02", "sandbox": "/run/netns/x",
                    "mtu": 1450, "socketPath": "/run/sock"}],
    "ips": [{"interface": 1, "address": "10.255.30.2/32", "gateway": "169.254.0.1"}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.0.1", "mtu": 1400, "table": 10}],
    "dns": {"nameservers": ["10.0.0.2"]},
}


def test_a_result_round_trips_in_its_own_version() -> None:
    assert Result.from_dict(PREV).to_dict("1.1.0") == PREV


def test_converting_down_drops_newer_keys_and_adds_the_ip_version() -> None:
    res = Result.from_dict(PREV)
    v1 = res.to_dict("1.0.0")
    assert v1["interfaces"] == [{"name": "s-010255030002", "mac": "aa:aa:0a:ff:1e:02"},
                                {"name": "eth0", "mac": "ee:ee:0a:ff:1e:02",
                                 "sandbox": "/run/netns/x"}]
    assert v1["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.0.1"}]
    assert v1["ips"] == PREV["ips"]
    v04 = res.to_dict("0.4.0")
    assert v04["cniVersion"] == "0.4.0"
    assert v04["ips"] == [{"version": "4", "interface": 1, "address": "10.255.30.2/32",
                           "gateway": "169.254.0.1"}]


def test_a_0_4_0_prev_result_converts_up() -> None:
    old = {"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.0.0.5/24"}]}
    assert Result.from_dict(old).to_dict("1.0.0") == {
        "cniVersion": "1.0.0", "ips": [{"address": "10.0.0.5/24"}]}


def test_result_json_is_indented_and_has_no_empty_dns() -> None:
    res = Result.from_dict({"ips": [{"address": "10.0.0.5/32"}], "dns": {}})
    assert res.to_json("1.0.0") == ('{\n    "cniVersion": "1.0.0",\n    "ips": [\n        {\n'
                                    '            "address": "10.0.0.5/32"\n        }\n    ]\n}')


@pytest.mark.parametrize("bad", [[], {"ips": [{"gateway": "x"}]}, {"interfaces": [{}]},
                                 {"ips": [{"address": "a", "interface": "x"}]}, {"dns": []}])
def test_a_malformed_prev_result_is_code_6(bad: Any) -> None:
    assert error_of(Result.from_dict, bad).code == 6


ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c-1", "CNI_NETNS": "/run/netns/x",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin:/usr/lib/cni", "CNI_ARGS": ""}


def test_env_is_parsed() -> None:
    args = parse_env({**ENV, "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web"})
    assert (args.command, args.container_id, args.netns, args.ifname) == \
        ("ADD", "c-1", "/run/netns/x", "eth0")
    assert args.path == ["/opt/cni/bin", "/usr/lib/cni"]
    assert args.args == {"IgnoreUnknown": "1", "K8S_POD_NAME": "web"}


def test_missing_env_names_every_variable() -> None:
    err = error_of(parse_env, {"CNI_COMMAND": "ADD", "CNI_IFNAME": "eth0"})
    assert (err.code, err.msg) == \
        (4, "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_PATH] missing")
    # DEL needs no namespace; GC and STATUS need no container at all.
    assert parse_env({**ENV, "CNI_COMMAND": "DEL", "CNI_NETNS": ""}).netns == ""
    assert parse_env({"CNI_COMMAND": "GC", "CNI_PATH": "/x"}).container_id == ""
    assert error_of(parse_env, {"CNI_COMMAND": "STATUS"}).msg == \
        "required env variables [CNI_PATH] missing"


def test_unknown_command_is_code_4() -> None:
    err = error_of(parse_env, {**ENV, "CNI_COMMAND": "UP"})
    assert (err.code, err.msg) == (4, "unknown CNI_COMMAND: UP")


@pytest.mark.parametrize("cid", ["-x", "_x", ".x", "a b", "a/b", "a;b"])
def test_invalid_container_ids(cid: str) -> None:
    err = error_of(parse_env, {**ENV, "CNI_CONTAINERID": cid})
    assert (err.code, err.msg, err.details) == (4, "invalid characters in containerID", cid)


@pytest.mark.parametrize("ifname, msg", [
    ("a" * 16, "interface name is too long"),
    (".", "interface name is . or .."),
    ("..", "interface name is . or .."),
    ("eth/0", "interface name contains / or : or whitespace characters"),
    ("eth:0", "interface name contains / or : or whitespace characters"),
    ("eth 0", "interface name contains / or : or whitespace characters"),
])
def test_invalid_interface_names(ifname: str, msg: str) -> None:
    err = error_of(parse_env, {**ENV, "CNI_IFNAME": ifname})
    assert (err.code, err.msg) == (4, msg)


def test_long_ifname_details_match_upstream() -> None:
    err = error_of(parse_env, {**ENV, "CNI_IFNAME": "a" * 16})
    assert err.details == "interface name should be less than 16 characters"
    assert parse_env({**ENV, "CNI_IFNAME": "a" * 15}).ifname == "a" * 15


def test_bad_cni_args_name_the_variable() -> None:
    err = error_of(parse_cni_args, "A=1;B")
    assert (err.code, err.msg, err.details) == (4, "invalid CNI_ARGS pair", "B")
    assert parse_cni_args("") == {}
    assert parse_cni_args("A=;B=x=y") == {"A": "", "B": "x=y"}


def test_config_decoding_and_name() -> None:
    err = error_of(parse_config, b"{nope")
    assert err.code == 6 and err.msg.startswith("error unmarshall network config: ")
    assert error_of(parse_config, b"[1]").code == 6
    assert error_of(parse_config, b"").code == 6
    assert (error_of(parse_config, b'{"cniVersion":"1.0.0"}').msg) == "missing network name"
    err = error_of(parse_config, b'{"name":"a b"}')
    assert (err.code, err.msg, err.details) == (7, "invalid characters found in network name",
                                                "a b")
    assert parse_config('{"name":"silk","cniVersion":"1.0.0"}')["name"] == "silk"


def test_config_keys_are_typed_and_named_in_errors() -> None:
    conf = {"mtu": 1400, "port": True, "dir": 3, "neg": -1}
    assert config_key(conf, "mtu", int, 0, minimum=0) == 1400
    assert config_key(conf, "absent", int, 7) == 7
    assert error_of(config_key, conf, "port", int, 0).msg == \
        "invalid config: key 'port' must be an integer"
    assert error_of(config_key, conf, "dir", str, "").msg == \
        "invalid config: key 'dir' must be a string"
    err = error_of(config_key, conf, "neg", int, 0, 0)
    assert (err.code, err.msg) == (7, "invalid config: key 'neg' must be at least 0")
