"""Edits of a finished message's text: the one mechanism for per-recipient changes after composition.

``edit_text_parts(body, edit)`` hands every inline ``text/plain`` and ``text/html`` part, decoded, to
``edit(subtype, text)`` and writes back what it returns, keeping everything else byte for byte: the MIME
structure, the boundaries, other parts, the part's charset and Content-Transfer-Encoding. A part is re-encoded
in its own charset and encoding; only when that cannot hold the new text does it change, and then the part's own
header says so (a charset that cannot encode the text becomes UTF-8; 7bit or 8bit text that gains non-ASCII
characters or over-long lines becomes quoted-printable). Parts that cannot be decoded (unknown charset, bytes
invalid in the declared charset, broken base64) are left as they are: an edit never garbles what it cannot read.

``edit_headers(body, edit, names)`` does the same for the values of top-level header fields (RFC 2047 decoded
for ``edit``; encoded again when the new value is not ASCII).

Users: the tracking rewriter (links, open pixel, footers) and the per-recipient personalisation of mailing-list
and batch copies (``mtad.mail.variables``). Pure functions; the walk is ``mimewalk``'s.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import email.header
import email.message
import re
from typing import Any, Callable, Collection, Iterable, Mapping

from mtad.mail import headers as headers_mod
from mtad.mail import mimewalk

TextEdit = Callable[[str, str], "str | None"]
HeaderEdit = Callable[[str, str], "str | None"]

MAX_LINE = 998
_B64_LINE = 76
_CONTROL = re.compile(r"[\r\n\x00]")


class EditError(ValueError):
    """An edit produced a value that cannot be written (a header value with a line break)."""


def edit_text_parts(body: bytes, edit: TextEdit) -> bytes:
    """``body`` with each inline text/plain and text/html part replaced by ``edit(subtype, text)`` (``None``:
    unchanged). Attachments (``Content-Disposition: attachment``) are never handed over."""
    splices: list[tuple[int, int, bytes]] = []
    for part in mimewalk.leaves(body):
        headers = part.headers
        if headers.get_content_maintype() != "text" or headers.get_content_subtype() not in ("plain", "html"):
            continue
        if headers.get_content_disposition() == "attachment":
            continue
        decoded = _decode(body[part.body_start:part.end], part.encoding, headers)
        if decoded is None:
            continue
        text, charset = decoded
        new_text = edit(headers.get_content_subtype(), text)
        if new_text is None or new_text == text:
            continue
        splices.append(_rewrite(body, part, new_text, charset))
    return _spliced(body, splices)


def edit_headers(body: bytes, edit: HeaderEdit, names: Collection[str]) -> bytes:
    """``body`` with the top-level header fields named in ``names`` (any case) replaced by
    ``edit(name, decoded_value)`` (``None``: unchanged). Raises ``EditError`` for a value holding CR, LF or NUL."""
    fields, _ = headers_mod.parse_block(body, 10_000, 1 << 20)
    return _spliced(body, _header_splices(fields, edit, names))


def _header_splices(fields: Iterable[Any], edit: Callable[[str, str], str | None],
                    names: Iterable[str]) -> list[tuple[int, int, bytes]]:
    """The splices that replace the fields named in ``names`` (any case) by ``edit(name, decoded_value)``
    (``None`` or the same value: left as they are). Raises ``EditError`` for a value holding CR, LF or NUL."""
    wanted = {n.lower() for n in names}
    splices: list[tuple[int, int, bytes]] = []
    for f in fields:
        if f.name.lower() not in wanted:
            continue
        decoded = headers_mod.decode(f.value)
        new = edit(f.name, decoded)
        if new is None or new == decoded:
            continue
        if _CONTROL.search(new):
            raise EditError(f"the new value of {f.name} holds a line break or NUL")
        splices.append((f.start, f.end, _header_line(f.name, new)))
    return splices


def _header_line(name: str, value: str) -> bytes:
    if value.isascii():
        line = f"{name}: {value}"
        if len(line) <= MAX_LINE:
            return line.encode("ascii") + b"\r\n"
    encoded = email.header.Header(value, "utf-8", header_name=name).encode(linesep="\r\n")
    return f"{name}: {encoded}\r\n".encode("ascii")


# --- decoding and encoding of one part ---------------------------------------------------------------

def _decode(raw: bytes, encoding: str, headers: email.message.Message) -> tuple[str, str] | None:
    """(text with CRLF line ends, its charset's codec name) or None when the part cannot be read."""
    try:
        if encoding == "base64":
            data = base64.b64decode(b"".join(raw.split()), validate=True)
        elif encoding == "quoted-printable":
            data = binascii.a2b_qp(raw)
        elif encoding in ("", "7bit", "8bit", "binary"):
            data = raw
        else:
            return None
        charset = str(headers.get_content_charset() or "us-ascii")
        codec = codecs.lookup(charset).name
        return data.decode(codec), charset
    except (ValueError, LookupError, binascii.Error):
        return None


def _rewrite(body: bytes, part: mimewalk.Entity, text: str, charset: str) -> tuple[int, int, bytes]:
    """The splice that replaces ``part`` (its header block only when the charset or encoding must change)."""
    text = _crlf(text)
    try:
        data = text.encode(charset)
        new_charset = charset
    except UnicodeEncodeError:
        data, new_charset = text.encode("utf-8"), "utf-8"
    return _rewrite_data(body, part, part.encoding or "7bit", data, charset, new_charset)


def _rewrite_data(body: bytes, part: mimewalk.Entity, original: str, data: bytes, charset: str,
                  new_charset: str, short: bool = False) -> tuple[int, int, bytes]:
    """``_rewrite`` from the new text already encoded (CRLF line ends) in ``new_charset``; ``original``: the
    part's transfer encoding (``part.encoding or "7bit"``); ``short``: the caller knows that no line of ``data``
    is over ``MAX_LINE`` (not looked for again)."""
    encoding = original
    if encoding == "7bit" and (not data.isascii() or (not short and _long_lines(data))):
        encoding = "quoted-printable"
    elif encoding in ("8bit", "binary") and not short and _long_lines(data):
        encoding = "quoted-printable"
    encoded = _encode(data, encoding)
    # the CRLF before a multipart delimiter belongs to the delimiter: end as the original body ended
    if body.endswith(b"\r\n", part.body_start, part.end):
        encoded = encoded if encoded.endswith(b"\r\n") else encoded + b"\r\n"
    elif encoded.endswith(b"\r\n"):
        encoded = encoded[:-2]
    if new_charset == charset and encoding == original:
        return part.body_start, part.end, encoded
    head = _patched_head(body[part.start:part.body_start], new_charset if new_charset != charset else None,
                         encoding if encoding != original else None, top_level=part.start == 0)
    return part.start, part.end, head + encoded


def _crlf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n")


def _long_lines(data: bytes) -> bool:
    return len(data) > MAX_LINE and max(map(len, data.split(b"\r\n"))) > MAX_LINE


def _encode(data: bytes, encoding: str) -> bytes:
    if encoding == "base64":
        b64 = base64.b64encode(data)
        lines = [b64[i:i + _B64_LINE] for i in range(0, len(b64), _B64_LINE)]
        return b"\r\n".join(lines) + (b"\r\n" if lines else b"")
    if encoding == "quoted-printable":
        lines = data.split(b"\r\n")
        return b"\r\n".join(binascii.b2a_qp(line, quotetabs=False, istext=False, header=False)
                            .replace(b"\n", b"\r\n") for line in lines)
    return data


_CT = re.compile(rb"(?im)^content-type[ \t]*:")
_CTE = re.compile(rb"(?im)^content-transfer-encoding[ \t]*:[^\r\n]*(?:\r\n[ \t][^\r\n]*)*\r\n")


def _patched_head(head: bytes, charset: str | None, encoding: str | None, top_level: bool) -> bytes:
    """The part's header block (ending with its blank line) with a new charset parameter and/or
    Content-Transfer-Encoding field; a message that was not MIME gains ``MIME-Version``."""
    if top_level and not re.search(rb"(?im)^mime-version[ \t]*:", head):
        head = head[:-2] + b"MIME-Version: 1.0\r\n\r\n"
    if charset:
        fields, _ = headers_mod.parse_block(head, 10_000, 1 << 20)
        for f in fields:
            if f.name.lower() == "content-type":
                msg = email.message.Message()
                msg["Content-Type"] = f.value
                msg.set_param("charset", charset)
                head = head[:f.start] + f"Content-Type: {msg['Content-Type']}\r\n".encode("utf-8") + head[f.end:]
                break
        else:
            head = head[:-2] + f"Content-Type: text/plain; charset=\"{charset}\"\r\n\r\n".encode("ascii")
    if encoding:
        if _CTE.search(head):
            head = _CTE.sub(f"Content-Transfer-Encoding: {encoding}\r\n".encode("ascii"), head, count=1)
        else:
            head = head[:-2] + f"Content-Transfer-Encoding: {encoding}\r\n\r\n".encode("ascii")
    return head


# --- the same edits, prepared once for many recipients ---------------------------------------------------

class Prepared:
    """``body``'s editable places found once (its inline text parts decoded, its top-level header fields), so
    that the same kind of edit repeated per recipient (a mailing list's copies) costs the edits, not a MIME walk
    and a header parse each time. ``render(edit, header_edit, names)`` gives what ``edit_headers(edit_text_parts
    (body, edit), header_edit, names)`` gives."""

    def __init__(self, body: bytes):
        self.body = body
        parts = []
        for part in mimewalk.leaves(body):
            headers = part.headers
            if headers.get_content_maintype() != "text" or headers.get_content_subtype() not in ("plain", "html"):
                continue
            if headers.get_content_disposition() == "attachment":
                continue
            decoded = _decode(body[part.body_start:part.end], part.encoding, headers)
            if decoded is not None:
                parts.append((part, headers.get_content_subtype(), decoded[0], decoded[1]))
        self.parts = tuple(parts)
        self.fields, self.header_end = headers_mod.parse_block(body, 10_000, 1 << 20)

    def render(self, edit: TextEdit, header_edit: HeaderEdit | None = None, names: Collection[str] = ()) -> bytes:
        splices: list[tuple[int, int, bytes]] = []
        for part, subtype, text, charset in self.parts:
            new_text = edit(subtype, text)
            if new_text is not None and new_text != text:
                splices.append(_rewrite(self.body, part, new_text, charset))
        if header_edit is not None and names:
            if any(start < self.header_end for start, _, _ in splices):  # a part's head changed: the top level's
                return edit_headers(_spliced(self.body, splices), header_edit, names)
            splices.extend(_header_splices(self.fields, header_edit, names))
            splices.sort()
        return _spliced(self.body, splices)


# Codecs whose output for a text is the concatenation of their outputs for its pieces (stateless, no BOM).
_PIECEWISE = re.compile(r"utf-8|ascii|iso8859-\d+|cp12\d\d|cp437|cp85\d|koi8-[ru]|mac-[a-z]+")
_BREAK = re.compile(r"[\r\n\x00]")


class Slots:
    """``prepared``'s text parts and the header fields named in ``names`` cut once, by ``split`` (literal text and
    slots alternating, as ``variables.split`` does), into literal bytes and slots, so that a copy with the slots
    filled is a join of bytes, not a scan, a decode and an encode of the whole text.

    ``render(filled)`` (slot text -> its value; a slot not in ``filled`` stays as written) gives the bytes that
    ``prepared.render`` gives with edits that write those values into the same places (in text parts: every
    part; in header fields: those of ``names``, their values decoded) — or None when it cannot promise that, and
    the caller renders the slow way: a value holding CR, LF or NUL, a value the part's charset cannot encode, a
    top-level part whose charset or encoding must change, a text in a charset that does not encode piecewise or
    whose line ends are cut by a slot."""

    def __init__(self, prepared: Prepared, split: Callable[[str], tuple[str, ...]], names: Collection[str] = ()):
        self.prepared = prepared
        self.usable = True
        tokens: dict[str, None] = {}
        parts = []
        for part, _, text, charset in prepared.parts:
            pieces = split(text)
            if len(pieces) == 1:
                continue
            tokens.update(dict.fromkeys(pieces[1::2]))
            literals = pieces[0::2]
            codec = codecs.lookup(charset).name
            if (not _PIECEWISE.fullmatch(codec) or any(lit.endswith("\r") for lit in literals[:-1])
                    or any(lit.startswith("\n") for lit in literals[1:])):
                self.usable = False
                continue
            try:
                encoded = tuple(_crlf(lit).encode(codec) for lit in literals)
            except UnicodeEncodeError:
                self.usable = False
                continue
            # a copy's text: these pieces with the slots' values written in, encoded whole (the codec encodes
            # piecewise); its lines are these literals' lines with some of the values in (values hold no break)
            crlf = list(pieces)
            crlf[0::2] = map(_crlf, literals)
            joined = b"".join(encoded)
            longest = max(map(len, joined.split(b"\r\n")))
            parts.append((part, part.encoding or "7bit", text, charset, codec,
                          pieces if tuple(crlf) == pieces else tuple(crlf), len(joined), longest, pieces[1::2], pieces))
        wanted = {n.lower() for n in names}
        fields = []
        for f in prepared.fields:
            if f.name.lower() not in wanted:
                continue
            decoded = headers_mod.decode(f.value)
            pieces = split(decoded)
            if len(pieces) == 1:
                continue
            tokens.update(dict.fromkeys(pieces[1::2]))
            if any(_BREAK.search(lit) for lit in pieces[0::2]):
                self.usable = False
            fields.append((f, decoded, pieces))
        self.parts, self.fields = tuple(parts), tuple(fields)
        self.tokens = tuple(tokens)  # the slots named anywhere, each once

    def render(self, filled: Mapping[str, str]) -> bytes | None:
        if not self.usable or _BREAK.search("".join(filled.values())):
            return None
        body = self.prepared.body
        splices: list[tuple[int, int, bytes]] = []
        for part, original, text, charset, codec, crlf, literal_bytes, longest, slots, pieces in self.parts:
            new = [filled.get(t, t) for t in slots]
            new_text = _joined(pieces, new)
            if new_text == text:  # as the slow way: an unchanged text is left as it is
                continue
            try:
                data = (new_text if crlf is pieces else _joined(crlf, new)).encode(codec)
            except UnicodeEncodeError:
                return None
            # no line is longer than the longest literal one with every value's bytes added
            splice = _rewrite_data(body, part, original, data, charset, charset,
                                   short=longest + len(data) - literal_bytes <= MAX_LINE)
            if splice[0] < self.prepared.header_end:  # the top level's own head changes
                return None
            splices.append(splice)
        for f, decoded, pieces in self.fields:
            slots = pieces[1::2]
            value = _joined(pieces, [filled.get(t, t) for t in slots])
            if value == decoded:
                continue
            splices.append((f.start, f.end, _header_line(f.name, value)))
        splices.sort()
        return _spliced(body, splices)


def _joined(pieces: tuple[str, ...], new: list[str]) -> str:
    out = list(pieces)
    out[1::2] = new
    return "".join(out)


def _spliced(body: bytes, splices: list[tuple[int, int, bytes]]) -> bytes:
    """``body`` with each ``(start, end, data)`` span (in order, not overlapping) replaced by its data."""
    if not splices:
        return body
    out, last = [], 0
    for start, end, data in splices:
        out.append(body[last:start])
        out.append(data)
        last = end
    out.append(body[last:])
    return b"".join(out)
