"""The attachments of a message as Mailgun's events list them: ``[{"filename", "content-type", "size"}]``.

Computed once per message when it is accepted (``ingress``), stored with it and copied into each of its
events' ``message.attachments``. A part is listed when its ``Content-Disposition`` is ``attachment`` or it
has a file name (``filename`` / ``name`` parameters, RFC 2231 included), as Mailgun does; ``size`` is the
decoded size in bytes (base64 and quoted-printable are accounted for, without keeping a decoded copy).

The walk is ``mimewalk``'s (byte-level, headers only). Pure functions.
"""

from __future__ import annotations

import binascii
import re
from typing import Any

from mtad.mail import headers as headers_mod
from mtad.mail import mimewalk

_WHITESPACE = b" \t\r\n"
# A ``name``/``filename`` parameter (RFC 2231's ``name*``, ``name*0*`` included) anywhere in a header block: a
# single-part message without one, nor ``attachment`` nor ``multipart/``, has nothing to list. A bare "name" is not
# enough to walk: trace fields often say it (``Authentication-Results: ... no nameserver answered``, host names).
_NAME_PARAM = re.compile(rb"name\s*(?:\*[0-9]*\*?)?\s*=")


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


def listing(body: bytes) -> list[dict[str, Any]]:
    """The attachments of a message (CRLF line endings, as stored), in MIME order."""
    head_end, _ = headers_mod.split(body)
    head = body[:head_end].lower()
    if b"multipart/" not in head and b"attachment" not in head and (b"name" not in head
                                                                    or _NAME_PARAM.search(head) is None):
        return []  # the common single-part message: no part to walk, no file name
    out: list[dict[str, Any]] = []
    for part in mimewalk.leaves(body):
        filename = part.headers.get_filename()
        if part.headers.get_content_disposition() != "attachment" and not filename:
            continue
        out.append({"filename": headers_mod.decode(filename or ""), "content-type": part.headers.get_content_type(),
                    "size": _decoded_size(body, part.body_start, part.end, part.encoding)})
    return out
