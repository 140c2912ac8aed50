"""Webhooks (``/ui/webhooks``): a domain's webhook URLs per event, a "send test" button, recent POSTs.

Setting and deleting are the webhooks API's own code run on the panel's request (the same URL checks: at most 3
URLs, the SSRF policy of ``routing.allowed_networks``; config-file webhooks are read-only). "Send test" POSTs a
made-up, signed event of that kind to a URL once (``events.webhooks.Dispatcher.send_test``: nothing recorded or
retried) and shows the answer's status. Recent POSTs are the domain's newest ``webhook_deliveries`` rows with their
state, attempts and last status (``store.recent_webhook_posts``).
"""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from mtad.api import webhooks as api_webhooks
from mtad.config.schema import WEBHOOK_IDS
from mtad.events import webhooks as hooks_mod
from mtad.store.webhooks import WebhookError
from mtad.ui import PREFIX
from mtad.ui.logs import _domain_choices
from mtad.ui.web import call_api, error_page, form, is_htmx, notify, page, redirect, render, ui_context

RECENT = 50


def _domain(request: web.Request) -> tuple[str, list[str]]:
    domains = _domain_choices(request)
    domain = (request.match_info.get("domain") or request.query.get("domain") or (domains[0] if domains else ""))
    domain = domain.lower()
    if domain and not request["api_key"].allows(domain):
        raise web.HTTPForbidden(text=f"Forbidden: this key may not use domain {domain}")
    return domain, domains


def _back(domain: str) -> str:
    return f"{PREFIX}/webhooks?{urlencode({'domain': domain})}"


@page
async def listing(request: web.Request) -> web.Response:
    domain, domains = _domain(request)
    store = ui_context(request).api.store
    hooks = await store.list_webhooks(domain) if domain else {}
    posts = await store.recent_webhook_posts(domain, RECENT) if domain else ()
    return render(request, "webhooks.html", title="Webhooks", domain=domain, domains=domains, ids=WEBHOOK_IDS,
                  hooks=hooks, posts=posts, max_urls=hooks_mod.MAX_URLS)


@page
async def set_hook(request: web.Request) -> web.StreamResponse:
    domain, _ = _domain(request)
    hook = request.match_info["webhook"]
    if hook not in WEBHOOK_IDS:
        raise web.HTTPNotFound(text="Unknown webhook")
    exists = hook in await ui_context(request).api.store.list_webhooks(domain)
    status, message, _ = await call_api(lambda r: api_webhooks._change(r, hook, create=not exists), request)
    if status != 200:
        return error_page(request, status, message)
    notify(request, f"Webhook {hook} saved.")
    raise redirect(_back(domain))


@page
async def delete_hook(request: web.Request) -> web.StreamResponse:
    domain, _ = _domain(request)
    status, message, _ = await call_api(api_webhooks.delete_hook, request)
    if status != 200:
        return error_page(request, status, message)
    notify(request, f"Webhook {request.match_info['webhook']} deleted.")
    raise redirect(_back(domain))


@page
async def send_test(request: web.Request) -> web.StreamResponse:
    domain, _ = _domain(request)
    hook = request.match_info["webhook"]
    fields = await form(request)
    url, fmt = str(fields.get("url") or "").strip(), str(fields.get("format") or "json")
    ctx = ui_context(request).api
    try:
        hooks_mod.check_change(hook, [url], fmt, ctx.allowed_networks)
    except WebhookError as exc:
        return error_page(request, exc.status, str(exc))
    dispatcher = ctx.metrics().webhook_dispatcher
    if dispatcher is None:
        return error_page(request, 503, "Webhooks are not running yet: try again in a moment.")
    result = await dispatcher.send_test(domain, hook, url, fmt)
    ok = result.status is not None and 200 <= result.status < 300
    text = (f"Test {hook} event to {url}: HTTP {result.status}" if result.status is not None
            else f"Test {hook} event to {url}: no answer ({result.error})")
    if is_htmx(request):
        return render(request, "webhook_test.html", ok=ok, text=text)
    notify(request, text, "ok" if ok else "error")
    raise redirect(_back(domain))


def setup(app: web.Application) -> None:
    app.router.add_get(PREFIX + "/webhooks", listing)
    app.router.add_post(PREFIX + "/webhooks/{domain}/{webhook}", set_hook)
    app.router.add_post(PREFIX + "/webhooks/{domain}/{webhook}/delete", delete_hook)
    app.router.add_post(PREFIX + "/webhooks/{domain}/{webhook}/test", send_test)
