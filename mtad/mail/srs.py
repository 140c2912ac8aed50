"""Sender Rewriting Scheme for forwards to addresses (SRS0, as postsrsd does).

``forward("someone@example.org")`` sends a copy with the envelope sender rewritten to an address of
the receiving domain, so SPF checks the forwarder, not the original sender, and bounces come back
to mtad, which reverses the address (checking its hash and age) and returns them to the original
sender. Format: ``SRS0=HHHH=TT=orig-domain=orig-local@receiving-domain``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

_DAY = 86400
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
MAX_AGE_DAYS = 21


def _timestamp(now: float) -> str:
    days = int(now // _DAY) % 1024
    return _ALPHABET[days >> 5] + _ALPHABET[days & 31]


def _hash(key: bytes, *parts: str) -> str:
    digest = hmac.new(key, "".join(parts).lower().encode(), hashlib.sha1).digest()
    return base64.b32encode(digest).decode()[:4]


def forward_address(sender: str, domain: str, key: bytes, now: float | None = None) -> str:
    """The rewritten envelope sender; '' stays '' (bounces are never rewritten)."""
    if not sender:
        return ""
    local, _, orig_domain = sender.rpartition("@")
    if local.upper().startswith("SRS0="):  # already rewritten by us or another forwarder: keep the original
        return f"{local}@{domain}"
    ts = _timestamp(now if now is not None else time.time())
    return f"SRS0={_hash(key, ts, orig_domain, local)}={ts}={orig_domain}={local}@{domain}"


def reverse(address: str, key: bytes, now: float | None = None) -> str | None:
    """The original sender of an SRS0 address made with ``key``, or None (not ours, forged or too old)."""
    local = address.rpartition("@")[0]
    if not local.upper().startswith("SRS0="):
        return None
    try:
        _, mac, ts, orig_domain, orig_local = local.split("=", 4)
    except ValueError:
        return None
    if not hmac.compare_digest(mac.upper(), _hash(key, ts, orig_domain, orig_local)):
        return None
    try:
        then = (_ALPHABET.index(ts[0].upper()) << 5) | _ALPHABET.index(ts[1].upper())
    except (ValueError, IndexError):
        return None
    today = int((now if now is not None else time.time()) // _DAY) % 1024
    if (today - then) % 1024 > MAX_AGE_DAYS:
        return None
    return f"{orig_local}@{orig_domain}"
