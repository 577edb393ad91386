"""Where the silk CNI plugin learns the cell's overlay subnet and MTU (spec silk 2.5, 3.2).

From the silk-daemon's netinfo endpoint (`GET http://127.0.0.1:<daemonPort>/`, any path), or from
a flannel-style subnet file when the config names one. Unlike upstream, the request has a short
timeout: a hung daemon must fail the ADD quickly, not hang the container runtime. Error texts
keep the upstream (Go) wording, which operators grep for.
"""

from __future__ import annotations

import json
import re
import socket
import time
from dataclasses import dataclass

DEFAULT_TIMEOUT = 3.0

_SUBNET_RE = re.compile(r"FLANNEL_SUBNET=((?:[0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2})")
_MTU_RE = re.compile(r"FLANNEL_MTU=([0-9]{1,5})")


class NetInfoError(Exception):
    """Netinfo could not be read; the message is the upstream text after `get netinfo: `."""


@dataclass(frozen=True)
class NetInfo:
    overlay_subnet: str  # the cell's lease, e.g. 10.255.30.0/24
    mtu: int


def fetch(port: int, host: str = "127.0.0.1", timeout: float = DEFAULT_TIMEOUT) -> NetInfo:
    """Ask the silk-daemon for the cell's subnet and MTU.

    A plain HTTP/1.0 GET on a socket: urllib would import http.client and the email package,
    about a fifth of an exec'd ADD, to read one small JSON document from loopback.
    """
    url = f"http://{host}:{port}/"
    prefix = "json client do: "
    try:
        status, reason, body = _get(host, port, timeout)
    except OSError as e:
        raise NetInfoError(f'{prefix}http client do: Get "{url}": {_dial_error(host, port, e)}') \
            from None
    if not 200 <= status < 300:
        text = body.decode(errors="replace").strip() or reason
        raise NetInfoError(f"{prefix}http status {status}: {text}")
    try:
        data = json.loads(body)
    except ValueError as e:
        raise NetInfoError(f"{prefix}json unmarshal: {_json_error(body, e)}") from None
    return _from_json(data)


def _get(host: str, port: int, timeout: float) -> tuple[int, str, bytes]:
    """(status, reason, body) of `GET /`; the whole exchange within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(f"GET / HTTP/1.0\r\nHost: {host}:{port}\r\nAccept: application/json\r\n"
                     f"User-Agent: cfnet-silk-cni\r\n\r\n".encode())
        chunks = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("timed out")
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    head, sep, body = b"".join(chunks).partition(b"\r\n\r\n")
    parts = head.split(b"\r\n", 1)[0].split(None, 2)
    if not sep or len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ConnectionError("malformed HTTP response")
    reason = parts[2].decode(errors="replace") if len(parts) > 2 else ""
    return int(parts[1]), reason, body


def _json_error(body: bytes, e: ValueError) -> str:
    """Go's wording for the common case of a body that is not JSON at all."""
    pos = getattr(e, "pos", None)
    if getattr(e, "msg", "") == "Expecting value" and pos is not None:
        text = body.decode(errors="replace")
        if pos >= len(text.rstrip()):
            return "unexpected end of JSON input"
        return f"invalid character '{text[pos]}' looking for beginning of value"
    return str(e)


def _dial_error(host: str, port: int, e: OSError) -> str:
    """Go's net/http wording for the usual failures."""
    if isinstance(e, ConnectionRefusedError):
        return f"dial tcp {host}:{port}: connect: connection refused"
    if isinstance(e, TimeoutError):
        return "context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
    return f"dial tcp {host}:{port}: {(e.strerror or str(e)).lower()}"


def _from_json(data: object) -> NetInfo:
    if not isinstance(data, dict):
        raise NetInfoError("json client do: json unmarshal: expected an object")
    subnet = data.get("overlay_subnet")
    mtu = data.get("mtu", 0)
    if not isinstance(subnet, str) or not subnet:
        raise NetInfoError("netinfo has no overlay_subnet")
    if not isinstance(mtu, int) or isinstance(mtu, bool) or mtu < 0:
        raise NetInfoError(f"netinfo has an invalid mtu: {mtu!r}")
    return NetInfo(overlay_subnet=subnet, mtu=mtu)


def read_subnet_file(path: str) -> NetInfo:
    """A flannel `subnet.env`: FLANNEL_SUBNET=a.b.c.d/nn and FLANNEL_MTU=n (others ignored)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise NetInfoError(f"open {path}: {(e.strerror or str(e)).lower()}") from None
    subnet = _SUBNET_RE.search(text)
    if not subnet:
        raise NetInfoError("unable to parse flannel subnet file")
    mtu = _MTU_RE.search(text)
    if not mtu:
        raise NetInfoError("unable to parse MTU from subnet file")
    return NetInfo(overlay_subnet=subnet.group(1), mtu=int(mtu.group(1)))
