"""Campaigns over HTTP (Mailgun's campaigns API, seed 000), under ``/v3/{domain}/campaigns`` and the seed's
``/v2/{domain}/campaigns``:

- ``GET`` (``limit`` 1-1000, default 100; ``skip``) -> ``{"total_count", "items"}``; ``POST`` (``name``, ``id``
  optional: made when absent) -> ``{"message": "Campaign created", "campaign"}``; ``GET/PUT/DELETE .../{id}``
  (``PUT``: a new ``name`` and/or ``id``; ``DELETE``: with all its data);
- reports: ``.../{id}/events``, ``/stats``, ``/clicks``, ``/opens``, ``/unsubscribes``, ``/complaints`` (their
  parameters and shapes: ``mtad.events.campaigns``).

Errors: 400 for a bad parameter, an id taken, or the domain's campaigns at ``api.max_campaigns``; 404 for a domain
mtad does not send for or a campaign that does not exist. Every answer comes from the store's counters or one
campaign's index range (``mtad.store.campaigns``).
"""

from __future__ import annotations

import time
from typing import Awaitable, Callable

from aiohttp import web

from mtad.api import context, error
from mtad.api.formdata import read_post
from mtad.events import campaigns as reports
from mtad.events.campaigns import Invalid
from mtad.store.campaigns import CampaignExists

NOT_FOUND = "Campaign not found"


def _domain(request: web.Request) -> str:
    domain = request.match_info["domain"].lower()
    if domain not in context(request).ingress.directory.sending_domains:
        raise web.HTTPNotFound(text=f"Domain not found: {domain}")
    return domain


def _handler(fn: Callable[[web.Request, str], Awaitable[web.Response]]) -> Callable[[web.Request],
                                                                                    Awaitable[web.Response]]:
    """``fn(request, domain)`` with the domain checked and a bad parameter answered 400."""
    async def handle(request: web.Request) -> web.Response:
        domain = _domain(request)
        try:
            return await fn(request, domain)
        except Invalid as exc:
            return error(400, str(exc))
    return handle


async def list_campaigns(request: web.Request, domain: str) -> web.Response:
    limit = reports.integer(request.query, "limit", 100, 1, reports.MAX_LIST_LIMIT)
    skip = reports.integer(request.query, "skip", 0, 0, reports.MAX_OFFSET)
    total, found = await context(request).store.list_campaigns(domain, limit, skip)
    return web.json_response({"total_count": total, "items": [reports.campaign_json(c) for c in found]})


async def create_campaign(request: web.Request, domain: str) -> web.Response:
    form = await read_post(request)
    name, given = form.get("name"), form.get("id")
    if not isinstance(name, str):
        return error(400, "name: missing")
    name = reports.check_name(name)
    ctx = context(request)
    for _ in range(3):  # a made id taken already: another one
        campaign_id = reports.check_id(given.strip()) if isinstance(given, str) and given.strip() else reports.new_id()
        try:
            made = await ctx.store.create_campaign(domain, campaign_id, name, time.time(), ctx.config.max_campaigns)
        except CampaignExists:
            if given:
                return error(400, f"Campaign with id '{campaign_id}' already exists")
            continue
        if made is None:
            return error(400, f"The domain has {ctx.config.max_campaigns} campaigns (api.max_campaigns):"
                              " delete old campaigns first")
        return web.json_response({"message": "Campaign created", "campaign": reports.campaign_json(made)})
    return error(503, "Could not make a new campaign id, try again")


async def get_campaign(request: web.Request, domain: str) -> web.Response:
    found = await context(request).store.get_campaign(domain, request.match_info["id"])
    return web.json_response(reports.campaign_json(found)) if found else error(404, NOT_FOUND)


async def update_campaign(request: web.Request, domain: str) -> web.Response:
    form = await read_post(request)
    name, new_id = form.get("name"), form.get("id")
    name = reports.check_name(name) if isinstance(name, str) else None
    new_id = reports.check_id(new_id.strip()) if isinstance(new_id, str) else None
    if name is None and new_id is None:
        return error(400, "give a new name and/or id")
    try:
        found = await context(request).store.update_campaign(domain, request.match_info["id"], name=name,
                                                             new_id=new_id)
    except CampaignExists:
        return error(400, f"Campaign with id '{new_id}' already exists")
    if found is None:
        return error(404, NOT_FOUND)
    return web.json_response({"message": "Campaign updated", "campaign": reports.campaign_json(found)})


async def delete_campaign(request: web.Request, domain: str) -> web.Response:
    campaign_id = request.match_info["id"]
    if not await context(request).store.delete_campaign(domain, campaign_id):
        return error(404, NOT_FOUND)
    return web.json_response({"message": "Campaign deleted", "id": campaign_id})


async def campaign_events(request: web.Request, domain: str) -> web.Response:
    query = reports.events_query(request.query)
    count = reports.flag(request.query, "count")
    found = await context(request).store.campaign_events(domain, request.match_info["id"], query, count=count)
    if found is None:
        return error(404, NOT_FOUND)
    if count:
        return web.json_response({"count": found})
    return web.json_response([reports.event_json(row) for row in found])


async def campaign_stats(request: web.Request, domain: str) -> web.Response:
    groupby = reports.stats_grouping(request.query)
    limit, offset = reports.paging(request.query)
    found = await context(request).store.campaign_stats(domain, request.match_info["id"], groupby, limit, offset)
    if found is None:
        return error(404, NOT_FOUND)
    if groupby is None:
        return web.json_response(reports.stats_json(found[0]))
    return web.json_response(reports.grouped_stats_json(groupby, found))


def _report(name: str) -> Callable[[web.Request, str], Awaitable[web.Response]]:
    async def report(request: web.Request, domain: str) -> web.Response:
        query = reports.report_query(name, request.query)
        count = reports.flag(request.query, "count")
        found = await context(request).store.campaign_report(domain, request.match_info["id"], query, count=count)
        if found is None:
            return error(404, NOT_FOUND)
        if count:
            return web.json_response({"count": found})
        return web.json_response(reports.report_json(query, found))
    return report


def setup(app: web.Application) -> None:
    for version in ("v3", "v2"):
        base = f"/{version}/{{domain}}/campaigns"
        app.router.add_get(base, _handler(list_campaigns))
        app.router.add_post(base, _handler(create_campaign))
        app.router.add_get(base + "/{id}", _handler(get_campaign))
        app.router.add_put(base + "/{id}", _handler(update_campaign))
        app.router.add_delete(base + "/{id}", _handler(delete_campaign))
        app.router.add_get(base + "/{id}/events", _handler(campaign_events))
        app.router.add_get(base + "/{id}/stats", _handler(campaign_stats))
        for name in reports.REPORTS:
            app.router.add_get(f"{base}/{{id}}/{name}", _handler(_report(name)))
