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


def sign_token(key: str, timestamp: str | None = None) -> tuple[str, str, str]:
    """Returns ``(timestamp, token, signature)``; the timestamp defaults to now."""
    timestamp = timestamp if timestamp is not None else str(int(time.time()))
    token = "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(TOKEN_LENGTH))
    return timestamp, token, _digest(key, timestamp, token)


def verify(key: str, timestamp: str, token: str, signature: str) -> bool:
    """Whether ``signature`` signs ``timestamp + token`` under ``key`` (constant-time comparison)."""
    # Bytes, because compare_digest refuses str with non-ASCII characters.
    return hmac.compare_digest(_digest(key, timestamp, token).encode(), signature.encode())
