"""The engagement store's contract (``mtad.store.engagement``) on every backend (SQLite and PostgreSQL): tracking
settings round-trip, a tracked message is written once, the first open or click of a (message, recipient) is the
unique one even when two race, an unsubscribe's list entry commits with its event, counters count unique and
device/country, pruning deletes what is old."""

from __future__ import annotations

import asyncio
import json

import pytest

from mtad.events import engagement as engagement_mod
from mtad.events import shape
from mtad.store.counters import CounterQuery
from mtad.store.engagement import DomainTracking, Engagement, TrackedMessage
from mtad.store.eventquery import Cursor, EventQuery, Match
from mtad.store.events import NewEvent
from mtad.store.suppressions import Suppression
from tests.support.stores import backend_store  # noqa: F401 - the fixture

ALL_TIME = 4e9


def opened(tracked: TrackedMessage, recipient: str, now: float, device: str = "mobile") -> dict:
    event = shape.base_event("opened", timestamp=now, recipient=recipient, queue_id=tracked.queue_id,
                             message=shape.message_part(tracked.data["headers"], 10), options={}, envelope={},
                             flags={"is-unique": False},
                             extra={"client-info": {"device-type": device}, "geolocation": {"country": "FR"}})
    return event


def engagement(tracked: TrackedMessage, recipient: str, now: float) -> Engagement:
    event = opened(tracked, recipient, now)
    return Engagement(NewEvent("example.com", event), (tracked.queue_id, recipient, "opened"),
                      NewEvent("example.com", engagement_mod.unique(event)))


async def test_settings_round_trip_and_tracked_messages_are_written_once(backend_store):
    store = backend_store()
    assert await store.tracking_settings() == {}
    settings = DomainTracking(open=True, click="htmlonly", unsubscribe=True, html_footer="<p>x</p>",
                              text_footer="x", base_url="https://email.example.com")
    await store.set_tracking_settings("example.com", settings, 1.0)
    assert (await store.tracking_settings()) == {"example.com": settings}
    await store.set_tracking_settings("example.com", DomainTracking(), 2.0)
    assert (await store.tracking_settings())["example.com"] == DomainTracking()

    first = TrackedMessage("Q1", "example.com", 10.0, {"headers": {"subject": "s"}}, ("https://a/", "https://b/"))
    await store.track_message(first)
    await store.track_message(TrackedMessage("Q1", "example.com", 20.0, {}, ("https://other/",)))
    assert await store.tracked_message("Q1") == first
    assert await store.tracked_message("nope") is None


async def test_the_first_open_is_unique_even_when_opens_race(backend_store):
    store = backend_store()
    tracked = TrackedMessage("Q2", "example.com", 10.0, {"headers": {"message-id": "m@x"}}, ())
    await store.track_message(tracked)
    firsts = await asyncio.gather(*(store.record_engagements([engagement(tracked, "r@x.test", 100.0 + i)], 100.0 + i)
                                    for i in range(6)))
    assert sorted(f for (f,) in firsts) == [False] * 5 + [True]
    # without its unique variant (``first_event`` None): the store marks the event unique if it is the first
    plain = Engagement(NewEvent("example.com", opened(tracked, "s@x.test", 200.0)), (tracked.queue_id, "s@x.test", "opened"))
    again = Engagement(NewEvent("example.com", opened(tracked, "s@x.test", 201.0)), (tracked.queue_id, "s@x.test", "opened"))
    assert await store.record_engagements([plain, again], 201.0) == (True, False)
    found = await store.query_events(EventQuery(None, (Match("recipient", "s@x.test"),), limit=10), Cursor())
    assert sorted(json.loads(row.data)["flags"]["is-unique"] for row in found.rows) == [False, True]
    assert await store.count_events(EventQuery(None, (Match("event", "opened"),), limit=100)) == 8
    (rows,) = await store.counter_rows(CounterQuery(("opened",), 0.0, ALL_TIME, "day", domains=("example.com",),
                                                    by_time=False))
    counts = {r.key: r.count for r in rows}
    assert counts == {"opened:unique": 2, "opened:repeat": 6}
    assert sorted(await store.provider_counts("example.com", "device")) == [("mobile", "opened:repeat", 6),
                                                                           ("mobile", "opened:unique", 2)]
    assert sum(c for _, _, c in await store.provider_counts("example.com", "country")) == 8


async def test_an_unsubscribe_commits_its_list_entry_with_its_event(backend_store):
    store = backend_store()
    tracked = TrackedMessage("Q3", "example.com", 10.0, {"headers": {}}, ())
    event = opened(tracked, "u@x.test", 50.0) | {"event": "unsubscribed"}
    await store.record_engagements([Engagement(NewEvent("example.com", event),
                                               suppression=Suppression("unsubscribes", "u@x.test", 50.0))], 50.0)
    entry = await store.get_suppression("example.com", "unsubscribes", "u@x.test")
    assert entry is not None and entry.tags == ("*",)
    assert await store.count_events(EventQuery(None, (Match("event", "unsubscribed"),), limit=10)) == 1
    assert await store.suppressed("example.com", ["u@x.test"]) == {"u@x.test": "suppress-unsubscribe"}


async def test_pruning_deletes_old_tracking_rows(backend_store):
    store = backend_store()
    for i, at in enumerate((10.0, 20.0, 500.0)):
        tracked = TrackedMessage(f"P{i}", "example.com", at, {"headers": {}}, ())
        await store.track_message(tracked)
        await store.record_engagements([engagement(tracked, "r@x.test", at)], at)
    assert await store.prune_tracking(100.0, 1000) == 4  # two messages, two first opens
    assert await store.prune_tracking(100.0, 1000) == 0
    assert await store.tracked_message("P0") is None and await store.tracked_message("P2") is not None


@pytest.mark.parametrize("bad", ["", "x"])
async def test_unknown_queue_ids_read_as_none(backend_store, bad):
    store = backend_store()
    assert await store.tracked_message(bad) is None


async def test_rows_made_ahead_are_the_rows_the_store_makes(backend_store):
    """``Engagement.prepared`` (``store.events.prepare``, what the tracking endpoints make as each click comes): the
    same events, counters and tags as the store makes at the write; a first is still written as the unique one."""
    from mtad.store.events import prepare
    results = []
    store = backend_store()
    for ahead in (False, True):
        domain = f"{ahead}.example.com".lower()  # one store: each variant its own domain, message and event ids
        tracked = TrackedMessage(f"Q5{ahead}", domain, 10.0,
                                 {"headers": {"message-id": "m5@x", "subject": "Sale", "from": "s@example.com"}}, ())
        await store.track_message(tracked)
        items = []
        for i, who in enumerate(("a@x.test", "a@x.test", "b@x.test", "a@x.test")):
            event = opened(tracked, who, 300.0 + i) | {"tags": ["promo"], "id": f"ev{i}{ahead}"}
            items.append(Engagement(NewEvent(domain, event), (tracked.queue_id, who, "opened"),
                                    prepared=prepare(domain, event) if ahead else None))
        firsts = await store.record_engagements(items[:2], 302.0) + await store.record_engagements(items[2:], 303.0)
        found = await store.query_events(EventQuery((domain,), (Match("recipient", "a@x.test"),), limit=10), Cursor())
        (rows,) = await store.counter_rows(CounterQuery(("opened",), 0.0, ALL_TIME, "day", domains=(domain,),
                                                        by_time=False))
        tagged = await store.counter_rows(CounterQuery(("opened",), 0.0, ALL_TIME, "day", domains=(domain,),
                                                       tag="promo", by_time=False))
        results.append((firsts, sorted((json.loads(r.data)["id"][:3], json.loads(r.data)["flags"]["is-unique"])
                                       for r in found.rows),
                        sorted((r.key, r.count) for r in rows), [sorted((r.key, r.count) for r in t) for t in tagged],
                        sorted(await store.provider_counts(domain, "device"))))
    assert results[0] == results[1]
    firsts, unique, counts, _, _ = results[1]
    assert firsts == (True, False, True, False)
    assert unique == [("ev0", True), ("ev1", False), ("ev3", False)]
    assert counts == [("opened:repeat", 2), ("opened:unique", 2)]
