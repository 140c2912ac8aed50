"""Stored messages over HTTP: ``/v3/domains/{domain}/messages/{storage-key}``.

A message is here while a route's ``store()`` keeps it (see inbound.store_action, store.stored); the storage key is its
queue id, as in events' ``storage.key``.
- ``GET`` answers the parsed fields as JSON (Mailgun's stored-message shape, attachments as URLs),
  or, with ``Accept: message/rfc2822``, JSON whose ``body-mime`` is the whole message;
- ``GET .../attachments/{n}`` answers the n-th attachment's bytes;
- ``POST`` with ``to`` resends it, through the same commit path as any send, from ``postmaster@domain``;
- ``DELETE`` forgets it. An unknown, expired or other domain's key is 404 ``Message not found``.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from mtad.mail import compose as compose_mod
from mtad.mail import headers as headers_mod
from mtad.store import queue as spool
from mtad.store.queue import QueuedMessage
from mtad.inbound import store_action as storedmsg
from mtad.api import context, error
from mtad.api.formdata import read_post
from mtad.ingress.pipeline import NotCommitted, Submission
from mtad.base.types import Envelope, SendOptions

NOT_FOUND = "Message not found"


async def _load(request: web.Request) -> tuple[QueuedMessage | None, str, str]:
    ctx = context(request)
    domain = request.match_info["domain"].lower()
    key = request.match_info["key"]
    message = await ctx.store.stored_message(key, domain, time.time())
    return message, domain, storedmsg.message_url(ctx.base_url, domain, key)


async def get_message(request: web.Request) -> web.Response:
    message, _, url = await _load(request)
    if message is None:
        return error(404, NOT_FOUND)
    if "message/rfc2822" in request.headers.get("Accept", ""):
        return web.json_response(storedmsg.raw(message, url))
    return web.json_response(await asyncio.to_thread(storedmsg.parsed, message, url))


async def get_attachment(request: web.Request) -> web.StreamResponse:
    message, _, _ = await _load(request)
    if message is None:
        return error(404, NOT_FOUND)
    try:
        number = int(request.match_info["n"])
    except ValueError:
        return error(404, "Attachment not found")
    att = await asyncio.to_thread(storedmsg.attachment, message, number)
    if att is None:
        return error(404, "Attachment not found")
    resp = web.Response(body=att.data, content_type=att.content_type or "application/octet-stream")
    if att.filename:
        resp.headers["Content-Disposition"] = f'attachment; filename="{att.filename.replace(chr(34), "")}"'
    return resp


async def resend(request: web.Request) -> web.Response:
    ctx = context(request)
    message, domain, _ = await _load(request)
    if message is None:
        return error(404, NOT_FOUND)
    form = await read_post(request)
    try:
        to = compose_mod.parse_addresses("to", [v for v in form.getall("to", []) if isinstance(v, str)])
    except compose_mod.ComposeError as exc:
        return error(400, str(exc))
    if not to:
        return error(400, "'to' parameter is missing")
    if len(to) > compose_mod.MAX_RECIPIENTS:
        return error(400, f"'to' too many recipients: at most {compose_mod.MAX_RECIPIENTS}")
    now = time.time()
    queue_id = spool.new_queue_id()
    limits = ctx.ingress.limits
    body = message.body
    fields, _ = headers_mod.parse_block(body, limits.max_header_count, int(limits.max_header_size))
    recipients = tuple(dict.fromkeys(a for _, a in to))
    trace = headers_mod.received(ctx.ingress.hostname, "api", request.remote or "",
                                  "HTTPS" if request.secure else "HTTP", queue_id, recipients, now)
    envelope = Envelope(sender=f"postmaster@{domain}", recipients=recipients, client_ip=request.remote or "",
                        auth_user="api", tls=request.secure, transport="http", listener="api")
    summary = headers_mod.summary(fields)
    result = await ctx.ingress.commit_many([Submission(envelope, trace + body, fields, summary,
                                                       SendOptions(), queue_id, domain)], now)
    if isinstance(result, NotCommitted):
        return error(503, "Not queued: " + result.reason)
    return web.json_response({"id": f"<{summary.message_id}>", "message": "Queued. Thank you."})


async def delete_message(request: web.Request) -> web.Response:
    ctx = context(request)
    message, _, _ = await _load(request)
    if message is None:
        return error(404, NOT_FOUND)
    await ctx.store.forget_message(message.id)
    return web.json_response({"message": "Message has been deleted"})


def setup(app: web.Application) -> None:
    path = "/v3/domains/{domain}/messages/{key}"
    app.router.add_get(path, get_message)
    app.router.add_post(path, resend)
    app.router.add_delete(path, delete_message)
    app.router.add_get(path + "/attachments/{n}", get_attachment)
