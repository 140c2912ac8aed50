"""Unsubscribe addresses: ``unsubscribe+<token>@<sending domain>`` (``%unsubscribe_email%``, the ``mailto:`` of
``List-Unsubscribe``, RFC 2369).

A mail sent to such an address at mtad's MX listener unsubscribes the recipient the token names
(``inbound.reports``). The token, in the style of the return paths (``mail.returnpath``: short enough for a local
part, compared without regard to case, tamper-evident), is

    <scope>[<list id>].<queue id>.<recipient tag>-<mac>

- the scope: ``d`` (the sending domain: every message), ``t`` (the message's tags), ``l`` (a mailing list,
  followed by its id in decimal: the member is set unsubscribed from that list);
- the queue id (19 hex digits, lower case) of the message the address was given in: its ``delivered`` event
  names the recipient and the domain;
- the recipient tag (``returnpath.recipient_tag``: 6 base32 characters) of the recipient it was made for;
- a MAC: the first 10 base32 characters (50 bits) of HMAC-SHA256 over everything before it, with the key
  ``base.keys.derive(signing_key, "unsubscribe-email")``: a token cannot be forged, altered, or moved to another
  recipient, message or scope.

At most 62 characters of local part for list ids below 10**9 (RFC 5321's limit is 64). Pure functions: no I/O.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass

from mtad.mail.returnpath import _b32, recipient_tag

PREFIX = "unsubscribe+"
PURPOSE = "unsubscribe-email"  # ``base.keys.derive`` purpose of the key
DOMAIN, TAG, LIST = "d", "t", "l"
SCOPES = (DOMAIN, TAG, LIST)
_TOKEN = re.compile(r"([dt]|l[0-9]{1,9})\.([0-9a-f]{19})\.([a-z2-7]{6})-([a-z2-7]{10})")


@dataclass(frozen=True)
class Token:
    """What a verified unsubscribe token names."""

    scope: str  # DOMAIN | TAG | LIST
    queue_id: str  # upper case, as mtad writes queue ids
    recipient_tag: str
    list_id: int = 0  # LIST scope only

    def names(self, key: bytes, recipient: str) -> bool:
        """Whether the token was made for ``recipient``."""
        return hmac.compare_digest(self.recipient_tag, recipient_tag(key, recipient))


def _mac(key: bytes, body: str) -> str:
    return _b32(hmac.digest(key, body.encode("ascii"), "sha256"), 10)


def token(key: bytes, queue_id: str, recipient: str, scope: str = DOMAIN, list_id: int = 0) -> str:
    if scope not in SCOPES or (scope == LIST) != (list_id > 0) or not 0 <= list_id < 10 ** 9:
        raise ValueError(f"not an unsubscribe scope: {scope!r} {list_id!r}")
    head = f"{scope}{list_id if scope == LIST else ''}.{queue_id.lower()}.{recipient_tag(key, recipient)}"
    return f"{head}-{_mac(key, head)}"


def address(key: bytes, queue_id: str, recipient: str, domain: str, scope: str = DOMAIN, list_id: int = 0) -> str:
    """The address ``unsubscribe+TOKEN@domain``."""
    return f"{PREFIX}{token(key, queue_id, recipient, scope, list_id)}@{domain}"


def is_unsubscribe(address_: str) -> bool:
    """Whether ``address_`` has the shape of an unsubscribe address, whether or not it verifies."""
    return address_.rpartition("@")[0].lower().startswith(PREFIX)


def verify(key: bytes, address_: str) -> Token | None:
    """The ``Token`` of an unsubscribe address, or None (not one, malformed, forged or altered)."""
    local = address_.rpartition("@")[0].strip().lower()
    if not local.startswith(PREFIX):
        return None
    m = _TOKEN.fullmatch(local[len(PREFIX):])
    if m is None:
        return None
    head = local[len(PREFIX):].rpartition("-")[0]
    if not hmac.compare_digest(m.group(4), _mac(key, head)):
        return None
    scope = m.group(1)
    return Token(scope[0], m.group(2).upper(), m.group(3), int(scope[1:]) if scope[0] == LIST else 0)
