"""The seed manual's ``/v2`` API: its curl examples' paths, served by the v3 handlers, and the legacy log and
stats that only v2 had (see mtad.legacy for their shapes).

- ``POST /v2/{domain}/messages``, ``POST /v2/{domain}/messages.mime``: as ``/v3``;
- ``GET/POST /v2/routes``, ``GET/PUT/DELETE /v2/routes/{id}``: as ``/v3/routes``;
- ``GET /v2/{domain}/log`` and ``GET /v2/{domain}/stats``.
"""

from __future__ import annotations

import time

from aiohttp import web

from mtad.events import legacy
from mtad.api import context, error, messages, routes
from mtad.events.query import QueryError


async def get_log(request: web.Request) -> web.Response:
    domain = request.match_info["domain"].lower()
    q = request.query
    try:
        skip = legacy.bounded_int(q.get("skip"), "skip", 0, 0, legacy.LOG_MAX_SKIP)
        limit = legacy.bounded_int(q.get("limit"), "limit", 100, 1, legacy.LOG_MAX_LIMIT)
    except QueryError as exc:
        return error(400, str(exc))
    page = await legacy.log_page(context(request).store, domain, skip, limit)
    return web.json_response(page)


async def get_stats(request: web.Request) -> web.Response:
    domain = request.match_info["domain"].lower()
    q = request.query
    now = time.time()
    try:
        names = legacy.check_stats_events(q.getall("event", []))
        start = legacy.parse_start_date(q.get("start-date"), now)
        skip = legacy.bounded_int(q.get("skip"), "skip", 0, 0, 10**6)
        limit = legacy.bounded_int(q.get("limit"), "limit", 100, 1, legacy.STATS_MAX_LIMIT)
    except QueryError as exc:
        return error(400, str(exc))
    page = await legacy.stats_page(context(request).store, domain, names, start, now, skip, limit)
    return web.json_response(page)


def setup(app: web.Application) -> None:
    app.router.add_post("/v2/{domain}/messages", messages.send)
    app.router.add_post("/v2/{domain}/messages.mime", messages.send_mime)
    app.router.add_get("/v2/routes", routes.list_routes)
    app.router.add_post("/v2/routes", routes.create_route)
    app.router.add_get("/v2/routes/{id}", routes.get_route)
    app.router.add_put("/v2/routes/{id}", routes.update_route)
    app.router.add_delete("/v2/routes/{id}", routes.delete_route)
    app.router.add_get("/v2/{domain}/log", get_log)
    app.router.add_get("/v2/{domain}/stats", get_stats)
