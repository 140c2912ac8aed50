"""Purpose keys derived from mtad's one signing key, so that every node sharing that key agrees on them.

mtad has one secret of its own: ``signing_key`` (config, else made once in the state folder — ``app.signing_key``),
the HMAC key of webhooks and route POSTs, also used for SRS. Every other keyed mechanism (tracking tokens,
return-path tags, unsubscribe links, panel sessions) takes ``derive(signing_key, purpose)`` instead of a key of
its own: keys for different purposes are independent (a token made for one purpose never verifies for another),
and a cluster whose nodes share the signing key (as they must for webhooks) shares them all. Rotating the
signing key invalidates every derived token. Standard library only.
"""

from __future__ import annotations

import hashlib
import hmac


def derive(master: bytes | str, purpose: str) -> bytes:
    """A 32-byte key for ``purpose`` (a short fixed name such as ``"tracking"``), HMAC-SHA256 of the master key
    over the purpose (HKDF's extract-free expand with one block, RFC 5869 §2.3)."""
    if isinstance(master, str):
        master = master.encode("utf-8")
    if not purpose:
        raise ValueError("a purpose is required")
    return hmac.new(master, b"mtad key:" + purpose.encode("ascii") + b"\x01", hashlib.sha256).digest()
