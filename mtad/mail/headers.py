"""Byte-level header handling for accepted messages, without re-serialising the message.

``split(body)`` finds the header block; ``parse_block`` unfolds it into (name, value) pairs and
their byte spans so that selected headers can be removed while every other byte stays as received
(existing DKIM signatures survive). ``summary`` extracts the fields events show. Pure functions.
"""

from __future__ import annotations

import email.header
import functools
import email.utils
import re
from dataclasses import dataclass
from typing import Sequence

from mtad.base.types import HeaderSummary

_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.M)  # RFC 5322 ftext then colon


@dataclass(frozen=True)
class HeaderField:
    name: str
    value: str  # unfolded, raw (not RFC 2047-decoded)
    start: int
    end: int  # byte span in the message, including the final CRLF


def split(body: bytes) -> tuple[int, int]:
    """(end of headers, start of body). A message with no blank line is all headers."""
    if body.startswith(b"\r\n"):
        return 0, 2
    idx = body.find(b"\r\n\r\n")
    if idx < 0:
        return len(body), len(body)
    return idx + 2, idx + 4


class HeaderError(ValueError):
    pass


def parse_block(body: bytes, max_count: int, max_size: int) -> tuple[list[HeaderField], int]:
    """Header fields of ``body`` (CRLF endings) and where its body starts.

    Raises HeaderError when the block is over the limits. Lines that are neither a field nor a
    continuation are kept as they are (they belong to no field), as permissive MTAs do.
    """
    head_end, body_start = split(body)
    if head_end > max_size:
        raise HeaderError(f"header block is {head_end} bytes, over the limit of {max_size}")
    fields: list[HeaderField] = []
    pos = 0
    block = body[:head_end]
    lines = block.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    current: list[bytes] = []
    cur_start = 0
    offsets = 0

    def flush(end: int) -> None:
        if current:
            raw = b"\r\n".join(current)
            m = _FIELD.match(raw)
            if m:
                name = m.group(1).decode("ascii")
                value = raw[m.end():].decode("utf-8", "surrogateescape")
                value = re.sub(r"\r\n(?=[ \t])", "", value).strip()
                fields.append(HeaderField(name, value, cur_start, end))
                if len(fields) > max_count:
                    raise HeaderError(f"more than {max_count} header fields")

    for line in lines:
        start = offsets
        offsets += len(line) + 2
        if line[:1] in (b" ", b"\t") and current:
            current.append(line)
            continue
        flush(start)
        current = [line]
        cur_start = start
    flush(offsets)
    del pos
    return fields, body_start


def remove(body: bytes, fields: list[HeaderField]) -> bytes:
    """``body`` without the given fields' bytes."""
    if not fields:
        return body
    out, last = [], 0
    for f in sorted(fields, key=lambda f: f.start):
        out.append(body[last:f.start])
        last = f.end
    out.append(body[last:])
    return b"".join(out)


def decode(value: str) -> str:
    """RFC 2047-decoded text of a header value; never raises."""
    if "=?" not in value:
        return value
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value


def first(fields: list[HeaderField], name: str) -> str | None:
    lower = name.lower()
    for f in fields:
        if f.name.lower() == lower:
            return f.value
    return None


def summary(fields: list[HeaderField]) -> HeaderSummary:
    mid = (first(fields, "Message-ID") or "").strip()
    return HeaderSummary(message_id=mid.strip("<>"), from_=decode(first(fields, "From") or ""),
                         to=decode(first(fields, "To") or ""), subject=decode(first(fields, "Subject") or ""))


def make_message_id(hostname: str, queue_id: str) -> str:
    return f"<{queue_id}@{hostname}>"


def smtp_protocol(extended: bool, tls: bool, authenticated: bool) -> str:
    """The ``with`` word of an SMTP session's trace field (RFC 3848): SMTP, ESMTP, ESMTPS, ESMTPSA, ..."""
    return ("ESMTP" if extended else "SMTP") + ("S" if tls else "") + ("A" if authenticated else "")


def received(by_host: str, client_helo: str, client_ip: str, protocol: str, queue_id: str,
             recipients: Sequence[str], when: float) -> bytes:
    """The Received: trace field (RFC 5321 4.4), folded, that mtad prepends to every message it accepts: from
    SMTP (``client_helo`` as the client said it, ``protocol`` from ``smtp_protocol``) and from the HTTP API
    (``client_helo`` ``"api"``, ``protocol`` ``HTTP``/``HTTPS``). The one place this header is made.

    The HELO name is hostile input: bytes outside printable ASCII become ``?``, and it is cut to 255
    characters. ``for <recipient>`` is written only for a message with exactly one recipient: naming one
    of several would show every copy who else got it. The date is in UTC, to the second.
    """
    recipient = recipients[0] if len(recipients) == 1 else None
    for_part = f"\r\n\tfor <{recipient}>" if recipient else ""
    date = _formatdate(int(when))
    helo = re.sub(r"[^\x21-\x7e]", "?", client_helo)[:255] or "unknown"
    line = (f"Received: from {helo} ([{client_ip}])\r\n\tby {by_host} (mtad) with {protocol}"
            f" id {queue_id}{for_part};\r\n\t{date}\r\n")
    return line.encode("utf-8", "replace")


@functools.lru_cache(maxsize=4)
def _formatdate(second: int) -> str:
    return email.utils.formatdate(second, localtime=False)


def mime_depth_exceeds(body: bytes, limit: int) -> bool:
    """True if multipart nesting is deeper than ``limit``. Cheap unless the message has many multiparts."""
    if body.lower().count(b"multipart/") <= limit:  # a C pass; a case-insensitive regex is 10x slower
        return False
    import email.parser
    import email.policy
    msg = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(body)

    def depth(part, level: int) -> int:
        if level > limit:
            return level
        payload = part.get_payload() if part.is_multipart() else None
        if not payload:
            return level
        return max(depth(p, level + 1) for p in payload)
    return depth(msg, 0) > limit
