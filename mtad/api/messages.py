"""Sending over HTTP: ``POST /v3/{domain}/messages`` and ``POST /v3/{domain}/messages.mime``.

Steps of a send: ``read_form`` (multipart or urlencoded) -> the stored template the request names, if any
(``ingress.templates.stored_template``) -> ``compose`` (the MIME copies and their options and header fields, see
mtad.mail.compose; the template rendered) -> ``submissions`` (queue id, Received trace, frozen envelope per copy)
-> ``Ingress.commit_stream``, the commit path SMTP uses, so an API message meets exactly what an SMTP submission
meets afterwards (routes for receiving domains, the scheduler, DKIM, events). The answer ``{"id":
"<message-id>", "message": "Queued. Thank you."}`` is given only after the durable commit; a batch
(``recipient-variables``) is committed all or nothing, in one transaction into which the store writes the
copies one by one as they are built (a 1,000-copy batch is never all in memory: issue 14, item 5).

Errors: 400 naming the field (missing, malformed, header injection, too many recipients, over the
size limit, headers over the SMTP limits, user variables over 4 KB, a template that does not exist or does not
render), 404 for a domain mtad does not send for, 413 for a body over ``api.max_body_size``, 503
when the store cannot commit.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import urllib.parse
from typing import Iterator

from aiohttp import web

from mtad.mail import compose as compose_mod
from mtad.mail import headers as headers_mod
from mtad.store import queue as spool
from mtad.api import ApiContext, context, error, formdata
from mtad.ingress import templates as templates_mod
from mtad.ingress.pipeline import NotCommitted, Submission
from mtad.base.types import Envelope

log = logging.getLogger("mtad.api.messages")

QUEUED = "Queued. Thank you."
_FILE_FIELD = re.compile(r"^(attachment|inline)(\[\d*\])?$")
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")
# Compose in a thread when the work is big enough to stall the event loop.
_THREAD_COPIES = 20
_THREAD_BYTES = 1_000_000


class FormError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


async def read_form(request: web.Request) -> tuple[list[tuple[str, str]], list[compose_mod.Upload], bytes | None]:
    """Text fields in order, uploaded files, and the ``message`` file of a MIME send (or None)."""
    ctype = request.content_type
    if ctype not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise FormError(400, "expected multipart/form-data or application/x-www-form-urlencoded, got " + (ctype or "nothing"))
    body = await request.read()  # limited to api.max_body_size (413 beyond)
    try:
        if ctype == "multipart/form-data":
            post = await _parse(formdata.multipart, body, request.headers.get("Content-Type", ""))
        else:
            post = await _parse(formdata.urlencoded, body)
    except formdata.FormError as exc:
        raise FormError(400, f"could not read the form body: {exc}") from None
    fields: list[tuple[str, str]] = []
    uploads: list[compose_mod.Upload] = []
    message: bytes | None = None
    for name, value in post:
        if isinstance(value, formdata.FilePart):
            m = _FILE_FIELD.match(name)
            if m:
                uploads.append(compose_mod.Upload(m.group(1), _filename(value.filename) or m.group(1),
                                                  value.content_type, value.data))
            elif name == "message":
                message = value.data
            else:
                fields.append((name, value.data.decode("utf-8", "replace")))
        elif name == "message":
            message = value.encode("utf-8", "surrogateescape")
        else:
            fields.append((name, value))
    return fields, uploads, message


async def _parse(fn, *args):
    """Parse in a thread when the body is big (attachments), inline otherwise (the common small send)."""
    return await asyncio.to_thread(fn, *args) if len(args[0]) > _THREAD_BYTES else fn(*args)


def _filename(name: str | None) -> str:
    """A multipart filename; percent-escapes are decoded (HTML forms and aiohttp send them so)."""
    if name and _PERCENT.search(name):
        try:
            return urllib.parse.unquote(name, errors="strict")
        except UnicodeDecodeError:
            return name
    return name or ""


def _sending_domain(ctx: ApiContext, request: web.Request) -> str:
    domain = request.match_info["domain"].lower()
    if domain not in ctx.ingress.directory.sending_domains:
        raise FormError(404, f"Domain not found: {domain}")
    return domain


def submissions(ctx: ApiContext, request: web.Request, composed: compose_mod.Composed, domain: str,
                now: float) -> Iterator[Submission]:
    """Each copy as ingress takes it: queue id, trace header, parsed headers, frozen envelope; built when the
    store asks for it (``Ingress.commit_stream``), one at a time."""
    hostname = ctx.ingress.hostname
    client_ip = request.remote or ""
    secure = request.secure
    for copy in composed.copies:
        queue_id = spool.new_queue_id()
        trace = headers_mod.received(hostname, "api", client_ip, "HTTPS" if secure else "HTTP", queue_id,
                                     copy.recipients, now)
        envelope = Envelope(sender=composed.sender, recipients=copy.recipients, client_ip=client_ip,
                            client_helo="", auth_user="api", tls=secure, transport="http", listener="api")
        yield Submission(envelope, trace + copy.content, list(copy.fields), copy.summary, copy.options,
                         queue_id, domain)


async def _commit(ctx: ApiContext, request: web.Request, composed: compose_mod.Composed, domain: str,
                  now: float) -> web.Response:
    if len(composed.copies) == 1:  # the common send: planned here, committed with the other writers' messages
        result = await ctx.ingress.commit_many(list(submissions(ctx, request, composed, domain, now)), now)
    else:  # a batch: each copy built as the store writes it, in one transaction
        reserve = len(composed.copies[0].content) + 1000  # what is in memory at once: about one copy
        result = await ctx.ingress.commit_stream(lambda: submissions(ctx, request, composed, domain, now), now,
                                                 reserve)
    if isinstance(result, NotCommitted):
        if result.code >= 500:  # refused for good: the request is at fault (an unknown campaign)
            return error(400, result.reason)
        return error(503, "Not queued: " + result.reason)
    if composed.ignored:
        log.info("%s: ignored options without effect in mtad: %s", result.queue_id, ", ".join(composed.ignored))
    return web.json_response({"id": f"<{composed.message_id}>", "message": QUEUED})


async def _template(ctx: ApiContext, domain: str, named: tuple[str, str | None] | None,
                    field: str) -> compose_mod.StoredTemplate | None:
    if named is None:
        return None
    return await templates_mod.stored_template(ctx.store, domain, named[0], named[1], field)


async def _compose(fn, *args, big: bool, **kwargs):
    return await asyncio.to_thread(fn, *args, **kwargs) if big else fn(*args, **kwargs)


async def send(request: web.Request) -> web.Response:
    ctx = context(request)
    try:
        domain = _sending_domain(ctx, request)
        fields, uploads, _ = await read_form(request)
        template = await _template(ctx, domain, compose_mod.template_named(fields), "template")
        now = time.time()
        big = (sum(len(u.data) for u in uploads) > _THREAD_BYTES or template is not None
               or any(n == "recipient-variables" and len(v) > 2000 for n, v in fields)
               or sum(1 for n, _ in fields if n == "to") > _THREAD_COPIES)
        limits = ctx.ingress.limits
        composed = await _compose(compose_mod.compose, fields, uploads, domain=domain, now=now,
                                  max_size=int(limits.max_message_size), max_header_count=limits.max_header_count,
                                  max_header_size=int(limits.max_header_size), big=big, template=template,
                                  html_to_text=templates_mod.html_to_text,
                                  lists=frozenset(ctx.ingress.lists.by_address))
        return await _commit(ctx, request, composed, domain, now)
    except FormError as exc:
        return error(exc.status, exc.message)
    except compose_mod.ComposeError as exc:
        return error(400, str(exc))


async def send_mime(request: web.Request) -> web.Response:
    ctx = context(request)
    try:
        domain = _sending_domain(ctx, request)
        fields, _, message = await read_form(request)
        if message is None:
            raise compose_mod.ComposeError("message", "parameter is missing")
        named = compose_mod.template_named(fields)
        template = await _template(ctx, domain, named or compose_mod.mime_template_named(message),
                                   "template" if named else "X-Mailgun-Template-Name")
        now = time.time()
        limits = ctx.ingress.limits
        composed = await _compose(compose_mod.from_mime, message, fields, domain=domain, now=now,
                                  max_size=int(limits.max_message_size), max_header_count=limits.max_header_count,
                                  max_header_size=int(limits.max_header_size),
                                  big=len(message) > _THREAD_BYTES or template is not None, template=template,
                                  html_to_text=templates_mod.html_to_text)
        return await _commit(ctx, request, composed, domain, now)
    except FormError as exc:
        return error(exc.status, exc.message)
    except compose_mod.ComposeError as exc:
        return error(400, str(exc))


def setup(app: web.Application) -> None:
    app.router.add_post("/v3/{domain}/messages", send)
    app.router.add_post("/v3/{domain}/messages.mime", send_mime)
