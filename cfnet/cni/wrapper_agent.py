"""The wrapper's calls to the cell's policy agent (`cfnet vxlan-agent`, force endpoints on
`policy_agent_force_poll_address`), with a timeout (upstream has none, spec Q9).

The documented agent-down choice: an agent that cannot be reached (connection refused, reset or
timed out) is *not* an error. ADD then writes the static egress rules from
`runtimeConfig.netOutRules` (what Garden computed for this container), exactly as if the agent
had answered 405, and the agent picks the container up on its next poll cycle. An agent that
answers with an unexpected status is an error, as upstream.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from urllib.parse import quote

from cfnet.cni.types import CNIError, Code

DYNAMIC, STATIC = "dynamic", "static"


class AgentUnreachable(Exception):
    """The agent did not answer (refused, reset, timed out)."""


@dataclass
class Response:
    status: int
    body: str


@dataclass
class AgentClient:
    address: str  # host:port
    timeout: float

    def get(self, path: str) -> Response:
        """One HTTP/1.0 GET on a plain socket (http.client alone would cost ~25 ms of imports
        per container), the whole exchange bounded by the timeout."""
        host, _, port = self.address.rpartition(":")
        if not host or not port.isdigit():
            host, port = self.address, "80"
        url = f"http://{self.address}{path}"
        deadline = time.monotonic() + self.timeout
        try:
            with socket.create_connection((host, int(port)), timeout=self.timeout) as sock:
                sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {self.address}\r\n"
                             "Connection: close\r\n\r\n".encode())
                chunks = []
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise socket.timeout("timed out")
                    sock.settimeout(remaining)
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
        except OSError as e:  # refused, reset, unreachable, timed out
            raise AgentUnreachable(f"GET {url}: {e}") from None
        raw = b"".join(chunks)
        head, _, body = raw.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].split()
        if len(status_line) < 2 or not status_line[1].isdigit():
            raise AgentUnreachable(f"GET {url}: malformed response {raw[:80]!r}")
        return Response(int(status_line[1]), body.decode("utf-8", "replace"))

    def force_policy_poll(self) -> bool:
        """Make the agent recompute c2c state now; False when it cannot be reached."""
        try:
            r = self.get("/force-policy-poll-cycle")
        except AgentUnreachable:
            return False
        if r.status != 200:
            raise CNIError(Code.INTERNAL, f"vpa response code: {r.status} with message: {r.body}")
        return True

    def force_asgs(self, handle: str) -> str:
        """DYNAMIC when the agent wrote the container's ASGs (200), STATIC when the CNI must
        (405: static mode, or the agent is unreachable)."""
        try:
            r = self.get(f"/force-asgs-for-container?container={quote(handle)}")
        except AgentUnreachable:
            return STATIC
        if r.status == 200:
            return DYNAMIC
        if r.status == 405:
            return STATIC
        raise CNIError(Code.INTERNAL, f"asg sync returned {r.status} with message: {r.body}")

    def cleanup_orphaned_asgs(self, handle: str) -> str | None:
        """Ask the agent to drop the container's ASG state; the problem as text, or None."""
        try:
            r = self.get(f"/force-orphaned-asgs-cleanup?container={quote(handle)}")
        except AgentUnreachable as e:
            return str(e)
        if r.status not in (200, 405):
            return f"asg cleanup returned {r.status} with message: {r.body}"
        return None
