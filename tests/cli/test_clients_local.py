"""The API clients' pure parts: parsing input, reading replies, error texts and rendering."""

from __future__ import annotations

import json

import pytest

from cfnet.cli import render
from cfnet.cli.exit_codes import ExitCode
from cfnet.clients.http import ApiError, InvalidInput, error_from_response, normalize_base_url
from cfnet.clients.internal_api import InternalPolicy, SecurityGroup
from cfnet.clients.policy_api import (
    Policy,
    Tag,
    external_base,
    make_policy,
    parse_ports,
    policies_listing,
)


@pytest.mark.parametrize("text, expected", [
    ("8080", (8080, 8080)), ("1", (1, 1)), ("65535", (65535, 65535)),
    ("8080-8090", (8080, 8090)), ("8080-8080", (8080, 8080)), (" 80 ", (80, 80)),
])
def test_parse_ports(text, expected):
    assert parse_ports(text) == expected


@pytest.mark.parametrize("text", ["0", "65536", "70000", "8090-8080", "-1", "1-", "-", "a", "",
                                  "1-2-3", "1.5", "0-10", "10-70000", "+5"])
def test_parse_ports_rejects(text):
    with pytest.raises(InvalidInput):
        parse_ports(text)


def test_make_policy_defaults_like_the_cf_cli():
    assert make_policy("a", "b") == Policy("a", "b", "tcp", 8080, 8080)
    assert make_policy("a", "b", "udp", "53-54") == Policy("a", "b", "udp", 53, 54)


def test_v1_round_trip_and_shape():
    p = Policy("a", "b", "udp", 53, 60)
    assert p.to_v1() == {"source": {"id": "a"},
                         "destination": {"id": "b", "protocol": "udp",
                                         "ports": {"start": 53, "end": 60}}}
    assert Policy.from_v1(p.to_v1()) == p
    assert json.dumps(policies_listing([p]), separators=(",", ":")) == (
        '{"total_policies":1,"policies":[{"source":{"id":"a"},"destination":{"id":"b",'
        '"protocol":"udp","ports":{"start":53,"end":60}}}]}')
    assert p.ports == "53-60" and Policy("a", "b", "tcp", 80, 80).ports == "80"


@pytest.mark.parametrize("bad", [
    {}, {"source": {"id": "a"}},
    {"source": {"id": "a"}, "destination": {"id": "b", "protocol": "tcp"}},
    {"source": {"id": 1},
     "destination": {"id": "b", "protocol": "tcp", "ports": {"start": 1, "end": 1}}},
    {"source": {"id": "a"},
     "destination": {"id": "b", "protocol": "tcp", "ports": {"start": "1", "end": 1}}},
    {"source": {"id": "a"},
     "destination": {"id": "b", "protocol": "tcp", "ports": {"start": True, "end": 1}}},
    [], None,
])
def test_from_v1_rejects_other_shapes(bad):
    with pytest.raises(ValueError):
        Policy.from_v1(bad)


def test_internal_shapes():
    data = {"source": {"id": "app1", "tag": "0001"},
            "destination": {"id": "app2", "tag": "0002", "protocol": "tcp",
                            "ports": {"start": 8080, "end": 8080}}}
    p = InternalPolicy.from_json(data)
    assert (p.source_tag, p.destination_tag, p.start) == ("0001", "0002", 8080)
    assert p.to_json() == data
    sg = SecurityGroup.from_json({
        "guid": "g", "name": "n", "staging_default": True, "running_default": False,
        "rules": '[{"protocol":"tcp","destination":"10.0.0.0/8","ports":"80","type":0,"code":0,'
                 '"description":"","log":false}]',
        "staging_space_guids": ["s1"], "running_space_guids": None})
    assert sg.rule_list()[0]["destination"] == "10.0.0.0/8"
    assert sg.running_space_guids == []


@pytest.mark.parametrize("url, base", [
    ("http://127.0.0.1:4002", "http://127.0.0.1:4002"),
    ("http://127.0.0.1:4002/", "http://127.0.0.1:4002"),
    ("https://api.example.com/networking/v1/external", "https://api.example.com"),
    ("https://api.example.com/networking/v1/external/", "https://api.example.com"),
])
def test_external_base(url, base):
    assert external_base(url) == base


@pytest.mark.parametrize("url", ["127.0.0.1:4002", "ftp://x", "http://", "", "file:///tmp/x"])
def test_normalize_base_url_rejects(url):
    with pytest.raises(InvalidInput):
        normalize_base_url(url)


def test_error_from_response_keeps_the_server_text():
    e = error_from_response(400, "Bad Request",
                            b'{"error": "mapper: validate policies: missing start port"}')
    assert (e.status, e.error) == (400, "mapper: validate policies: missing start port")
    e = error_from_response(403, "Forbidden", b'{"error": "provided scopes [] do not include '
                                              b'allowed scopes [network.admin]"}')
    assert e.error == "provided scopes [] do not include allowed scopes [network.admin]"


def test_error_from_response_without_json():
    e = error_from_response(404, "Not Found", b"404 page not found\n")
    assert (e.status, e.error) == (404, "HTTP 404 Not Found: 404 page not found")
    e = error_from_response(502, "Bad Gateway", b"<html>\n<b>bad\ngateway</b>\n</html>")
    assert e.error == "HTTP 502 Bad Gateway: <html> <b>bad gateway</b> </html>"
    assert error_from_response(500, "", b"").error == "HTTP 500"


@pytest.mark.parametrize("status, code", [
    (None, ExitCode.UNREACHABLE), (401, ExitCode.AUTH), (403, ExitCode.AUTH),
    (400, ExitCode.CLIENT_ERROR), (404, ExitCode.CLIENT_ERROR), (406, ExitCode.CLIENT_ERROR),
    (500, ExitCode.SERVER_ERROR), (503, ExitCode.SERVER_ERROR), (200, ExitCode.ERROR),
])
def test_exit_codes(status, code):
    assert render.api_exit_code(status) == code
    assert ApiError("x", status).unreachable is (status is None)


def test_policy_table_is_plain_text_not_markup(capsys):
    render.policy_table([Policy("[bold]app-a[/bold]", "b" * 36, "tcp", 8080, 8090)])
    out = capsys.readouterr().out
    header, row = out.splitlines()
    assert header.split() == ["source", "destination", "protocol", "ports"]
    assert row.split() == ["[bold]app-a[/bold]", "b" * 36, "tcp", "8080-8090"]


def test_tag_table(capsys):
    render.tag_table([Tag("app-guid", "0001", "app"), Tag("router", "0002", "router-type")])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines] == [["id", "tag", "type"], ["app-guid", "0001", "app"],
                                                ["router", "0002", "router-type"]]


def test_fail_is_one_line(capsys):
    import typer

    with pytest.raises(typer.Exit) as e:
        render.fail("first\nsecond  line", ExitCode.SERVER_ERROR)
    assert e.value.exit_code == ExitCode.SERVER_ERROR
    assert capsys.readouterr().err == "error: first second line\n"


def test_internal_client_unreachable_and_bad_wait(closed_port, tmp_path):
    from cfnet.clients.internal_api import InternalClient
    from cfnet.web.tls import generate_bundle

    bundle = generate_bundle(tmp_path)
    with InternalClient(f"https://127.0.0.1:{closed_port}", bundle.client) as client:
        with pytest.raises(ApiError) as e:
            client.policies(["a"])
        assert e.value.unreachable
        assert e.value.error == (f"cannot connect to https://127.0.0.1:{closed_port}: "
                                 "connection refused")
        for wait in (-1, float("nan"), float("inf")):
            with pytest.raises(InvalidInput):
                client.policies_last_updated(wait=wait)


def test_internal_client_missing_certificate_files(closed_port, tmp_path):
    from cfnet.clients.internal_api import InternalClient
    from cfnet.web.tls import TLSFiles

    files = TLSFiles(tmp_path / "nope.crt", tmp_path / "nope.key", tmp_path / "ca.crt")
    with InternalClient(f"https://127.0.0.1:{closed_port}", files) as client:
        with pytest.raises(ApiError) as e:
            client.policies_last_updated()
    assert e.value.unreachable
    assert e.value.error.count("\n") == 0


@pytest.mark.parametrize("url", ["http://h/networking/v0/external",
                                 "http://h/networking/v2/external/"])
def test_external_base_rejects_other_versions(url):
    with pytest.raises(InvalidInput, match="cfnet speaks API version v1"):
        external_base(url)
