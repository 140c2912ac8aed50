"""DKIM signing (RFC 6376, relaxed/relaxed) and key management.

``sign(message, keys)`` returns the message with one ``DKIM-Signature`` header per key prepended. The canonicaliser
is a minimal RFC 6376 §3.4.2/§3.4.4 relaxed implementation over ``re``/``hashlib``, and the signature itself is
computed by ``cryptography`` (OpenSSL): dkimpy's pure-Python RSA signs ~180 messages/s where this module signs
thousands. dkimpy stays the independent verifier in the tests.

Contract:
- Input is a whole message with CRLF line endings (what ingress stores); nothing else is normalised.
- Only the configured headers that are present are signed, every instance, listed in ``h=`` once per instance and
  hashed bottom-up (§5.4.2). Headers are not over-signed.
- Keys: RSA (``rsa-sha256``, PKCS#1 v1.5, at least 1024 bits as RFC 8301 requires) and Ed25519
  (``ed25519-sha256``, RFC 8463: Ed25519 over the SHA-256 of the header hash input). Both may sign one message.
- Signing is CPU work (~0.25 ms per RSA-2048 signature, ~0.04 ms Ed25519): the scheduler hands it to worker
  processes (``mtad.outbound.signer``), which call ``signatures`` and send back only the header fields.
- A message without a From header is refused (``ValueError``): §5.4 requires From to be signed.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

# ``cryptography`` (~30 ms of CPU to import) is imported in the functions that make or load a key: a daemon whose
# domains have no DKIM keys never loads it; the one per-message step (``_signature_header``) uses what a loaded key
# already brought in.

Algorithm = Literal["rsa-sha256", "ed25519-sha256"]

DEFAULT_SIGNED_HEADERS: tuple[str, ...] = (
    "From", "To", "Cc", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type",
    "Content-Transfer-Encoding", "Reply-To", "In-Reply-To", "References", "List-Unsubscribe",
    "List-Unsubscribe-Post", "List-Id", "Sender", "Feedback-ID",
)

_CRLF = b"\r\n"
_WSP_RUN = re.compile(rb"[ \t]+")
_LINE_WIDTH = 76


@dataclass(frozen=True)
class DkimKey:
    """A signing key for ``domain`` published at ``selector._domainkey.domain``."""

    domain: str
    selector: str
    algorithm: Algorithm
    private_key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def load_key(domain: str, selector: str, pem_bytes: bytes) -> DkimKey:
    """Load a PEM private key (PKCS#8 or traditional). Raises ``ValueError`` for unusable keys."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
    try:
        key = serialization.load_pem_private_key(pem_bytes, password=None)
    except (TypeError, UnsupportedAlgorithm) as exc:  # encrypted, or of a kind OpenSSL cannot load
        raise ValueError(f"cannot load the private key: {exc}") from exc
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 1024:
            raise ValueError(f"RSA key of {key.key_size} bits is too small (RFC 8301: at least 1024)")
        return DkimKey(domain.lower(), selector, "rsa-sha256", key)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return DkimKey(domain.lower(), selector, "ed25519-sha256", key)
    raise ValueError(f"unsupported key type {type(key).__name__}: DKIM keys are RSA or Ed25519")


def generate_key(algorithm: Literal["rsa", "ed25519"], bits: int = 2048) -> bytes:
    """Make a new private key, returned as unencrypted PKCS#8 PEM (``bits`` applies to RSA only)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    elif algorithm == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"algorithm must be 'rsa' or 'ed25519', got {algorithm!r}")
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def private_pem(key: DkimKey) -> bytes:
    """The key as unencrypted PKCS#8 PEM, what ``load_key`` reads (to hand it to a signing worker)."""
    from cryptography.hazmat.primitives import serialization
    return key.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())


def dns_record(key: DkimKey) -> tuple[str, str]:
    """The TXT record to publish: ``("s1._domainkey.example.com", "v=DKIM1; k=rsa; p=...")``.

    RSA publishes the DER SubjectPublicKeyInfo; Ed25519 the raw 32-byte public key (RFC 8463 §4).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    public = key.private_key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        kind, raw = "rsa", public.public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    else:
        kind, raw = "ed25519", public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"{key.selector}._domainkey.{key.domain}", f"v=DKIM1; k={kind}; p={base64.b64encode(raw).decode()}"


def sign(message: bytes, keys: list[DkimKey], headers: tuple[str, ...] = DEFAULT_SIGNED_HEADERS,
         now: float | None = None) -> bytes:
    """Return ``message`` with one DKIM-Signature header per key prepended, in ``keys`` order."""
    if not keys:
        return message
    return signatures(message, keys, headers, now) + message


def signatures(message: bytes, keys: list[DkimKey], headers: tuple[str, ...] = DEFAULT_SIGNED_HEADERS,
               now: float | None = None) -> bytes:
    """The DKIM-Signature header fields ``sign`` would prepend (each ending in CRLF); ``b""`` without keys."""
    if not keys:
        return b""
    head, body = _split(message)
    body_hash = base64.b64encode(hashlib.sha256(canonicalize_body(body)).digest()).decode("ascii")
    names, signed = _select(head, _lowered(headers))
    if b"from" not in names:
        raise ValueError("a DKIM signature must cover From (RFC 6376 §5.4) and the message has no From header")
    timestamp = int(time.time() if now is None else now)
    return b"".join(_signature_header(key, names, signed, body_hash, timestamp) for key in keys)


def canonicalize_header(field: bytes) -> bytes:
    """Relaxed header canonicalisation (§3.4.2) of one raw field ``Name: value`` (folded, no final CRLF)."""
    name, _, value = field.partition(b":")
    value = value.replace(_CRLF, b"")  # unfold: the WSP after each CRLF stays
    if b"\t" in value or b"  " in value:  # most values have no WSP run: skip the regex
        value = _WSP_RUN.sub(b" ", value)
    return name.rstrip(b" \t").lower() + b":" + value.strip(b" ")


def canonicalize_body(body: bytes) -> bytes:
    """Relaxed body canonicalisation (§3.4.4): WSP runs to one SP, no WSP at line ends, no trailing empty lines."""
    if not body:
        return b""
    if not body.endswith(_CRLF):
        body += _CRLF
    if b"\t" in body or b"  " in body:
        body = _WSP_RUN.sub(b" ", body)
    body = body.replace(b" \r\n", _CRLF)
    end = len(body)
    while body.endswith(_CRLF, 0, end):
        end -= 2
    return body[:end] + _CRLF if end else b""


def _split(message: bytes) -> tuple[bytes, bytes]:
    """The header block (without its final CRLF) and the body."""
    if message.startswith(_CRLF):
        return b"", message[2:]
    head, sep, body = message.partition(b"\r\n\r\n")
    if not sep and head.endswith(_CRLF):  # headers only, no empty line
        head = head[:-2]
    return head, body


@lru_cache(maxsize=32)
def _lowered(headers: tuple[str, ...]) -> tuple[bytes, ...]:
    return tuple(dict.fromkeys(h.lower().encode("ascii") for h in headers))


def _select(head: bytes, wanted: tuple[bytes, ...]) -> tuple[list[bytes], list[bytes]]:
    """The ``h=`` names and the canonical header lines to hash, each instance bottom-up (§5.4.2)."""
    fields: list[bytes] = []
    for line in head.split(_CRLF):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += _CRLF + line
        else:
            fields.append(line)
    found: dict[bytes, list[bytes]] = {}
    for field in reversed(fields):
        name = field.partition(b":")[0].rstrip(b" \t").lower()
        if name in wanted:
            found.setdefault(name, []).append(canonicalize_header(field) + _CRLF)
    names: list[bytes] = []
    signed: list[bytes] = []
    for name in wanted:
        for line in found.get(name, ()):
            names.append(name)
            signed.append(line)
    return names, signed


def _signature_header(key: DkimKey, names: list[bytes], signed: list[bytes], body_hash: str,
                      timestamp: int) -> bytes:
    h_list = b":".join(names).decode("ascii").replace(":", ": ").split(" ")  # FWS may follow each ':'
    pieces = [f" v=1; a={key.algorithm};", " c=relaxed/relaxed;", f" d={key.domain};", f" s={key.selector};",
              f" t={timestamp};", " h=" + h_list[0], *h_list[1:], ";", f" bh={body_hash};", " b="]
    unsigned = _fold("DKIM-Signature:", pieces)
    data = b"".join(signed) + canonicalize_header(unsigned)
    if key.algorithm == "rsa-sha256":  # an RSA key (``load_key``, which imported these: ~1 µs beside the signature)
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding
        signature = key.private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    else:
        signature = key.private_key.sign(hashlib.sha256(data).digest())
    # FWS is allowed inside b= and ignored by verifiers (§3.5); the hashed form above had b= empty.
    b64 = base64.b64encode(signature)
    first = max(_LINE_WIDTH - (len(unsigned) - unsigned.rfind(b"\n") - 1), 0)
    rest = [b64[i:i + _LINE_WIDTH - 1] for i in range(first, len(b64), _LINE_WIDTH - 1)]
    return b"\r\n ".join([unsigned + b64[:first], *rest]) + _CRLF


def _fold(line: str, pieces: list[str]) -> bytes:
    """Append the pieces to ``line``, starting a new line (CRLF SP) where one would pass 76 columns."""
    lines: list[str] = []
    for piece in pieces:
        if len(line) + len(piece) > _LINE_WIDTH:
            lines.append(line)
            line = " " + piece.lstrip(" ")
        else:
            line += piece
    lines.append(line)
    return "\r\n".join(lines).encode("ascii")
