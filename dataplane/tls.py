"""STARTTLS material: the configured certificate, or a self-signed one generated
into `<data_dir>/tls/` on first start (RSA 2048, SHA-256, ten years, the host
name and localhost as subject alternative names). Senders relaying through a
Bridge rarely verify the certificate; an operator who wants them to configures
a real one with --tls-cert/--tls-key."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
from pathlib import Path

from aiosmtpd.smtp import TLSSetupException

from control.contract import file_modes

CERT_NAME = "smtp-selfsigned.crt"
KEY_NAME = "smtp-selfsigned.key"
VALIDITY_DAYS = 3650


def _write_private(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def ensure_self_signed(directory: Path, hostname: str) -> tuple[Path, Path]:
    """(cert, key) paths in `directory`, generating the pair if it is not there yet."""
    directory = Path(directory)
    cert_path, key_path = directory / CERT_NAME, directory / KEY_NAME
    if cert_path.exists() and key_path.exists():
        file_modes.tighten(key_path)
        return cert_path, key_path

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    file_modes.private_dir(directory)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64]),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "poolmta self-signed"),
    ])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [x509.DNSName(hostname), x509.DNSName("localhost"),
                                         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(key_path, key_pem, 0o600)
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The STARTTLS server context: TLS 1.2 or newer, no client certificates."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    return context


def client_handshake_failed(error: BaseException, log: logging.Logger) -> bool:
    """True (and one INFO line in `log`) when `error` is a client's failed STARTTLS
    handshake (aiosmtpd's TLSSetupException; aiosmtpd then closes the connection
    without a reply, as RFC 3207 section 4.1 leaves it no channel to send one on).
    It is the client's doing, so never an ERROR with a traceback: any client could
    fill the log with those by sending garbage after the 220."""
    if not isinstance(error, TLSSetupException):
        return False
    cause = error.__cause__
    log.info("STARTTLS handshake failed: %s", f"{type(cause).__name__}: {cause}" if cause else "no detail")
    return True
