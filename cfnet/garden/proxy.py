"""Proxy redirect for an Envoy sidecar (spec dataplane 4.7), in nftables inside the container.

Upstream adds iptables nat REDIRECT rules in the container's namespace; here one nft transaction
adds a `cfnet-proxy` table there: an output hook for `proxy_redirect_cidr`, a prerouting hook when
`enable_ingress_proxy_redirect` is set. The table dies with the namespace; `remove` exists only so
that a failed `up` can take it back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cfnet.net import netns

TABLE = "cfnet-proxy"


class ProxyError(Exception):
    pass


def script(cidr: str, ingress: bool, port: int) -> str:
    """The nft script for the container (empty when nothing is configured)."""
    if not cidr and not ingress:
        return ""
    lines = [f"table ip {TABLE} {{"]
    if cidr:
        lines += ["  chain output {", "    type nat hook output priority -100; policy accept;",
                  f"    ip daddr {cidr} meta l4proto tcp redirect to :{port}", "  }"]
    if ingress:
        lines += ["  chain prerouting {",
                  "    type nat hook prerouting priority -100; policy accept;",
                  f"    meta l4proto tcp redirect to :{port}", "  }"]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _in_netns(ns_path: str, fn: Callable[[Any], tuple[int, str, str]]) -> tuple[int, str, str]:
    """Run `fn(nft context)` on a thread that entered the namespace at `ns_path`."""
    def run() -> tuple[int, str, str]:
        import nftables

        return fn(nftables.Nftables())

    try:
        return netns.call_in(ns_path, run, timeout=None)
    except OSError as e:
        # the hook's one-line text for a refused setns stays "setns PATH: why" (no "[Errno n]")
        if e.filename is None and str(e.strerror).startswith(f"setns {ns_path}: "):
            raise ProxyError(e.strerror) from None
        raise


def _run(ns_path: str, text: str) -> None:
    rc, _out, err = _in_netns(ns_path, lambda ctx: ctx.cmd(text))
    if rc != 0:
        lines = [ln for ln in err.splitlines() if "Error:" in ln]
        message = lines[0].split("Error:", 1)[1].strip() if lines else err.strip() or "nft failed"
        raise ProxyError(f"nft: {message}")


def apply(ns_path: str, cidr: str, ingress: bool, port: int) -> bool:
    """Install the redirect table; True when something was installed."""
    text = script(cidr, ingress, port)
    if not text:
        return False
    _run(ns_path, text)
    return True


def remove(ns_path: str) -> None:
    _run(ns_path, f"delete table ip {TABLE}\n")
