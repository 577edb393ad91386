"""A tiny TCP load balancer for the lab's policy-server replicas (runs in the control plane).

    python -m cfnet.lab.balancer LISTEN=BACKEND[,BACKEND...] [LISTEN=...]

with addresses as HOST:PORT. Each accepted connection goes to the next backend in turn; a
backend that refuses or does not answer within a second is skipped, so clients (the agents'
internal mTLS connections, the CLI's external requests) keep working while one replica is down.
Bytes are copied as they are: TLS is end to end between the client and the replica.
"""

from __future__ import annotations

import asyncio
import itertools
import sys


def _addr(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except (ConnectionError, OSError):
            pass


def _handler(backends: list[tuple[str, int]]) -> object:
    turn = itertools.cycle(range(len(backends)))

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        first = next(turn)
        for i in range(len(backends)):
            host, port = backends[(first + i) % len(backends)]
            try:
                server_r, server_w = await asyncio.wait_for(
                    asyncio.open_connection(host, port), timeout=1.0)
            except (OSError, asyncio.TimeoutError):
                continue
            await asyncio.gather(_pipe(client_r, server_w), _pipe(server_r, client_w))
            return
        client_w.close()  # no backend answers: the client sees the connection closed

    return handle


async def _main(specs: list[str]) -> None:
    servers = []
    for spec in specs:
        listen, backends = spec.split("=", 1)
        host, port = _addr(listen)
        servers.append(await asyncio.start_server(
            _handler([_addr(b) for b in backends.split(",")]), host, port, reuse_address=True))
    await asyncio.gather(*(s.serve_forever() for s in servers))


def main(argv: list[str]) -> int:
    if not argv or any("=" not in a for a in argv):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        asyncio.run(_main(argv))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
