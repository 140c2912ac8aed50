"""Byte-level walk of a MIME message (CRLF line ends, as stored): one mechanism for every reader and editor.

``entity(body, start, end)`` reads one entity's MIME headers and where its body starts; ``children(...)`` finds
the parts of a multipart body between its delimiter lines; ``leaves(body)`` yields every non-multipart entity
with its byte spans. Only headers are parsed; bodies are found with ``bytes.find``, so a large message costs
a few passes in C, not a full ``email`` parse. Nesting deeper than ``MAX_DEPTH`` and parts beyond
``MAX_PARTS`` are not walked (ingress refuses deep nesting anyway). Used by ``attachments`` (the listing
events show) and ``mimeedit`` (per-recipient edits of text parts). Pure functions.
"""

from __future__ import annotations

import email.message
from dataclasses import dataclass
from typing import Iterator

from mtad.mail import headers as headers_mod

MAX_DEPTH = 50
MAX_PARTS = 1000
_HEADER_LIMIT = 1 << 20


@dataclass(frozen=True)
class Entity:
    """One MIME entity of ``body``: its MIME headers (a ``Message`` holding only Content-* fields), the span of
    its header block ``[start, body_start)`` (empty for a part without headers) and of its body
    ``[body_start, end)``."""

    headers: email.message.Message
    start: int
    body_start: int
    end: int

    @property
    def encoding(self) -> str:
        """The Content-Transfer-Encoding, lower case ('' when absent)."""
        return str(self.headers.get("content-transfer-encoding", "")).strip().lower()


def entity(body: bytes, start: int, end: int) -> Entity:
    """The entity ``body[start:end]``; ``HeaderError`` when its header block is unreadable."""
    if body.startswith(b"\r\n", start):
        return Entity(email.message.Message(), start, start + 2, end)
    blank = body.find(b"\r\n\r\n", start, end)
    head_end = end if blank < 0 else blank + 4
    fields, _ = headers_mod.parse_block(body[start:head_end], 10_000, _HEADER_LIMIT)
    msg = email.message.Message()
    for f in fields:
        if f.name.lower() in ("content-type", "content-disposition", "content-transfer-encoding"):
            msg[f.name] = f.value
    return Entity(msg, start, min(head_end, end), end)


def children(body: bytes, start: int, end: int, boundary: bytes) -> list[tuple[int, int]]:
    """(start, end) of the parts between a multipart body's delimiter lines (preamble and epilogue dropped)."""
    delimiter = b"--" + boundary
    if body.startswith(delimiter, start):
        pos = start
    else:
        pos = body.find(b"\r\n" + delimiter, start, end)
        if pos < 0:
            return []
        pos += 2
    parts: list[tuple[int, int]] = []
    while len(parts) < MAX_PARTS:
        after = pos + len(delimiter)
        if body.startswith(b"--", after, end):
            break  # the close delimiter
        line_end = body.find(b"\r\n", after, end)
        if line_end < 0:
            break
        nxt = body.find(b"\r\n" + delimiter, line_end, end)
        if nxt < 0:
            parts.append((line_end + 2, end))  # no close delimiter: the rest is the last part
            break
        parts.append((line_end + 2, max(nxt, line_end + 2)))
        pos = nxt + 2
    return parts


def leaves(body: bytes) -> Iterator[Entity]:
    """Every non-multipart entity of the message, in MIME order (the message itself when single-part).

    Unreadable header blocks, multiparts without a boundary and what lies beyond the limits are skipped."""
    yield from _walk(body, 0, len(body), 0, [0])


def _walk(body: bytes, start: int, end: int, depth: int, count: list[int]) -> Iterator[Entity]:
    try:
        ent = entity(body, start, end)
    except headers_mod.HeaderError:
        return
    if ent.headers.get_content_maintype() != "multipart":
        count[0] += 1
        yield ent
        return
    boundary = ent.headers.get_param("boundary")
    if depth >= MAX_DEPTH or not isinstance(boundary, str) or not boundary:
        return
    for child_start, child_end in children(body, ent.body_start, end, boundary.encode("utf-8", "replace")):
        if count[0] >= MAX_PARTS:
            return
        yield from _walk(body, child_start, child_end, depth + 1, count)
