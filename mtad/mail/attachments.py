"""The attachments of a message as Mailgun's events list them: ``[{"filename", "content-type", "size"}]``.

Computed once per message when it is accepted (``ingress``), stored with it and copied into each of its
events' ``message.attachments``. A part is listed when its ``Content-Disposition`` is ``attachment`` or it
has a file name (``filename`` / ``name`` parameters, RFC 2231 included), as Mailgun does; ``size`` is the
decoded size in bytes (base64 and quoted-printable are accounted for, without keeping a decoded copy).

The walk is byte-level: the boundaries of each multipart are found with ``bytes.find`` and only the headers
of each part are parsed, so a large message costs a few passes in C, not a full ``email`` parse. Nesting
deeper than ``MAX_DEPTH`` and parts beyond ``MAX_PARTS`` are not walked (ingress refuses deep nesting
anyway). Pure functions.
"""

from __future__ import annotations

import binascii
import email.message
from typing import Any

from mtad.mail import headers as headers_mod

MAX_DEPTH = 50
MAX_PARTS = 1000
_HEADER_LIMIT = 1 << 20
_WHITESPACE = b" \t\r\n"


def _part_headers(body: bytes, start: int, end: int) -> tuple[email.message.Message, int]:
    """(a Message holding only the MIME headers of the part ``body[start:end]``, where its body starts)."""
    if body.startswith(b"\r\n", start):
        return email.message.Message(), start + 2
    blank = body.find(b"\r\n\r\n", start, end)
    head_end = end if blank < 0 else blank + 4
    fields, _ = headers_mod.parse_block(body[start:head_end], 10_000, _HEADER_LIMIT)
    msg = email.message.Message()
    for f in fields:
        if f.name.lower() in ("content-type", "content-disposition", "content-transfer-encoding"):
            msg[f.name] = f.value
    return msg, head_end


def _decoded_size(body: bytes, start: int, end: int, encoding: str) -> int:
    """Decoded size of ``body[start:end]`` without copying it: one C pass for base64 (stored bodies have CRLF
    line ends, and encoders put no other white space in base64 lines); quoted-printable parts are decoded."""
    if encoding == "base64":
        n = end - start - 2 * body.count(b"\n", start, end)
        tail = body[max(start, end - 8):end].rstrip(_WHITESPACE)
        pad = 2 if tail.endswith(b"==") else 1 if tail.endswith(b"=") else 0
        return max(n * 3 // 4 - pad, 0)
    if encoding == "quoted-printable":
        return len(binascii.a2b_qp(body[start:end]))
    return end - start


def _children(body: bytes, start: int, end: int, boundary: bytes) -> list[tuple[int, int]]:
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


def _walk(body: bytes, start: int, end: int, depth: int, out: list[dict[str, Any]]) -> None:
    try:
        msg, body_start = _part_headers(body, start, end)
    except headers_mod.HeaderError:
        return
    if msg.get_content_maintype() == "multipart":
        boundary = msg.get_param("boundary")
        if depth >= MAX_DEPTH or not isinstance(boundary, str) or not boundary:
            return
        for child_start, child_end in _children(body, body_start, end, boundary.encode("utf-8", "replace")):
            if len(out) >= MAX_PARTS:
                return
            _walk(body, child_start, child_end, depth + 1, out)
        return
    filename = msg.get_filename()
    if msg.get_content_disposition() != "attachment" and not filename:
        return
    encoding = str(msg.get("content-transfer-encoding", "")).strip().lower()
    out.append({"filename": headers_mod.decode(filename or ""), "content-type": msg.get_content_type(),
                "size": _decoded_size(body, min(body_start, end), end, encoding)})


def listing(body: bytes) -> list[dict[str, Any]]:
    """The attachments of a message (CRLF line endings, as stored), in MIME order."""
    head_end, _ = headers_mod.split(body)
    head = body[:head_end].lower()
    if b"multipart/" not in head and b"attachment" not in head and b"name" not in head:
        return []  # the common single-part message: no part to walk, no file name
    out: list[dict[str, Any]] = []
    _walk(body, 0, len(body), 0, out)
    return out
