"""Logs (``/ui/logs``): the events search, paged; a message's timeline (``/ui/message``); a stored copy
(``/ui/stored/{domain}/{key}``).

The search takes the events API's filters as the events API reads them (``events.query.events_spec``: event,
recipient, from, subject, tags, severity, message-id, each a Mailgun filter expression such as ``failed OR
delivered``), a domain (every domain the session may see when none is chosen), a time range (``begin``/``end``:
``2024-05-01 12:00`` in UTC, an RFC 2822 date or epoch seconds, or a period ``last``; the text filters subject and
from search every period through the text index when they require a term of at least three characters, else
they are a scan of the last hour unless a range is given), newest first, 50 a page,
paged by the events API's cursors (``events.query.Page``: a page keeps meaning the same events while new ones
arrive). The timeline is every event of one Message-ID in one domain, oldest first (the hour-bucketed index the
API's message-id filter uses), with each attempt's remote reply, each open and click (the link, who fetched it),
late bounces and complaints, and the message's pending deliveries while it is queued
(``outbound.queueadmin.show``).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import time
from typing import Any, Mapping
from urllib.parse import urlencode

from aiohttp import web

from mtad.events import query as eventquery
from mtad.events.query import Page, QueryError
from mtad.outbound import queueadmin
from mtad.ui import PREFIX
from mtad.ui.web import page, render, ui_context

PAGE_SIZE = 50
MAX_MERGED_DOMAINS = 50  # an indexed filter over every domain is asked domain by domain up to this many
TEXT_FILTERS = eventquery.TEXT_FIELDS  # a substring of a header: indexed, else a scan of a period (default: last hour)
PERIODS = {"1h": 3600, "1d": 86400, "7d": 7 * 86400, "30d": 30 * 86400}
FILTERS = ("event", "recipient", "from", "subject", "tags", "severity", "message-id")
MAX_BODY_SHOWN = 200_000  # bytes of a stored copy shown on the page


def _time(text: str, name: str) -> float:
    """``YYYY-MM-DD[ HH:MM[:SS]]`` (UTC; also the browser's ``datetime-local`` form), else what the events API
    takes (RFC 2822, epoch seconds)."""
    text = text.strip()
    try:
        dt = datetime.datetime.fromisoformat(text)
    except ValueError:
        return eventquery.parse_time(text, name)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return eventquery.parse_time(str(dt.timestamp()), name)


def _domains(request: web.Request, chosen: str) -> tuple[str, ...] | None:
    """The domains to search: the chosen one (if the session may see it), else every one it may."""
    key = request["api_key"]
    if chosen:
        if not key.allows(chosen):
            raise web.HTTPForbidden(text=f"Forbidden: this key may not use domain {chosen}")
        return (chosen,)
    return tuple(sorted(key.domains)) if key.domains else None


def view(row: eventquery.EventRow) -> dict[str, Any]:
    """What a row of the log shows of one stored event."""
    event = json.loads(row.data)
    headers = (event.get("message") or {}).get("headers") or {}
    status = event.get("delivery-status") or {}
    reply = " ".join(str(p) for p in (status.get("code") or "", status.get("enhanced-code") or "",
                                       status.get("message") or status.get("description") or "") if p)
    return {"time": row.timestamp, "domain": row.domain, "event": event.get("event", ""),
            "severity": event.get("severity", ""), "recipient": event.get("recipient", ""),
            "subject": headers.get("subject", ""), "from": headers.get("from", ""),
            "message_id": str(headers.get("message-id", "")), "reason": event.get("reason", ""),
            "reply": reply, "attempt": status.get("attempt-no"), "mx": status.get("mx-host") or "",
            "tags": event.get("tags") or [], "key": (event.get("storage") or {}).get("key", ""),
            "url": event.get("url", ""), "client": _client(event), "raw": event}


def _client(event: Mapping[str, Any]) -> str:
    """Who opened, clicked or unsubscribed (``client-info``, the address, a machine fetcher), for the timeline."""
    info = event.get("client-info")
    if not isinstance(info, Mapping):
        return ""
    parts = [str(info.get(k) or "") for k in ("client-name", "client-os", "device-type")]
    text = ", ".join(p for p in parts if p and p.lower() != "unknown")
    if event.get("ip"):
        text += f" from {event['ip']}"
    if info.get("bot"):
        text += f" (machine: {info['bot']})"
    return text.strip()


def _search_params(q: Mapping[str, str]) -> dict[str, str]:
    """The search's parameters as given (for the form and the paging links)."""
    return {k: q.get(k, "").strip() for k in (*FILTERS, "domain", "begin", "end", "last") if q.get(k, "").strip()}


@page
async def logs(request: web.Request) -> web.Response:
    ctx = ui_context(request).api
    q = request.query
    given = _search_params(q)
    error, rows, links = "", [], {}
    scanned = False
    now = time.time()
    try:
        lo = hi = None
        if given.get("last") in PERIODS:
            lo, hi = now - PERIODS[given["last"]], now
        if given.get("begin"):
            lo = _time(given["begin"], "begin")
        if given.get("end"):
            hi = _time(given["end"], "end")
        texts = [given[f] for f in TEXT_FILTERS if given.get(f)]
        if lo is None and hi is None and texts and not any(eventquery.indexed_text(t) for t in texts):
            lo, hi = now - PERIODS["1h"], now  # a text the index cannot find is a scan: of a bounded period
            given["last"] = "1h"  # shown in the form: the period searched
            scanned = True
        if lo is not None and hi is not None and lo > hi:
            raise QueryError("begin must be before end")
        spec = eventquery.events_spec({k: v for k, v in given.items() if k in FILTERS}, now)
        spec.update(ascending=False, lo=lo, hi=hi, limit=PAGE_SIZE)  # newest first, begin..end inclusive
        domain = given.get("domain", "").lower()
        query = dataclasses.replace(eventquery.events_query(domain or "-", spec),
                                    domains=_domains(request, domain))
        cursor = Page.decode(q["page"])[0] if q.get("page") else Page()
        result = await _fetch(ctx, query, cursor, _domains(request, domain) or tuple(_domain_choices(request)))
        rows = [view(r) for r in result.rows]
        base = f"{PREFIX}/logs?"
        links = {"first": base + urlencode(given)}
        full = len(rows) == PAGE_SIZE or sum(len(r.data) for r in result.rows) >= eventquery.MAX_PAGE_BYTES * 0.9
        if full:  # a page ends early when its events are large: then there may be more
            links["next"] = base + urlencode({**given, "page": result.next.encode()})
        if q.get("page"):
            links["previous"] = base + urlencode({**given, "page": result.previous.encode()})
    except QueryError as exc:
        error = str(exc)
    return render(request, "logs.html", title="Logs", rows=rows, given=given, error=error, links=links,
                  filters=FILTERS, periods=list(PERIODS), domains=_domain_choices(request), scanned=scanned,
                  min_text=eventquery.MIN_TEXT)


async def _fetch(ctx, query: eventquery.EventQuery, cursor: Page, known: tuple[str, ...]) -> eventquery.Result:
    """One page of ``query``. An equality on recipient or message-id over several domains is asked domain by
    domain (every domain mtad knows now, at most ``MAX_MERGED_DOMAINS``), each through the hour-bucketed index the
    events API uses for one domain, and the pages merged in the query's order (the same cursor applies to each):
    not a scan of every event."""
    if query.hint is None or (query.domains is not None and len(query.domains) == 1) or not known \
            or len(known) > MAX_MERGED_DOMAINS:
        return await eventquery.fetch(ctx.store, query, cursor)
    rows = []
    for d in query.domains or known:
        rows += (await ctx.store.query_events(dataclasses.replace(query, domains=(d,)), cursor)).rows
    rows.sort(key=lambda r: (r.timestamp, r.seq), reverse=not query.ascending)
    if cursor.side == "before":  # the page nearest the anchor, in the query's order
        rows = rows[-query.limit:]
    return eventquery.result(cursor, tuple(rows[:query.limit]))


def _domain_choices(request: web.Request) -> list[str]:
    ctx = ui_context(request).api
    cfg = ctx.running_config()
    names = set(cfg.sending_domains) | {d.lower() for d in cfg.receiving_domains} | set(ctx.accounts().domains)
    key = request["api_key"]
    return sorted(n for n in names if key.allows(n))


@page
async def message(request: web.Request) -> web.Response:
    """Every event of one message, oldest first."""
    ctx = ui_context(request).api
    domain = request.query.get("domain", "").strip().lower()
    message_id = request.query.get("id", "").strip()
    if not domain or not message_id:
        raise web.HTTPBadRequest(text="domain and id are required")
    domains = _domains(request, domain)
    query = eventquery.EventQuery(domains, (eventquery.field_condition("message-id", message_id),), None, None,
                                  True, eventquery.MAX_LIMIT, hint="message-id")
    result = await eventquery.fetch(ctx.store, query, Page())
    events = [view(r) for r in result.rows]
    first = events[0] if events else None
    queue_ids = list(dict.fromkeys(e["key"] for e in events if e["key"]))
    queued = [info for info in [await queueadmin.show(ctx.store, qid) for qid in queue_ids] if info is not None]
    stored = [(e["domain"], e["key"]) for e in events if e["event"] == "stored" and e["key"]]
    return render(request, "message.html", title="Message", events=events, first=first, message_id=message_id,
                  domain=domain, queued=queued, stored=list(dict.fromkeys(stored)))


@page
async def stored_copy(request: web.Request) -> web.Response:
    """A message kept by a route's ``store()`` (the stored-messages API's message), shown as text."""
    ctx = ui_context(request).api
    domain = request.match_info["domain"].lower()
    _domains(request, domain)
    found = await ctx.store.stored_message(request.match_info["key"], domain, time.time())
    if found is None:
        raise web.HTTPNotFound(text="Message not found (never stored, or expired)")
    body = found.body[:MAX_BODY_SHOWN].decode("utf-8", "replace")
    return render(request, "stored.html", title="Stored message", message=found, text=body,
                  cut=len(found.body) > MAX_BODY_SHOWN)


def setup(app: web.Application) -> None:
    app.router.add_get(PREFIX + "/logs", logs)
    app.router.add_get(PREFIX + "/message", message)
    app.router.add_get(PREFIX + "/stored/{domain}/{key}", stored_copy)
