"""Stored templates (``/ui/templates``): a sending domain's templates, one template with its versions; create,
add a version, activate one, delete a version or the template.

Reads are the store's typed methods the templates API reads (``template_page``, ``get_template``,
``template_versions``); every change is the templates API's own handler run on the panel's request
(``web.call_api``): the same name, tag, content (Handlebars checked when stored), headers and limits, and its
refusal shown at the form. Content is shown as text; a preview renders the version shown with variables given as
JSON (``mail.templating``, the renderer sends use, with its limits; HTML-escaped values as in a send) and shows the
result as text too.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from mtad.api import templates as api_templates
from mtad.mail import templating
from mtad.ui import PREFIX
from mtad.ui.web import call_api, error_page, form, notify, page, redirect, render, ui_context

PAGE_SIZE = 50
_PAGES = ("first", "last", "next", "previous")


def _domains(request: web.Request) -> list[str]:
    """The sending domains the session may use (templates belong to sending domains)."""
    key = request["api_key"]
    return sorted(d for d in ui_context(request).api.ingress.directory.sending_domains if key.allows(d))


def _domain(request: web.Request) -> str:
    domain = (request.match_info.get("domain") or "").lower()
    if not request["api_key"].allows(domain):
        raise web.HTTPForbidden(text=f"Forbidden: this key may not use domain {domain}")
    if domain not in ui_context(request).api.ingress.directory.sending_domains:
        raise web.HTTPNotFound(text=f"Domain not found: {domain}")
    return domain


def _url(domain: str, name: str = "", tail: str = "") -> str:
    return f"{PREFIX}/templates/{quote(domain)}" + (f"/{quote(name)}" if name else "") + tail


@page
async def choose(request: web.Request) -> web.StreamResponse:
    domains = _domains(request)
    chosen = request.query.get("domain", "").lower()
    if domains:
        raise redirect(_url(chosen if chosen in domains else domains[0]))
    return render(request, "templates.html", title="Templates", domain="", domains=[], templates=[], links={},
                  error="", values={})


async def _listing(request: web.Request, *, status: int = 200, error: str = "",
                   values: dict[str, str] | None = None) -> web.Response:
    domain = _domain(request)
    which = request.query.get("page", "first")
    which = which if which in _PAGES else "first"
    rows = await ui_context(request).api.store.template_page(domain, PAGE_SIZE, which,  # type: ignore[arg-type]
                                                             request.query.get("p"))
    base = _url(domain)
    links = {"first": f"{base}?page=first", "last": f"{base}?page=last"}
    if rows:
        links["previous"] = f"{base}?{urlencode({'page': 'previous', 'p': rows[0].name})}"
        if len(rows) >= PAGE_SIZE:
            links["next"] = f"{base}?{urlencode({'page': 'next', 'p': rows[-1].name})}"
    return render(request, "templates.html", status=status, title="Templates", domain=domain,
                  domains=_domains(request), templates=rows, links=links, error=error, values=values or {})


@page
async def listing(request: web.Request) -> web.Response:
    return await _listing(request)


async def _values(request: web.Request) -> dict[str, str]:
    return {k: v for k, v in (await form(request)).items() if isinstance(v, str) and k != "csrf"}


@page
async def create(request: web.Request) -> web.StreamResponse:
    domain = _domain(request)
    status, message, body = await call_api(api_templates.create_template, request)
    if status != 200:
        return await _listing(request, status=status, error=message, values=await _values(request))
    name = body["template"]["name"]
    notify(request, f"Template {name} stored.")
    raise redirect(_url(domain, name))


async def _template_page(request: web.Request, *, status: int = 200, error: str = "",
                         values: dict[str, str] | None = None) -> web.Response:
    domain = _domain(request)
    name = request.match_info["name"].lower()
    store = ui_context(request).api.store
    found = await store.template_versions(domain, name, api_templates.MAX_VERSIONS, "first", None)
    if found is None:
        return error_page(request, 404, f"template {name!r} not found")
    template, versions = found
    tag = request.query.get("tag")
    shown = await store.get_template(domain, name, tag=tag) if tag else await store.get_template(domain, name,
                                                                                                  active=True)
    version = shown.version if shown else None
    preview = await _preview(version, request.query["vars"]) if version and "vars" in request.query else None
    return render(request, "template.html", status=status, title=f"Template {name}", domain=domain,
                  tpl=template, versions=versions, shown=version, error=error, values=values or {},
                  preview=preview, preview_vars=request.query.get("vars", "{}"))


MAX_PREVIEW_VARS = 10_000  # characters of the preview's JSON


async def _preview(version: Any, text: str) -> dict[str, str]:
    """``{"text": rendered}`` or ``{"error": why}``: the version's content and headers rendered with ``text``."""
    try:
        if len(text) > MAX_PREVIEW_VARS:
            raise ValueError(f"at most {MAX_PREVIEW_VARS} characters")
        variables = json.loads(text or "{}")
        if not isinstance(variables, dict):
            raise ValueError("expected a JSON object")
    except (ValueError, RecursionError) as exc:
        return {"error": f"variables: not a JSON object of names and values ({exc})"}

    def run() -> str:
        heads = [f"{n}: {templating.render_source(v, variables, escape=False)}" for n, v in version.headers]
        body = templating.render_source(version.content, variables)
        return "\n".join(heads) + ("\n\n" if heads else "") + body
    try:
        return {"text": await asyncio.to_thread(run)}
    except templating.TemplateError as exc:
        return {"error": f"the template {exc}"}


@page
async def show(request: web.Request) -> web.Response:
    return await _template_page(request)


async def _change(request: web.Request, handler, done: str, to_list: bool = False) -> web.StreamResponse:
    domain = _domain(request)
    status, message, _ = await call_api(handler, request)
    if status != 200:
        if to_list:
            return error_page(request, status, message)
        return await _template_page(request, status=status, error=message, values=await _values(request))
    notify(request, done)
    raise redirect(_url(domain) if to_list else _url(domain, request.match_info["name"].lower()))


@page
async def add_version(request: web.Request) -> web.StreamResponse:
    return await _change(request, api_templates.create_version, "New version stored.")


@page
async def activate(request: web.Request) -> web.StreamResponse:
    return await _change(request, api_templates.update_version, f"Version {request.match_info['tag']} is active.")


@page
async def delete_version(request: web.Request) -> web.StreamResponse:
    return await _change(request, api_templates.delete_version, f"Version {request.match_info['tag']} deleted.")


@page
async def delete(request: web.Request) -> web.StreamResponse:
    return await _change(request, api_templates.delete_template,
                         f"Template {request.match_info['name'].lower()} deleted.", to_list=True)


def setup(app: web.Application) -> None:
    base = PREFIX + "/templates/{domain}"
    app.router.add_get(PREFIX + "/templates", choose)
    app.router.add_get(base, listing)
    app.router.add_post(base, create)
    app.router.add_get(base + "/{name}", show)
    app.router.add_post(base + "/{name}/delete", delete)
    app.router.add_post(base + "/{name}/versions", add_version)
    app.router.add_post(base + "/{name}/versions/{tag}/activate", activate)
    app.router.add_post(base + "/{name}/versions/{tag}/delete", delete_version)
