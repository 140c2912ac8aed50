"""Reading send requests' bodies: ``multipart/form-data`` (RFC 7578) and urlencoded, as (name, value) pairs.

aiohttp's ``request.post()`` spends about 0.2 ms per part on a multipart body (a reader, a task and
several awaits per part); a send request has a handful of small parts and is the API's hot path, so
the body, already limited to ``api.max_body_size`` by aiohttp, is read whole and split here with
``bytes.find``. Rules: parts are delimited by CRLF ``--boundary``; a part's headers end at the first
empty line; ``Content-Disposition: form-data`` names it (``name``, and ``filename`` or RFC 5987
``filename*`` for a file); text fields are decoded with the part's charset (UTF-8 by default),
strictly. Anything malformed raises ``FormError`` (a 400), never something else.

``read_post`` reads the other, rarer form requests with the same parsers and the same rule (a malformed
body, invalid UTF-8 or a stray ``%FF`` included, is a 400, never a 500 nor a U+FFFD stored); ``read_json``
reads a JSON body, refusing one nested deeper than ``MAX_JSON_DEPTH`` (a 400, not a RecursionError).
"""

from __future__ import annotations

import json
import logging
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import MultiDict

log = logging.getLogger("mtad.api")

_PARAM = re.compile(r';\s*([A-Za-z0-9_*.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
_QUOTED_PAIR = re.compile(r"\\(.)")


class FormError(ValueError):
    pass


@dataclass(frozen=True)
class FilePart:
    filename: str
    content_type: str
    data: bytes


def params(header_value: str) -> tuple[str, dict[str, str]]:
    """``value; a=1; b="2"`` -> ``("value", {"a": "1", "b": "2"})``, names lower-cased, quotes removed."""
    main, _, rest = header_value.partition(";")
    found: dict[str, str] = {}
    for m in _PARAM.finditer(";" + rest):
        value = m.group(2).strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = _QUOTED_PAIR.sub(r"\1", value[1:-1])
        found.setdefault(m.group(1).lower(), value)
    return main.strip().lower(), found


def _filename(p: dict[str, str]) -> str | None:
    extended = p.get("filename*")
    if extended:
        charset, _, rest = extended.partition("'")
        _, _, encoded = rest.partition("'")
        try:
            return urllib.parse.unquote(encoded, encoding=charset or "utf-8", errors="strict")
        except (LookupError, UnicodeDecodeError):
            raise FormError("a filename* parameter cannot be decoded") from None
    return p.get("filename")


def multipart(body: bytes, content_type: str) -> list[tuple[str, str | FilePart]]:
    _, ct = params(content_type)
    boundary = ct.get("boundary")
    if not boundary or len(boundary) > 200:
        raise FormError("multipart/form-data without a usable boundary")
    delimiter = b"--" + boundary.encode("latin-1", "replace")
    if body.startswith(delimiter):
        pos = 0
    else:
        pos = body.find(b"\r\n" + delimiter)
        if pos < 0:
            raise FormError("no multipart boundary in the body")
        pos += 2
    fields: list[tuple[str, str | FilePart]] = []
    while True:
        pos += len(delimiter)
        if body.startswith(b"--", pos):
            return fields  # the close delimiter; the epilogue is ignored
        eol = body.find(b"\r\n", pos)
        if eol < 0 or body[pos:eol].strip(b" \t"):
            raise FormError("malformed multipart delimiter line")
        start = eol + 2
        end = body.find(b"\r\n" + delimiter, start)
        if end < 0:
            raise FormError("multipart body ends before its close delimiter")
        fields.append(_part(body, start, end))
        pos = end + 2


def _part(body: bytes, start: int, end: int) -> tuple[str, str | FilePart]:
    if body.startswith(b"\r\n", start):
        head, content_start = b"", start + 2
    else:
        head_end = body.find(b"\r\n\r\n", start, end + 2)
        if head_end < 0:
            raise FormError("a multipart part has no end of headers")
        head, content_start = body[start:head_end], head_end + 4
    headers: dict[str, str] = {}
    for line in head.decode("utf-8", "replace").split("\r\n"):
        if line[:1] in (" ", "\t") and headers:  # folded (obsolete, but cheap to accept)
            last = next(reversed(headers))
            headers[last] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise FormError("malformed header line in a multipart part")
        headers.setdefault(name.strip().lower(), value.strip())
    disposition, dp = params(headers.get("content-disposition", ""))
    if disposition != "form-data" or "name" not in dp:
        raise FormError("a multipart part without Content-Disposition: form-data; name=...")
    data = body[content_start:end]
    filename = _filename(dp)
    content_type = headers.get("content-type", "")
    if filename is not None:
        return dp["name"], FilePart(filename, content_type.split(";")[0].strip(), data)
    charset = params(content_type)[1].get("charset", "utf-8") if content_type else "utf-8"
    try:
        return dp["name"], data.decode(charset)
    except (LookupError, UnicodeDecodeError):
        raise FormError(f"field {dp['name'][:100]!r} is not valid {charset[:40]}") from None


def urlencoded(body: bytes) -> list[tuple[str, str]]:
    """``application/x-www-form-urlencoded`` pairs, blank values kept (parse_qsl, minus its per-field cost
    for names and values that need no unquoting)."""
    try:
        text = body.decode("utf-8")
        fields = []
        for pair in text.split("&"):
            if not pair:
                continue
            name, _, value = pair.partition("=")
            fields.append((_unquote(name), _unquote(value)))
        return fields
    except (UnicodeDecodeError, ValueError):
        raise FormError("the urlencoded body is not valid (percent-encoded UTF-8 expected)") from None


def _unquote(text: str) -> str:
    if "%" not in text and "+" not in text:
        return text
    return urllib.parse.unquote(text.replace("+", " "), errors="strict")


FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
MAX_JSON_DEPTH = 32  # an API body is a list of objects of lists at most; deeper is an attack, not a request


async def read_post(request: web.Request) -> MultiDict[str | FilePart]:
    """The form fields of a request, as ``request.post()`` gives them (``get``/``getall``), text fields as str and
    files as ``FilePart``. A body of another content type is refused, an empty one is an empty form; aiohttp's
    413 for a body over ``api.max_body_size`` passes through. Raises ``web.HTTPBadRequest`` (a JSON 400)."""
    body = await request.read()
    ctype = request.content_type
    try:
        if ctype == "multipart/form-data":
            fields = multipart(body, request.headers.get("Content-Type", ""))
        elif ctype in ("application/x-www-form-urlencoded", "") or not body.strip():
            fields = urlencoded(body)  # aiohttp's rule: no Content-Type is a urlencoded form
        else:
            raise FormError(f"expected multipart/form-data or application/x-www-form-urlencoded, got {ctype[:100]}")
    except FormError as exc:
        log.info("unreadable form body from %s: %s", request.remote, exc)
        raise web.HTTPBadRequest(text=f"could not read the form body: {exc}") from None
    return MultiDict(fields)


async def read_json(request: web.Request) -> Any:
    """A JSON body (UTF-8), nested at most ``MAX_JSON_DEPTH`` deep; raises ``web.HTTPBadRequest``."""
    body = await request.read()
    try:
        value = json.loads(body)
    except RecursionError:
        value = None
        deep = True
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        raise web.HTTPBadRequest(text="expected a JSON body") from None
    else:
        deep = _depth_over(value, MAX_JSON_DEPTH)
    if deep:
        raise web.HTTPBadRequest(text=f"the JSON body is nested more than {MAX_JSON_DEPTH} levels deep")
    return value


def _depth_over(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists and objects more than ``limit`` deep (iterative: no recursion to exhaust)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False
