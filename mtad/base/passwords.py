"""SMTP and API credential hashing: scrypt (memory-hard, stdlib), in a self-describing string.

Format: ``$scrypt$n=16384,r=8,p=1$<salt b64>$<hash b64>``. Verification costs ~50 ms of CPU on
purpose, so callers run it off the event loop (``asyncio.to_thread``); ``VerifiedCache`` remembers
successful verifications (as a keyed digest, never the password) so a smarthost that authenticates
on every connection does not pay the cost each time, as Dovecot's auth cache does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections import OrderedDict

_N, _R, _P = 2**14, 8, 1


def hash_password(password: str, *, n: int = _N) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=_R, p=_P, dklen=32)
    b64 = lambda b: base64.b64encode(b).decode().rstrip("=")  # noqa: E731
    return f"$scrypt$n={n},r={_R},p={_P}${b64(salt)}${b64(digest)}"


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def verify_password(password: str, encoded: str) -> bool:
    """True if ``password`` matches ``encoded``; False (never an exception) for a malformed hash."""
    try:
        _, scheme, params, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        kv = dict(item.split("=") for item in params.split(","))
        n, r, p = int(kv["n"]), int(kv["r"]), int(kv["p"])
        expected = _unb64(digest)
        actual = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=n, r=r, p=p,
                                maxmem=256 * 1024 * 1024, dklen=len(expected))
    except (ValueError, KeyError):
        return False
    return hmac.compare_digest(actual, expected)


def looks_hashed(value: str) -> bool:
    return value.startswith("$scrypt$")


class VerifiedCache:
    """Bounded memory of (login, password) pairs that verified, stored as keyed digests."""

    def __init__(self, size: int = 10_000):
        self._key = secrets.token_bytes(32)
        self._size = size
        self._items: OrderedDict[str, bytes] = OrderedDict()

    def _digest(self, login: str, password: str, encoded: str) -> bytes:
        return hmac.new(self._key, f"{login}\0{password}\0{encoded}".encode(), "sha256").digest()

    def known(self, login: str, password: str, encoded: str) -> bool:
        got = self._items.get(login)
        return got is not None and hmac.compare_digest(got, self._digest(login, password, encoded))

    def remember(self, login: str, password: str, encoded: str) -> None:
        self._items[login] = self._digest(login, password, encoded)
        self._items.move_to_end(login)
        while len(self._items) > self._size:
            self._items.popitem(last=False)
