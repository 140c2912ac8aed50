"""Suppressions (``/ui/suppressions``): a domain's bounces, unsubscribes, complaints and allowlist.

List (address order, 100 a page, the store's address cursor), search (addresses starting with what is typed), add
one entry, delete one, import a CSV file and export the list as CSV. Unsubscribes (tracking links,
List-Unsubscribe) show their tags and complaints (ARF reports) what they are, each with a link to the address's
events of that kind. Adding, deleting and importing are the suppressions API's own handlers run on the panel's request (``web.call_api``): the same checks, the same CSV
rules (first line names the columns: ``address`` and the kind's own, e.g. ``code``, ``error``, ``tags``). The
export writes the API's JSON fields as columns, so a file exported here imports back.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from aiohttp import web

from mtad.api import suppressions as api_suppressions
from mtad.store.suppressions import KINDS
from mtad.ui import PREFIX
from mtad.ui.logs import _domain_choices
from mtad.ui.web import call_api, error_page, notify, page, redirect, render, ui_context

PAGE_SIZE = 100
EXPORT_BATCH = 5000
LABELS = {"bounces": "Bounces", "unsubscribes": "Unsubscribes", "complaints": "Complaints", "whitelists": "Allowlist"}
_COLUMNS = {"bounces": ("address", "code", "error", "created_at"), "unsubscribes": ("address", "tags", "created_at"),
            "complaints": ("address", "created_at"), "whitelists": ("address", "domain", "reason", "createdAt")}


def _choice(request: web.Request) -> tuple[str, str, list[str]]:
    """(domain, kind, the domains to choose from) of the query, checked against the session's key."""
    domains = _domain_choices(request)
    domain = (request.match_info.get("domain") or request.query.get("domain") or (domains[0] if domains else ""))
    domain = domain.lower()
    kind = request.match_info.get("kind") or request.query.get("kind") or "bounces"
    if kind not in KINDS:
        raise web.HTTPBadRequest(text=f"kind: one of {', '.join(KINDS)}")
    if domain and not request["api_key"].allows(domain):
        raise web.HTTPForbidden(text=f"Forbidden: this key may not use domain {domain}")
    return domain, kind, domains


def _after(prefix: str) -> str:
    """A pivot just before every address starting with ``prefix`` (the store pages by ``address > pivot``)."""
    return prefix[:-1] + chr(ord(prefix[-1]) - 1) + "\U0010ffff" if prefix and ord(prefix[-1]) > 0 else ""


@page
async def listing(request: web.Request) -> web.Response:
    domain, kind, domains = _choice(request)
    q = request.query
    search = q.get("q", "").strip().lower()
    which, pivot = q.get("page", "first"), q.get("address")
    if which not in ("first", "last", "next", "previous"):
        which = "first"
    rows: list[Any] = []
    if domain:
        store = ui_context(request).api.store
        if search:
            rows = [r for r in await store.suppression_page(domain, kind, PAGE_SIZE, "next", _after(search))
                    if r.address.startswith(search)]
        else:
            rows = list(await store.suppression_page(domain, kind, PAGE_SIZE, which, pivot))
    return render(request, "suppressions.html", title="Suppressions", domain=domain, kind=kind, kinds=KINDS,
                  labels=LABELS, domains=domains, rows=rows, views=[api_suppressions.view(r) for r in rows],
                  search=search, page_size=PAGE_SIZE, error="")


def _back(domain: str, kind: str) -> str:
    from urllib.parse import urlencode
    return f"{PREFIX}/suppressions?{urlencode({'domain': domain, 'kind': kind})}"


@page
async def add(request: web.Request) -> web.StreamResponse:
    domain, kind, _ = _choice(request)
    status, message, _ = await call_api(api_suppressions.add, request)
    if status != 200:
        return error_page(request, status, message)
    notify(request, message)
    raise redirect(_back(domain, kind))


@page
async def delete(request: web.Request) -> web.StreamResponse:
    domain, kind, _ = _choice(request)
    status, message, _ = await call_api(api_suppressions.delete_entry, request)
    if status != 200:
        return error_page(request, status, message)
    notify(request, f"{request.match_info['address']} removed from {LABELS[kind].lower()}.")
    raise redirect(_back(domain, kind))


@page
async def import_csv(request: web.Request) -> web.StreamResponse:
    domain, kind, _ = _choice(request)
    status, message, _ = await call_api(api_suppressions.import_csv, request)
    if status != 200:
        return error_page(request, status, message)
    notify(request, f"CSV imported into {LABELS[kind].lower()} of {domain}.")
    raise redirect(_back(domain, kind))


@page
async def export_csv(request: web.Request) -> web.StreamResponse:
    domain, kind, _ = _choice(request)
    store = ui_context(request).api.store
    resp = web.StreamResponse(headers={"Content-Type": "text/csv; charset=utf-8",
                                       "Content-Disposition": f'attachment; filename="{domain}-{kind}.csv"'})
    await resp.prepare(request)
    columns = _COLUMNS[kind]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    pivot, which = None, "first"
    while True:
        rows = await store.suppression_page(domain, kind, EXPORT_BATCH, which, pivot)
        for r in rows:
            v = api_suppressions.view(r)
            if kind == "whitelists":  # the import takes a domain or an address column
                writer.writerow([v["value"] if v["type"] == "address" else "", v["value"] if v["type"] == "domain" else "",
                                 v["reason"], v["createdAt"]])
            else:
                writer.writerow([",".join(v[c]) if c == "tags" else v[c] for c in columns])
        await resp.write(out.getvalue().encode())
        out.seek(0)
        out.truncate()
        if len(rows) < EXPORT_BATCH:
            break
        pivot, which = rows[-1].address, "next"
    await resp.write_eof()
    return resp


def setup(app: web.Application) -> None:
    kinds = "{kind:" + "|".join(KINDS) + "}"
    app.router.add_get(PREFIX + "/suppressions", listing)
    app.router.add_post(f"{PREFIX}/suppressions/{{domain}}/{kinds}", add)
    app.router.add_post(f"{PREFIX}/suppressions/{{domain}}/{kinds}/import", import_csv)
    app.router.add_get(f"{PREFIX}/suppressions/{{domain}}/{kinds}/export", export_csv)
    app.router.add_post(f"{PREFIX}/suppressions/{{domain}}/{kinds}/{{address}}/delete", delete)
