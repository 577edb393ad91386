"""Certificates and TLS settings for the mutual-TLS APIs (policy-server internal, silk-controller).

Upstream allows TLS 1.2 and 1.3 and, for TLS 1.2, the single cipher suite
ECDHE-RSA-AES128-GCM-SHA256, so certificates must be RSA. `generate_bundle` writes a CA plus one
server and one client certificate signed by it: what the tests, the lab and an operator trying
cfnet out need.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TLS12_CIPHERS = "ECDHE-RSA-AES128-GCM-SHA256"


@dataclass(frozen=True)
class TLSFiles:
    """Paths of one certificate, its key, and the CA that verifies the peer."""

    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class Bundle:
    ca_cert: Path
    ca_key: Path
    server: TLSFiles
    client: TLSFiles


def _name(common_name: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: Any) -> None:
    from cryptography.hazmat.primitives import serialization

    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_cert(path: Path, cert: Any) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _sign(subject_cn: str, public_key: Any, issuer_cn: str, issuer_key: Any, *, ca: bool,
          sans: list[str], client: bool, days: int) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject_cn))
        .issuer_name(_name(issuer_cn))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), critical=True)
    else:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        alt: list[Any] = []
        for san in sans:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(san)))
            except ValueError:
                alt.append(x509.DNSName(san))
        if alt:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _rsa_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def generate_bundle(
    directory: str | Path,
    server_names: list[str] | None = None,
    client_name: str = "cfnet-client",
    days: int = 365,
) -> Bundle:
    """Write ca.crt/ca.key, server.crt/server.key and client.crt/client.key into `directory`.

    `server_names` are the DNS names and IP addresses the server certificate is valid for
    (default: localhost and 127.0.0.1). Existing files are overwritten.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    sans = server_names or ["localhost", "127.0.0.1"]
    ca_key = _rsa_key()
    ca_cert = _sign("cfnet CA", ca_key.public_key(), "cfnet CA", ca_key, ca=True, sans=[],
                    client=False, days=days)
    _write_key(d / "ca.key", ca_key)
    _write_cert(d / "ca.crt", ca_cert)
    for role, cn, names, client in (("server", sans[0], sans, False),
                                    ("client", client_name, [client_name], True)):
        key = _rsa_key()
        cert = _sign(cn, key.public_key(), "cfnet CA", ca_key, ca=False, sans=names,
                     client=client, days=days)
        _write_key(d / f"{role}.key", key)
        _write_cert(d / f"{role}.crt", cert)
    return bundle_paths(d)


def bundle_paths(directory: str | Path) -> Bundle:
    d = Path(directory)
    return Bundle(
        ca_cert=d / "ca.crt",
        ca_key=d / "ca.key",
        server=TLSFiles(d / "server.crt", d / "server.key", d / "ca.crt"),
        client=TLSFiles(d / "client.crt", d / "client.key", d / "ca.crt"),
    )


def server_context(files: TLSFiles, require_client_cert: bool = True) -> ssl.SSLContext:
    """A server context as upstream builds it: TLS 1.2+, one TLS 1.2 suite, client cert verified."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.load_cert_chain(str(files.cert), str(files.key))
    if require_client_cert:
        ctx.load_verify_locations(str(files.ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(files: TLSFiles) -> ssl.SSLContext:
    """A client context presenting `files.cert` and trusting only `files.ca`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(str(files.ca))
    ctx.load_cert_chain(str(files.cert), str(files.key))
    return ctx


class TLSFileError(ValueError):
    """A file of a TLSFiles is unusable: `which` is "cert", "key" or "ca"; `problem` says why."""

    def __init__(self, which: str, problem: str) -> None:
        super().__init__(problem)
        self.which, self.problem = which, problem


def check_tls_files(files: TLSFiles) -> None:
    """Check that the CA and certificate files hold PEM certificates and the key matches the
    certificate, so a config loader can name the file at fault (raises TLSFileError)."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    def read(path: Path, which: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as e:
            raise TLSFileError(which, f"cannot read {path}: {e.strerror or e}") from None

    def certificates(path: Path, which: str) -> list[Any]:
        data = read(path, which)
        try:
            return x509.load_pem_x509_certificates(data)
        except ValueError:
            raise TLSFileError(which, f"{path} holds no PEM certificate") from None

    certificates(files.ca, "ca")
    cert = certificates(files.cert, "cert")[0]
    key_data = read(files.key, "key")
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        raise TLSFileError("key", f"{files.key} is encrypted; give a key without a passphrase") \
            from None
    except (ValueError, UnsupportedAlgorithm):
        raise TLSFileError("key", f"{files.key} holds no PEM private key") from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise TLSFileError("key", f"{files.key} does not match the certificate in {files.cert}")
