"""Event queries over HTTP: ``GET /v3/{domain}/events`` (Mailgun's events API, paging URLs) and
``POST /v1/analytics/logs`` (the logs API, opaque pagination tokens). See mtad.eventquery.

Page links are ``{base_url}/v3/{domain}/events/{token}``, as Mailgun's are; the token carries the
normalised query and a ``(timestamp, seq)`` cursor, so a link keeps meaning the same page while new
events arrive. Responses are built around the stored event JSON, never decoded and re-encoded.
"""

from __future__ import annotations

import json
import time

from aiohttp import web

from mtad.events import query as eventquery
from mtad.api import context, error
from mtad.api.formdata import read_json
from mtad.events.query import Page, QueryError


def _paging(base: str, domain: str, spec: dict, result: eventquery.Result) -> dict[str, str]:
    url = f"{base}/v3/{domain}/events/"
    return {"first": url + result.first.encode(spec), "last": url + result.last.encode(spec),
            "next": url + result.next.encode(spec), "previous": url + result.previous.encode(spec)}


async def _page(request: web.Request, domain: str, spec: dict, page: Page) -> web.Response:
    ctx = context(request)
    try:
        query = eventquery.events_query(domain, spec)
    except QueryError as exc:
        return error(400, str(exc))
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError):  # a token edited by hand
        return error(400, "invalid page token")
    result = await eventquery.fetch(ctx.store, query, page)
    body = '{"items":' + eventquery.items_json(result.rows) + ',"paging":' + \
        json.dumps(_paging(ctx.base_url, domain, spec, result)) + "}"
    return web.Response(text=body, content_type="application/json")


async def get_events(request: web.Request) -> web.Response:
    domain = request.match_info["domain"].lower()
    try:
        spec = eventquery.events_spec(request.query, time.time())
    except QueryError as exc:
        return error(400, str(exc))
    return await _page(request, domain, spec, Page())


async def get_events_page(request: web.Request) -> web.Response:
    domain = request.match_info["domain"].lower()
    try:
        page, spec = Page.decode(request.match_info["page"])
    except QueryError as exc:
        return error(400, str(exc))
    if not isinstance(spec, dict) or "filters" not in spec:
        return error(400, "invalid page token")
    return await _page(request, domain, spec, page)


async def analytics_logs(request: web.Request) -> web.Response:
    ctx = context(request)
    body = await read_json(request)
    key = request.get("api_key")
    try:
        query, echo = eventquery.logs_query(body, key.domains if key is not None else frozenset(), time.time())
        token = (body.get("pagination") or {}).get("token")  # a str: checked by logs_query
        page, _ = Page.decode(token) if token else (Page(), None)
    except QueryError as exc:
        return error(400, str(exc))
    if body.get("include_totals"):
        result, total = await eventquery.fetch_with_count(ctx.store, query, page)
    else:
        result, total = await eventquery.fetch(ctx.store, query, page), None
    pagination = {"previous": result.previous.encode(), "next": result.next.encode(),
                  "first": result.first.encode(), "last": result.last.encode()}
    if total is not None:
        pagination["total"] = total
    return web.json_response({**echo, "items": [eventquery.logs_item(r) for r in result.rows],
                              "pagination": pagination, "aggregates": {}})


def setup(app: web.Application) -> None:
    app.router.add_get("/v3/{domain}/events", get_events)
    app.router.add_get("/v3/{domain}/events/{page}", get_events_page)
    app.router.add_post("/v1/analytics/logs", analytics_logs)
