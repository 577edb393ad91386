"""What runs inside a lab container: a tiny HTTP responder, and a probe to reach others.

Both use bare sockets: `http.server` stalls on reverse DNS lookups inside an isolated namespace.

    python -m cfnet.lab.responder serve NAME INSTANCE PORT [PORT ...] [echo:PORT]
    python -m cfnet.lab.responder probe HOST PORT [--timeout S]
"""

from __future__ import annotations

import socket
import sys
import threading


def serve(name: str, instance: str, ports: list[int], echo_ports: tuple[int, ...] = ()) -> None:
    """HTTP answers `NAME/INSTANCE` on `ports`; a byte echo on `echo_ports` (long connections)."""
    body = f"{name}/{instance}\n".encode()
    response = (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)

    def loop(port: int) -> None:
        server = socket.create_server(("0.0.0.0", port), reuse_port=True)
        while True:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(4096)
                    conn.sendall(response)
                except OSError:
                    pass

    def echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def echo_loop(port: int) -> None:
        server = socket.create_server(("0.0.0.0", port), reuse_port=True)
        while True:
            conn, _ = server.accept()
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    threads = [threading.Thread(target=loop, args=(p,), daemon=True) for p in ports]
    threads += [threading.Thread(target=echo_loop, args=(p,), daemon=True) for p in echo_ports]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def fetch(host: str, port: int, timeout: float = 2.0) -> tuple[bool, str]:
    """(True, the responder's answer) or (False, why the connection failed)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.settimeout(timeout)
            conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
    except OSError as e:
        return False, f"failed: {e.strerror or e}"
    return True, data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace").strip()


def probe(host: str, port: int, timeout: float = 2.0) -> int:
    """Print the responder's answer and exit 0, or print why not and exit 1."""
    ok, text = fetch(host, port, timeout)
    print(text)
    return 0 if ok else 1


def main(argv: list[str]) -> int:
    if len(argv) >= 4 and argv[0] == "serve":
        serve(argv[1], argv[2], [int(p) for p in argv[3:] if not p.startswith("echo:")],
              tuple(int(p[5:]) for p in argv[3:] if p.startswith("echo:")))
        return 0
    if len(argv) >= 3 and argv[0] == "probe":
        timeout = float(argv[4]) if len(argv) >= 5 and argv[3] == "--timeout" else 2.0
        return probe(argv[1], int(argv[2]), timeout)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
