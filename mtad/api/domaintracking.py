"""A domain's tracking settings over HTTP, in the shapes of Mailgun's domains API.

- ``GET /v3/domains/{name}/tracking``: ``{"tracking": {"open": {"active": ...}, "click": {"active": true | false |
  "htmlonly"}, "unsubscribe": {"active": ..., "html_footer": ..., "text_footer": ...}, "base_url": ...}}``;
- ``PUT /v3/domains/{name}/tracking/open`` (``active`` yes|no), ``.../click`` (``active`` yes|no|htmlonly),
  ``.../unsubscribe`` (``active``, ``html_footer``, ``text_footer``): Mailgun's answers
  (``{"message": "Domain tracking settings have been updated", "open": {"active": true}}``...);
- ``PUT /v3/domains/{name}/tracking`` (mtad's): any of ``open``, ``click``, ``unsubscribe``, ``html_footer``,
  ``text_footer`` and ``base_url`` (the domain's own tracking host, ``https://email.example.com``: its DNS record
  is a CNAME to the configured tracking host, listed in the domain's ``sending_dns_records``; empty: the
  configured one) at once; answers the whole settings object.

A domain without settings of its own has the configured defaults (``tracking.defaults``). A change applies to the
next message delivered (every node: ``store.changes``), including messages already queued.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from typing import Any

from aiohttp import web

from mtad.api import context, error
from mtad.api.domains import _bool, _lookup
from mtad.api.formdata import read_post
from mtad.store.engagement import DomainTracking

UPDATED = "Domain tracking settings have been updated"
MAX_FOOTER = 10_000
_BASE_URL = re.compile(r"https?://[A-Za-z0-9.-]+(?::\d{1,5})?(/[^\s?#]*)?")


def defaults(request: web.Request) -> DomainTracking:
    d = context(request).running_config().tracking.defaults
    return DomainTracking(open=d.open, click=d.click_mode, unsubscribe=d.unsubscribe)


async def settings_of(request: web.Request, name: str) -> DomainTracking:
    return (await context(request).store.tracking_settings()).get(name) or defaults(request)


def _click_json(click: str) -> bool | str:
    return "htmlonly" if click == "htmlonly" else click == "yes"


def tracking_json(s: DomainTracking) -> dict[str, Any]:
    return {"open": {"active": s.open}, "click": {"active": _click_json(s.click)},
            "unsubscribe": {"active": s.unsubscribe, "html_footer": s.html_footer, "text_footer": s.text_footer},
            "base_url": s.base_url}


def _click(value: Any) -> str:
    v = str(value).strip().lower()
    if v == "htmlonly":
        return "htmlonly"
    return "yes" if _bool(v, "active", False) else "no"


def _footer(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise web.HTTPBadRequest(text=f"'{name}' must be text")
    if len(value) > MAX_FOOTER:
        raise web.HTTPBadRequest(text=f"'{name}' is longer than {MAX_FOOTER} characters")
    return value


def _base_url(value: Any) -> str:
    v = str(value).strip().rstrip("/")
    if v and not _BASE_URL.fullmatch(v):
        raise web.HTTPBadRequest(text="'base_url' must be http(s)://HOST[:PORT][/PATH], or empty")
    return v


async def _domain(request: web.Request) -> tuple[str, web.Response | None]:
    name = request.match_info["name"].lower()
    if _lookup(request, name) is None:
        return name, error(404, "Domain not found")
    return name, None


async def _save(request: web.Request, name: str, settings: DomainTracking) -> None:
    await context(request).store.set_tracking_settings(name, settings, time.time())


async def get_tracking(request: web.Request) -> web.Response:
    name, missing = await _domain(request)
    if missing:
        return missing
    return web.json_response({"tracking": tracking_json(await settings_of(request, name))})


async def put_tracking(request: web.Request) -> web.Response:
    name, missing = await _domain(request)
    if missing:
        return missing
    form = await read_post(request)
    s = await settings_of(request, name)
    changes: dict[str, Any] = {}
    if "open" in form:
        changes["open"] = _bool(form["open"], "open", s.open)
    if "click" in form:
        changes["click"] = _click(form["click"])
    if "unsubscribe" in form:
        changes["unsubscribe"] = _bool(form["unsubscribe"], "unsubscribe", s.unsubscribe)
    for key in ("html_footer", "text_footer"):
        if key in form:
            changes[key] = _footer(form[key], key)
    if "base_url" in form:
        changes["base_url"] = _base_url(form["base_url"])
    if not changes:
        return error(400, "give at least one of open, click, unsubscribe, html_footer, text_footer, base_url")
    s = replace(s, **changes)
    await _save(request, name, s)
    return web.json_response({"message": UPDATED, "tracking": tracking_json(s)})


async def put_kind(request: web.Request) -> web.Response:
    name, missing = await _domain(request)
    if missing:
        return missing
    kind = request.match_info["kind"]
    form = await read_post(request)
    s = await settings_of(request, name)
    if "active" not in form and not (kind == "unsubscribe" and ("html_footer" in form or "text_footer" in form)):
        return error(400, "'active' is required")
    if kind == "open":
        s = replace(s, open=_bool(form.get("active"), "active", s.open))
        answer: dict[str, Any] = {"active": s.open}
    elif kind == "click":
        s = replace(s, click=_click(form["active"]))
        answer = {"active": _click_json(s.click)}
    else:
        s = replace(s, unsubscribe=_bool(form.get("active"), "active", s.unsubscribe),
                    html_footer=_footer(form.get("html_footer", s.html_footer), "html_footer"),
                    text_footer=_footer(form.get("text_footer", s.text_footer), "text_footer"))
        answer = {"active": s.unsubscribe, "html_footer": s.html_footer, "text_footer": s.text_footer}
    await _save(request, name, s)
    return web.json_response({"message": UPDATED, kind: answer})


def setup(app: web.Application) -> None:
    app.router.add_get("/v3/domains/{name}/tracking", get_tracking)
    app.router.add_put("/v3/domains/{name}/tracking", put_tracking)
    app.router.add_put("/v3/domains/{name}/tracking/{kind:open|click|unsubscribe}", put_kind)
