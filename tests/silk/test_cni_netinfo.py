"""The netinfo client against small HTTP servers on 127.0.0.1, and flannel subnet files."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cfnet.silk.netinfo import NetInfo, NetInfoError, fetch, read_subnet_file


class Responder(http.server.BaseHTTPRequestHandler):
    status = 200
    body = b'{"overlay_subnet":"10.255.30.0/24","mtu":1450}'

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


def serve(status: int, body: bytes) -> Iterator[int]:
    handler = type("H", (Responder,), {"status": status, "body": body})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def daemon(request: pytest.FixtureRequest) -> Iterator[int]:
    status, body = getattr(request, "param", (200, Responder.body))
    yield from serve(status, body)


def test_reads_subnet_and_mtu(daemon: int) -> None:
    assert fetch(daemon) == NetInfo(overlay_subnet="10.255.30.0/24", mtu=1450)


@pytest.mark.parametrize("daemon, msg", [
    ((200, b"bad"), "json client do: json unmarshal: invalid character 'b' looking for "
                    "beginning of value"),
    ((200, b""), "json client do: json unmarshal: unexpected end of JSON input"),
    ((500, b"oops\n"), "json client do: http status 500: oops"),
    ((200, b'{"mtu":1450}'), "netinfo has no overlay_subnet"),
    ((200, b'{"overlay_subnet":"10.0.0.0/24","mtu":"x"}'), "netinfo has an invalid mtu: 'x'"),
], indirect=["daemon"])
def test_bad_answers_keep_upstream_wording(daemon: int, msg: str) -> None:
    with pytest.raises(NetInfoError) as info:
        fetch(daemon)
    assert str(info.value) == msg


def test_a_closed_port_is_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(NetInfoError) as info:
        fetch(port)
    assert str(info.value) == (f'json client do: http client do: Get "http://127.0.0.1:{port}/": '
                               f"dial tcp 127.0.0.1:{port}: connect: connection refused")


def test_a_hung_daemon_fails_at_the_timeout() -> None:
    """Upstream waits forever; we give up (the listener accepts but never answers)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with pytest.raises(NetInfoError) as info:
            fetch(port, timeout=0.2)
    assert str(info.value) == (f'json client do: http client do: Get "http://127.0.0.1:{port}/": '
                               "context deadline exceeded (Client.Timeout exceeded while "
                               "awaiting headers)")


def test_a_reply_that_is_not_http_is_an_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"SSH-2.0-OpenSSH\r\n")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        with pytest.raises(NetInfoError) as info:
            fetch(port)
        thread.join(5)
    assert str(info.value).endswith(f"dial tcp 127.0.0.1:{port}: malformed http response")


def test_subnet_file(tmp_path: Path) -> None:
    env = tmp_path / "subnet.env"
    env.write_text("FLANNEL_NETWORK=10.255.0.0/16\nFLANNEL_SUBNET=10.255.19.1/24\n"
                   "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n")
    assert read_subnet_file(str(env)) == NetInfo(overlay_subnet="10.255.19.1/24", mtu=1472)
    env.write_text("FLANNEL_MTU=1472\n")
    with pytest.raises(NetInfoError, match="^unable to parse flannel subnet file$"):
        read_subnet_file(str(env))
    env.write_text("FLANNEL_SUBNET=10.255.19.1/24\n")
    with pytest.raises(NetInfoError, match="^unable to parse MTU from subnet file$"):
        read_subnet_file(str(env))
    missing = tmp_path / "nope.env"
    with pytest.raises(NetInfoError) as info:
        read_subnet_file(str(missing))
    assert str(info.value) == f"open {missing}: no such file or directory"
