"""Domains (``/ui/domains``): sending and receiving domains, their DNS records with live status, DKIM keys, SMTP
credentials.

Everything here is the domains API's own code run on the panel's request (``web.call_api``): the list
(``GET /v3/domains``), creation and deletion, the DNS check (``GET /v3/domains/{name}``: SPF, DKIM and MX looked up
through the delivery resolver, each ``valid``/``invalid``/``unknown``), credentials (list, add, change password,
delete). A DKIM rotation makes a new key under a new selector for an API domain (config-file domains take their
keys from files: ``mtad dkim keygen``), applied at once like any domain change; publish the new TXT record shown.
The DNS check runs when the domain's page asks for it (htmx, or the "Check DNS" link without JavaScript), since a
lookup may take up to ``delivery.dns_timeout``.

A domain's page also holds its tracking settings (open, click, unsubscribe, footers, the domain's own tracking
host: ``mtad.api.domaintracking``'s ``PUT /v3/domains/{name}/tracking``), its spam filtering (action, threshold,
what to do when spamd gives no score: ``PUT /v3/domains/{name}``) and its inbound authentication policy
(``mtad.api.domain_auth``). The spam and authentication settings of a config-file domain are shown read-only, as
the API refuses to change them; a refusal is shown in the section at fault.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from mtad.api import domain_auth as api_auth, domains as api_domains, domaintracking as api_tracking
from mtad.mail import dkim
from mtad.ui import PREFIX
from mtad.ui.web import call_api, error_page, form, is_htmx, notify, page, redirect, render, ui_context


@page
async def list_domains(request: web.Request) -> web.Response:
    return render(request, "domains.html", title="Domains", domains=api_domains._all_domains(request),
                  values={}, error="")


@page
async def create(request: web.Request) -> web.StreamResponse:
    status, message, body = await call_api(api_domains.create_domain, request)
    if status == 200:
        name = body["domain"]["name"]
        notify(request, f"Domain {name} created; publish its DNS records below.")
        raise redirect(f"{PREFIX}/domains/{name}")
    fields = await form(request)
    values = {k: fields.get(k, "") for k in ("name", "receiving", "dkim_selector", "dkim_key_size")}
    return render(request, "domains.html", status=status, title="Domains",
                  domains=api_domains._all_domains(request), values=values, error=message)


async def _domain(request: web.Request) -> tuple[str, dict[str, Any]]:
    name = request.match_info["name"].lower()
    if not request["api_key"].allows(name):
        raise web.HTTPForbidden(text=f"Forbidden: this key may not use domain {name}")
    found = api_domains._lookup(request, name)
    if found is None:
        raise web.HTTPNotFound(text="Domain not found")
    return found[0], found[1]


async def _credentials(request: web.Request) -> list[dict[str, Any]]:
    status, message, body = await call_api(api_domains.list_credentials, request)
    return body.get("items", []) if status == 200 else []


def _yes(value: Any) -> str:
    return "yes" if value else "no"


async def _settings(request: web.Request, info: dict[str, Any], posted: dict[str, str]) -> dict[str, Any]:
    """The tracking settings, spam filtering and authentication policy in force, as the API answers them, as the
    forms' values (``posted``, a refused form's, over them: what was typed is kept)."""
    _, _, body = await call_api(api_tracking.get_tracking, request)
    t = body.get("tracking") or {}
    unsub = t.get("unsubscribe") or {}
    click = (t.get("click") or {}).get("active")
    _, _, auth = await call_api(api_auth.get_policy, request)
    values = {"open": _yes((t.get("open") or {}).get("active")),
              "click": "htmlonly" if click == "htmlonly" else _yes(click),
              "unsubscribe": _yes(unsub.get("active")), "html_footer": unsub.get("html_footer") or "",
              "text_footer": unsub.get("text_footer") or "", "base_url": t.get("base_url") or "",
              "spam_action": info["spam_action"], "spam_threshold": "", "spam_on_error": "",
              **(auth.get("policy") or {})}
    own = ui_context(request).api.accounts().domains.get(info["name"])  # an API domain's own spam settings
    if own is not None:  # empty: the configuration's default (``spam.threshold``, ``spam.on_error``)
        values["spam_threshold"] = "" if own.spam_threshold is None else f"{own.spam_threshold:g}"
        values["spam_on_error"] = own.spam_on_error or ""
    values.update({k: v for k, v in posted.items() if k in values})
    return {"values": values, "auth": auth, "auth_actions": api_auth.ACTIONS, "auth_fields": api_auth.FIELDS,
            "spam_actions": api_domains.SPAM_ACTIONS}


async def _page(request: web.Request, *, status: int = 200, errors: dict[str, str] | None = None,
                check: bool = False, **extra: Any) -> web.Response:
    source, info = await _domain(request)
    records = await _records(request) if check else None
    posted: dict[str, str] = {}
    if errors and request.method == "POST":
        posted = {k: v for k, v in (await form(request)).items() if isinstance(v, str)}
    return render(request, "domain.html", status=status, title=info["name"], domain=info, source=source,
                  records=records, credentials=await _credentials(request), errors=errors or {},
                  **await _settings(request, info, posted), **extra)


@page
async def show(request: web.Request) -> web.Response:
    return await _page(request, check=bool(request.query.get("check")))  # without JavaScript: with the records


async def _change(request: web.Request, handler, section: str, done: str) -> web.StreamResponse:
    """Run the API's ``handler`` on the POSTed form; its refusal is shown in ``section`` of the page."""
    _, info = await _domain(request)
    status, message, _ = await call_api(handler, request)
    if status != 200:
        return await _page(request, status=status, errors={section: message})
    notify(request, done)
    raise redirect(f"{PREFIX}/domains/{info['name']}#{section}")


@page
async def set_tracking(request: web.Request) -> web.StreamResponse:
    return await _change(request, api_tracking.put_tracking, "tracking", "Tracking settings saved.")


@page
async def set_spam(request: web.Request) -> web.StreamResponse:
    return await _change(request, api_domains.update_domain, "spam", "Spam filtering settings saved.")


@page
async def set_authentication(request: web.Request) -> web.StreamResponse:
    return await _change(request, api_auth.put_policy, "authentication", "Authentication policy saved.")


async def _records(request: web.Request) -> dict[str, Any]:
    status, message, body = await call_api(api_domains.get_domain, request)
    if status != 200:
        return {"error": message, "sending": [], "receiving": []}
    return {"sending": body.get("sending_dns_records", []), "receiving": body.get("receiving_dns_records", []),
            "state": body["domain"]["state"]}


@page
async def dns(request: web.Request) -> web.Response:
    """The DNS records with their status now (the fragment htmx loads into the domain's page)."""
    _, info = await _domain(request)
    records = await _records(request)
    if is_htmx(request):
        return render(request, "dns_records.html", records=records, domain=info)
    raise redirect(f"{PREFIX}/domains/{info['name']}?check=1")


@page
async def delete(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"].lower()
    status, message, _ = await call_api(api_domains.delete_domain, request)
    if status != 200:
        return error_page(request, status, message)
    notify(request, f"Domain {name} deleted.")
    raise redirect(PREFIX + "/domains")


@page
async def rotate_dkim(request: web.Request) -> web.StreamResponse:
    source, info = await _domain(request)
    name = info["name"]
    if source != "api":
        raise web.HTTPForbidden(text=f"Domain {name} is defined in the configuration file: its DKIM keys are files"
                                     " (make one with `mtad dkim keygen`)")
    fields = await form(request)
    selector = str(fields.get("selector") or "").strip().lower()
    if not api_domains._SELECTOR.match(selector):
        raise web.HTTPBadRequest(text="selector: letters, digits and '-', e.g. k2 or 2024-05")
    if selector == info["dkim_selector"]:
        raise web.HTTPBadRequest(text="selector: choose a new one, so both keys can be published during the change")
    bits = 2048 if str(fields.get("bits") or "2048") == "2048" else 1024
    pem = await asyncio.to_thread(dkim.generate_key, "rsa", bits)
    ctx = ui_context(request).api
    async with request.app[api_domains.LOCK]:
        if not await ctx.store.set_dkim_key(name, selector, pem.decode()):
            raise web.HTTPNotFound(text="Domain not found")
        await api_domains._apply(request)
    notify(request, f"New DKIM key for {name} under selector {selector}: publish its TXT record, it signs from now on.")
    raise redirect(f"{PREFIX}/domains/{name}?check=1")


@page
async def add_credential(request: web.Request) -> web.StreamResponse:
    _, info = await _domain(request)
    status, message, _ = await call_api(api_domains.create_credential, request)
    if status != 200:
        fields = await form(request)
        return await _page(request, status=status, errors={"credential": message}, login=fields.get("login", ""))
    notify(request, message)
    raise redirect(f"{PREFIX}/domains/{info['name']}")


@page
async def change_credential(request: web.Request) -> web.StreamResponse:
    _, info = await _domain(request)
    status, message, _ = await call_api(api_domains.update_credential, request)
    if status != 200:
        return error_page(request, status, message)
    notify(request, f"Password of {request.match_info['login']} changed.")
    raise redirect(f"{PREFIX}/domains/{info['name']}")


@page
async def delete_credential(request: web.Request) -> web.StreamResponse:
    _, info = await _domain(request)
    status, message, _ = await call_api(api_domains.delete_credential, request)
    if status != 200:
        return error_page(request, status, message)
    notify(request, f"Credentials {request.match_info['login']} deleted.")
    raise redirect(f"{PREFIX}/domains/{info['name']}")


def setup(app: web.Application) -> None:
    app.router.add_get(PREFIX + "/domains", list_domains)
    app.router.add_post(PREFIX + "/domains", create)
    app.router.add_get(PREFIX + "/domains/{name}", show)
    app.router.add_get(PREFIX + "/domains/{name}/dns", dns)
    app.router.add_post(PREFIX + "/domains/{name}/delete", delete)
    app.router.add_post(PREFIX + "/domains/{name}/dkim", rotate_dkim)
    app.router.add_post(PREFIX + "/domains/{name}/tracking", set_tracking)
    app.router.add_post(PREFIX + "/domains/{name}/spam", set_spam)
    app.router.add_post(PREFIX + "/domains/{name}/authentication", set_authentication)
    app.router.add_post(PREFIX + "/domains/{name}/credentials", add_credential)
    app.router.add_post(PREFIX + "/domains/{name}/credentials/{login}", change_credential)
    app.router.add_post(PREFIX + "/domains/{name}/credentials/{login}/delete", delete_credential)
