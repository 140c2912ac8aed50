"""Tracking tokens: what a click, open or unsubscribe URL carries, sealed so that it can be neither forged nor read.

A token names one stored message (its queue id), one recipient, what the URL does (``KINDS``) and, for a
click, the index of the link in the message's link list (``mtad.mail.links.collect``: the URL itself is never
in the token, so a token can only ever lead to a URL that was in the message — never an open redirect).

Format: ``base64url(version | nonce(12) | AES-256-GCM(plaintext) | tag(16))``, unpadded. The plaintext is
``kind(1) | len(queue_id)(1) | queue_id | index(4, big-endian) | recipient (UTF-8)``; the version byte is the
associated data. The nonce is synthetic (SIV-style): the first 12 bytes of HMAC-SHA256 over the plaintext under a
second key, so the same link for the same recipient always gets the same token (a message rendered again for a
retry carries the same URLs) and a nonce repeats only with its plaintext. The 128-bit tag authenticates
everything: a changed byte anywhere makes ``open_token`` return None.

Keys: ``Sealer(key)`` with a 32-byte purpose key (``mtad.base.keys.derive(signing_key, purpose)``): the
``"tracking"`` purpose for clicks and opens, ``"unsubscribe"`` for unsubscribe links, so a token made for one
purpose never opens with the other. Both sub-keys (encryption, nonce) are derived from it. Pure functions.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = b"\x01"
CLICK, OPEN, UNSUBSCRIBE, TAG_UNSUBSCRIBE = "c", "o", "u", "t"
KINDS = (CLICK, OPEN, UNSUBSCRIBE, TAG_UNSUBSCRIBE)
MAX_TOKEN = 1024  # characters: longer is never one of ours (a recipient is at most 320 bytes)
_INDEX = struct.Struct(">I")


@dataclass(frozen=True)
class Token:
    """What a token says: ``kind`` (``KINDS``), the stored message, the recipient, and the link index (clicks;
    0 otherwise)."""

    kind: str
    queue_id: str
    recipient: str
    index: int = 0


class Sealer:
    """Makes and opens tokens under one purpose key (see the module doc)."""

    __slots__ = ("_aead", "_enc_key", "_nonce_key")

    def __init__(self, key: bytes):
        if len(key) != 32:
            raise ValueError("a 32-byte purpose key is required")
        self._enc_key = hmac.new(key, b"enc", hashlib.sha256).digest()
        self._aead: AESGCM | None = None  # made at the first seal or open (``_load``)
        self._nonce_key = hmac.new(key, b"siv", hashlib.sha256).digest()

    def _load(self) -> AESGCM:
        """The AEAD, made at the first use: ``cryptography`` (~30 ms of CPU to import) is not loaded at every start
        (the sealers are made there) but when a token is first made or read."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        self._aead = AESGCM(self._enc_key)
        return self._aead

    def seal(self, token: Token) -> str:
        qid = token.queue_id.encode("ascii")
        if token.kind not in KINDS or not 0 < len(qid) < 256 or not 0 <= token.index < 1 << 32:
            raise ValueError(f"not a token: {token!r}")
        plain = token.kind.encode("ascii") + bytes((len(qid),)) + qid + _INDEX.pack(token.index) + \
            token.recipient.encode("utf-8")
        nonce = hmac.new(self._nonce_key, plain, hashlib.sha256).digest()[:12]
        sealed = VERSION + nonce + (self._aead or self._load()).encrypt(nonce, plain, VERSION)
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")

    def open(self, text: str) -> Token | None:
        """The token's content, or None for anything that is not a token this key made (forged, altered,
        truncated, another purpose's, not base64url)."""
        if not 40 <= len(text) <= MAX_TOKEN or not text.isascii():
            return None
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            return None
        if raw[:1] != VERSION or len(raw) < 1 + 12 + 16 + 7:
            return None
        try:
            plain = (self._aead or self._load()).decrypt(raw[1:13], raw[13:], VERSION)
        except Exception as exc:
            from cryptography.exceptions import InvalidTag  # loaded with the AEAD: the forged token's path only
            if isinstance(exc, InvalidTag):
                return None
            raise
        try:
            kind = plain[:1].decode("ascii")
            n = plain[1]
            qid = plain[2:2 + n].decode("ascii")
            (index,) = _INDEX.unpack_from(plain, 2 + n)
            recipient = plain[6 + n:].decode("utf-8")
        except (UnicodeDecodeError, IndexError, struct.error):
            return None
        if kind not in KINDS or not qid:
            return None
        return Token(kind, qid, recipient, index)
