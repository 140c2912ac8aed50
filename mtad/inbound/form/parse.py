"""A received message (raw RFC 5322 bytes) turned into the fields of Mailgun's route POSTs.

``parsed_fields`` gives the parsed format, in this order: ``recipient``, ``sender``, ``from``,
``subject``, ``body-plain`` (always; rendered from the HTML when there is no text part),
``stripped-text``, ``stripped-signature``, ``body-html`` and ``stripped-html`` (when there is
HTML), ``body-<subtype>`` for other text parts (``body-calendar``, ``body-enriched``...),
``attachment-count``, ``content-id-map`` (JSON: ``"<cid>"`` -> ``"attachment-N"``),
``message-headers`` (JSON list of ``[name, value]`` in order), then every top-level header as its
own field under its own name. A header whose name is exactly one of the fields mtad posts
(``recipient``, ``timestamp``, ``signature``...) is left out of the separate fields, so a sender
cannot shadow them; it is still in ``message-headers``. Attachments are parts with an
``attachment`` disposition, a file name, a non-text type, or an inline part with a Content-ID
(as Mailgun does); they come back as ``Attachment`` records for the caller to post as files.
``raw_fields`` gives the raw format: the five fields with ``body-mime``.

Everything comes out as text: bodies are decoded from their transfer encoding and charset,
headers from RFC 2047 encoded words and stray 8-bit bytes. A charset Python does not know, or
bytes its charset cannot decode, fall back to UTF-8 and then Windows-1252/Latin-1. A broken
message (bad charset, no boundary, malformed header lines, truncated base64, absurd nesting) gives
whatever fields can be had; these functions do not raise on any input.

The stdlib ``email`` parser runs with ``policy.compat32``: measured on malformed samples, the
``default`` policy raised (IndexError on a mangled Message-ID, KeyError or LookupError from
``get_content``) where compat32 parsed; header decoding is done here instead. Parsing a large
message costs CPU time: callers on the event loop should run these functions in a thread.
"""

from __future__ import annotations

import codecs
import email
import email.header
import email.policy
import email.utils
import json
import logging
import re
from dataclasses import dataclass
from email.generator import BytesGenerator
from email.message import Message
from io import BytesIO

from mtad.inbound.form.quotes import html_to_text, strip_html, strip_text

log = logging.getLogger("mtad.inbound_parse")

_WIRE = email.policy.compat32.clone(linesep="\r\n")

RESERVED_FIELDS = frozenset((
    "recipient", "sender", "from", "subject", "body-plain", "stripped-text", "stripped-signature", "body-html",
    "stripped-html", "attachment-count", "content-id-map", "message-headers", "body-mime", "timestamp", "token",
    "signature",
))


@dataclass(frozen=True)
class Attachment:
    """One attachment: ``field_name`` is ``attachment-1``, ``attachment-2``... in message order."""

    field_name: str
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class ParsedPost:
    """Form fields in posting order (names may repeat, as headers do) and the files to upload."""

    fields: tuple[tuple[str, str], ...]
    attachments: tuple[Attachment, ...] = ()


# ---------------------------------------------------------------- decoding


def _codec(charset: str | None) -> str | None:
    """The Python codec for a MIME charset name, or None when unknown or not a text encoding."""
    if not charset:
        return None
    try:
        info = codecs.lookup(charset.strip().strip('"').lower())
    except (LookupError, ValueError):
        return None
    # Only real text encodings: not base64_codec, rot13, unicode_escape and the like.
    return info.name if getattr(info, "_is_text_encoding", True) and "escape" not in info.name else None


def to_text(data: bytes, charset: str | None) -> str:
    """Decodes bytes in their declared charset, else as UTF-8, else Windows-1252, else Latin-1."""
    codec = _codec(charset)
    if codec:
        try:
            return data.decode(codec)
        except (UnicodeError, LookupError):
            pass
    try:
        return data.decode("utf-8")
    except UnicodeError:
        pass
    if codec and codec not in ("utf-8", "ascii"):
        return data.decode(codec, "replace")  # mostly right beats wholly misread
    try:
        return data.decode("cp1252")
    except UnicodeError:
        return data.decode("latin-1")


_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def decode_header(value: str) -> str:
    """A header value as text: unfolded, RFC 2047 words decoded, stray 8-bit bytes decoded."""
    value = re.sub(r"\r?\n[ \t]*", " ", value) if "\n" in value else value
    if _ESCAPED_BYTE.search(value):  # 8-bit bytes, surrogate-escaped by the parser
        value = to_text(value.encode("ascii", "surrogateescape"), None)
    if "=?" not in value:
        return value
    try:
        chunks = email.header.decode_header(value)
    except Exception:  # noqa: BLE001 - malformed encoded words: keep the text as written
        return value
    out = []
    for chunk, charset in chunks:
        if isinstance(chunk, str):
            out.append(chunk)
        elif charset is None:  # text between encoded words: decode_header encodes it this way
            out.append(chunk.decode("raw-unicode-escape", "replace"))
        else:
            out.append(to_text(chunk, charset))
    return "".join(out)


def _headers(msg: Message) -> list[tuple[str, str]]:
    return [(name, decode_header(str(value))) for name, value in msg.raw_items()]


def _payload(part: Message) -> bytes:
    """The part's body with its transfer encoding undone (lenient: bad base64 gives what it can)."""
    try:
        data = part.get_payload(decode=True)
    except Exception:  # noqa: BLE001 - a broken part still gives its raw text
        data = None
    if isinstance(data, bytes):
        return data
    raw = part.get_payload()
    return raw.encode("ascii", "surrogateescape") if isinstance(raw, str) else b""


def _parse(raw: bytes) -> Message | None:
    try:
        return email.message_from_bytes(raw, policy=email.policy.compat32)
    except Exception:  # noqa: BLE001 - e.g. RecursionError on absurd nesting
        log.warning("message could not be parsed as MIME; posting it as text", exc_info=True)
        return None


# ---------------------------------------------------------------- the MIME tree


@dataclass
class _Bodies:
    """What a walk over the MIME tree collects."""

    texts: dict[str, list[str]]  # subtype -> inline text parts, in order
    attachments: list[Attachment]
    content_ids: dict[str, str]


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MIME_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+")


def _filename(part: Message) -> str:
    """The part's file name; control characters (never meant, and refused in the POST's part headers) dropped."""
    try:
        name = part.get_filename()
    except Exception:  # noqa: BLE001 - mangled RFC 2231 parameters
        name = None
    return _CONTROL.sub("", decode_header(name)) if name else ""


def _content_type(part: Message) -> str:
    """The part's type; one that is not a MIME type (control characters, spaces) is application/octet-stream."""
    content_type = part.get_content_type()
    return content_type if _MIME_TYPE.fullmatch(content_type) else "application/octet-stream"


def _charset(part: Message) -> str | None:
    try:
        return part.get_content_charset()
    except Exception:  # noqa: BLE001 - a mangled charset parameter is an unknown charset
        return None


def _repair_boundary(part: Message) -> Message | None:
    """A multipart part whose boundary parameter is missing, re-parsed with the first "--x" line as boundary.

    Works on the payload's bytes: with 8-bit content, the parser's text form cannot be written back.
    """
    payload = _payload(part)
    found = re.search(rb"^--([\x21-\x7e]{1,70})\r?$", payload, re.MULTILINE)
    if found is None:
        return None
    boundary = email.utils.quote(found.group(1).decode("ascii"))
    repaired = _parse(f'Content-Type: {part.get_content_type()}; boundary="{boundary}"\r\n\r\n'.encode() + payload)
    return repaired if repaired is not None and repaired.is_multipart() else None


def _is_attachment(part: Message, content_type: str, filename: str) -> bool:
    disposition = (part.get("Content-Disposition") or "").split(";")[0].strip().lower()
    if disposition == "attachment" or not content_type.startswith("text/"):
        return True
    return bool(filename) or ("Content-ID" in part and disposition == "inline")


def _walk(msg: Message, max_depth: int, max_parts: int) -> _Bodies:
    bodies = _Bodies({}, [], {})
    stack: list[tuple[Message, int]] = [(msg, 0)]
    seen = 0
    while stack and seen < max_parts:
        part, depth = stack.pop()
        seen += 1
        content_type = _content_type(part)
        if content_type.startswith("multipart/") and not part.is_multipart():
            repaired = _repair_boundary(part)
            if repaired is not None:
                stack.append((repaired, depth))
                continue
            content_type = "text/plain"  # no structure to be found: its text is the body
        if part.is_multipart() and content_type != "message/rfc822":
            if depth >= max_depth:
                log.warning("MIME nesting deeper than %d; inner parts left out", max_depth)
                continue
            children = part.get_payload()
            stack.extend((child, depth + 1) for child in reversed(children) if isinstance(child, Message))
            continue
        filename = _filename(part)
        if content_type == "message/rfc822":
            data, filename = _serialize(part.get_payload(0) if part.is_multipart() else part), filename or "message.eml"
        else:
            data = _payload(part)
        if not _is_attachment(part, content_type, filename):
            bodies.texts.setdefault(content_type[5:], []).append(to_text(data, _charset(part)))
            continue
        field = f"attachment-{len(bodies.attachments) + 1}"
        bodies.attachments.append(Attachment(field, filename, content_type, data))
        cid = decode_header(str(part.get("Content-ID", ""))).strip()
        if cid:
            bodies.content_ids[cid if cid.startswith("<") else f"<{cid}>"] = field
    if stack:
        log.warning("more than %d MIME parts; the rest left out", max_parts)
    return bodies


def _serialize(msg: Message) -> bytes:
    """Bytes of a (sub)message; never "From "-mangled, as a MIME parser would want it back."""
    buffer = BytesIO()
    try:
        BytesGenerator(buffer, mangle_from_=False, policy=_WIRE).flatten(msg)
    except Exception:  # noqa: BLE001 - whatever part cannot be written back is left out
        log.warning("a MIME part could not be serialized", exc_info=True)
    return buffer.getvalue()


# ---------------------------------------------------------------- the two formats


def _envelope_fields(headers: list[tuple[str, str]], recipient: str, sender: str) -> list[tuple[str, str]]:
    first = {}
    for name, value in headers:
        first.setdefault(name.lower(), value)
    return [("recipient", recipient), ("sender", sender), ("from", first.get("from", "")),
            ("subject", first.get("subject", ""))]


def parsed_fields(raw: bytes, recipient: str, sender: str, *, max_depth: int = 20,
                  max_parts: int = 1000) -> ParsedPost:
    """Mailgun's parsed POST fields and attachments for one recipient of a message."""
    msg = _parse(raw)
    if msg is None:
        headers, bodies = [], _Bodies({"plain": [to_text(raw, None)]}, [], {})
    else:
        headers, bodies = _headers(msg), _walk(msg, max_depth, max_parts)
    html = "\n".join(bodies.texts.pop("html", []))
    plain = "\n".join(bodies.texts.pop("plain", [])) or (html_to_text(html) if html else "")
    stripped_text, signature = strip_text(plain)
    fields = _envelope_fields(headers, recipient, sender)
    fields += [("body-plain", plain), ("stripped-text", stripped_text), ("stripped-signature", signature)]
    if html:
        fields += [("body-html", html), ("stripped-html", strip_html(html))]
    fields += [(f"body-{subtype}", "\n".join(texts)) for subtype, texts in bodies.texts.items()]
    fields += [("attachment-count", str(len(bodies.attachments))),
               ("content-id-map", json.dumps(bodies.content_ids)),
               ("message-headers", json.dumps([[name, value] for name, value in headers]))]
    fields += [(name, value) for name, value in headers if name not in RESERVED_FIELDS]
    return ParsedPost(tuple(fields), tuple(bodies.attachments))


def raw_fields(raw: bytes, recipient: str, sender: str) -> ParsedPost:
    """Mailgun's raw-MIME POST fields (for URLs ending in "mime"): the whole message as UTF-8 text.

    A message that is already valid UTF-8 is passed byte for byte (so DKIM signatures still
    verify). Otherwise its 8-bit text parts are re-encoded as UTF-8 (charset label updated) and
    any other stray 8-bit bytes are decoded line by line.
    """
    msg = _parse(raw)
    headers = _headers(msg) if msg is not None else []
    try:
        body = raw.decode("utf-8")
    except UnicodeDecodeError:
        transcoded = _transcode(msg) if msg is not None else None
        body = _decode_lines(raw if transcoded is None else transcoded)
    return ParsedPost(tuple(_envelope_fields(headers, recipient, sender) + [("body-mime", body)]))


def _transcode(msg: Message) -> bytes | None:
    """The message re-serialized with its 8-bit non-UTF-8 text parts re-encoded as UTF-8.

    None when it cannot be written back whole (8-bit bytes in a multipart part the parser could not
    split): the caller then decodes the original, rather than post a truncated message.
    """
    for part in msg.walk():
        if part.is_multipart() or part.get_content_maintype() != "text":
            continue
        payload = part.get_payload()
        if not isinstance(payload, str) or payload.isascii():
            continue  # 7-bit on the wire (quoted-printable, base64): readable as is, label still right
        text = to_text(_payload(part), _charset(part))
        del part["Content-Transfer-Encoding"]
        part.set_payload(text, "utf-8")
    buffer = BytesIO()
    try:
        BytesGenerator(buffer, mangle_from_=False, policy=_WIRE).flatten(msg)
    except Exception:  # noqa: BLE001 - see above
        return None
    return buffer.getvalue()


def _decode_lines(data: bytes) -> str:
    return "".join(to_text(line, None) for line in data.splitlines(keepends=True))
