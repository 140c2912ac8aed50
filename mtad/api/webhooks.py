"""Webhooks over HTTP, Mailgun's shapes: ``GET/POST /v3/domains/{domain}/webhooks`` and
``GET/PUT/DELETE /v3/domains/{domain}/webhooks/{id}``.

Ids: accepted, delivered, opened, clicked, unsubscribed, complained, permanent_fail, temporary_fail;
``url`` repeated (up to 3). mtad's extension: ``format`` = ``json`` (default) or ``legacy`` (the seed
manual's form-encoded POSTs). Webhooks from the config file are listed (``"source": "config"``) but
read-only here. A change applies to the next event recorded.

Mailgun's v4 form, where one URL serves several event types: ``POST /v4/domains/{domain}/webhooks``
(``url``, ``event_types`` repeated or comma-separated: the URL is added to each), ``PUT`` (the URL serves
exactly those types: added to them, removed from the others) and ``DELETE ...?url=U[&url=V]`` (removed
from every type); a webhook left without URLs is deleted. They answer every webhook of the domain.
mailgun-python 1.10 sends these to the v3 path (``POST`` with ``event_types`` and no ``id``, ``PUT`` and
``DELETE ?url=`` on ``/v3/domains/{domain}/webhooks``): served there too.
"""

from __future__ import annotations

import time

from aiohttp import web

from mtad.events import webhooks
from mtad.api import context, error
from mtad.api.formdata import read_post
from mtad.config.schema import WEBHOOK_IDS
from mtad.store.webhooks import Webhook, WebhookError


def _view(hook: Webhook) -> dict:
    return {"urls": list(hook.urls), "format": hook.format, "source": hook.source}


async def _form(request: web.Request) -> tuple[list[str], str]:
    form = await read_post(request)
    urls = [u.strip() for u in form.getall("url", []) if isinstance(u, str) and u.strip()]
    fmt = form.get("format") or "json"
    return urls, fmt if isinstance(fmt, str) else "json"


async def list_hooks(request: web.Request) -> web.Response:
    domain = request.match_info["domain"].lower()
    hooks = await context(request).store.list_webhooks(domain)
    return web.json_response({"webhooks": {hook: _view(e) for hook, e in hooks.items()}})


async def get_hook(request: web.Request) -> web.Response:
    domain, hook = request.match_info["domain"].lower(), request.match_info["webhook"]
    hooks = await context(request).store.list_webhooks(domain)
    if hook not in hooks:
        return error(404, "Webhook not found")
    return web.json_response({"webhook": _view(hooks[hook])})


async def _change(request: web.Request, hook: str, *, create: bool) -> web.Response:
    domain = request.match_info["domain"].lower()
    urls, fmt = await _form(request)
    try:
        webhooks.check_change(hook, urls, fmt, context(request).allowed_networks)
        now = time.time()
        await context(request).store.put_webhook(domain, hook, urls, fmt, now, create=create)
    except WebhookError as exc:
        return error(exc.status, str(exc))
    verb = "created" if create else "updated"
    return web.json_response({"message": f"Webhook has been {verb}",
                              "webhook": {"urls": list(dict.fromkeys(urls)), "format": fmt}})


async def create_hook(request: web.Request) -> web.Response:
    form = await read_post(request)
    hook = form.get("id")
    if not hook and form.getall("event_types", []):
        return await v4_create(request)  # the v4 form at the v3 path, as mailgun-python 1.10 sends it
    if not isinstance(hook, str) or not hook:
        return error(400, "id is required")
    return await _change(request, hook, create=True)


async def update_hook(request: web.Request) -> web.Response:
    return await _change(request, request.match_info["webhook"], create=False)


async def delete_hook(request: web.Request) -> web.Response:
    domain, hook = request.match_info["domain"].lower(), request.match_info["webhook"]
    try:
        gone = await context(request).store.delete_webhook(domain, hook)
    except WebhookError as exc:
        return error(exc.status, str(exc))
    return web.json_response({"message": "Webhook has been deleted", "webhook": {"urls": list(gone.urls)}})


# --- v4: one URL, several event types (the Python SDK's create/update with event_types, delete with url) ------

def _event_types(form) -> list[str]:
    types = [t.strip() for raw in form.getall("event_types", []) if isinstance(raw, str)
             for t in raw.split(",") if t.strip()]
    unknown = [t for t in types if t not in WEBHOOK_IDS]
    if unknown:
        raise WebhookError(400, f"Unknown event type '{unknown[0]}' (known: {', '.join(WEBHOOK_IDS)})")
    if not types:
        raise WebhookError(400, "event_types is required")
    return types


async def _v4_change(request: web.Request, *, replace: bool) -> web.Response:
    domain = request.match_info["domain"].lower()
    form = await read_post(request)
    url = form.get("url")
    try:
        if not isinstance(url, str) or not url.strip():
            raise WebhookError(400, "url is required")
        url = url.strip()
        types = _event_types(form)
        remove = [t for t in WEBHOOK_IDS if t not in types] if replace else []
        now = time.time()
        networks = context(request).allowed_networks

        def check(hook: str, urls: list[str], fmt: str) -> None:
            webhooks.check_change(hook, urls, fmt, networks)
        hooks = await context(request).store.put_webhook_urls(domain, [url], add=types, remove=remove, now=now,
                                                              check=check)
    except WebhookError as exc:
        return error(exc.status, str(exc))
    verb = "updated" if replace else "created"
    return web.json_response({"message": f"Webhooks have been {verb}",
                              "webhooks": {hook: _view(e) for hook, e in hooks.items()}})


async def v4_create(request: web.Request) -> web.Response:
    return await _v4_change(request, replace=False)


async def v4_update(request: web.Request) -> web.Response:
    return await _v4_change(request, replace=True)


async def v4_delete(request: web.Request) -> web.Response:
    domain = request.match_info["domain"].lower()
    urls = [u.strip() for u in request.query.getall("url", []) if u.strip()]
    if not urls:
        return error(400, "url is required")
    try:
        hooks = await context(request).store.put_webhook_urls(domain, urls, remove=WEBHOOK_IDS, now=time.time())
    except WebhookError as exc:
        return error(exc.status, str(exc))
    return web.json_response({"message": "Webhooks have been deleted",
                              "webhooks": {hook: _view(e) for hook, e in hooks.items()}})


def setup(app: web.Application) -> None:
    app.router.add_get("/v3/domains/{domain}/webhooks", list_hooks)
    app.router.add_post("/v3/domains/{domain}/webhooks", create_hook)
    app.router.add_get("/v3/domains/{domain}/webhooks/{webhook}", get_hook)
    app.router.add_put("/v3/domains/{domain}/webhooks/{webhook}", update_hook)
    app.router.add_delete("/v3/domains/{domain}/webhooks/{webhook}", delete_hook)
    app.router.add_post("/v4/domains/{domain}/webhooks", v4_create)
    app.router.add_put("/v3/domains/{domain}/webhooks", v4_update)  # mailgun-python 1.10's v4 update and delete
    app.router.add_delete("/v3/domains/{domain}/webhooks", v4_delete)  # arrive at the v3 path
    app.router.add_put("/v4/domains/{domain}/webhooks", v4_update)
    app.router.add_delete("/v4/domains/{domain}/webhooks", v4_delete)
