"""The links of ``%mailing_list_unsubscribe_url%``: a signed token naming one member of one list.

``token(key, list_id, address)`` -> ``<payload>.<mac>``, both base64url without padding: the payload is
``"<list id>:<member address>"`` (UTF-8), the MAC the first 16 bytes of HMAC-SHA256 of the payload under ``key``
(``base.keys.derive(signing_key, "list-unsubscribe")``: every node of a cluster makes and checks the same links,
and a token made for another purpose never verifies here). ``verify(key, token)`` -> ``(list id, address)`` or
None for anything forged, truncated or malformed. The list is named by its id, so a renamed list's links keep
working; a deleted list's stop (the id is gone). Pure functions.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac

PURPOSE = "list-unsubscribe"
PATH = "/list-unsubscribe/"  # served by the API listener (mtad.api.lists)
_MAC_BYTES = 16
MAX_TOKEN = 1200


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64(data: bytes) -> str:
    """base64url without padding (``base64.urlsafe_b64encode`` less its Python wrappers: a link per member)."""
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_IPAD, _OPAD = bytes(x ^ 0x36 for x in range(256)), bytes(x ^ 0x5C for x in range(256))  # RFC 2104's pads


@functools.lru_cache(maxsize=16)
def _keyed(key: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    """HMAC-SHA256's inner and outer hashes with ``key`` absorbed (RFC 2104) and nothing else hashed yet: copying
    two hashes costs half of copying an ``hmac.HMAC`` (with OpenSSL 3 a new HMAC, even a copy, looks the digest
    up each time), and an expansion makes a link per member."""
    block = hashlib.sha256().block_size
    padded = (hashlib.sha256(key).digest() if len(key) > block else key).ljust(block, b"\0")
    return (hashlib.sha256(padded.translate(_IPAD)), hashlib.sha256(padded.translate(_OPAD)))


def _mac(key: bytes, payload: bytes) -> bytes:
    """The first ``_MAC_BYTES`` of HMAC-SHA256(key, payload)."""
    inner, outer = _keyed(key)
    inner, outer = inner.copy(), outer.copy()
    inner.update(payload)
    outer.update(inner.digest())
    return outer.digest()[:_MAC_BYTES]


def token(key: bytes, list_id: int, address: str) -> str:
    payload = f"{list_id}:{address.lower()}".encode("utf-8")
    return f"{_b64(payload)}.{_b64(_mac(key, payload))}"


def url(base_url: str, key: bytes, list_id: int, address: str) -> str:
    """The unsubscribe link of one member (``base_url``: the API's URL as recipients reach it)."""
    return base_url.rstrip("/") + PATH + token(key, list_id, address)


def verify(key: bytes, text: str) -> tuple[int, str] | None:
    if not text or len(text) > MAX_TOKEN or text.count(".") != 1:
        return None
    payload_text, mac_text = text.split(".")
    try:
        payload, mac = _unb64(payload_text), _unb64(mac_text)
    except (binascii.Error, ValueError):
        return None
    if not hmac.compare_digest(mac, _mac(key, payload)):
        return None
    try:
        list_id, _, address = payload.decode("utf-8").partition(":")
        return int(list_id), address
    except (UnicodeDecodeError, ValueError):
        return None
