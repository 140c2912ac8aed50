"""Routes over HTTP, in Mailgun's shapes: ``/v3/routes`` and ``/v3/routes/{id}``, ``/v3/routes/match``.

Routes created here are kept in the store's ``routes`` table and evaluated together with the config
file's routes (config first, then API routes in creation order; priority decides). A change swaps
the whole route table (``Routing.replace_api_async``, built in a thread, so RCPTs are answered while
thousands of routes compile): the next message sees it, no restart. Config-file routes are listed
and matched like the others but are read-only here (403). Changes are serialised by a lock, and a
route that does not compile is refused with 400 naming the part at fault.

Responses (Mailgun's): ``{"message": "Route has been created", "route": {...}}``;
``{"total_count": N, "items": [...]}``; ``{"route": {...}}``; PUT answers the route's fields plus
``"message": "Route has been updated"``; DELETE ``{"message": "Route has been deleted", "id": ...}``;
an unknown id ``404 {"message": "Route not found"}``.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from typing import Callable

from aiohttp import web

from mtad.store.routes import new_route_id
from mtad.api import ApiContext, context, error
from mtad.api.formdata import read_post
from mtad.base.errors import ConfigError, RouteSyntaxError
from mtad.net.httpclient import url_refusal
from mtad.inbound.router import Route, compile_route
from mtad.inbound.routing import record_of, route_of

_STARTED = time.time()  # shown as created_at of config-file routes
LOCK: web.AppKey[asyncio.Lock] = web.AppKey("routes_lock")
MAX_LIMIT = 1000


def route_json(route: Route, created_at: float) -> dict:
    return {"id": route.id, "priority": route.priority, "description": route.description,
            "expression": route.expression, "actions": list(route.actions),
            "created_at": email.utils.formatdate(created_at, usegmt=True)}


async def _all(ctx: ApiContext) -> tuple[list[tuple[Route, float]], set[str]]:
    """Every route (config first) with its creation time, and the ids of config routes."""
    stored = await ctx.store.load_routes()
    config = list(ctx.routing.config_routes)
    return [(r, _STARTED) for r in config] + [(route_of(s), s.created_at) for s in stored], {r.id for r in config}


def _int(value: str | None, name: str, default: int, low: int = 0, high: int | None = None) -> int:
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except ValueError:
        raise web.HTTPBadRequest(text=f"'{name}' must be an integer") from None
    if n < low or (high is not None and n > high):
        raise web.HTTPBadRequest(text=f"'{name}' must be between {low} and {high}" if high is not None
                                 else f"'{name}' must be at least {low}")
    return n


def _check(ctx: ApiContext, route: Route) -> str | None:
    """Why the route cannot be made, or None: it must compile, and its URLs (forward destinations, store's
    notify) must pass the connect-time SSRF policy where their host names an address by itself."""
    try:
        compiled = compile_route(route, allow_backtracking=ctx.routing.allow_backtracking)
    except RouteSyntaxError as exc:
        return f"Invalid route: {exc}"
    allowed = ctx.allowed_networks
    for n, action in enumerate(compiled.actions, 1):
        urls = [d for d in action.destinations if "://" in d] + ([action.notify] if action.notify else [])
        for url in urls:
            problem = url_refusal(url, allowed)
            if problem:
                return f"Invalid route: action {n}: {problem}"
    return None


async def _load(ctx: ApiContext) -> list[Route]:
    return [route_of(s) for s in await ctx.store.load_routes()]


async def _apply(ctx: ApiContext) -> str | None:
    """Rebuild the live table from the store (unless another node's change did already); the problem if it
    cannot be built."""
    try:
        await ctx.routing.reload_api(lambda: _load(ctx))  # built in a thread: seconds for 10,000
    except (RouteSyntaxError, ConfigError) as exc:
        return str(exc)
    return None


async def list_routes(request: web.Request) -> web.Response:
    ctx = context(request)
    skip = _int(request.query.get("skip"), "skip", 0)
    limit = _int(request.query.get("limit"), "limit", 100, 1, MAX_LIMIT)
    routes, _ = await _all(ctx)
    return web.json_response({"total_count": len(routes),
                              "items": [route_json(r, t) for r, t in routes[skip:skip + limit]]})


async def add(app: web.Application, ctx: ApiContext, route: Route) -> tuple[float, str | None]:
    """Check and create an API route and apply the new table: (its creation time, the problem that refused it
    (nothing written) or None). The web panel creates routes with it too."""
    problem = _check(ctx, route)
    if problem:
        return 0.0, problem
    created = time.time()
    async with app[LOCK]:
        await ctx.store.add_route(record_of(route, created))
        problem = await _apply(ctx)
        if problem:
            await ctx.store.delete_route(route.id)
            await _apply(ctx)
            return 0.0, f"Invalid route: {problem}"
    return created, None


async def create_route(request: web.Request) -> web.Response:
    ctx = context(request)
    form = await read_post(request)
    expression = form.get("expression")
    if not isinstance(expression, str) or not expression.strip():
        return error(400, "'expression' parameter is missing")
    actions = [a for a in form.getall("action", []) if isinstance(a, str)]
    if not actions:
        return error(400, "'action' parameter is missing")
    priority = _int(form.get("priority"), "priority", 0)
    description = form.get("description") or ""
    route = Route(new_route_id(), priority, str(description), expression, tuple(actions))
    created, problem = await add(request.app, ctx, route)
    if problem:
        return error(400, problem)
    return web.json_response({"message": "Route has been created", "route": route_json(route, created)})


async def _find(ctx: ApiContext, route_id: str) -> tuple[Route, float, bool] | None:
    routes, config_ids = await _all(ctx)
    for route, created in routes:
        if route.id == route_id:
            return route, created, route_id in config_ids
    return None


def _read_only(route_id: str) -> web.Response:
    return error(403, f"Route {route_id} is defined in the configuration file and is read-only through the API")


async def get_route(request: web.Request) -> web.Response:
    found = await _find(context(request), request.match_info["id"])
    if found is None:
        return error(404, "Route not found")
    return web.json_response({"route": route_json(found[0], found[1])})


async def change(app: web.Application, ctx: ApiContext, route_id: str,
                 make: Callable[[Route], Route]) -> tuple[web.Response | None, Route | None, float]:
    """Replace API route ``route_id`` by ``make(old)``, checked, and apply the new table: (the refusal (nothing
    changed) or None, the route as it is now, its creation time). The web panel edits routes with it too."""
    async with app[LOCK]:
        found = await _find(ctx, route_id)
        if found is None:
            return error(404, "Route not found"), None, 0.0
        old, created, read_only = found
        if read_only:
            return _read_only(route_id), None, 0.0
        route = make(old)
        problem = _check(ctx, route)
        if problem:
            return error(400, problem), None, 0.0
        await ctx.store.update_route(record_of(route, created))
        problem = await _apply(ctx)
        if problem:
            await ctx.store.update_route(record_of(old, created))
            await _apply(ctx)
            return error(400, f"Invalid route: {problem}"), None, 0.0
    return None, route, created


async def update_route(request: web.Request) -> web.Response:
    ctx = context(request)
    route_id = request.match_info["id"]
    form = await read_post(request)

    def make(old: Route) -> Route:
        actions = [a for a in form.getall("action", []) if isinstance(a, str)]
        expression = form.get("expression")
        return Route(old.id, _int(form.get("priority"), "priority", old.priority),
                     str(form.get("description", old.description)),
                     expression if isinstance(expression, str) and expression.strip() else old.expression,
                     tuple(actions) or old.actions)
    refusal, route, created = await change(request.app, ctx, route_id, make)
    if refusal is not None:
        return refusal
    assert route is not None
    return web.json_response({**route_json(route, created), "message": "Route has been updated"})


async def remove(app: web.Application, ctx: ApiContext, route_id: str) -> web.Response | None:
    """Delete API route ``route_id`` and apply the new table: the refusal or None. The web panel uses it too."""
    async with app[LOCK]:
        found = await _find(ctx, route_id)
        if found is None:
            return error(404, "Route not found")
        if found[2]:
            return _read_only(route_id)
        await ctx.store.delete_route(route_id)
        await _apply(ctx)
    return None


async def delete_route(request: web.Request) -> web.Response:
    route_id = request.match_info["id"]
    refusal = await remove(request.app, context(request), route_id)
    if refusal is not None:
        return refusal
    return web.json_response({"message": "Route has been deleted", "id": route_id})


async def match_route(request: web.Request) -> web.Response:
    ctx = context(request)
    address = request.query.get("address", "").strip()
    if not address:
        return error(400, "'address' parameter is missing")
    matches = ctx.routing.table.evaluate(address)
    if not matches:
        return error(404, "Route not found")
    found = await _find(ctx, matches[0].route.id)
    created = found[1] if found else _STARTED
    return web.json_response({"route": route_json(matches[0].route, created)})


def setup(app: web.Application) -> None:
    app[LOCK] = asyncio.Lock()
    app.router.add_get("/v3/routes", list_routes)
    app.router.add_post("/v3/routes", create_route)
    app.router.add_get("/v3/routes/match", match_route)
    app.router.add_get("/v3/routes/{id}", get_route)
    app.router.add_put("/v3/routes/{id}", update_route)
    app.router.add_delete("/v3/routes/{id}", delete_route)
