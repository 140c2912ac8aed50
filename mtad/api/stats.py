"""Stats over HTTP (seed 001) and tags: totals, filter/group, aggregates, per-tag stats. See mtad.stats.

Account-level endpoints (``/v3/stats/...``) count every domain the API key may use. Parameters:
``event`` (repeatable, required), ``start``/``end`` (RFC 2822 or epoch), ``resolution`` (hour, day,
month), ``duration``; ``/v3/stats/filter`` adds ``filter`` (``domain:NAME``, ``tag:NAME``,
``provider:DOMAIN``, ``ip:ADDR``; repeatable or comma-separated) and ``group``.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from mtad.events import stats
from mtad.api import context, error
from mtad.api.formdata import read_post
from mtad.events.query import QueryError, parse_time, rfc2822


MAX_DOMAINS_LIMIT = 1000  # domains in one answer of /v3/stats/total/domains


def _allowed(request: web.Request) -> list[str] | None:
    key = request.get("api_key")
    return sorted(key.domains) if key is not None and key.domains else None


def _envelope(rng: stats.Range, items: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {**extra, "description": "", "start": rfc2822(rng.start), "end": rfc2822(rng.end),
            "resolution": rng.resolution, "stats": items}


async def _totals(request: web.Request, domains: list[str] | None, tag: str = "",
                  extra: dict[str, Any] | None = None) -> web.Response:
    try:
        events = stats.check_events(request.query.getall("event", []))
        rng = stats.parse_range(request.query, time.time())
    except QueryError as exc:
        return error(400, str(exc))
    items = await stats.totals(context(request).store, events, rng, domains=domains, tag=tag)
    return web.json_response(_envelope(rng, items, **(extra or {})))


async def account_total(request: web.Request) -> web.Response:
    return await _totals(request, _allowed(request))


async def domain_total(request: web.Request) -> web.Response:
    return await _totals(request, [request.match_info["domain"].lower()])


async def account_domains(request: web.Request) -> web.Response:
    q = request.query
    try:
        events = stats.check_events(q.getall("event", []))
        resolution = q.get("resolution", "day")
        if resolution not in stats.RESOLUTIONS:
            raise QueryError("resolution: expected hour, day or month")
        if not q.get("timestamp"):
            raise QueryError("timestamp is required")
        at = parse_time(q["timestamp"], "timestamp")
        limit, skip = int(q.get("limit", 300)), int(q.get("skip", 0))
    except QueryError as exc:
        return error(400, str(exc))
    except ValueError:
        return error(400, "limit and skip: expected numbers")
    if not 1 <= limit <= MAX_DOMAINS_LIMIT:
        return error(400, f"limit: must be between 1 and {MAX_DOMAINS_LIMIT}")
    if skip < 0:
        return error(400, "skip: must be at least 0")
    items = await stats.domain_totals(context(request).store, events, at, resolution, domains=_allowed(request),
                                      skip=skip, limit=limit)
    start = stats.bucket_start(at, resolution)
    return web.json_response(_envelope(stats.Range(start, stats.next_bucket(start, resolution) - 1, resolution), items))


async def account_filter(request: web.Request) -> web.Response:
    q = request.query
    filters: dict[str, list[str]] = {}
    try:
        for raw in q.getall("filter", []):
            for part in raw.split(","):
                if not part.strip():
                    continue
                key, sep, value = part.partition(":")
                if not sep or not value.strip():
                    raise QueryError(f"filter: expected KEY:VALUE, got '{part}'")
                filters.setdefault(key.strip(), []).append(value.strip())
        events = stats.check_events(q.getall("event", []))
        rng = stats.parse_range(q, time.time())
        group = q.get("group", "total")
        items = await stats.grouped(context(request).store, events, rng, group=group, filters=filters,
                                    domains=_allowed(request))
    except QueryError as exc:
        return error(400, str(exc))
    return web.json_response(_envelope(rng, items))


async def aggregates(request: web.Request) -> web.Response:
    domain, what = request.match_info["domain"].lower(), request.match_info["what"]
    dim = {"providers": "provider", "devices": "device", "countries": "country"}[what]
    counts = await stats.providers(context(request).store, domain, dim)
    return web.json_response({what: counts})  # devices and countries: of opens, clicks and unsubscribes


async def list_tags(request: web.Request) -> web.Response:
    domain = request.match_info["domain"].lower()
    q = request.query
    try:
        limit = int(q.get("limit", 100))
    except ValueError:
        return error(400, "limit: expected a number")
    if not 1 <= limit <= 1000:
        return error(400, "limit: must be between 1 and 1000")
    which, pivot, prefix = q.get("page", "first"), q.get("tag"), q.get("prefix", "")
    before = which in ("previous", "prev", "last")
    use_pivot = pivot if which in ("next", "previous", "prev") else None
    items = await stats.list_tags(context(request).store, domain, limit=limit, pivot=use_pivot, before=before,
                                  prefix=prefix)
    base = f"{context(request).base_url}/v3/{domain}/tags"

    def link(**params: Any) -> str:
        return f"{base}?{urlencode({**params, 'limit': limit})}"
    if items:
        nxt, prev = link(page="next", tag=items[-1]["tag"]), link(page="previous", tag=items[0]["tag"])
    elif before:
        nxt, prev = link(page="first"), link(page="previous", tag=pivot or "")
    else:
        nxt, prev = link(page="next", tag=pivot or ""), link(page="last")
    return web.json_response({"items": items, "paging": {
        "first": link(page="first"), "last": link(page="last"), "next": nxt, "previous": prev}})


async def get_tag(request: web.Request) -> web.Response:
    domain, tag = request.match_info["domain"].lower(), request.match_info["tag"]
    info = await stats.tag_info(context(request).store, domain, tag)
    if info is None:
        return error(404, "Tag not found")
    return web.json_response(info)


async def put_tag(request: web.Request) -> web.Response:
    domain, tag = request.match_info["domain"].lower(), request.match_info["tag"]
    form = await read_post(request)
    description = form.get("description")
    if not isinstance(description, str):
        return error(400, "description is required")
    if not await context(request).store.set_tag_description(domain, tag, description):
        return error(404, "Tag not found")
    return web.json_response({"message": "Tag updated"})


async def delete_tag(request: web.Request) -> web.Response:
    domain, tag = request.match_info["domain"].lower(), request.match_info["tag"]
    if not await context(request).store.delete_tag(domain, tag):
        return error(404, "Tag not found")
    return web.json_response({"message": "Tag deleted"})


async def tag_stats(request: web.Request) -> web.Response:
    domain, tag = request.match_info["domain"].lower(), request.match_info["tag"]
    return await _totals(request, [domain], tag=tag, extra={"tag": tag})


async def tag_aggregates(request: web.Request) -> web.Response:
    """``GET /v3/{domain}/tags/{tag}/stats/aggregates/{what}`` (mailgun.js's tag aggregates)."""
    domain, tag, what = request.match_info["domain"].lower(), request.match_info["tag"], request.match_info["what"]
    if await context(request).store.tag_info(domain, tag) is None:
        return error(404, "Tag not found")
    if what == "providers":
        return error(400, "provider counters are kept without tags: see /v3/{domain}/aggregates/providers")
    return web.json_response({"tag": tag, what: {}})  # devices and countries come from opens and clicks


def setup(app: web.Application) -> None:
    app.router.add_get("/v3/stats/total", account_total)
    app.router.add_get("/v3/stats/total/domains", account_domains)
    app.router.add_get("/v3/stats/filter", account_filter)
    app.router.add_get("/v3/{domain}/stats/total", domain_total)
    app.router.add_get("/v3/{domain}/aggregates/{what:providers|devices|countries}", aggregates)
    app.router.add_get("/v3/{domain}/tags", list_tags)
    app.router.add_get("/v3/{domain}/tags/{tag}", get_tag)
    app.router.add_put("/v3/{domain}/tags/{tag}", put_tag)
    app.router.add_delete("/v3/{domain}/tags/{tag}", delete_tag)
    app.router.add_get("/v3/{domain}/tags/{tag}/stats", tag_stats)
    app.router.add_get("/v3/{domain}/tags/{tag}/stats/aggregates/{what:providers|devices|countries}", tag_aggregates)
