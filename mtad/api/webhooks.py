"""Webhooks over HTTP, Mailgun's shapes: ``GET/POST /v3/domains/{domain}/webhooks`` and
``GET/PUT/DELETE /v3/domains/{domain}/webhooks/{id}``.

Ids: accepted, delivered, opened, clicked, unsubscribed, complained, permanent_fail, temporary_fail;
``url`` repeated (up to 3). mtad's extension: ``format`` = ``json`` (default) or ``legacy`` (the seed
manual's form-encoded POSTs). Webhooks from the config file are listed (``"source": "config"``) but
read-only here. A change applies to the next event recorded.
"""

from __future__ import annotations

import time

from aiohttp import web

from mtad import events, webhooks
from mtad.api import context, error
from mtad.api.formdata import read_post
from mtad.webhooks import WebhookError


def _view(entry: dict) -> dict:
    return {"urls": entry["urls"], "format": entry["format"], "source": entry["source"]}


async def _form(request: web.Request) -> tuple[list[str], str]:
    form = await read_post(request)
    urls = [u.strip() for u in form.getall("url", []) if isinstance(u, str) and u.strip()]
    fmt = form.get("format") or "json"
    return urls, fmt if isinstance(fmt, str) else "json"


async def list_hooks(request: web.Request) -> web.Response:
    domain = request.match_info["domain"].lower()
    hooks = await context(request).store.read(lambda c: webhooks.list_webhooks(c, domain))
    return web.json_response({"webhooks": {hook: _view(e) for hook, e in hooks.items()}})


async def get_hook(request: web.Request) -> web.Response:
    domain, hook = request.match_info["domain"].lower(), request.match_info["webhook"]
    hooks = await context(request).store.read(lambda c: webhooks.list_webhooks(c, domain))
    if hook not in hooks:
        return error(404, "Webhook not found")
    return web.json_response({"webhook": _view(hooks[hook])})


async def _change(request: web.Request, hook: str, *, create: bool) -> web.Response:
    domain = request.match_info["domain"].lower()
    urls, fmt = await _form(request)
    try:
        webhooks.check_change(hook, urls, fmt, context(request).mtad_config.routing.allowed_networks)
        now = time.time()
        await context(request).store.write(lambda c: webhooks.put_webhook(c, domain, hook, urls, fmt, now,
                                                                           create=create))
    except WebhookError as exc:
        return error(exc.status, str(exc))
    events.invalidate_webhooks()  # again after the commit: a reader never keeps an uncommitted view
    verb = "created" if create else "updated"
    return web.json_response({"message": f"Webhook has been {verb}",
                              "webhook": {"urls": list(dict.fromkeys(urls)), "format": fmt}})


async def create_hook(request: web.Request) -> web.Response:
    form = await read_post(request)
    hook = form.get("id")
    if not isinstance(hook, str) or not hook:
        return error(400, "id is required")
    return await _change(request, hook, create=True)


async def update_hook(request: web.Request) -> web.Response:
    return await _change(request, request.match_info["webhook"], create=False)


async def delete_hook(request: web.Request) -> web.Response:
    domain, hook = request.match_info["domain"].lower(), request.match_info["webhook"]
    try:
        gone = await context(request).store.write(lambda c: webhooks.delete_webhook(c, domain, hook))
    except WebhookError as exc:
        return error(exc.status, str(exc))
    events.invalidate_webhooks()
    return web.json_response({"message": "Webhook has been deleted", "webhook": {"urls": gone["urls"]}})


def setup(app: web.Application) -> None:
    app.router.add_get("/v3/domains/{domain}/webhooks", list_hooks)
    app.router.add_post("/v3/domains/{domain}/webhooks", create_hook)
    app.router.add_get("/v3/domains/{domain}/webhooks/{webhook}", get_hook)
    app.router.add_put("/v3/domains/{domain}/webhooks/{webhook}", update_hook)
    app.router.add_delete("/v3/domains/{domain}/webhooks/{webhook}", delete_hook)
