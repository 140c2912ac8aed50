"""Messages built from Mailgun API fields: ``POST /v3/{domain}/messages`` and ``/messages.mime``.

``compose(fields, uploads, ...)`` turns the form of a send request into the copies to commit:
- ``from``, ``to``, ``cc``, ``bcc`` (repeatable or comma-separated), ``subject``, ``text``, ``html``,
  ``amp-html``, ``attachment`` and ``inline`` files, ``h:Name`` headers, ``v:name`` user variables and
  ``o:name`` options;
- without ``recipient-variables``: one copy to every recipient (Bcc never appears in a header);
- with ``recipient-variables`` (batch sending): one copy per ``to`` recipient, its To header naming
  only that recipient, with the template variables (``%recipient.KEY%``, ``%recipient%``,
  ``%recipient_fname%``, ...) replaced in the subject, bodies, ``h:`` and ``v:`` values (a key the recipient
  lacks becomes empty). ``cc`` and ``bcc`` get every copy, as Mailgun does.
``from_mime(raw, ...)`` does the same for a message the client built itself.

Files: their names in RFC 2231 ``name*``/``filename*`` parameters when not ASCII; an ``inline`` file's
``Content-ID`` is its name as Mailgun writes it (``<logo.png>``, referenced as ``cid:logo.png``) when that is a
plain ASCII dot-atom, else an ASCII escape of it (``content_id``), and the HTML's ``cid:`` references to the name
are rewritten to that id (``cid_references``), so they still resolve.

Options go through ``options.parse``, the one parser SMTP's ``X-Mailgun-*`` headers use: ``o:`` fields
and ``h:X-Mailgun-*`` headers (or, in a MIME upload, the message's ``X-Mailgun-*`` headers, which are
removed) become the same ``SendOptions``.

Safety: every value bound for a header — also after recipient-variable substitution — that holds CR,
LF or NUL is refused with a ``ComposeError`` naming the field (the API's 400 answer says which).

The standard library and this module. The encodings are the standard library's: RFC 2047 encoded words
(``email.header``), address and parameter quoting and RFC 2231 (``email.utils``), quoted-printable and
base64 (``binascii``, ``base64``), dates (``email.utils.formatdate``). What is written here is only the
assembly: header lines, their folding when ASCII, and the multipart structure. Not
``email.message.EmailMessage`` with ``email.policy.SMTP``, for two measured reasons:

* Cost. A 1 KB text+html copy costs ~3 ms through ``EmailMessage`` + ``as_bytes()`` against ~0.1 ms here
  (bench/compose_bench.py), and a batch send builds one copy per recipient; the header objects alone
  (``policy.header_factory(...).fold()``) cost 90 µs for a short ASCII Subject against 0.5 µs, file parts
  through ``MIMEPart.set_content`` 3-30x more than ``_file_part``.
* Its header check is not enough on every Python mtad supports (>= 3.11). ``header_store_parse`` refuses
  a value with a line break inside, but on 3.11.7 accepts a trailing CR or LF (a Subject ``Hi`` + LF ends
  the header block early: what follows becomes body) and NUL; ``policy.verify_generated_headers`` only
  exists from 3.11.10/3.12.5. It names no field, and it refuses what mtad accepts and RFC 2047-encodes
  (U+0085, U+2028: ``str.splitlines`` boundaries). So ``check_header_value`` stays, whoever writes the bytes.

At most 1,000 recipients; the finished message must fit ``max_size`` (25 MB by default) and its header
block the SMTP limits (``max_header_count`` fields, ``max_header_size`` bytes), so the API cannot make
what SMTP refuses. User variables are bounded by ``options.MAX_VARIABLES_SIZE``.

Stored templates (``template``, ``t:version``, ``t:text``, ``t:variables``, or their ``h:X-Mailgun-Template-*``
twins): the caller reads the version the request names (``template_named``) from the store and passes it in;
compose renders it (``mtad.mail.templating``, Handlebars) and its rendering is the message's content, never a
blank message (see ``compose``). Template variables (``mtad.mail.variables``: ``%recipient%``,
``%recipient_fname%``, ...) are filled per copy: in a batch from the recipient's entry, without one by a copy per
recipient when the message names any. Copies are built when read (``Copies``), so that the store can write a
large batch one copy at a time. Pure functions: no I/O.
"""

from __future__ import annotations

import base64
import dataclasses
import binascii
import datetime
import email.header
import email.utils
import html
import json
import mimetypes
import random
import re
import secrets
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

from mtad.mail import headers as headers_mod
from mtad.mail import options as options_mod
from mtad.mail import templating
from mtad.mail import variables as variables_mod
from mtad.base.errors import OptionError
from mtad.base.types import HeaderSummary, SendOptions

MAX_RECIPIENTS = 1000
MAX_LINE = 998

_HEADER_NAME = re.compile(r"[!-9;-~]+")
_ADDRESS = re.compile(r"[^\s@<>()\[\],;:\"\\]+@[A-Za-z0-9._\-\[\]:]+")
_TZL = re.compile(r"^(\d{1,2}):(\d{2})\s*([ap]m)?$", re.I)
_STO = re.compile(r"^(\d+)h?$", re.I)
# Headers mtad writes for the MIME structure: h: may not replace them.
_STRUCTURAL = {"content-type", "content-transfer-encoding", "mime-version"}
_ADDRESS_HEADERS = {"from", "to", "cc", "reply-to", "sender", "bcc"}
# o: fields options.py does not know, handled here (or accepted and ignored, see api docs).
_SCHEDULING = {"o:deliverytime-optimize-period", "o:time-zone-localize"}
# Mailgun's stored-template fields and their header twins (h:X-Mailgun-Template-Name, ...): the same thing.
TEMPLATE_FIELDS = ("template", "t:version", "t:text", "t:variables")
_TEMPLATE_HEADERS = {"x-mailgun-template-name": "template", "x-mailgun-template-version": "t:version",
                     "x-mailgun-template-variables": "t:variables"}
MAX_TEMPLATE_VARIABLES = 1_000_000  # bytes of t:variables (JSON); the render's own limits bound what they cost


class ComposeError(ValueError):
    """A field of the request is missing or malformed; ``field`` names it for the 400 answer."""

    def __init__(self, field_name: str, problem: str):
        self.field = field_name
        self.problem = problem
        super().__init__(f"'{field_name}' {problem}")


@dataclass(frozen=True)
class Upload:
    """A file of the request: ``kind`` is ``attachment`` or ``inline``."""

    kind: str
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class Copy:
    """One message to commit: its envelope recipients, final bytes (CRLF) and options."""

    recipients: tuple[str, ...]
    content: bytes
    options: SendOptions
    fields: tuple[headers_mod.HeaderField, ...]  # the header block as headers.parse_block would give it
    summary: HeaderSummary


@dataclass(frozen=True)
class StoredTemplate:
    """The stored template version a request names (``template`` / ``t:version``), as the store gave it."""

    name: str
    tag: str
    content: str
    headers: tuple[tuple[str, str], ...] = ()  # From, Subject, Reply-To: used where the request sets none


@dataclass(frozen=True)
class Composed:
    message_id: str  # without angle brackets; the API answers it as "<id>"
    sender: str  # envelope sender
    copies: Sequence[Copy]  # built when read (``Copies``): a batch never holds all its copies at once
    ignored: tuple[str, ...] = ()  # o: fields accepted but without effect


@dataclass
class _Form:
    """The request's text fields, grouped."""

    single: dict[str, str] = field(default_factory=dict)
    multi: dict[str, list[str]] = field(default_factory=dict)
    headers: list[tuple[str, str]] = field(default_factory=list)  # h: in order
    user_variables: list[tuple[str, str]] = field(default_factory=list)  # v: in order
    option_fields: list[tuple[str, str]] = field(default_factory=list)  # o: in order
    template: dict[str, str] = field(default_factory=dict)  # template, t:version, t:text, t:variables


_REPEATABLE = {"to", "cc", "bcc"}


def _group(fields: Iterable[tuple[str, str]]) -> _Form:
    form = _Form()
    for name, value in fields:
        if name == "template" or name.startswith("t:"):
            if name not in TEMPLATE_FIELDS:
                raise ComposeError(name, "is not a template option (template, t:version, t:text, t:variables)")
            form.template.setdefault(name, value)
        elif name.startswith("h:") and name[2:].lower() in _TEMPLATE_HEADERS:
            form.template.setdefault(_TEMPLATE_HEADERS[name[2:].lower()], value)
        elif name.startswith("h:"):
            form.headers.append((name[2:], value))
        elif name.startswith("v:"):
            form.user_variables.append((name, value))
        elif name.startswith("o:"):
            form.option_fields.append((name, value))
        elif name in _REPEATABLE:
            form.multi.setdefault(name, []).append(value)
        else:
            form.single.setdefault(name, value)
    return form


# --- checks --------------------------------------------------------------------------------------

def check_header_value(field_name: str, value: str) -> None:
    if "\r" in value or "\n" in value or "\0" in value:
        raise ComposeError(field_name, "contains a line break (CR or LF) or NUL, which is not allowed in a header")


_SIMPLE_LIST = re.compile(r'[^"()\\;:\[\]]*')  # no quoting, comments or groups: commas split the list
_SIMPLE_ITEM = re.compile(r"\s*(?:([^<>]*?)\s*<([^<>\s]*)>|([^<>\s]+))\s*")


def _split_addresses(value: str) -> list[tuple[str, str]]:
    """getaddresses(), with a fast path for the usual ``a@b, Name <c@d>`` lists (it is costly per message)."""
    if _SIMPLE_LIST.fullmatch(value):
        pairs = []
        for item in value.split(","):
            if not item.strip():
                continue
            m = _SIMPLE_ITEM.fullmatch(item)
            if m is None:
                break
            pairs.append((m.group(1) or "", m.group(2) if m.group(2) is not None else m.group(3)))
        else:
            return pairs
    return email.utils.getaddresses([value])


def parse_addresses(field_name: str, values: Sequence[str]) -> list[tuple[str, str]]:
    """``(display spec, addr-spec)`` pairs of comma-separated address lists; refuses malformed ones."""
    result: list[tuple[str, str]] = []
    for value in values:
        check_header_value(field_name, value)
        for name, addr in _split_addresses(value):
            if not name and not addr:
                continue
            addr = addr.strip()
            if not _ADDRESS.fullmatch(addr) or len(addr) > 254:
                shown = (addr or name)[:100]
                raise ComposeError(field_name, f"parameter is not a valid address: {shown!r}")
            result.append((name.strip(), addr))
    return result


# --- header writing --------------------------------------------------------------------------------

def _format_address(name: str, addr: str) -> str:
    if not name:
        return addr
    if name.isascii():
        return email.utils.formataddr((name, addr))
    return f"{email.header.Header(name, 'utf-8').encode()} <{addr}>"


def _fold(name: str, value: str) -> str:
    """``Name: value`` CRLF, RFC 2047-encoded when not ASCII, folded so no line passes 998 octets."""
    if not value.isascii():
        encoded = email.header.Header(value, "utf-8", header_name=name).encode(linesep="\r\n")
        return f"{name}: {encoded}\r\n"
    line = f"{name}: {value}"
    if len(line) <= 78:
        return line + "\r\n"
    out, current = [], f"{name}:"
    for word in value.split(" "):
        if len(current) + 1 + len(word) > 78 and current.strip() and current != f"{name}:":
            out.append(current)
            current = " " + word
        else:
            current += " " + word
    out.append(current)
    if any(len(piece) > MAX_LINE for piece in out):
        raise ComposeError(f"h:{name}", "is too long to fit in a header line")
    return "\r\n".join(out) + "\r\n"


def _address_header(name: str, pairs: list[tuple[str, str]]) -> str:
    specs = [_format_address(n, a) for n, a in pairs]
    return f"{name}: " + ",\r\n ".join(specs) + "\r\n"


# --- bodies ----------------------------------------------------------------------------------------

def _normalize_text(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _text_part(text: str, subtype: str) -> bytes:
    body = _normalize_text(text)
    raw = body.encode("utf-8")
    if body.isascii() and all(len(line) <= MAX_LINE for line in body.split("\n")):
        encoded = raw.replace(b"\n", b"\r\n")
        cte = "7bit"
    else:
        encoded = binascii.b2a_qp(raw, istext=True).replace(b"\n", b"\r\n")
        cte = "quoted-printable"
    head = (f"Content-Type: text/{subtype}; charset=\"utf-8\"\r\n"
            f"Content-Transfer-Encoding: {cte}\r\n\r\n").encode()
    return head + encoded


def _param(name: str, value: str) -> str:
    """A MIME parameter: quoted, or RFC 2231-encoded when not ASCII."""
    if value.isascii():
        return f'{name}="{email.utils.quote(value)}"'
    return f"{name}*={email.utils.encode_rfc2231(value, 'utf-8')}"


_CID_SAFE = re.compile(r"[A-Za-z0-9._+~!$*-]+")  # in a msg-id's dot-atom and in a cid: URL, unescaped


def content_id(filename: str) -> str:
    """The ``Content-ID`` (without ``<>``) of an inline file: its name, as Mailgun does, when every character of it
    is ASCII and needs no escaping in a msg-id (RFC 5322) or a ``cid:`` URL (RFC 2392); else the name with each
    other character's UTF-8 bytes written ``=XX`` (``logo ü.png`` -> ``logo=20=C3=BC.png``). ``=`` is always
    escaped, so two names never share an id. ``cid_references`` rewrites the HTML's ``cid:`` references to it."""
    if _CID_SAFE.fullmatch(filename) and not filename.startswith(".") and ".." not in filename \
            and not filename.endswith("."):
        return filename
    return "".join(ch if _CID_SAFE.fullmatch(ch) else "".join(f"={b:02X}" for b in ch.encode("utf-8", "replace"))
                   for ch in filename)


def cid_references(body: str | None, filenames: Iterable[str]) -> str | None:
    """``body`` (HTML) with each ``cid:NAME`` reference to an inline file whose Content-ID is not its name
    (``content_id``) made ``cid:ID``: NAME as written, percent-encoded (RFC 2392) or HTML-escaped."""
    if not body or "cid:" not in body.lower():
        return body
    for name in dict.fromkeys(filenames):
        cid = content_id(name)
        if cid == name:
            continue
        forms = sorted({name, urllib.parse.quote(name, safe="/@"), html.escape(name, quote=True)}, key=len,
                       reverse=True)
        pattern = re.compile(r"(?i)cid:(?:" + "|".join(re.escape(f) for f in forms) + r")(?=[\"'\s>)]|$)")
        body = pattern.sub(lambda _m, cid=cid: "cid:" + cid, body)
    return body


def _file_part(upload: Upload) -> bytes:
    given = (upload.content_type or "").split(";")[0].strip()
    if not given or given == "application/octet-stream":
        given = mimetypes.guess_type(upload.filename)[0] or "application/octet-stream"
    ctype = given if re.fullmatch(r"[\w.+-]+/[\w.+-]+", given) else "application/octet-stream"
    lines = [f"Content-Type: {ctype}; {_param('name', upload.filename)}",
             f"Content-Disposition: {upload.kind}; {_param('filename', upload.filename)}",
             "Content-Transfer-Encoding: base64"]
    if upload.kind == "inline":
        lines.append(f"Content-ID: <{content_id(upload.filename)}>")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + _base64(upload.data)


def _base64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def _boundary() -> str:
    return "=_mtad_" + secrets.token_hex(12)


def _multipart(subtype: str, parts: list[bytes]) -> bytes:
    boundary = _boundary()
    out = [f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'.encode()]
    for part in parts:
        out.append(f"--{boundary}\r\n".encode())
        out.append(part)
        out.append(b"\r\n")  # the CRLF before a delimiter belongs to it (RFC 2046 5.1.1), not to the part
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out)


def _body(text: str | None, html: str | None, amp: str | None, inline: list[bytes],
          attachments: list[bytes]) -> bytes:
    """The MIME entity (its Content-* headers, blank line, content): mixed > related > alternative."""
    alternatives = []
    if text is not None:
        alternatives.append(_text_part(text, "plain"))
    if amp is not None:
        alternatives.append(_text_part(amp, "x-amp-html"))
    if html is not None:
        alternatives.append(_text_part(html, "html"))
    entity = alternatives[0] if len(alternatives) == 1 else _multipart("alternative", alternatives)
    if inline:
        entity = _multipart("related", [entity, *inline])
    if attachments:
        entity = _multipart("mixed", [entity, *attachments])
    return entity if entity.endswith(b"\r\n") else entity + b"\r\n"


# --- substitution ----------------------------------------------------------------------------------

def _substitute(text: str, variables: dict[str, Any] | None, address: str = "", name: str = "") -> str:
    """A batch copy's text with its recipient's variables (``mtad.mail.variables``); as is without a batch."""
    if variables is None:
        return text
    return variables_mod.substitute(text, variables_mod.RecipientContext(address, name, variables))


# --- options ---------------------------------------------------------------------------------------

def _scheduling(name: str, value: str, now: float) -> tuple[str, str, str] | None:
    """``o:time-zone-localize`` becomes a delivery time; ``o:deliverytime-optimize-period`` is checked."""
    v = value.strip()
    if name == "o:time-zone-localize":
        m = _TZL.match(v)
        if not m:
            raise ComposeError(name, "expected a time like 14:00 or 2:00PM")
        hour, minute, half = int(m.group(1)), int(m.group(2)), (m.group(3) or "").lower()
        if half:
            if not 1 <= hour <= 12:
                raise ComposeError(name, "hour must be 1-12 with AM/PM")
            hour = hour % 12 + (12 if half == "pm" else 0)
        if hour > 23 or minute > 59:
            raise ComposeError(name, "not a valid time of day")
        # The recipient's time zone is unknown to mtad: the time is taken in UTC.
        day = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
        at = day.replace(hour=hour, minute=minute, second=0, microsecond=0)
        if at.timestamp() < now:
            at += datetime.timedelta(days=1)
        return (name, "deliverytime", str(int(at.timestamp())))
    m = _STO.match(v)
    if not m or not 24 <= int(m.group(1)) <= 72:
        raise ComposeError(name, "expected a period between 24h and 72h")
    return None  # no engagement data: delivering at once is as good a time as any in the period


def _option_items(form: _Form, header_items: list[tuple[str, str, str]], now: float
                  ) -> tuple[list[tuple[str, str, str]], list[str]]:
    items = list(header_items)
    ignored: list[str] = []
    explicit_time = any(name == "o:deliverytime" for name, _ in form.option_fields)
    for name, value in form.option_fields:
        key = options_mod.API_OPTIONS.get(name)
        if key is not None:
            items.append((name, key, value))
        elif name in _SCHEDULING:
            item = _scheduling(name, value, now)
            if item is not None and not explicit_time:
                items.append(item)
        else:
            ignored.append(name)
    return items, ignored


def _parse_options(items: list[tuple[str, str, str]], user_variables: list[tuple[str, str]],
                   unknown: list[tuple[str, str]]) -> SendOptions:
    try:
        return options_mod.parse(items, user_variables, unknown)
    except OptionError as exc:
        raise ComposeError(exc.option, exc.problem) from None


def _split_mailgun_headers(form_headers: list[tuple[str, str]]
                           ) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]], list[tuple[str, str]]]:
    """h: headers minus ``X-Mailgun-*``, which become option items (or unknown, recorded then dropped)."""
    kept, items, unknown = [], [], []
    for name, value in form_headers:
        lower = name.lower()
        if lower.startswith("x-mailgun-"):
            key = options_mod.HEADER_OPTIONS.get(lower)
            if key is None:
                unknown.append((name, value))
            else:
                items.append((name, key, value))
        else:
            kept.append((name, value))
    return kept, items, unknown


def _check_header_limits(count: int, size: int, max_count: int, max_size: int) -> None:
    """The SMTP limits on a header block (``limits.max_header_count``, ``limits.max_header_size``)."""
    if count > max_count:
        raise ComposeError("h:", f"the message would have {count} header fields, over the limit of {max_count}")
    if size > max_size:
        raise ComposeError("h:", f"the header block would be {size} bytes, over the limit of {max_size}")


# --- the header block as ingress sees it ---------------------------------------------------------------

def _fields(head: list[str]) -> tuple[headers_mod.HeaderField, ...]:
    """What ``headers.parse_block`` would find in the lines written here (ASCII, folded with CRLF SP)."""
    fields, pos = [], 0
    for line in head:
        name, _, value = line.partition(":")
        end = pos + (len(line) if line.isascii() else len(line.encode("utf-8")))
        fields.append(headers_mod.HeaderField(name, value.replace("\r\n", "").strip(), pos, end))
        pos = end
    return tuple(fields)


def _decoded(value: str | None) -> str:
    if not value:
        return ""
    return headers_mod.decode(value) if "=?" in value else value  # decoding is costly; most values are plain


def _summary(fields: tuple[headers_mod.HeaderField, ...]) -> HeaderSummary:
    as_list = list(fields)
    mid = (headers_mod.first(as_list, "Message-ID") or "").strip().strip("<>")
    return HeaderSummary(mid, _decoded(headers_mod.first(as_list, "From")), _decoded(headers_mod.first(as_list, "To")),
                         _decoded(headers_mod.first(as_list, "Subject")))


# --- identity --------------------------------------------------------------------------------------

_last_date: tuple[int, str] = (-1, "")


def http_date(now: float) -> str:
    """``email.utils.formatdate(now, usegmt=True)``, computed once per second (every send has a Date)."""
    global _last_date
    second = int(now)
    if _last_date[0] != second:
        _last_date = (second, email.utils.formatdate(second, usegmt=True))
    return _last_date[1]


def new_message_id(domain: str, now: float) -> str:
    """``<YYYYmmddHHMMSS>.<16 hex>@domain``, Mailgun's form. Unique, not secret: no need for os.urandom."""
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
    return f"{stamp}.{random.getrandbits(64):016x}@{domain}"


def envelope_sender(from_addr: str, domain: str) -> str:
    """The From address when it belongs to the sending domain (or a subdomain), else postmaster@domain."""
    from_domain = from_addr.rpartition("@")[2].lower()
    if from_domain == domain or from_domain.endswith("." + domain):
        return from_addr
    return f"postmaster@{domain}"


def _user_message_id(value: str) -> str:
    mid = value.strip().strip("<>").strip()
    if not mid or "@" not in mid or any(c in mid for c in "<> \t"):
        raise ComposeError("h:Message-Id", "expected <local@domain>")
    return mid


# --- the two entry points --------------------------------------------------------------------------

@dataclass(frozen=True)
class _Request:
    """A ``/messages`` request, checked: what every copy is built from."""

    senders: list[tuple[str, str]]
    to: list[tuple[str, str]]
    cc: list[tuple[str, str]]
    bcc: list[tuple[str, str]]
    subject: str
    bodies: tuple[str | None, str | None, str | None]  # text, html, amp-html
    batch: dict[str, Any] | None  # recipient-variables by lower-cased address
    user_headers: list[tuple[str, str]]
    option_items: list[tuple[str, str, str]]
    unknown: list[tuple[str, str]]  # X-Mailgun-* headers mtad does not know
    user_variables: list[tuple[str, str]]
    files: tuple[list[bytes], list[bytes]]  # inline parts, attachment parts (encoded once for every copy)
    message_id: str
    now: float
    max_size: int
    max_header_count: int
    max_header_size: int
    lists: frozenset[str] = frozenset()  # recipients that are mailing lists (lower case): their expansion fills them


@dataclass(frozen=True)
class _Unit:
    """What makes one copy: the To header's addresses, whose variables fill it (None: no substitution), and
    its envelope recipients."""

    to: list[tuple[str, str]]
    who: tuple[str, str]  # (display name, address) of the recipient the variables are of
    variables: dict[str, Any] | None
    recipients: tuple[str, ...]


class Copies(Sequence[Copy]):
    """A request's copies, each built when read and not kept: a 1,000-recipient batch of 50 KB copies is never
    50 MB in memory at once (the store writes each as it comes, ``Ingress.commit_stream``). The first copy is
    built once and kept (compose builds it to check the request; most sends have one copy); reading another copy
    twice builds it twice (the same message; only MIME boundaries differ)."""

    def __init__(self, req: _Request, units: list[_Unit]):
        self._req = req
        self._units = units
        self._first: Copy | None = None

    def __len__(self) -> int:
        return len(self._units)

    def _build(self, index: int) -> Copy:
        if index == 0:
            if self._first is None:
                self._first = _build(self._req, self._units[0])
            return self._first
        return _build(self._req, self._units[index])

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self._build(i) for i in range(len(self._units))[index]]
        if index < 0:
            index += len(self._units)
        if not 0 <= index < len(self._units):
            raise IndexError(index)
        return self._build(index)

    def __iter__(self) -> Iterator[Copy]:
        for index in range(len(self._units)):
            yield self._build(index)

    @property
    def recipient_count(self) -> int:
        return sum(len(u.recipients) for u in self._units)


def template_named(fields: Iterable[tuple[str, str]]) -> tuple[str, str | None] | None:
    """The stored template a ``/messages`` request names (``template`` or ``h:X-Mailgun-Template-Name``) and its
    version (``t:version`` or ``h:X-Mailgun-Template-Version``; None: the active one), or None. The name is
    lower-cased (as stored); ComposeError for an empty one."""
    form = _group(fields)
    name = form.template.get("template")
    if name is None:
        return None
    if not name.strip():
        raise ComposeError("template", "is empty")
    version = (form.template.get("t:version") or "").strip()
    return name.strip().lower(), version or None


def compose(fields: Iterable[tuple[str, str]], uploads: Sequence[Upload], *, domain: str, now: float,
            max_size: int, max_header_count: int = 1000, max_header_size: int = 1_000_000,
            template: StoredTemplate | None = None, html_to_text: Callable[[str], str] | None = None,
            lists: frozenset[str] = frozenset()) -> Composed:
    """The copies a ``/messages`` request asks for. Raises ComposeError naming the faulty field.

    ``lists``: the recipients that are mailing lists (lower case). Their copy keeps the recipient variables as
    written, one copy for all of them: the list's expansion fills each member's (``mtad.mail.listcopy``).

    A request naming a stored template (``template_named``) comes with it as ``template`` (the caller reads the
    store); its rendering is the HTML part (``text``, ``html`` and ``amp-html`` fields beside it are ignored) and,
    with ``t:text=yes``, also the text part (``html_to_text`` of it). The version's From, Subject and Reply-To are
    used where the request gives none. Its variables: ``h:X-Mailgun-Variables`` and ``v:`` fields, with
    ``t:variables`` over them.
    """
    form = _group(fields)
    # the h: fields alone over the limits: refused before any copy is built (each copy is checked in _build)
    _check_header_limits(len(form.headers), sum(len(n) + len(v) + 4 for n, v in form.headers), max_header_count,
                         max_header_size)
    user_headers, header_items, unknown = _user_headers(form)
    rendered, ignored_bodies = None, []
    if form.template:
        rendered, ignored_bodies = _render_template(form, template, header_items, html_to_text)
        _template_headers(form, user_headers, rendered[1], domain)
    senders, to, cc, bcc = _recipients(form)
    bodies = rendered[0] if rendered is not None else _bodies(form)
    inline_names = [u.filename for u in uploads if u.kind == "inline"]
    if inline_names:  # the HTML's cid: references follow the inline files' ASCII Content-IDs
        bodies = (bodies[0], cid_references(bodies[1], inline_names), cid_references(bodies[2], inline_names))
    subject = form.single.get("subject", "")
    check_header_value("subject", subject)
    batch = _batch(form)
    items, ignored = _option_items(form, header_items, now)
    for upload in uploads:
        check_header_value(upload.kind, upload.filename)
    files = ([_file_part(u) for u in uploads if u.kind == "inline"],
             [_file_part(u) for u in uploads if u.kind == "attachment"])
    message_id = next((_user_message_id(v) for n, v in user_headers if n.lower() == "message-id"),
                      None) or new_message_id(domain, now)
    req = _Request(senders, to, cc, bcc, subject, bodies, batch, user_headers, items, unknown, form.user_variables,
                   files, message_id, now, max_size, max_header_count, max_header_size, lists)
    copies = Copies(req, _units(req))
    copies[0]  # the first copy built once now: a request every copy of which is wrong fails before the commit
    return Composed(message_id, envelope_sender(senders[0][1], domain), copies, tuple(ignored + ignored_bodies))


def _units(req: _Request) -> list[_Unit]:
    """Batch (``recipient-variables``): a copy per ``to`` address (once however often listed), cc and bcc get each.
    Without: one copy to everybody, unless the message names recipient variables (``%recipient_fname%``, ...):
    then a copy per recipient (the headers the same for all), each filled with its own (Mailgun's variables of a
    recipient without ``recipient-variables`` are its address and display name; ``%recipient.KEY%`` is empty)."""
    if req.lists and any(a.lower() in req.lists for _, a in req.to + req.cc + req.bcc):
        everyone = req.to + req.cc + req.bcc
        to_header = req.to or [p for p in everyone if p[1].lower() in req.lists][:1]
        units = [_Unit(to_header, to_header[0], None,
                       tuple(dict.fromkeys(a for _, a in everyone if a.lower() in req.lists)))]
        rest = dataclasses.replace(req, lists=frozenset(), **{
            kind: [p for p in getattr(req, kind) if p[1].lower() not in req.lists] for kind in ("to", "cc", "bcc")})
        if rest.to:
            units += [u if req.batch is not None else dataclasses.replace(u, to=req.to) for u in _units(rest)]
        elif rest.cc or rest.bcc:
            units.append(_Unit(req.to, to_header[0], None, tuple(dict.fromkeys(a for _, a in rest.cc + rest.bcc))))
        return units
    copied = tuple(a for _, a in req.cc) + tuple(a for _, a in req.bcc)
    if req.batch is not None:
        unique: dict[str, tuple[str, str]] = {}
        for name, addr in req.to:  # one copy per address, however often it is listed
            unique.setdefault(addr.lower(), (name, addr))
        return [_Unit([pair], pair, req.batch.get(key, {}), tuple(dict.fromkeys((pair[1],) + copied)))
                for key, pair in unique.items()]
    everybody = tuple(dict.fromkeys([a for _, a in req.to] + list(copied)))
    if not _names_recipient_variables(req):
        return [_Unit(req.to, req.to[0], None, everybody)]
    named: dict[str, tuple[str, str]] = {}
    for name, addr in req.to + req.cc + req.bcc:
        named.setdefault(addr.lower(), (name, addr))
    return [_Unit(req.to, named[a.lower()], {}, (a,)) for a in everybody]


def _names_recipient_variables(req: _Request) -> bool:
    texts = [req.subject, *(b for b in req.bodies if b), *(v for _, v in req.user_headers),
             *(v for _, v in req.user_variables)]
    return any(variables_mod.has_recipient_variables(t) for t in texts)


def _render_template(form: _Form, template: StoredTemplate | None, header_items: list[tuple[str, str, str]],
                     html_to_text: Callable[[str], str] | None
                     ) -> tuple[tuple[tuple[str | None, str | None, str | None], dict[str, str]], list[str]]:
    """The bodies (text, html, amp) and the rendered From/Subject/Reply-To of the named template; the body
    fields ignored beside it."""
    wanted = form.template.get("template")
    if wanted is None:
        raise ComposeError(next(iter(form.template)), "is given without 'template' naming a stored template")
    if template is None:
        raise ComposeError("template", f"{wanted.strip()!r} was not found")
    variables = _template_variables(form.template.get("t:variables"), header_items, form.user_variables)
    text, html, headers = render_template(template, variables, text=_yes(form.template.get("t:text", "")),
                                          html_to_text=html_to_text)
    ignored = [name for name in ("text", "html", "amp-html") if name in form.single]
    return ((text, html, None), headers), ignored


def render_template(template: StoredTemplate, variables: dict[str, Any], *, text: bool = False,
                    html_to_text: Callable[[str], str] | None = None) -> tuple[str | None, str, dict[str, str]]:
    """(text part or None, HTML part, From/Subject/Reply-To) of a stored template rendered with ``variables``;
    ComposeError naming the template when it fails to render, renders nothing, or a header would hold a line
    break."""
    what = f"{template.name!r} (version {template.tag!r})"
    try:
        html = templating.render_source(template.content, variables)
        headers = {name: templating.render_source(value, variables, escape=False)
                   for name, value in template.headers}
    except templating.TemplateError as exc:
        raise ComposeError("template", f"{what} {exc}") from None
    plain = (html_to_text or _strip_tags)(html) if text else None
    if not html.strip() and not (plain or "").strip():
        raise ComposeError("template", f"{what} renders an empty message")
    for name, value in headers.items():
        check_header_value(f"template {what} header {name}", value)
    return plain, html, headers


def template_message(content: bytes, template: StoredTemplate, variables: dict[str, Any], *, text: bool = False,
                     html_to_text: Callable[[str], str] | None = None) -> bytes:
    """A whole message (SMTP, ``messages.mime``) with its body replaced by the rendered template, as Mailgun
    does: its Content-* and MIME-Version headers go, the template's From/Subject/Reply-To are added where the
    message has none, the rest of its header block stays."""
    plain, html, headers = render_template(template, variables, text=text, html_to_text=html_to_text)
    fields, _ = headers_mod.parse_block(content, 1 << 30, len(content))
    head_end, _ = headers_mod.split(content)
    structural = [f for f in fields if f.name.lower() in _STRUCTURAL or f.name.lower().startswith("content-")]
    head = headers_mod.remove(content[:head_end], structural)
    present = {f.name.lower() for f in fields}
    added = ""
    for name, value in headers.items():
        if name.lower() not in present:
            added += (_address_header(name, parse_addresses(f"template header {name}", [value]))
                      if name.lower() != "subject" else _fold(name, value))
    return head + added.encode("utf-8") + b"MIME-Version: 1.0\r\n" + _body(plain, html, None, [], [])


def template_variables(variables_json: str | None, user_variables: Iterable[tuple[str, str]] = (),
                       template_variables_json: str | None = None, *, source: str = "X-Mailgun-Variables",
                       template_source: str = "X-Mailgun-Template-Variables") -> dict[str, Any]:
    """What a template is rendered with: the message's user variables (a JSON object, and ``v:`` pairs), with
    the template's variables (a JSON object) over them."""
    variables: dict[str, Any] = {}
    if variables_json and variables_json.strip():
        variables.update(_json_object(source, variables_json))
    for name, value in user_variables:
        variables[name[2:] if name.startswith("v:") else name] = value
    if template_variables_json is not None and template_variables_json.strip():
        if len(template_variables_json.encode("utf-8", "surrogatepass")) > MAX_TEMPLATE_VARIABLES:
            raise ComposeError(template_source, f"is over the limit of {MAX_TEMPLATE_VARIABLES} bytes")
        variables.update(_json_object(template_source, template_variables_json))
    return variables


def _template_variables(given: str | None, header_items: list[tuple[str, str, str]],
                        user_variables: list[tuple[str, str]]) -> dict[str, Any]:
    """``h:X-Mailgun-Variables`` and ``v:`` fields, then ``t:variables`` over them (JSON objects)."""
    variables: dict[str, Any] = {}
    for source, key, value in header_items:
        if key == "variables":
            variables.update(template_variables(value, source=f"h:{source}"))
    variables.update(template_variables(None, user_variables, given, template_source="t:variables"))
    return variables


def _yes(value: str) -> bool:
    return value.strip().lower() in ("yes", "true", "1", "on")


def _strip_tags(html: str) -> str:
    return re.sub(r"<[^<>]*>", "", html)


def _json_object(field_name: str, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except RecursionError:
        raise ComposeError(field_name, "is nested too deeply") from None
    except ValueError as exc:
        raise ComposeError(field_name, f"is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ComposeError(field_name, "must be a JSON object")
    return value


def _template_headers(form: _Form, user_headers: list[tuple[str, str]], rendered: dict[str, str],
                      domain: str) -> None:
    """The template's From, Subject and Reply-To where the request has none (Mailgun: the message's win); From
    defaults to postmaster@domain."""
    if not form.single.get("from"):
        form.single["from"] = rendered.get("From") or f"postmaster@{domain}"
    if "subject" not in form.single and "Subject" in rendered:
        form.single["subject"] = rendered["Subject"]
    if "Reply-To" in rendered and not any(n.lower() == "reply-to" for n, _ in user_headers):
        user_headers.append(("Reply-To", rendered["Reply-To"]))


def _recipients(form: _Form) -> tuple[list[tuple[str, str]], ...]:
    from_value = form.single.get("from")
    if not from_value:
        raise ComposeError("from", "parameter is missing")
    senders = parse_addresses("from", [from_value])
    if len(senders) != 1:
        raise ComposeError("from", "parameter must be exactly one address")
    to = parse_addresses("to", form.multi.get("to", []))
    if not to:
        raise ComposeError("to", "parameter is missing")
    cc = parse_addresses("cc", form.multi.get("cc", []))
    bcc = parse_addresses("bcc", form.multi.get("bcc", []))
    if len(to) + len(cc) + len(bcc) > MAX_RECIPIENTS:
        raise ComposeError("to", f"too many recipients: at most {MAX_RECIPIENTS} in to, cc and bcc together")
    return senders, to, cc, bcc


def _bodies(form: _Form) -> tuple[str | None, str | None, str | None]:
    text, html, amp = form.single.get("text"), form.single.get("html"), form.single.get("amp-html")
    if text is None and html is None and amp is None:
        raise ComposeError("text", "Need at least one of 'text', 'html' or 'amp-html' parameters specified")
    return text, html, amp


def _batch(form: _Form) -> dict[str, Any] | None:
    if "recipient-variables" not in form.single:
        return None
    try:
        batch = json.loads(form.single["recipient-variables"] or "{}")
    except RecursionError:
        raise ComposeError("recipient-variables", "is nested too deeply") from None
    except ValueError as exc:
        raise ComposeError("recipient-variables", f"is not valid JSON ({exc})") from None
    if not isinstance(batch, dict) or not all(isinstance(v, dict) for v in batch.values()):
        raise ComposeError("recipient-variables", "must be a JSON object of objects keyed by address")
    return {k.lower(): v for k, v in batch.items()}


def _user_headers(form: _Form) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]], list[tuple[str, str]]]:
    """``h:`` headers checked: (headers to write, X-Mailgun-* option items, unknown X-Mailgun-* headers)."""
    user_headers, header_items, unknown = _split_mailgun_headers(form.headers)
    for name, value in user_headers:
        if not _HEADER_NAME.fullmatch(name):
            raise ComposeError(f"h:{name}", "is not a valid header name")
        if name.lower() in _STRUCTURAL:
            raise ComposeError(f"h:{name}", "is set by mtad from the message structure")
        if name.lower() == "bcc":
            raise ComposeError(f"h:{name}", "would show blind copies to every recipient; use the 'bcc' field")
        check_header_value(f"h:{name}", value)
    for name, _, value in header_items:
        check_header_value(f"h:{name}", value)
    for name, value in unknown:
        check_header_value(f"h:{name}", value)
    return user_headers, header_items, unknown


def _head(req: _Request, unit: _Unit) -> list[str]:
    """The header lines of one copy (CRLF-terminated); ``h:`` headers replace generated ones of the same name."""
    overridden = {n.lower() for n, _ in req.user_headers}
    variables, (who_name, who) = unit.variables, unit.who
    source = "recipient-variables" if req.batch is not None else "to"
    head = []
    if "from" not in overridden:
        head.append(_address_header("From", req.senders))
    if "to" not in overridden:
        head.append(_address_header("To", unit.to))
    if req.cc and "cc" not in overridden:
        head.append(_address_header("Cc", req.cc))
    subject = _substitute(req.subject, variables, who, who_name)
    if variables is not None:
        check_header_value(source, subject)
    if "subject" not in overridden:
        head.append(_fold("Subject", subject))
    if "message-id" not in overridden:
        head.append(f"Message-ID: <{req.message_id}>\r\n")
    if "date" not in overridden:
        head.append(f"Date: {http_date(req.now)}\r\n")
    for name, value in req.user_headers:
        value = _substitute(value, variables, who, who_name)
        if variables is not None:
            check_header_value(source, value)
        if name.lower() == "message-id":
            head.append(f"Message-ID: <{req.message_id}>\r\n")
        elif name.lower() in _ADDRESS_HEADERS and not value.isascii():
            head.append(_address_header(name, parse_addresses(f"h:{name}", [value])))
        else:
            head.append(_fold(name, value))
    head.append("MIME-Version: 1.0\r\n")
    return head


def _build(req: _Request, unit: _Unit) -> Copy:
    """One copy: headers, MIME body, options (``v:`` values substituted too), the fields ingress reads."""
    head = _head(req, unit)
    variables, (name, address) = unit.variables, unit.who
    text, html, amp = (None if b is None else _substitute(b, variables, address, name) for b in req.bodies)
    body = _body(text, html, amp, *req.files)
    head_bytes = "".join(head).encode("utf-8")  # ASCII but for UTF-8 addresses (RFC 6532)
    entity_end = body.index(b"\r\n\r\n") + 2
    entity_head = body[:entity_end].decode("ascii")  # Content-Type and its CTE: the end of the header block
    fields = _fields(head + [line + "\r\n" for line in entity_head.split("\r\n")[:-1]])
    _check_header_limits(len(fields), len(head_bytes) + entity_end, req.max_header_count, req.max_header_size)
    content = head_bytes + body
    if len(content) > req.max_size:
        raise ComposeError("message", f"is {len(content)} bytes, over the limit of {req.max_size}")
    user_vars = [(n, _substitute(v, variables, address, name)) for n, v in req.user_variables]
    opts = _parse_options(req.option_items, user_vars, req.unknown)
    return Copy(unit.recipients, content, opts, fields, _summary(fields))


def normalize_mime(raw: bytes, max_line: int = MAX_LINE) -> bytes:
    """An uploaded message with CRLF line endings (uploads often use LF); refuses over-long lines."""
    if b"\0" in raw:
        raise ComposeError("message", "contains NUL bytes")
    crlf = raw.count(b"\r\n")
    if raw.count(b"\n") != crlf or raw.count(b"\r") != crlf:
        raw = re.sub(rb"\r\n|\r|\n", b"\r\n", raw)
    if not raw.endswith(b"\r\n"):
        raw += b"\r\n"
    if len(raw) > max_line and max(map(len, raw.split(b"\r\n"))) > max_line:
        raise ComposeError("message", f"has a line longer than {max_line} octets")
    return raw


def mime_template_named(raw: bytes) -> tuple[str, str | None] | None:
    """The stored template an uploaded message names in its ``X-Mailgun-Template-Name`` (and ``-Version``)
    header, as ``template_named``; None when it names none or its header block cannot be read."""
    try:
        fields_, _ = headers_mod.parse_block(normalize_mime(raw), 10_000, 1_000_000)
    except (headers_mod.HeaderError, ComposeError):
        return None
    name = headers_mod.first(fields_, "X-Mailgun-Template-Name")
    if name is None:
        return None
    if not headers_mod.decode(name).strip():
        raise ComposeError("X-Mailgun-Template-Name", "is empty")
    version = headers_mod.decode(headers_mod.first(fields_, "X-Mailgun-Template-Version") or "").strip()
    return headers_mod.decode(name).strip().lower(), version or None


def from_mime(raw: bytes, fields: Iterable[tuple[str, str]], *, domain: str, now: float, max_size: int,
              max_header_count: int, max_header_size: int, template: StoredTemplate | None = None,
              html_to_text: Callable[[str], str] | None = None) -> Composed:
    """The copy a ``/messages.mime`` request asks for: the client's message, ``to`` as the envelope.

    The message's ``X-Mailgun-*`` headers are parsed with the ``o:`` fields (``o:`` last, so they
    win where one value is kept) and removed; Message-ID and Date are added when missing. A message naming a
    stored template (``mime_template_named``) comes with it as ``template``: its body is replaced by the
    rendering (``template_message``; variables from ``X-Mailgun-Template-Variables`` over the user variables).
    """
    form = _group(fields)
    to = parse_addresses("to", form.multi.get("to", []))
    if not to:
        raise ComposeError("to", "parameter is missing")
    if len(to) > MAX_RECIPIENTS:
        raise ComposeError("to", f"too many recipients: at most {MAX_RECIPIENTS}")
    content = normalize_mime(raw)
    if len(content) > max_size:
        raise ComposeError("message", f"is {len(content)} bytes, over the limit of {max_size}")
    try:
        fields_, _ = headers_mod.parse_block(content, max_header_count, max_header_size)
    except headers_mod.HeaderError as exc:
        raise ComposeError("message", str(exc)) from None
    mailgun = [f for f in fields_ if f.name.lower().startswith("x-mailgun-")]
    header_items, unknown = [], []
    template_fields: dict[str, str] = {}
    for f in mailgun:
        if f.name.lower() in _TEMPLATE_HEADERS:
            template_fields[_TEMPLATE_HEADERS[f.name.lower()]] = headers_mod.decode(f.value)
            continue
        key = options_mod.HEADER_OPTIONS.get(f.name.lower())
        if key is None:
            unknown.append((f.name, headers_mod.decode(f.value)))
        else:
            header_items.append((f.name, key, headers_mod.decode(f.value)))
    template_fields.update(form.template)  # the request's fields over the message's headers
    content = headers_mod.remove(content, mailgun)
    items, ignored = _option_items(form, header_items, now)
    opts = _parse_options(items, form.user_variables, unknown)
    if "template" in template_fields:
        if template is None:
            raise ComposeError("template", f"{template_fields['template'].strip()!r} was not found")
        variables = template_variables(None, opts.variables.items(), template_fields.get("t:variables"))
        content = template_message(content, template, variables, text=_yes(template_fields.get("t:text", "")),
                                   html_to_text=html_to_text)
        if len(content) > max_size:
            raise ComposeError("message", f"is {len(content)} bytes with its template, over the limit of {max_size}")
        try:
            fields_, _ = headers_mod.parse_block(content, max_header_count, max_header_size)
        except headers_mod.HeaderError as exc:
            raise ComposeError("message", str(exc)) from None
    elif template_fields:
        raise ComposeError(next(iter(template_fields)), "is given without a 'template' naming a stored template")
    from_value = headers_mod.first(fields_, "From") or ""
    from_pairs = email.utils.getaddresses([headers_mod.decode(from_value)]) if from_value else []
    from_addr = from_pairs[0][1] if from_pairs and "@" in from_pairs[0][1] else ""
    if not from_addr:  # RFC 5322 requires one; without it the message could be neither signed nor bounced right
        raise ComposeError("message", "has no From header with an address")
    if sum(1 for f in fields_ if f.name.lower() == "from") > 1:
        raise ComposeError("message", "has more than one From header")
    mid_value = headers_mod.first(fields_, "Message-ID")
    added = b""
    if mid_value and mid_value.strip().strip("<>"):
        message_id = mid_value.strip().strip("<>")
    else:
        message_id = new_message_id(domain, now)
        added += f"Message-ID: <{message_id}>\r\n".encode()
    if headers_mod.first(fields_, "Date") is None:
        added += f"Date: {email.utils.formatdate(now, usegmt=True)}\r\n".encode()
    body = added + content
    try:
        fields_, _ = headers_mod.parse_block(body, max_header_count, max_header_size)
    except headers_mod.HeaderError as exc:
        raise ComposeError("message", str(exc)) from None
    copy = Copy(tuple(dict.fromkeys(a for _, a in to)), body, opts, tuple(fields_), headers_mod.summary(fields_))
    return Composed(message_id, envelope_sender(from_addr, domain) if from_addr else f"postmaster@{domain}",
                    (copy,), tuple(ignored))
