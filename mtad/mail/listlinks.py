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


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@functools.lru_cache(maxsize=16)
def _keyed(key: bytes) -> hmac.HMAC:
    """HMAC-SHA256 with ``key`` and nothing hashed yet: a copy of it costs a fraction of a new HMAC (with OpenSSL 3
    a new one looks the digest up each time), and an expansion makes a link per member."""
    return hmac.new(key, digestmod=hashlib.sha256)


def _mac(key: bytes, payload: bytes) -> bytes:
    mac = _keyed(key).copy()
    mac.update(payload)
    return mac.digest()[:_MAC_BYTES]


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
