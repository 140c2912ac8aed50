"""The queue (``/ui/queue``): what waits, by destination domain and provider, and the operator's actions.

The same operations as ``mtad queue`` (``outbound.queueadmin``, the store's queue actions, one transaction each):
pause and resume a destination domain, provider or tag; flush (everything, or one domain); retry, bounce or delete
one message or a selection. The running scheduler sees a change at its next poll. The list is the store's
``list_queue`` (pending deliveries and route forwards, oldest first, at most ``MAX_SHOWN``), with each one's next
attempt and last reply; ``domain`` or ``provider`` narrow it. The queue is the whole server's, so only a session
that may see every domain (a panel user, or an API key not limited to domains) may see or change it.
"""

from __future__ import annotations

from collections import Counter

from aiohttp import web

from mtad.outbound import queueadmin
from mtad.store.queue import PAUSE_KINDS
from mtad.ui import PREFIX
from mtad.ui.web import form, notify, page, redirect, render, ui_context

MAX_SHOWN = 500
MAX_SELECTED = 1000


def _whole_server(request: web.Request) -> None:
    if request["api_key"].domains:
        raise web.HTTPForbidden(text="The queue is the whole server's: sign in with an API key that is not limited"
                                     " to domains, or as a panel user")


def _provider(request: web.Request, domain: str) -> str:
    counters = ui_context(request).api.metrics().event_counters
    return counters.provider(domain) if counters else "default"


@page
async def queue(request: web.Request) -> web.Response:
    _whole_server(request)
    store = ui_context(request).api.store
    entries = await store.list_queue(MAX_SHOWN)
    rows = [(e, _provider(request, e.destination) if e.kind == "delivery" else "forward") for e in entries]
    by_domain = Counter(e.destination for e, _ in rows if e.kind == "delivery")
    by_provider = Counter(p for _, p in rows)
    want_domain, want_provider = request.query.get("domain", ""), request.query.get("provider", "")
    shown = [(e, p) for e, p in rows if (not want_domain or e.destination == want_domain)
             and (not want_provider or p == want_provider)]
    pauses = await store.pauses()
    return render(request, "queue.html", title="Queue", rows=shown, total=len(entries), max_shown=MAX_SHOWN,
                  by_domain=sorted(by_domain.items(), key=lambda kv: (-kv[1], kv[0])),
                  by_provider=sorted(by_provider.items(), key=lambda kv: (-kv[1], kv[0])),
                  pauses=[(kind, value) for kind in PAUSE_KINDS for value in sorted(getattr(pauses, kind))],
                  kinds=PAUSE_KINDS, want_domain=want_domain, want_provider=want_provider,
                  paused_domains=pauses.domain)


@page
async def action(request: web.Request) -> web.StreamResponse:
    _whole_server(request)
    store = ui_context(request).api.store
    fields = await form(request)
    op = fields.get("op")
    if op in ("pause", "resume"):
        kind, value = str(fields.get("kind") or ""), str(fields.get("value") or "").strip().lower()
        if kind not in PAUSE_KINDS or not value or len(value) > 255:
            raise web.HTTPBadRequest(text=f"give what to {op}: a domain, provider or tag")
        if op == "pause":
            await queueadmin.pause(store, kind, value)
            notify(request, f"Paused {kind} {value}: its mail waits until resumed.")
        else:
            n = await queueadmin.resume(store, kind, value)
            notify(request, f"Resumed {kind} {value} ({n} held deliveries back in the queue).")
    elif op == "flush":
        domain = str(fields.get("domain") or "").strip().lower() or None
        n = await queueadmin.flush(store, domain=domain)
        notify(request, f"{n} deliveries due now.")
    elif op in ("retry", "delete", "bounce"):
        ids = [i for i in fields.getall("id", []) if isinstance(i, str) and i][:MAX_SELECTED]
        if not ids:
            raise web.HTTPBadRequest(text="select one message or more")
        done = 0
        for queue_id in dict.fromkeys(ids):
            if op == "retry":
                done += await queueadmin.flush(store, queue_id=queue_id)
            elif op == "delete":
                done += int(await queueadmin.delete(store, queue_id))
            else:
                done += await queueadmin.bounce(store, queue_id)
        what = {"retry": "deliveries due now", "delete": "messages deleted", "bounce": "recipients failed"}[op]
        notify(request, f"{done} {what}.")
    else:
        raise web.HTTPBadRequest(text="unknown queue action")
    raise redirect(PREFIX + "/queue")


def setup(app: web.Application) -> None:
    app.router.add_get(PREFIX + "/queue", queue)
    app.router.add_post(PREFIX + "/queue", action)
