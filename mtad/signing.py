"""Mailgun-style request signing for route POSTs and webhooks.

A request carries ``timestamp`` (seconds since the epoch), ``token`` (50 random characters from
[a-z0-9]) and ``signature``: the hex HMAC-SHA256 of ``timestamp + token`` under the signing key.
Receivers check it with the seed manual's ``verify()``; mtad's own ``verify`` compares in constant
time. Replay protection (remembering tokens, rejecting old timestamps) is the receiver's business.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import time

TOKEN_ALPHABET = string.ascii_lowercase + string.digits
TOKEN_LENGTH = 50


def _digest(key: str, timestamp: str, token: str) -> str:
    return hmac.new(key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()


def new_token() -> str:
    """TOKEN_LENGTH characters of TOKEN_ALPHABET, each equally likely, from one read of the system's randomness
    (``secrets.choice`` reads it once per character: 50 system calls per POST)."""
    n = len(TOKEN_ALPHABET)
    limit = 256 - 256 % n  # bytes from here up are dropped: b % n would favour the first characters
    token = ""
    while len(token) < TOKEN_LENGTH:
        token += "".join(TOKEN_ALPHABET[b % n] for b in secrets.token_bytes(TOKEN_LENGTH + 14) if b < limit)
    return token[:TOKEN_LENGTH]


def sign_token(key: str, timestamp: str | None = None) -> tuple[str, str, str]:
    """Returns ``(timestamp, token, signature)``; the timestamp defaults to now."""
    timestamp = timestamp if timestamp is not None else str(int(time.time()))
    token = new_token()
    return timestamp, token, _digest(key, timestamp, token)


def verify(key: str, timestamp: str, token: str, signature: str) -> bool:
    """Whether ``signature`` signs ``timestamp + token`` under ``key`` (constant-time comparison)."""
    # Bytes, because compare_digest refuses str with non-ASCII characters.
    return hmac.compare_digest(_digest(key, timestamp, token).encode(), signature.encode())
