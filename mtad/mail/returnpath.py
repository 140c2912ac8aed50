"""Per-message return paths (VERP-style, tamper-evident): ``bounce+<token>@<sending domain>``.

The envelope sender mtad uses when it delivers a user's message names that message, so that a delivery status
notification (RFC 3464) sent back later by a receiving system (a "late" or asynchronous bounce), or a
feedback report that carries the original's headers, is matched to it without trusting anything else in the
report. The token is

    <queue id>[.<recipient tag>]-<mac>

- the queue id (19 hex digits, written in lower case: some systems lower-case local parts);
- the recipient tag (6 base32 characters) when the delivery has one recipient: a DSN's ``Final-Recipient`` may
  name an address the receiver rewrote (an alias, a forward), the tag still names the address mtad sent to;
- a MAC: the first 10 base32 characters (50 bits) of HMAC-SHA256 over ``queue id.tag`` with the key
  ``base.keys.derive(signing_key, "return-path")``: a token cannot be forged or altered, and one for another
  message cannot be guessed from a queue id.

At most 44 characters of local part (RFC 5321's limit is 64). Compared without regard to case. The same token
is the value of the ``X-Mtad-Sid`` header put on the message at delivery (``HEADER``), for a feedback report
whose original no longer carries the return path. Pure functions: no I/O.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from dataclasses import dataclass

PREFIX = "bounce+"
HEADER = "X-Mtad-Sid"
PURPOSE = "return-path"  # ``base.keys.derive`` purpose of the key
_TOKEN = re.compile(r"([0-9a-f]{19})(?:\.([a-z2-7]{6}))?-([a-z2-7]{10})")


@dataclass(frozen=True)
class Token:
    """What a verified token names: the message, and the recipient's tag ("" when it names the message only)."""

    queue_id: str  # upper case, as mtad writes queue ids
    recipient_tag: str = ""

    def names(self, key: bytes, recipient: str) -> bool:
        """Whether the token was made for ``recipient`` (always False for a token without a recipient tag)."""
        return bool(self.recipient_tag) and hmac.compare_digest(self.recipient_tag, recipient_tag(key, recipient))


_B32 = "abcdefghijklmnopqrstuvwxyz234567"  # RFC 4648 base32, lower case


def _b32(digest: bytes, n: int) -> str:
    """The first ``n`` characters of ``digest`` in base32 (RFC 4648, lower case), without encoding the rest."""
    size = (5 * n + 7) // 8
    bits = int.from_bytes(digest[:size], "big") >> (8 * size - 5 * n)
    return "".join(_B32[(bits >> (5 * i)) & 31] for i in range(n - 1, -1, -1))


@functools.lru_cache(maxsize=8)
def _keyed(key: bytes) -> "hmac.HMAC":
    return hmac.new(key, digestmod=hashlib.sha256)


def _hmac(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 of ``data`` from the key's prepared state (a copy per call): a third of ``hmac.digest``'s CPU,
    and it keeps the GIL (the one-shot releases it, and taking it back waits on the node's busy threads)."""
    h = _keyed(key).copy()
    h.update(data)
    return h.digest()


def recipient_tag(key: bytes, recipient: str) -> str:
    return _b32(_hmac(key, b"rcpt:" + recipient.lower().encode("utf-8", "surrogateescape")), 6)


def _mac(key: bytes, queue_id: str, tag: str) -> str:
    return _b32(_hmac(key, f"{queue_id.lower()}.{tag}".encode("ascii")), 10)


def token(key: bytes, queue_id: str, recipient: str | None = None) -> str:
    """The token of a message (and of its one recipient, if given)."""
    tag = recipient_tag(key, recipient) if recipient else ""
    qid = queue_id.lower()
    return f"{qid}{'.' + tag if tag else ''}-{_mac(key, qid, tag)}"


def address(key: bytes, queue_id: str, domain: str, recipient: str | None = None) -> str:
    """The return path ``bounce+TOKEN@domain``."""
    return f"{PREFIX}{token(key, queue_id, recipient)}@{domain}"


def verify_token(key: bytes, text: str) -> Token | None:
    """The ``Token`` that ``text`` is, or None (malformed, forged or altered)."""
    m = _TOKEN.fullmatch(text.strip().lower())
    if m is None:
        return None
    qid, tag, mac = m.group(1), m.group(2) or "", m.group(3)
    if not hmac.compare_digest(mac, _mac(key, qid, tag)):
        return None
    return Token(qid.upper(), tag)


def is_return_path(address_: str) -> bool:
    """Whether ``address_`` has the shape of a return path (``bounce+...@``), whether or not it verifies."""
    return address_.rpartition("@")[0].lower().startswith(PREFIX)


def verify(key: bytes, address_: str) -> Token | None:
    """The ``Token`` of a return path address, or None (not one, forged or altered)."""
    local = address_.rpartition("@")[0]
    if not local.lower().startswith(PREFIX):
        return None
    return verify_token(key, local[len(PREFIX):])
