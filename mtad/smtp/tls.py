"""TLS for listeners: server contexts, and the self-signed certificate made on first start.

``ServerTls`` holds the context every listener was given and lets its certificate be replaced (SIGHUP,
after certbot renewed it): new handshakes get the new certificate, sessions already open keep theirs.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from pathlib import Path


def make_self_signed(cert_path: Path, key_path: Path, hostname: str) -> None:
    """An ECDSA P-256 certificate for ``hostname`` (and 127.0.0.1), valid ten years; key mode 0600."""
    from cryptography import x509  # here: a daemon given its certificate never loads the X.509 builder
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64])])
    now = datetime.datetime.now(datetime.timezone.utc)
    alt = [x509.DNSName(hostname), x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .sign(key, hashes.SHA256()))
    key_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """TLS 1.2+ server context with the system's default ciphers; no client certificates asked."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


class ServerTls:
    """The listeners' server context, whose certificate and key can be replaced while they run.

    ``context`` is handed to the listeners once. ``reload`` loads the files into a new context (so a
    broken file raises and changes nothing) and makes it the one new handshakes use: the listeners'
    context switches each handshake to it in its SNI callback, which OpenSSL calls for every ClientHello,
    with or without a server name.
    """

    def __init__(self, cert: Path, key: Path):
        self.context = server_context(cert, key)
        self._current = self.context
        self.context.sni_callback = self._select

    def _select(self, conn: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext) -> None:
        current = self._current
        if current is not self.context:
            conn.context = current
        return None

    def reload(self, cert: Path, key: Path) -> None:
        """Serve ``cert``/``key`` to new handshakes; raises OSError or ssl.SSLError (and keeps the old)."""
        self._current = server_context(cert, key)
