"""The Go-compatible router: exact paths, `:segment` captures, upstream 404/405 bodies."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.testclient import TestClient

from cfnet.web.router import Route, Router, error_body, lower_keys


async def echo(request: Request) -> Response:
    return PlainTextResponse(f"v={request.path_params.get('version')}")


def client() -> TestClient:
    return TestClient(Router([
        Route("POST", "/networking/:version/external/policies", echo),
        Route("GET", "/networking/:version/external/policies", echo),
        Route("GET", "/", echo),
    ]))


def test_segment_matches_any_run_even_empty() -> None:
    c = client()
    assert c.get("/networking/v1/external/policies").text == "v=v1"
    assert c.get("/networking//external/policies").text == "v="


def test_unknown_path_and_trailing_slash_are_404() -> None:
    for path in ("/nope", "/networking/v1/external/policies/"):
        r = client().get(path)
        assert (r.status_code, r.text) == (404, "404 page not found\n")


def test_wrong_method_is_405_with_allow() -> None:
    r = client().request("HEAD", "/networking/v1/external/policies")
    assert r.status_code == 405
    assert r.headers["allow"] == "POST, GET"
    r = client().delete("/")
    assert (r.status_code, r.text, r.headers["allow"]) == (405, "Method Not Allowed\n", "GET")


def test_error_body_has_upstream_shape_and_escapes() -> None:
    assert error_body("missing start port") == b'{"error": "missing start port"}'
    assert error_body('say "hi"') == b'{"error": "say \\"hi\\""}'


def test_lower_keys_is_recursive() -> None:
    assert lower_keys({"Policies": [{"SOURCE": {"Id": "a"}}]}) == {"policies": [{"source": {"id": "a"}}]}
