"""Mailgun-style request signing for route POSTs and webhooks.

A request carries ``timestamp`` (seconds since the epoch), ``token`` (50 random characters from
[a-z0-9]) and ``signature``: the hex HMAC-SHA256 of ``timestamp + token`` under the signing key.
Receivers check it with the seed manual's ``verify()``; mtad's own ``verify`` compares in constant
time. Replay protection (remembering tokens, rejecting old timestamps) is the receiver's business.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import string
import threading
import time

TOKEN_ALPHABET = string.ascii_lowercase + string.digits
TOKEN_LENGTH = 50


def _digest(key: str, timestamp: str, token: str) -> str:
    return hmac.new(key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()


# Random bytes -> token characters: byte b is TOKEN_ALPHABET[b % 36]; bytes from 252 (= 7 x 36) up are dropped,
# so that every character stays equally likely.
_LIMIT = 256 - 256 % len(TOKEN_ALPHABET)
_TO_ALPHABET = bytes(ord(TOKEN_ALPHABET[b % len(TOKEN_ALPHABET)]) for b in range(256))
_DROPPED = bytes(range(_LIMIT, 256))


_POOL_SIZE = 4096
_pool = b""
_pool_lock = threading.Lock()


def _forget_pool() -> None:
    global _pool
    _pool = b""


os.register_at_fork(after_in_child=_forget_pool)  # a forked child must never reuse its parent's bytes


def random_bytes(n: int) -> bytes:
    """``n`` bytes from the system's randomness (``os.urandom``), read 4 KB at a time: each byte is handed out
    once, so they are as unpredictable as ``secrets.token_bytes`` gives, for one system call per ~60 POSTs."""
    global _pool
    if n > _POOL_SIZE // 4:
        return os.urandom(n)
    with _pool_lock:
        if len(_pool) < n:
            _pool = os.urandom(_POOL_SIZE)
        out, _pool = _pool[:n], _pool[n:]
    return out


def new_token() -> str:
    """TOKEN_LENGTH characters of TOKEN_ALPHABET, each equally likely, from the system's randomness
    (``secrets.choice`` reads it once per character: 50 system calls per POST)."""
    token = b""
    while len(token) < TOKEN_LENGTH:
        token += random_bytes(TOKEN_LENGTH + 14).translate(_TO_ALPHABET, _DROPPED)
    return token[:TOKEN_LENGTH].decode("ascii")


def sign_token(key: str, timestamp: str | None = None) -> tuple[str, str, str]:
    """Returns ``(timestamp, token, signature)``; the timestamp defaults to now."""
    timestamp = timestamp if timestamp is not None else str(int(time.time()))
    token = new_token()
    return timestamp, token, _digest(key, timestamp, token)


def verify(key: str, timestamp: str, token: str, signature: str) -> bool:
    """Whether ``signature`` signs ``timestamp + token`` under ``key`` (constant-time comparison)."""
    # Bytes, because compare_digest refuses str with non-ASCII characters.
    return hmac.compare_digest(_digest(key, timestamp, token).encode(), signature.encode())
