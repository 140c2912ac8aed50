"""The multipart/form-data body of a route POST, in two steps so that the costly one can run anywhere.

``form_parts`` (pure, CPU-bound: MIME parse, text views, encoding) gives a ``FormParts``: the encoded
text fields before the signature (``head``) and the file parts with the closing boundary (``tail``).
``sign`` adds ``timestamp``, ``token`` and ``signature`` between them at sending time. The result is
byte for byte what ``encode_form`` gives for the same fields: text fields in posting order, the three
signing fields, then the files. This module imports only the parser, so a worker process
(``jobs``) can load it cheaply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mtad.inbound.form import parse as inbound_parse
from mtad.mail import signing


@dataclass(frozen=True)
class Form:
    """A route POST's multipart/form-data body, encoded once: one write to the socket, not one per part."""

    body: bytes
    content_type: str


@dataclass(frozen=True)
class FormParts:
    """An unsigned form: ``head`` + signing fields + ``tail`` is the body; ``boundary`` separates the parts."""

    head: bytes
    tail: bytes
    boundary: str


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNSAFE = re.compile(r'[\x00-\x1f\x7f"\\]')


def _param(text: str) -> str:
    """A quoted-string parameter of a part header: control characters dropped, quotes and backslashes escaped."""
    if not _UNSAFE.search(text):  # nearly always: header names, attachment-N
        return text
    return _CONTROL.sub("", text).replace("\\", "\\\\").replace('"', '\\"')


def _fields(boundary: str, fields) -> bytes:
    chunks: list[bytes] = []
    for name, value in fields:
        chunks += [f'--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n'
                   f'Content-Disposition: form-data; name="{_param(name)}"\r\n\r\n'.encode("utf-8", "replace"),
                   value.encode("utf-8", "replace"), b"\r\n"]
    return b"".join(chunks)


def _files(boundary: str, files: tuple[inbound_parse.Attachment, ...]) -> bytes:
    chunks: list[bytes] = []
    for att in files:
        content_type = _CONTROL.sub("", att.content_type) or "application/octet-stream"
        chunks += [f'--{boundary}\r\nContent-Type: {content_type}\r\nContent-Disposition: form-data; '
                   f'name="{_param(att.field_name)}"; filename="{_param(att.filename or att.field_name)}"\r\n\r\n'
                   .encode("utf-8", "replace"),
                   att.data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks)


def encode_form(fields: list[tuple[str, str]], files: tuple[inbound_parse.Attachment, ...] = ()) -> Form:
    """multipart/form-data (RFC 7578): text fields in UTF-8, then files with their names and types.

    File names are written as UTF-8, unescaped, as browsers do; the boundary is random, so a message
    cannot end a part early.
    """
    boundary = signing.random_bytes(16).hex()
    return Form(_fields(boundary, fields) + _files(boundary, files), f"multipart/form-data; boundary={boundary}")


def is_raw_format(url: str) -> bool:
    """A URL ending in ``mime`` gets the raw format (``body-mime``)."""
    return url.rstrip("/").lower().endswith("mime")


def form_parts(body: bytes, recipient: str, sender: str, raw: bool, max_depth: int = 20) -> FormParts:
    """The unsigned form of a route POST: raw MIME (``raw``) or Mailgun's parsed fields and attachments."""
    if raw:
        post = inbound_parse.raw_fields(body, recipient, sender)
    else:
        post = inbound_parse.parsed_fields(body, recipient, sender, max_depth=max_depth)
    boundary = signing.random_bytes(16).hex()
    return FormParts(_fields(boundary, post.fields), _files(boundary, post.attachments), boundary)


def sign(parts: FormParts, key: str) -> Form:
    """The finished body: the signing fields (made now) between the parts."""
    timestamp, token, signature = signing.sign_token(key)
    middle = _fields(parts.boundary, (("timestamp", timestamp), ("token", token), ("signature", signature)))
    return Form(b"".join((parts.head, middle, parts.tail)), f"multipart/form-data; boundary={parts.boundary}")
