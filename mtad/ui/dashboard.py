"""The dashboard (``/ui/``): what mtad did lately and what waits now.

Counts of accepted / delivered / failed / opened / clicked / unsubscribed / complained over the last hour, day
and 30 days, and charts of the last day by hour and the last 30 days by day: the stats the API serves (``events.stats.totals`` on the store's
counters, never a scan of events). What waits: pending deliveries by state and by provider (the shaping policy
of the destination, as ``/metrics`` names it), route forwards and the webhook backlog (``store.queue_counts``),
operator pauses, and providers that shaping automation has suspended or slowed down now.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from aiohttp import web

from mtad.events import stats
from mtad.ui import PREFIX
from mtad.ui.web import page, render, ui_context

EVENTS = ["accepted", "delivered", "failed", "opened", "clicked", "unsubscribed", "complained"]


def _total(item: dict[str, Any], event: str) -> int:
    value = item[event]
    if event == "failed":
        return int(value["permanent"]["total"]) + int(value["temporary"]["total"])
    return int(value["total"])


def _series(items: list[dict[str, Any]], rng: stats.Range) -> dict[str, Any]:
    """The chart's data: bucket start times and one list per event."""
    times, t = [], rng.start
    while t <= rng.end:
        times.append(int(t))
        t = stats.next_bucket(t, rng.resolution)
    return {"times": times[:len(items)], "names": EVENTS,
            "series": {e: [_total(i, e) for i in items] for e in EVENTS}}


def _sums(items: list[dict[str, Any]]) -> dict[str, int]:
    return {e: sum(_total(i, e) for i in items) for e in EVENTS}


@page
async def dashboard(request: web.Request) -> web.Response:
    ui = ui_context(request)
    store = ui.api.store
    key = request["api_key"]
    domains = sorted(key.domains) if key.domains else None
    now = time.time()
    day = stats.parse_range({"duration": "24h", "resolution": "hour"}, now)
    month = stats.parse_range({"duration": "30d", "resolution": "day"}, now)
    day_items = await stats.totals(store, EVENTS, day, domains=domains)
    month_items = await stats.totals(store, EVENTS, month, domains=domains)
    hour_start = stats.bucket_start(now - 3600, "hour")
    starts = _series(day_items, day)["times"]
    last_hour = [item for item, start in zip(day_items, starts) if start >= hour_start]
    windows = [("Last hour", _sums(last_hour)), ("Last day", _sums(day_items)), ("Last 30 days", _sums(month_items))]

    counts = await store.queue_counts()
    counters = ui.api.metrics().event_counters
    by_state: Counter[str] = Counter()
    by_provider: Counter[str] = Counter()
    for state, domain, n in counts.deliveries:
        if domains is not None and domain not in domains:
            continue
        by_state[state] += n
        by_provider[counters.provider(domain) if counters else "default"] += n
    pauses = await store.pauses()
    return render(request, "dashboard.html", title="Dashboard", windows=windows, events=EVENTS,
                  day_chart=_series(day_items, day), month_chart=_series(month_items, month),
                  by_state=[(s, by_state.get(s, 0)) for s in ("queued", "deferred", "held", "active")],
                  by_provider=sorted(by_provider.items(), key=lambda kv: (-kv[1], kv[0])),
                  forwards=dict(counts.forwards), webhooks=dict(counts.webhooks), throttled=list(ui.throttled()),
                  pauses=[(kind, value) for kind in ("domain", "provider", "tag")
                          for value in sorted(getattr(pauses, kind))])


def setup(app: web.Application) -> None:
    app.router.add_get(PREFIX + "/", dashboard)
