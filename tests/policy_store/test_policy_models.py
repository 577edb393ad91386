"""Policy bodies: Go-compatible decoding, validation order and texts (spec §2), wire shapes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cfnet.core.policy import (
    Policy,
    PolicyValidationError,
    SecurityGroup,
    TaggedPolicy,
    format_tag,
    max_tag,
    parse_policies,
    policy_to_v0,
    policy_to_v1,
    security_group_to_internal,
    tagged_policy_to_internal,
)
from cfnet.core.security_groups import rules_json


def v1(src: Any = "a", dst: Any = "b", protocol: Any = "tcp", start: Any = 8080,
       end: Any = 8080, **extra: Any) -> dict[str, Any]:
    policy = {"source": {"id": src}, "destination": {"id": dst, "protocol": protocol,
                                                      "ports": {"start": start, "end": end}}}
    for key, value in extra.items():
        side, field = key.split("_", 1)
        policy[side][field] = value
    return policy


def v0(src: Any = "a", dst: Any = "b", protocol: Any = "tcp", port: Any = 8080,
       **extra: Any) -> dict[str, Any]:
    policy = {"source": {"id": src}, "destination": {"id": dst, "protocol": protocol, "port": port}}
    for key, value in extra.items():
        side, field = key.split("_", 1)
        policy[side][field] = value
    return policy


def body(*policies: dict[str, Any]) -> bytes:
    return json.dumps({"policies": list(policies)}).encode()


def error(raw: bytes, version: str = "v1") -> str:
    with pytest.raises(PolicyValidationError) as e:
        parse_policies(raw, version)
    return str(e.value)


# -- spec §2.2: v1 checks, every row, exact text ---------------------------------------------------

V1_ROWS = [
    (v1(src=""), "missing source id"),
    (v1(dst=""), "missing destination id"),
    (v1(protocol="icmp"), "invalid destination protocol, specify either udp or tcp"),
    (v1(protocol="all"), "invalid destination protocol, specify either udp or tcp"),
    (v1(protocol="TCP"), "invalid destination protocol, specify either udp or tcp"),
    (v1(protocol=""), "invalid destination protocol, specify either udp or tcp"),
    (v1(start=10, end=9), "invalid port range 10-9, start must be less than or equal to end"),
    (v1(start=-5, end=-1), "invalid start port -5, must be in range 1-65535"),
    (v1(start=-5, end=80), "invalid start port -5, must be in range 1-65535"),
    (v1(start=0, end=80), "missing start port"),
    (v1(start=0, end=0), "missing start port"),
    (v1(start=1, end=65536), "invalid end port 65536, must be in range 1-65535"),
    (v1(source_tag="01"), "tags may not be specified"),
    (v1(destination_tag="0002"), "tags may not be specified"),
]


@pytest.mark.parametrize(("policy", "text"), V1_ROWS)
def test_v1_check_rows(policy: dict[str, Any], text: str) -> None:
    assert error(body(policy)) == f"validate policies: {text}"


def test_v1_checks_run_in_spec_order() -> None:
    """Each policy below fails two checks; the earlier one in the table is reported."""
    assert error(body(v1(src="", dst=""))) == "validate policies: missing source id"
    assert error(body(v1(dst="", protocol="icmp"))) == "validate policies: missing destination id"
    assert error(body(v1(protocol="icmp", start=9, end=1))) == (
        "validate policies: invalid destination protocol, specify either udp or tcp")
    assert error(body(v1(start=-1, end=-2))) == (
        "validate policies: invalid port range -1--2, start must be less than or equal to end")
    assert error(body(v1(start=0, end=70000))) == "validate policies: missing start port"
    assert error(body(v1(end=70000, source_tag="x"))) == (
        "validate policies: invalid end port 70000, must be in range 1-65535")


def test_first_failing_policy_wins() -> None:
    assert error(body(v1(), v1(protocol="icmp"), v1(src=""))) == (
        "validate policies: invalid destination protocol, specify either udp or tcp")


def test_v1_consequences_of_the_order() -> None:
    no_ports = {"source": {"id": "a"}, "destination": {"id": "b", "protocol": "tcp"}}
    assert error(body(no_ports)) == "validate policies: missing start port"
    only_start = {"source": {"id": "a"},
                  "destination": {"id": "b", "protocol": "tcp", "ports": {"start": 8080}}}
    assert error(body(only_start)) == (
        "validate policies: invalid port range 8080-0, start must be less than or equal to end")
    assert error(body(v0())) == "validate policies: missing start port"


def test_v1_boundaries_accepted() -> None:
    raw = body(v1(start=1, end=65535), v1(protocol="udp", start=5, end=5))
    assert parse_policies(raw, "v1") == [Policy("a", "b", "tcp", 1, 65535),
                                         Policy("a", "b", "udp", 5, 5)]


# -- spec §2.3: v0 ---------------------------------------------------------------------------------

V0_ROWS = [
    (v0(src=""), "missing source id"),
    (v0(dst=""), "missing destination id"),
    (v0(protocol="icmp"), "invalid destination protocol, specify either udp or tcp"),
    (v0(port=-1), "invalid port -1, must be in range 1-65535"),
    (v0(port=0), "missing port"),
    (v0(source_tag="01"), "tags may not be specified"),
    (v0(destination_tag="01"), "tags may not be specified"),
    (v0(src="", protocol="icmp"), "missing source id"),
    (v0(protocol="udp", port=-3, source_tag="01"), "invalid port -3, must be in range 1-65535"),
]


@pytest.mark.parametrize(("policy", "text"), V0_ROWS)
def test_v0_check_rows(policy: dict[str, Any], text: str) -> None:
    assert error(body(policy), "v0") == f"validate policies: {text}"


def test_v0_has_no_upper_bound_and_is_a_single_port_range() -> None:
    assert parse_policies(body(v0(port=70000)), "v0") == [Policy("a", "b", "tcp", 70000, 70000)]
    assert parse_policies(body(v0(port=2**63 - 1)), "v0")[0].start == 2**63 - 1


def test_v1_body_sent_to_v0_is_missing_port() -> None:
    assert error(body(v1()), "v0") == "validate policies: missing port"


def test_v0_and_v1_give_the_same_policy() -> None:
    assert parse_policies(body(v0(port=8080)), "v0") == parse_policies(body(v1()), "v1")
    p = Policy("a", "b", "tcp", 8080, 8080)
    assert p.port == 8080 and Policy("a", "b", "tcp", 1, 2).port == 0


def test_duplicates_are_kept_for_the_quota_guard() -> None:
    assert len(parse_policies(body(v1(), v1()), "v1")) == 2


# -- spec §2.1: decoding ---------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [b"null", b"{}", b'{"policies":null}', b'{"policies":[]}',
                                 b' {"total_policies": 3} '])
@pytest.mark.parametrize("version", ["v0", "v1"])
def test_missing_policies(raw: bytes, version: str) -> None:
    assert error(raw, version) == "validate policies: missing policies"


@pytest.mark.parametrize("raw", [b"", b"   \n", b"{", b'{"policies":[}', b"[]", b"5", b'"x"',
                                 b"true", b"NaN", b'{"policies":[]} x', b'{"policies":Infinity}',
                                 b"\xef\xbb\xbf{}", b"[" * 5000 + b"]" * 5000])
def test_undecodable_bodies(raw: bytes) -> None:
    assert error(raw).startswith("unmarshal json: ")


def test_empty_body_has_gos_message() -> None:
    assert error(b"") == "unmarshal json: unexpected end of JSON input"


@pytest.mark.parametrize(("policy", "path"), [
    (v1(start=8080.0), "Ports.policies.destination.ports.start of type int"),
    (v1(start=1.5), "Ports.policies.destination.ports.start of type int"),
    (v1(end=True), "Ports.policies.destination.ports.end of type int"),
    (v1(start="8080"), "Ports.policies.destination.ports.start of type int"),
    (v1(start=2**63), "Ports.policies.destination.ports.start of type int"),
    (v1(start=-(2**63) - 1), "Ports.policies.destination.ports.start of type int"),
    (v1(start=10**400), "Ports.policies.destination.ports.start of type int"),
    (v1(src=5), "Source.policies.source.id of type string"),
    (v1(dst=False), "Destination.policies.destination.id of type string"),
    (v1(protocol=["tcp"]), "Destination.policies.destination.protocol of type string"),
    (v1(source_tag=1), "Source.policies.source.tag of type string"),
    (v1(source_type=1), "Source.policies.source.type of type string"),
    (v1(destination_ips={"start": "10.0.0.1"}),
     "Destination.policies.destination.ips of type []api.IPRange"),
    (v1(destination_ips=[{"start": 1}]), "IPRange.policies.destination.ips.start of type string"),
    ({"source": [], "destination": {}}, "Policy.policies.source of type api.Source"),
    ({"source": {}, "destination": "b"}, "Policy.policies.destination of type api.Destination"),
])
def test_wrong_types_are_rejected_with_gos_message(policy: dict[str, Any], path: str) -> None:
    text = error(body(policy))
    assert text.startswith("unmarshal json: json: cannot unmarshal ")
    assert text.endswith(f" into Go struct field {path}")


def test_number_literal_is_echoed_for_ints() -> None:
    assert error(b'{"policies":[{"destination":{"ports":{"start":1e3}}}]}') == (
        "unmarshal json: json: cannot unmarshal number 1e3 into Go struct field "
        "Ports.policies.destination.ports.start of type int")


def test_wrong_top_level_shapes() -> None:
    assert error(b'{"policies":{}}') == (
        "unmarshal json: json: cannot unmarshal object into Go struct field "
        "PoliciesPayload.policies of type []api.Policy")
    assert error(b'{"policies":[5]}') == (
        "unmarshal json: json: cannot unmarshal number into Go struct field "
        "PoliciesPayload.policies of type api.Policy")
    assert error(b"[]") == (
        "unmarshal json: json: cannot unmarshal array into Go value of type api.PoliciesPayload")
    assert error(b"[]", "v0") == (
        "unmarshal json: json: cannot unmarshal array into Go value of type api_v0.Policies")
    assert error(b'{"total_policies":"1","policies":[]}').startswith("unmarshal json: ")
    assert error(json.dumps({"policies": [v0(port=1.0)]}).encode(), "v0") == (
        "unmarshal json: json: cannot unmarshal number 1.0 into Go struct field "
        "Destination.policies.destination.port of type int")


def test_keys_match_case_insensitively() -> None:
    raw = (b'{"POLICIES":[{"Source":{"ID":"a"},"DESTINATION":{"Id":"b","PROTOCOL":"udp",'
           b'"Ports":{"START":1,"eNd":2}}}]}')
    assert parse_policies(raw, "v1") == [Policy("a", "b", "udp", 1, 2)]
    raw0 = (b'{"Policies":[{"SOURCE":{"iD":"a"},'
            b'"destination":{"ID":"b","Protocol":"tcp","PORT":9}}]}')
    assert parse_policies(raw0, "v0") == [Policy("a", "b", "tcp", 9, 9)]


def test_keys_fold_like_go() -> None:
    # Go folds U+017F (long s) to "s" and U+212A (Kelvin sign) to "k"; "ß" is not "ss".
    raw = ('{"policies":[{"\u017fource":{"id":"a"},"destination":{"id":"b","protocol":"tcp",'
           '"ports":{"\u017ftart":1,"end":1}}}]}').encode()
    assert parse_policies(raw, "v1") == [Policy("a", "b", "tcp", 1, 1)]
    raw = ('{"policies":[{"source":{"id":"a"},"destination":{"id":"b","protocol":"tcp",'
           '"ports":{"start":1,"end":1}},"\u00dfource":{"id":""}}]}').encode()
    assert parse_policies(raw, "v1") == [Policy("a", "b", "tcp", 1, 1)]


def test_unknown_and_ignored_keys() -> None:
    policy = v1(source_type="app", destination_type="app",
                destination_ips=[{"start": "10.0.0.1", "end": "10.0.0.2"}], destination_port=99)
    policy["extra"] = {"anything": [1, 2.5, None, True]}
    payload = {"policies": [policy], "total_policies": 7, "unknown": "x"}
    assert parse_policies(json.dumps(payload).encode(), "v1") == [
        Policy("a", "b", "tcp", 8080, 8080)]
    assert parse_policies(body(v0(destination_ports={"start": 1, "end": 2})), "v0") == [
        Policy("a", "b", "tcp", 8080, 8080)]


def test_null_is_the_zero_value() -> None:
    assert error(body({"source": None, "destination": None})) == (
        "validate policies: missing source id")
    assert error(body(v1(src=None))) == "validate policies: missing source id"
    assert error(body(v1(protocol=None))) == (
        "validate policies: invalid destination protocol, specify either udp or tcp")
    assert error(body(v1(start=None, end=None))) == "validate policies: missing start port"
    assert error(b'{"policies":[null]}') == "validate policies: missing source id"
    assert parse_policies(body(v1(source_tag=None, destination_ips=None)), "v1") == [
        Policy("a", "b", "tcp", 8080, 8080)]


def test_repeated_keys_decode_into_the_same_field_as_go() -> None:
    # Later keys win, a null leaves the earlier value, and structs merge rather than reset.
    raw = (b'{"policies":[{"source":{"id":"x"},"Source":{"ID":"a"},"source":{"id":null},'
           b'"destination":{"id":"b","protocol":"tcp","ports":{"start":5,"end":6}},'
           b'"destination":{"ports":{"end":7}}}]}')
    assert parse_policies(raw, "v1") == [Policy("a", "b", "tcp", 5, 7)]


def test_strings_keep_unicode_and_replace_invalid_utf8() -> None:
    name = "\u00e4pp-\U0001f600"
    assert parse_policies(body(v1(src=name)), "v1")[0].source == name
    raw = body(v1(src="A")).replace(b'"A"', b'"\xff\xfeA"')
    assert parse_policies(raw, "v1")[0].source == "\ufffd\ufffdA"
    raw = body(v1()).replace(b'"a"', b'"\\ud800a"')  # a lone surrogate escape, as Go: U+FFFD
    assert parse_policies(raw, "v1")[0].source == "\ufffda"


def test_unsupported_version_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        parse_policies(body(v1()), "v2")


# -- wire shapes -----------------------------------------------------------------------------------

def test_policy_shapes() -> None:
    p = Policy("app1", "app2", "tcp", 8080, 8090)
    assert json.dumps(policy_to_v1(p), separators=(",", ":")) == (
        '{"source":{"id":"app1"},"destination":{"id":"app2","protocol":"tcp",'
        '"ports":{"start":8080,"end":8090}}}')
    assert policy_to_v0(p) is None
    assert policy_to_v0(Policy("app1", "app2", "udp", 53, 53)) == {
        "source": {"id": "app1"}, "destination": {"id": "app2", "protocol": "udp", "port": 53}}


def test_internal_shape_and_tags() -> None:
    tp = TaggedPolicy(Policy("app1", "app2", "tcp", 8080, 8080), 1, 10)
    assert json.dumps(tagged_policy_to_internal(tp, 2), separators=(",", ":")) == (
        '{"source":{"id":"app1","tag":"0001"},"destination":{"id":"app2","tag":"000A",'
        '"protocol":"tcp","ports":{"start":8080,"end":8080}}}')
    assert tagged_policy_to_internal(tp, 1)["destination"]["tag"] == "0A"
    assert [format_tag(t, 1) for t in (1, 10, 255)] == ["01", "0A", "FF"]
    assert format_tag(65535, 2) == "FFFF" and format_tag(1, 3) == "000001"
    assert (max_tag(1), max_tag(2), max_tag(3)) == (255, 65535, 16777215)


def test_security_group_shape() -> None:
    rules = rules_json([{"protocol": "tcp", "description": "sg-rule-1"}])
    assert rules == ('[{"protocol":"tcp","destination":"","ports":"","type":0,"code":0,'
                     '"description":"sg-rule-1","log":false}]')
    g = SecurityGroup("sg-guid-1", "sg-name-1", rules, True, False, ("space-a",), ("space-b",))
    assert list(security_group_to_internal(g)) == [
        "guid", "name", "rules", "staging_default", "running_default", "staging_space_guids",
        "running_space_guids"]
    assert security_group_to_internal(g)["staging_space_guids"] == ["space-a"]


def test_rules_json_types_and_go_escaping() -> None:
    assert rules_json(None) == "[]"
    assert rules_json([{"protocol": "icmp", "type": -1, "code": 3, "log": True,
                        "description": "<a & b>"}]) == (
        '[{"protocol":"icmp","destination":"","ports":"","type":-1,"code":3,'
        '"description":"\\u003ca \\u0026 b\\u003e","log":true}]')
    with pytest.raises(ValueError, match="'type' must be an integer"):
        rules_json([{"type": "1"}])
    with pytest.raises(ValueError, match="'log' must be a bool"):
        rules_json([{"log": 1}])
