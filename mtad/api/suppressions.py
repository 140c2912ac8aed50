"""Suppression lists over HTTP, Mailgun's shapes: bounces, unsubscribes, complaints and whitelists.

For each list ``KIND``: ``GET /v3/{domain}/KIND`` (paged by address: ``limit``, ``page`` = first | last |
next | previous, ``address`` = the pivot), ``POST`` (one entry as a form, or a JSON array of up to
1,000 entries), ``POST /v3/{domain}/KIND/import`` (a CSV file, field ``file``), ``DELETE`` (all),
``GET/DELETE /v3/{domain}/KIND/{address}``. Unsubscribes carry tags (``*`` = every message; a
``DELETE`` with ``tag`` removes only that tag); whitelists hold addresses or whole domains.

All lists live in the ``suppressions`` table; the outbound scheduler reads it before each attempt
(``store.suppressions.suppressed``), so a change applies to the very next delivery.
"""

from __future__ import annotations

import csv
import io
import time
from typing import Any, Mapping
from urllib.parse import urlencode

from aiohttp import web

from mtad.store.suppressions import KINDS, Suppression
from mtad.api import context, error
from mtad.api.formdata import FilePart, read_json, read_post
from mtad.events.query import QueryError, parse_time, rfc2822

MAX_JSON_ITEMS = 1000
MAX_PAGE = 10000
_REMOVED_ONE = {"bounces": "Bounced address has been removed", "unsubscribes": "Unsubscribe event has been removed",
                "complaints": "Spam complaint has been removed", "whitelists": "Whitelist address/domain has been removed"}
_REMOVED_ALL = {"bounces": "Bounced addresses for this domain have been removed",
                "unsubscribes": "Unsubscribe events for this domain have been removed",
                "complaints": "Spam complaints for this domain have been removed",
                "whitelists": "Whitelist addresses/domains for this domain have been removed"}


class Invalid(ValueError):
    pass


# --- entries ------------------------------------------------------------------------------------------------------

def _created(value: Any, now: float) -> float:
    if value in (None, ""):
        return now
    try:
        return parse_time(str(value), "created_at")
    except QueryError as exc:
        raise Invalid(str(exc)) from None


def _address(value: Any) -> str:
    if not isinstance(value, str) or "@" not in value.strip() or len(value) > 512:
        raise Invalid(f"'{value}' is not a valid address")
    return value.strip().lower()


def entry(kind: str, item: Mapping[str, Any], now: float) -> Suppression:
    """One posted entry; raises Invalid."""
    if kind == "whitelists":
        address, domain = item.get("address"), item.get("domain")
        if bool(address) == bool(domain):
            raise Invalid("give either address or domain")
        if address:
            value, typ = _address(address), "address"
        else:
            if not isinstance(domain, str) or "@" in domain or "." not in domain.strip():
                raise Invalid(f"'{domain}' is not a valid domain")
            value, typ = domain.strip().lower(), "domain"
        return Suppression(kind, value, now, type=typ, reason=str(item.get("reason") or ""))
    address = _address(item.get("address"))
    created = _created(item.get("created_at"), now)
    if kind == "bounces":
        return Suppression(kind, address, created, code=str(item.get("code") or "550"),
                           error=str(item.get("error") or ""))
    if kind == "unsubscribes":
        tags = item.get("tags")
        if tags is None:
            tags = [item.get("tag") or "*"]
        if isinstance(tags, str):
            tags = [t.strip() for t in tags.split(",") if t.strip()] or ["*"]
        if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
            raise Invalid("tags: expected a list of tags")
        return Suppression(kind, address, created, tags=tuple(tags))
    return Suppression(kind, address, created)


def view(s: Suppression) -> dict[str, Any]:
    """Mailgun's JSON of one entry."""
    if s.kind == "bounces":
        return {"address": s.address, "code": s.code, "error": s.error, "created_at": rfc2822(s.created_at)}
    if s.kind == "unsubscribes":
        return {"address": s.address, "tags": list(s.tags), "created_at": rfc2822(s.created_at)}
    if s.kind == "complaints":
        return {"address": s.address, "created_at": rfc2822(s.created_at)}
    return {"value": s.address, "reason": s.reason, "type": s.type, "createdAt": rfc2822(s.created_at)}


# --- handlers -----------------------------------------------------------------------------------------------------

def _kind(request: web.Request) -> tuple[str, str]:
    return request.match_info["domain"].lower(), request.match_info["kind"]


async def list_entries(request: web.Request) -> web.Response:
    domain, kind = _kind(request)
    q = request.query
    try:
        limit = int(q.get("limit", 100))
    except ValueError:
        return error(400, "limit: expected a number")
    if not 1 <= limit <= MAX_PAGE:
        return error(400, f"limit: must be between 1 and {MAX_PAGE}")
    which = q.get("page", "first")
    if which not in ("first", "last", "next", "previous", "prev"):
        return error(400, "page: expected first, last, next or previous")
    pivot = q.get("address")
    rows = await context(request).store.suppression_page(domain, kind, limit, which, pivot)
    base = f"{context(request).base_url}/v3/{domain}/{kind}"

    def link(**params: Any) -> str:
        return f"{base}?{urlencode({**params, 'limit': limit})}"
    if rows:
        nxt, prev = link(page="next", address=rows[-1].address), link(page="previous", address=rows[0].address)
    elif which in ("previous", "prev"):  # before the start: next is the first page
        nxt, prev = link(page="first"), link(page="previous", address=pivot or "")
    else:  # past the end: next stays put (poll it), previous is the last page
        nxt, prev = link(page="next", address=pivot or ""), link(page="last")
    return web.json_response({
        "items": [view(r) for r in rows],
        "paging": {"first": link(page="first"), "last": link(page="last"), "next": nxt, "previous": prev}})


async def get_entry(request: web.Request) -> web.Response:
    domain, kind = _kind(request)
    address = request.match_info["address"].lower()
    found = await context(request).store.get_suppression(domain, kind, address)
    if found is None:
        return error(404, f"Address not found in {kind} table")
    return web.json_response(view(found))


async def add(request: web.Request) -> web.Response:
    domain, kind = _kind(request)
    now = time.time()
    try:
        if request.content_type == "application/json":
            body = await read_json(request)
            if isinstance(body, dict):
                body = [body]
            if not isinstance(body, list) or not all(isinstance(i, dict) for i in body):
                return error(400, "expected a JSON array of objects")
            if len(body) > MAX_JSON_ITEMS:
                return error(400, f"at most {MAX_JSON_ITEMS} entries per request")
            entries = [entry(kind, item, now) for item in body]
            n = await context(request).store.add_suppressions(domain, entries)
            return web.json_response({"message": f"{n} addresses have been added to the {kind} table"})
        form = await read_post(request)
        item = {k: v for k, v in form.items() if isinstance(v, str)}
        one = entry(kind, item, now)
    except Invalid as exc:
        return error(400, str(exc))
    await context(request).store.add_suppressions(domain, [one])
    if kind == "whitelists":
        return web.json_response({"message": f"{one.type.capitalize()} has been added to the whitelists table",
                                  "type": one.type, "value": one.address})
    return web.json_response({"message": f"Address has been added to the {kind} table", "address": one.address})


async def import_csv(request: web.Request) -> web.Response:
    domain, kind = _kind(request)
    form = await read_post(request)
    upload = form.get("file")
    if not isinstance(upload, FilePart):
        return error(400, "file is required")
    try:
        text = upload.data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return error(400, "file: expected UTF-8 CSV")
    now = time.time()
    try:
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or not ({"address", "domain"} & set(reader.fieldnames)):
            return error(400, "file: the first line must name the columns (address, ...)")
        entries = []
        for n, row in enumerate(reader, start=2):
            item = {k: v for k, v in row.items() if k and v not in (None, "")}
            try:
                entries.append(entry(kind, item, now))
            except Invalid as exc:
                return error(400, f"file line {n}: {exc}")
    except csv.Error as exc:
        return error(400, f"file: {exc}")
    await context(request).store.add_suppressions(domain, entries)
    return web.json_response({"message": "file uploaded successfully"})


async def delete_entry(request: web.Request) -> web.Response:
    domain, kind = _kind(request)
    address = request.match_info["address"].lower()
    tag = request.query.get("tag")
    if not await context(request).store.delete_suppression(domain, kind, address, tag):
        return error(404, f"Address not found in {kind} table")
    key = "value" if kind == "whitelists" else "address"
    return web.json_response({"message": _REMOVED_ONE[kind], key: address})


async def delete_all(request: web.Request) -> web.Response:
    domain, kind = _kind(request)
    await context(request).store.clear_suppressions(domain, kind)
    return web.json_response({"message": _REMOVED_ALL[kind]})


def setup(app: web.Application) -> None:
    kinds = "{kind:" + "|".join(KINDS) + "}"
    app.router.add_get(f"/v3/{{domain}}/{kinds}", list_entries)
    app.router.add_post(f"/v3/{{domain}}/{kinds}", add)
    app.router.add_delete(f"/v3/{{domain}}/{kinds}", delete_all)
    app.router.add_post(f"/v3/{{domain}}/{kinds}/import", import_csv)
    app.router.add_get(f"/v3/{{domain}}/{kinds}/{{address}}", get_entry)
    app.router.add_delete(f"/v3/{{domain}}/{kinds}/{{address}}", delete_entry)
