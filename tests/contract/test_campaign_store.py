"""The campaign store's contract (``mtad.store.campaigns``) on every backend (SQLite and PostgreSQL):

- campaigns: create (unique id per domain, the domain's limit), get, list (limit/skip, oldest first), rename (name,
  id), delete with all its data; ``missing_campaigns`` names what a send may not use;
- events count for the campaigns they name in the same write that records them: counters per kind (submitted,
  delivered, bounced, dropped, opened, clicked, unsubscribed, complained) equal to the index rows, events of an
  unknown or deleted campaign and system events count for nothing, events sent under a former id still count;
  a write that fails counts nothing;
- reports: grouped by any combination of groupings with distinct counts, ordered by totals, paged, filtered by
  place; stats totals and uniques, grouped; a page of events with chained filters, their number, and an event
  the log pruned still listed (without its JSON).
"""

from __future__ import annotations

import pytest

from mtad.events import shape
from mtad.store.campaigns import CampaignEventQuery, CampaignExists, ReportQuery
from mtad.store.events import NewEvent
from tests.support.stores import backend_store  # noqa: F401 - the fixture

DOMAIN = "example.com"
T0 = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 UTC


def event(kind: str, recipient: str, campaigns: tuple[str, ...] = ("c1",), at: float = T0, **extra) -> dict:
    return shape.base_event(kind, timestamp=at, recipient=recipient, queue_id="q1",
                            message=shape.message_part({"message-id": "m@x"}, 10),
                            options={"campaigns": list(campaigns), "tags": ["t"]}, envelope={}, flags={},
                            extra=extra or None)


def click(recipient: str, url: str, country: str = "US", city: str = "Chicago", at: float = T0, **kw) -> dict:
    return event("clicked", recipient, at=at, url=url,
                 geolocation={"country": country, "region": "IL" if city == "Chicago" else "CA", "city": city}, **kw)


async def record(store, *events: dict, system: bool = False) -> None:
    await store.record_events([NewEvent(DOMAIN, e, system) for e in events])


async def test_campaigns_are_created_listed_renamed_and_deleted(backend_store):
    store = backend_store()
    made = await store.create_campaign(DOMAIN, "c1", "First", T0)
    assert (made.id, made.name, made.created_at, made.count("delivered")) == ("c1", "First", T0, 0)
    await store.create_campaign(DOMAIN, "c2", "Second", T0 + 1)
    await store.create_campaign("other.test", "c1", "Same id, other domain", T0)
    with pytest.raises(CampaignExists):
        await store.create_campaign(DOMAIN, "c1", "Again", T0)
    assert await store.create_campaign(DOMAIN, "c3", "Over the limit", T0, limit=2) is None
    total, page = await store.list_campaigns(DOMAIN, limit=1, skip=1)
    assert total == 2 and [c.id for c in page] == ["c2"]
    assert (await store.get_campaign(DOMAIN, "c1")).name == "First"
    assert await store.get_campaign(DOMAIN, "nope") is None

    renamed = await store.update_campaign(DOMAIN, "c1", name="Renamed", new_id="c1-new")
    assert (renamed.id, renamed.name) == ("c1-new", "Renamed")
    assert await store.get_campaign(DOMAIN, "c1") is None
    with pytest.raises(CampaignExists):
        await store.update_campaign(DOMAIN, "c2", new_id="c1-new")
    assert await store.update_campaign(DOMAIN, "nope", name="x") is None
    assert await store.missing_campaigns(DOMAIN, ["c1-new", "c1", "c2", "zz"]) == ("c1", "zz")

    assert await store.delete_campaign(DOMAIN, "c2") is True
    assert await store.delete_campaign(DOMAIN, "c2") is False
    assert [c.id for c in (await store.list_campaigns(DOMAIN, 100, 0))[1]] == ["c1-new"]
    assert (await store.get_campaign("other.test", "c1")).name == "Same id, other domain"
    total, every = await store.list_campaigns(None, 100, 0)  # every domain's (the command line's list)
    assert total == 2 and {(c.domain, c.id) for c in every} == {(DOMAIN, "c1-new"), ("other.test", "c1")}


async def test_events_count_for_their_campaigns_in_the_write_that_records_them(backend_store):
    store = backend_store()
    await store.create_campaign(DOMAIN, "c1", "One", T0)
    await store.create_campaign(DOMAIN, "c2", "Two", T0)
    await record(store,
                 event("accepted", "a@x.test", ("c1", "c2"), direction="outgoing"),
                 event("accepted", "b@x.test", direction="outgoing"),
                 event("accepted", "in@x.test", direction="incoming"),  # not a send
                 event("delivered", "a@x.test", ("c1", "c2")),
                 event("failed", "b@x.test", severity="permanent", reason="bounce"),
                 event("failed", "c@x.test", severity="permanent", reason="delayed-bounce"),
                 event("failed", "d@x.test", severity="permanent", reason="suppress-bounce"),
                 event("failed", "e@x.test", severity="temporary", reason="generic"),  # not final
                 event("opened", "a@x.test"), event("opened", "a@x.test"),
                 click("a@x.test", "https://x.test/1"),
                 event("unsubscribed", "a@x.test"), event("complained", "a@x.test"),
                 event("rejected", "f@x.test"),  # never accepted
                 event("delivered", "g@x.test", ("unknown",)))
    await record(store, event("delivered", "sys@x.test"), system=True)  # a DSN of mtad's: not the user's mail
    c1 = await store.get_campaign(DOMAIN, "c1")
    assert dict(c1.counts) == {"submitted": 2, "delivered": 1, "bounced": 2, "dropped": 1, "opened": 2,
                               "clicked": 1, "unsubscribed": 1, "complained": 1}
    assert dict((await store.get_campaign(DOMAIN, "c2")).counts) == {"submitted": 1, "delivered": 1}
    [stats] = await store.campaign_stats(DOMAIN, "c1")
    assert stats.total == dict(c1.counts)
    assert (stats.opened_recipients, stats.clicked_recipients, stats.clicked_links) == (1, 1, 1)
    assert await store.campaign_events(DOMAIN, "c1", CampaignEventQuery(), count=True) == 9  # all but submitted

    # A failing write counts nothing of what it recorded.
    with pytest.raises(Exception):
        await store.record_events([NewEvent(DOMAIN, event("delivered", "z@x.test")),
                                   NewEvent(DOMAIN, event("delivered", "dup@x.test") | {"id": "dup"}),
                                   NewEvent(DOMAIN, event("delivered", "dup@x.test") | {"id": "dup"})])
    assert (await store.get_campaign(DOMAIN, "c1")).count("delivered") == 1


async def test_a_renamed_campaign_keeps_counting_and_a_deleted_one_starts_again_from_nothing(backend_store):
    store = backend_store()
    await store.create_campaign(DOMAIN, "old", "Campaign", T0)
    await record(store, event("delivered", "a@x.test", ("old",)))
    await store.update_campaign(DOMAIN, "old", new_id="new")
    await record(store, event("opened", "a@x.test", ("old",)),  # a message sent before the rename
                 event("opened", "b@x.test", ("new",)))
    await record(store, event("clicked", "b@x.test", ("old", "new"), url="https://x.test"))  # both: once
    assert dict((await store.get_campaign(DOMAIN, "new")).counts) == {"delivered": 1, "opened": 2, "clicked": 1}
    assert await store.missing_campaigns(DOMAIN, ["old"]) == ("old",)  # no new sends under the former id

    assert await store.delete_campaign(DOMAIN, "new")
    await record(store, event("opened", "a@x.test", ("new",)))  # events of a deleted campaign count nowhere
    await store.create_campaign(DOMAIN, "new", "Again", T0)
    assert dict((await store.get_campaign(DOMAIN, "new")).counts) == {}
    assert await store.campaign_events(DOMAIN, "new", CampaignEventQuery(), count=True) == 0
    # the former id now names nothing: the new "old" campaign gets only its own events
    await store.create_campaign(DOMAIN, "old", "Reused id", T0)
    await record(store, event("clicked", "c@x.test", ("old",), url="https://x.test"))
    assert dict((await store.get_campaign(DOMAIN, "old")).counts) == {"clicked": 1}
    assert dict((await store.get_campaign(DOMAIN, "new")).counts) == {}


async def test_reports_group_count_order_page_and_filter(backend_store):
    store = backend_store()
    await store.create_campaign(DOMAIN, "c1", "One", T0)
    hour = 3600.0
    await record(store,
                 click("a@x.test", "https://x.test/1"), click("a@x.test", "https://x.test/1", at=T0 + hour),
                 click("a@x.test", "https://x.test/2"), click("b@x.test", "https://x.test/1"),
                 click("c@y.test", "https://x.test/3", country="FR", city="Paris", at=T0 + 86400 * 30),
                 event("opened", "a@x.test"), event("delivered", "a@x.test"))

    by_link = await store.campaign_report(DOMAIN, "c1", ReportQuery("clicked", ("link",), ("recipient",)))
    assert [(r.groups, r.total, r.uniques) for r in by_link] == [
        (("https://x.test/1",), 3, (2,)), (("https://x.test/2",), 1, (1,)), (("https://x.test/3",), 1, (1,))]
    spy = await store.campaign_report(DOMAIN, "c1", ReportQuery("clicked", ("link", "recipient")))
    assert [(r.groups, r.total) for r in spy] == [
        (("https://x.test/1", "a@x.test"), 2), (("https://x.test/1", "b@x.test"), 1),
        (("https://x.test/2", "a@x.test"), 1), (("https://x.test/3", "c@y.test"), 1)]
    page2 = await store.campaign_report(DOMAIN, "c1", ReportQuery("clicked", ("link", "recipient"), limit=2,
                                                                  offset=2))
    assert [r.groups for r in page2] == [r.groups for r in spy[2:]]
    assert await store.campaign_report(DOMAIN, "c1", ReportQuery("clicked", ("link", "recipient")), count=True) == 4

    by_domain = await store.campaign_report(DOMAIN, "c1", ReportQuery("clicked", ("domain",), ("link", "recipient")))
    assert [(r.groups, r.total, r.uniques) for r in by_domain] == [(("x.test",), 4, (2, 2)), (("y.test",), 1, (1, 1))]
    chicago = await store.campaign_report(DOMAIN, "c1", ReportQuery("clicked", ("recipient",), city="chicago"))
    assert [(r.groups, r.total) for r in chicago] == [(("a@x.test",), 3), (("b@x.test",), 1)]
    assert await store.campaign_report(DOMAIN, "c1", ReportQuery("clicked", ("recipient",), country="FR"),
                                       count=True) == 1
    times = await store.campaign_report(DOMAIN, "c1", ReportQuery("clicked", ("month", "day", "hour", "daily_hour")))
    first = int(T0 // 3600)
    assert [(r.groups, r.total) for r in times] == [
        ((2023 * 12 + 10, first // 24, first, first % 24), 3),
        ((2023 * 12 + 10, first // 24, first + 1, (first + 1) % 24), 1),
        ((2023 * 12 + 11, first // 24 + 30, first + 720, first % 24), 1)]
    [everything] = await store.campaign_report(DOMAIN, "c1", ReportQuery("clicked", (), ("link", "recipient")))
    assert (everything.total, everything.uniques) == (5, (3, 3))
    assert await store.campaign_report(DOMAIN, "c1", ReportQuery("complained")) == ()
    assert await store.campaign_report(DOMAIN, "nope", ReportQuery("clicked")) is None

    by_hour = await store.campaign_stats(DOMAIN, "c1", "daily_hour")
    assert [(r.group, r.total["clicked"], r.total["opened"], r.total["delivered"], r.clicked_recipients)
            for r in by_hour] == [(first % 24, 4, 1, 1, 3), ((first + 1) % 24, 1, 0, 0, 1)]  # 30 days later too
    cities = await store.campaign_stats(DOMAIN, "c1", "city", limit=1, offset=1)
    assert [(r.group, r.total["clicked"], r.clicked_links) for r in cities] == [("Paris", 1, 1)]
    assert await store.campaign_stats(DOMAIN, "nope") is None


async def test_a_page_of_events_filters_by_kinds_recipient_and_place(backend_store):
    store = backend_store()
    await store.create_campaign(DOMAIN, "c1", "One", T0)
    await record(store, event("delivered", "A@x.test", at=T0), event("opened", "a@x.test", at=T0 + 1),
                 click("a@x.test", "https://x.test/1", at=T0 + 2), click("b@x.test", "https://x.test/1", at=T0 + 3,
                                                                         country="FR", city="Paris"))
    rows = await store.campaign_events(DOMAIN, "c1", CampaignEventQuery())
    assert [(r.event, r.recipient) for r in rows] == [("clicked", "b@x.test"), ("clicked", "a@x.test"),
                                                      ("opened", "a@x.test"), ("delivered", "a@x.test")]
    assert '"tags":["t"]' in rows[0].data.replace(" ", "") and rows[0].link == "https://x.test/1"
    chained = CampaignEventQuery(events=("clicked", "opened"), recipient="A@X.test")
    assert [r.event for r in await store.campaign_events(DOMAIN, "c1", chained)] == ["clicked", "opened"]
    assert await store.campaign_events(DOMAIN, "c1", chained, count=True) == 2
    french = await store.campaign_events(DOMAIN, "c1", CampaignEventQuery(country="fr", region="ca"))
    assert [(r.recipient, r.country, r.city) for r in french] == [("b@x.test", "FR", "Paris")]
    assert [r.event for r in await store.campaign_events(DOMAIN, "c1", CampaignEventQuery(limit=1, offset=3))] == \
        ["delivered"]
    assert await store.campaign_events(DOMAIN, "nope", CampaignEventQuery()) is None

    # The event log's retention prunes events; the campaign keeps its index rows (without the JSON).
    while await store.prune_events(T0 + 1.5, 100):
        pass
    rows = await store.campaign_events(DOMAIN, "c1", CampaignEventQuery())
    assert [(r.event, r.data is None) for r in rows] == [("clicked", False), ("clicked", False), ("opened", True),
                                                         ("delivered", True)]


async def test_machines_opens_and_clicks_count_in_totals_never_in_unique_figures(backend_store):
    # flags.is-machine (Apple Mail Privacy Protection, link scanners: events.engagement): totals, not uniques
    store = backend_store()
    await store.create_campaign(DOMAIN, "c1", "One", T0)

    def machine(e: dict) -> dict:
        return {**e, "flags": {**e["flags"], "is-machine": True}}
    await record(store,
                 machine(event("opened", "mpp@x.test")), machine(event("opened", "a@x.test")), event("opened", "a@x.test"),
                 machine(click("scan@x.test", "https://x.test/scanned")), click("a@x.test", "https://x.test/1"))
    c1 = await store.get_campaign(DOMAIN, "c1")
    assert (c1.count("opened"), c1.count("clicked")) == (3, 2)
    [stats] = await store.campaign_stats(DOMAIN, "c1")
    assert (stats.total["opened"], stats.total["clicked"]) == (3, 2)
    assert (stats.opened_recipients, stats.clicked_recipients, stats.clicked_links) == (1, 1, 1)
    [grouped] = await store.campaign_stats(DOMAIN, "c1", groupby="domain")
    assert (grouped.opened_recipients, grouped.clicked_recipients, grouped.clicked_links) == (1, 1, 1)
    rows = await store.campaign_report(DOMAIN, "c1", ReportQuery("clicked", ("link",), ("recipient",)))
    assert sorted((r.groups[0], r.total, r.uniques[0]) for r in rows) == [
        ("https://x.test/1", 1, 1), ("https://x.test/scanned", 1, 0)]
    opens = await store.campaign_report(DOMAIN, "c1", ReportQuery("opened", (), ("recipient",)))
    assert [(r.total, r.uniques) for r in opens] == [(3, (1,))]
