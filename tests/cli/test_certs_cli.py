"""`cfnet certs generate`: the files it writes form a working mutual-TLS pair."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest

from cfnet.cli.exit_codes import ExitCode
from cfnet.web.tls import TLSFiles, bundle_paths, client_context, server_context

NAMES = ["ca.crt", "ca.key", "server.crt", "server.key", "client.crt", "client.key"]


class OneShotTLSServer:
    """Accepts one connection with `server_context`, echoes one message, records the outcome."""

    def __init__(self, files: TLSFiles) -> None:
        self.ctx = server_context(files)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.sock.settimeout(20)
        self.port = self.sock.getsockname()[1]
        self.outcome: tuple[str, object] | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError as e:
            self.outcome = ("no connection", e)
            return
        conn.settimeout(20)
        try:
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                peer = tls.getpeercert()
                data = tls.recv(100)
                tls.sendall(b"echo:" + data)
                self.outcome = ("served", peer)
        except (ssl.SSLError, OSError) as e:
            self.outcome = ("refused", e)
        finally:
            conn.close()

    def finish(self) -> tuple[str, object]:
        self.thread.join(30)
        self.sock.close()
        assert self.outcome is not None, "server thread did not finish"
        return self.outcome


def exchange(port: int, ctx: ssl.SSLContext, hostname: str = "127.0.0.1") -> bytes:
    """Send `hi` and return what came back (b"" or an exception when the server refused us)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname=hostname) as tls:
            tls.sendall(b"hi")
            return tls.recv(100)


def test_generate_writes_a_working_mutual_tls_pair(cfnet, tmp_path):
    d = tmp_path / "certs"
    r = cfnet("certs", "generate", "--dir", str(d), "--days", "2")
    assert r.exit_code == ExitCode.OK, r.stderr
    for name in NAMES:
        assert f"wrote {d / name}" in r.stdout
        assert (d / name).is_file()
    for key in ("ca.key", "server.key", "client.key"):
        assert stat.S_IMODE((d / key).stat().st_mode) == 0o600

    bundle = bundle_paths(d)
    server = OneShotTLSServer(bundle.server)
    assert exchange(server.port, client_context(bundle.client)) == b"echo:hi"
    outcome, peer = server.finish()
    assert outcome == "served"
    subject = dict(x[0] for x in peer["subject"])  # type: ignore[index]
    assert subject["commonName"] == "cfnet-client"


def test_a_client_without_a_certificate_is_refused(cfnet, tmp_path):
    assert cfnet("certs", "generate", "--dir", str(tmp_path)).exit_code == ExitCode.OK
    bundle = bundle_paths(tmp_path)
    server = OneShotTLSServer(bundle.server)
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.load_verify_locations(str(bundle.ca_cert))
    try:
        answer = exchange(server.port, anonymous)
    except (ssl.SSLError, OSError):
        answer = b""
    assert answer == b""
    outcome, _ = server.finish()
    assert outcome == "refused"


def test_a_client_from_another_ca_is_refused(cfnet, tmp_path):
    assert cfnet("certs", "generate", "--dir", str(tmp_path / "a")).exit_code == ExitCode.OK
    assert cfnet("certs", "generate", "--dir", str(tmp_path / "b")).exit_code == ExitCode.OK
    a, b = bundle_paths(tmp_path / "a"), bundle_paths(tmp_path / "b")
    server = OneShotTLSServer(a.server)
    # Trusts the server's CA, but presents a certificate signed by another CA.
    stranger = client_context(TLSFiles(b.client.cert, b.client.key, a.ca_cert))
    try:
        answer = exchange(server.port, stranger)
    except (ssl.SSLError, OSError):
        answer = b""
    assert answer == b""
    assert server.finish()[0] == "refused"


def test_server_names_and_client_name(cfnet, tmp_path):
    from cryptography import x509

    r = cfnet("certs", "generate", "--dir", str(tmp_path), "--server-name", "policy.internal",
              "--server-name", "127.0.0.1", "--client-name", "cell-7", "--days", "30")
    assert r.exit_code == ExitCode.OK, r.stderr
    cert = x509.load_pem_x509_certificate((tmp_path / "server.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["policy.internal"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    client = x509.load_pem_x509_certificate((tmp_path / "client.crt").read_bytes())
    assert client.subject.rfc4514_string() == "CN=cell-7"
    assert (client.not_valid_after_utc - client.not_valid_before_utc).days == 30

    bundle = bundle_paths(tmp_path)
    server = OneShotTLSServer(bundle.server)
    # Verified by name: connects to 127.0.0.1, checks the certificate is valid for the DNS name.
    assert exchange(server.port, client_context(bundle.client), "policy.internal") == b"echo:hi"
    assert server.finish()[0] == "served"


def test_refuses_to_overwrite_without_force(cfnet, tmp_path):
    assert cfnet("certs", "generate", "--dir", str(tmp_path)).exit_code == ExitCode.OK
    before = {n: (tmp_path / n).read_bytes() for n in NAMES}
    r = cfnet("certs", "generate", "--dir", str(tmp_path))
    assert r.exit_code == ExitCode.ERROR
    assert r.stderr.startswith(f"error: refusing to overwrite {tmp_path / 'ca.crt'}")
    assert r.stderr.count("\n") == 1 and "--force" in r.stderr
    assert {n: (tmp_path / n).read_bytes() for n in NAMES} == before

    r = cfnet("certs", "generate", "--dir", str(tmp_path), "--force")
    assert r.exit_code == ExitCode.OK
    assert (tmp_path / "ca.crt").read_bytes() != before["ca.crt"]


def test_one_existing_file_is_enough_to_refuse(cfnet, tmp_path):
    d = tmp_path / "certs"
    d.mkdir()
    (d / "client.key").write_text("precious")
    r = cfnet("certs", "generate", "--dir", str(d))
    assert r.exit_code == ExitCode.ERROR
    assert r.stderr == (f"error: refusing to overwrite {d / 'client.key'} "
                        "(pass --force to replace them)\n")
    assert sorted(p.name for p in d.iterdir()) == ["client.key"]


@pytest.mark.parametrize("args, message", [
    (["--days", "0"], "error: invalid --days 0: must be from 1 to 36500 (100 years)\n"),
    (["--days", "36501"], "error: invalid --days 36501: must be from 1 to 36500 (100 years)\n"),
    (["--days", "100000000"],
     "error: invalid --days 100000000: must be from 1 to 36500 (100 years)\n"),
    (["--server-name", ""], "error: invalid --server-name: must not be empty\n"),
    (["--server-name", "\u00e9.example"], "error: invalid --server-name '\u00e9.example': use "
     "printable ASCII (an internationalised DNS name in its xn-- form)\n"),
    (["--server-name", "a" * 65], f"error: invalid --server-name '{'a' * 65}': longer than 64 "
     "characters\n"),
    (["--client-name", "c" * 65], f"error: invalid --client-name '{'c' * 65}': longer than 64 "
     "characters\n"),
    (["--client-name", "a\x1b[31m"], "error: invalid --client-name 'a\\x1b[31m': use printable "
     "ASCII (an internationalised DNS name in its xn-- form)\n"),
    (["--client-name", " "], "error: invalid --client-name: must not be empty\n"),
])
def test_bad_arguments(cfnet, tmp_path, args, message):
    r = cfnet("certs", "generate", "--dir", str(tmp_path / "x"), *args)
    assert r.exit_code == ExitCode.USAGE
    assert r.stderr == message
    assert not (tmp_path / "x").exists()


def test_dir_is_a_file(cfnet, tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    r = cfnet("certs", "generate", "--dir", str(f))
    assert r.exit_code == ExitCode.USAGE
    assert r.stderr == f"error: {f} exists and is not a directory\n"


def test_unwritable_dir_is_one_line(cfnet_proc, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    r = cfnet_proc("certs", "generate", "--dir", str(blocker / "sub"))
    assert r.exit_code == ExitCode.ERROR
    assert r.stderr.startswith(f"error: writing certificates to {blocker / 'sub'}")
    assert "Traceback" not in r.stderr


def test_subprocess_generate(cfnet_proc, tmp_path: Path):
    r = cfnet_proc("certs", "generate", "--dir", str(tmp_path))
    assert r.exit_code == ExitCode.OK, r.stderr
    assert r.stdout.splitlines()[0].startswith(f"wrote {tmp_path / 'ca.crt'}")


def test_longest_validity_and_names_work(cfnet, tmp_path):
    d = tmp_path / "long"
    r = cfnet("certs", "generate", "--dir", str(d), "--days", "36500",
              "--server-name", "a" * 64, "--server-name", "b" * 100 + ".example",
              "--client-name", "c" * 64)
    assert r.exit_code == ExitCode.OK, r.stderr
    assert sorted(p.name for p in d.iterdir()) == sorted(NAMES)


def test_a_failed_generation_leaves_no_directory_behind(tmp_path):
    """A failure after the directory was made (here: a date past 9999) removes what it made."""
    from cfnet.cli.certs import generate_atomically

    target = tmp_path / "new" / "certs"
    with pytest.raises((OverflowError, ValueError)):
        generate_atomically(target, None, "cfnet-client", 100_000_000)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_forced_generation_keeps_the_old_files(tmp_path):
    from cfnet.cli.certs import generate_atomically

    generate_atomically(tmp_path, None, "cfnet-client", 2)
    before = {name: (tmp_path / name).read_bytes() for name in NAMES}
    with pytest.raises((OverflowError, ValueError)):
        generate_atomically(tmp_path, None, "cfnet-client", 100_000_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(NAMES)  # no staging left
    assert {name: (tmp_path / name).read_bytes() for name in NAMES} == before
