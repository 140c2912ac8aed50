"""Routes (``/ui/routes``): list, create, edit, delete, priority, and a tester.

Every route is listed, the config file's first (read-only here, as through the API), then the API's in creation
order. A new or edited route is checked field by field with the router's own parser (``inbound.router``:
``parse_expression`` for the expression, ``parse_action`` for each action, one per line), so an error is shown at
the field at fault; then it is made by the API's own code (``api.routes.add`` / ``change`` / ``remove``: the SSRF
policy of forward URLs, the table rebuilt in a thread, all other nodes told). The tester evaluates the live table
for a recipient and headers (``RouteTable.evaluate``, what an arriving message gets): the routes that match, in
order, and what each would do.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mtad.api import routes as api_routes
from mtad.base.errors import RouteSyntaxError
from mtad.inbound.router import Route, parse_action, parse_expression
from mtad.store.routes import new_route_id
from mtad.ui import PREFIX
from mtad.ui.web import error_page, form, is_htmx, notify, page, redirect, render, ui_context

MAX_ACTIONS = 20


def _fields(fields: Any) -> dict[str, Any]:
    actions = [line.strip() for line in str(fields.get("actions") or "").splitlines() if line.strip()]
    return {"expression": str(fields.get("expression") or "").strip(), "actions": actions,
            "priority": str(fields.get("priority") or "0").strip(), "description": str(fields.get("description") or "")}


def _problems(request: web.Request, f: dict[str, Any]) -> dict[str, str]:
    """Field -> what is wrong with it, by the router's own parser."""
    errors: dict[str, str] = {}
    if not f["expression"]:
        errors["expression"] = "An expression is required, e.g. match_recipient(\"sales@.*\")"
    else:
        try:
            parse_expression(f["expression"], allow_backtracking=ui_context(request).api.routing.allow_backtracking)
        except RouteSyntaxError as exc:
            errors["expression"] = str(exc)
    if not f["actions"]:
        errors["actions"] = "At least one action is required, e.g. forward(\"https://app.example/mail\")"
    elif len(f["actions"]) > MAX_ACTIONS:
        errors["actions"] = f"At most {MAX_ACTIONS} actions"
    else:
        for n, text in enumerate(f["actions"], 1):
            try:
                parse_action(text)
            except RouteSyntaxError as exc:
                errors["actions"] = f"Line {n}: {exc}"
                break
    try:
        if not -(10**9) <= int(f["priority"]) <= 10**9:
            raise ValueError
    except ValueError:
        errors["priority"] = "A whole number (lower runs first)"
    return errors


def _place(problem: str) -> dict[str, str]:
    """The field a problem the API found (after the parser's checks: a forward URL's policy) belongs to."""
    return {"actions" if "action" in problem else "form": problem}


async def _listing(request: web.Request) -> list[dict[str, Any]]:
    routes, config_ids = await api_routes._all(ui_context(request).api)
    return [{"route": r, "created": t, "config": r.id in config_ids} for r, t in routes]


async def _page(request: web.Request, *, status: int = 200, new: dict[str, Any] | None = None,
                errors: dict[str, str] | None = None, test: dict[str, Any] | None = None) -> web.Response:
    return render(request, "routes.html", status=status, title="Routes", routes=await _listing(request),
                  new=new or {"expression": "", "actions": [], "priority": "0", "description": ""},
                  errors=errors or {}, test=test)


@page
async def list_routes(request: web.Request) -> web.Response:
    return await _page(request)


@page
async def create(request: web.Request) -> web.StreamResponse:
    f = _fields(await form(request))
    errors = _problems(request, f)
    if not errors:
        route = Route(new_route_id(), int(f["priority"]), f["description"], f["expression"], tuple(f["actions"]))
        _, problem = await api_routes.add(request.app, ui_context(request).api, route)
        if problem is None:
            notify(request, f"Route {route.id} created.")
            raise redirect(PREFIX + "/routes")
        errors = _place(problem)
    return await _page(request, status=400, new=f, errors=errors)


async def _find(request: web.Request) -> dict[str, Any]:
    route_id = request.match_info["id"]
    for item in await _listing(request):
        if item["route"].id == route_id:
            return item
    raise web.HTTPNotFound(text="Route not found")


@page
async def edit_form(request: web.Request) -> web.Response:
    item = await _find(request)
    r: Route = item["route"]
    values = {"expression": r.expression, "actions": list(r.actions), "priority": str(r.priority),
              "description": r.description}
    return render(request, "route_edit.html", title="Edit route", item=item, values=values, errors={})


@page
async def update(request: web.Request) -> web.StreamResponse:
    item = await _find(request)
    f = _fields(await form(request))
    errors = _problems(request, f)
    if not errors:
        route_id = item["route"].id
        refusal, _, _ = await api_routes.change(request.app, ui_context(request).api, route_id, lambda old: Route(
            old.id, int(f["priority"]), f["description"], f["expression"], tuple(f["actions"])))
        if refusal is None:
            notify(request, f"Route {route_id} saved.")
            raise redirect(PREFIX + "/routes")
        errors = _place(_message(refusal))
    return render(request, "route_edit.html", status=400, title="Edit route", item=item, values=f, errors=errors)


def _message(resp: web.Response) -> str:
    import json
    return str(json.loads(resp.body or b"{}").get("message", "refused"))


@page
async def set_priority(request: web.Request) -> web.StreamResponse:
    fields = await form(request)
    try:
        priority = int(str(fields.get("priority") or ""))
    except ValueError:
        raise web.HTTPBadRequest(text="priority: a whole number") from None
    route_id = request.match_info["id"]
    refusal, _, _ = await api_routes.change(request.app, ui_context(request).api, route_id, lambda old: Route(
        old.id, priority, old.description, old.expression, old.actions))
    if refusal is not None:
        return error_page(request, refusal.status, _message(refusal))
    notify(request, f"Route {route_id} now has priority {priority}.")
    raise redirect(PREFIX + "/routes")


@page
async def delete(request: web.Request) -> web.StreamResponse:
    route_id = request.match_info["id"]
    refusal = await api_routes.remove(request.app, ui_context(request).api, route_id)
    if refusal is not None:
        return error_page(request, refusal.status, _message(refusal))
    notify(request, f"Route {route_id} deleted.")
    raise redirect(PREFIX + "/routes")


@page
async def test(request: web.Request) -> web.Response:
    """Which routes a recipient (and headers) would match, and what they would do."""
    q = request.query
    recipient = q.get("recipient", "").strip()
    headers = []
    for line in q.get("headers", "").splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip():
            headers.append((name.strip(), value.strip()))
    result: dict[str, Any] = {"recipient": recipient, "headers": q.get("headers", "")}
    if not recipient:
        result["error"] = "Give a recipient address."
    else:
        local, at, domain = recipient.rpartition("@")
        recipient = f"{local}{at}{domain.lower()}"  # as the MX listener takes it
        table = ui_context(request).api.routing.table
        result["accepted"] = table.would_handle(recipient)
        result["matches"] = table.evaluate(recipient, headers)
    if is_htmx(request):
        return render(request, "route_test.html", test=result)
    return await _page(request, test=result)


def setup(app: web.Application) -> None:
    app.router.add_get(PREFIX + "/routes", list_routes)
    app.router.add_post(PREFIX + "/routes", create)
    app.router.add_get(PREFIX + "/routes/test", test)
    app.router.add_get(PREFIX + "/routes/{id}", edit_form)
    app.router.add_post(PREFIX + "/routes/{id}", update)
    app.router.add_post(PREFIX + "/routes/{id}/priority", set_priority)
    app.router.add_post(PREFIX + "/routes/{id}/delete", delete)
