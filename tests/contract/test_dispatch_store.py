"""The InboxFirst campaigns part of the store's contract (``mtad.store.dispatch.DispatchStore``), on every backend.

- campaigns: created with contents, read, listed by list (the started_at filter keeps started ones), updated
  (contents replaced as a whole), paused;
- segments: the list's subscribed members in address order, with is_in / is_not_in clauses and seed lists merged
  (one row per address);
- dispatch: a claim leases due unpaused campaigns and starts them; ``dispatch_batch`` commits copies, their rows
  and the cursor only for the holder at that cursor while sending and unpaused (a stale worker or a pause writes
  nothing); resuming after a "crash" from the committed cursor gives every member exactly one copy;
- figures: copies by format, the events of the copies, clicks, links.
"""

from __future__ import annotations

import pytest

from mtad.base.types import Envelope, HeaderSummary, NewMessage, SendOptions
from mtad.events import shape
from mtad.store import queue as spool
from mtad.store.dispatch import CampaignChange, CampaignStarted, DispatchRow, NewContent, Segment
from mtad.store.lists import ListMember, MailingList
from mtad.store.events import NewEvent
from mtad.store.migrations import postgresql as pg_migrations, sqlite as sqlite_migrations
from tests.support.stores import BACKENDS, Opener


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    opener = Opener(request.param, tmp_path, request)
    yield opener()
    opener.close_all()


def _copy(rcpt: str) -> spool.Enqueue:
    msg = NewMessage(Envelope("s@example.com", (rcpt,), auth_user="campaigns", transport="http"),
                     b"Subject: hi\r\n\r\nhello\r\n", "outbound", "example.com",
                     HeaderSummary("id@example.com", "s@example.com", rcpt, "hi"),
                     SendOptions(tags=("inboxfirst-1",), campaigns=("inboxfirst-1",)))
    queue_id = spool.new_queue_id()
    return spool.Enqueue(queue_id, msg, shape.accepted(msg, queue_id, 5.0))


async def _lists(store) -> tuple[int, int, int]:
    main = await store.create_list(MailingList(0, "main@example.com", created_at=1.0))
    other = await store.create_list(MailingList(0, "other@example.com", created_at=1.0))
    seeds = await store.create_list(MailingList(0, "seeds@example.com", created_at=1.0))
    await store.add_members("main@example.com", [ListMember(f"m{i}@x.test") for i in range(6)]
                            + [ListMember("gone@x.test", subscribed=False)], "strict", 1.0)
    await store.add_members("other@example.com", [ListMember("m1@x.test"), ListMember("m3@x.test")], "strict", 1.0)
    await store.add_members("seeds@example.com", [ListMember("m2@x.test"), ListMember("seed@x.test")], "strict", 1.0)
    return main.id, other.id, seeds.id


async def test_campaigns_are_created_read_listed_updated_and_paused(store):
    main, _, _ = await _lists(store)
    change = CampaignChange(name="c", segment=[], dispatch={"from_email": "a@example.com"}, state="scheduled",
                            contents=[NewContent("A", "s", "html", "<p>x</p>"), NewContent("B", "t", "text", "", "y")],
                            begins_at=100.0)
    c = await store.create_dispatch_campaign(main, change, 10.0)
    assert (c.name, c.state, c.begins_at, c.segment, c.paused) == ("c", "scheduled", 100.0, (), False)
    assert [(x.name, x.format) for x in c.contents] == [("A", "html"), ("B", "text")]
    assert (await store.dispatch_campaign(c.id)) == c
    assert [x.id for x in await store.list_dispatch_campaigns(main)] == [c.id]
    assert await store.list_dispatch_campaigns(main, 0.0) == []  # not started
    up = await store.update_dispatch_campaign(c.id, CampaignChange(name="d", contents=[NewContent("C", "u", "both", "h", "t")]),
                                     11.0)
    assert up.name == "d" and [x.name for x in up.contents] == ["C"] and up.updated_at == 11.0
    assert (await store.set_campaign_paused(c.id, True, 12.0)).paused
    assert await store.dispatch_campaign(c.id + 1000) is None
    assert await store.update_dispatch_campaign(c.id + 1000, CampaignChange(name="x"), 1.0) is None


async def test_segments_filter_and_merge_seed_lists_in_address_order(store):
    main, other, seeds = await _lists(store)
    every = await store.segment_members(Segment(main), "", 100)
    assert [m.address for m, _ in every] == [f"m{i}@x.test" for i in range(6)]  # the unsubscribed one is left out
    inside = await store.segment_members(Segment(main, is_in=(other,)), "", 100)
    assert [m.address for m, _ in inside] == ["m1@x.test", "m3@x.test"]
    outside = await store.segment_members(Segment(main, is_not_in=(other,), seeds=(seeds,)), "m0@x.test", 100)
    assert [(m.address, seed) for m, seed in outside] == [
        ("m2@x.test", False), ("m4@x.test", False), ("m5@x.test", False), ("seed@x.test", True)]
    assert [m.address for m, _ in await store.segment_members(Segment(main), "m1@x.test", 2)] == ["m2@x.test",
                                                                                                   "m3@x.test"]


async def test_dispatch_is_exactly_once_for_the_holder_and_stops_on_pause(store):
    main, _, _ = await _lists(store)
    c = await store.create_dispatch_campaign(main, CampaignChange(name="c", segment=[], state="scheduled", begins_at=50.0,
                                                         contents=[NewContent("A", "s", "html", "x")]), 10.0)
    assert await store.claim_campaigns("w1", 40.0, 5) == [] and await store.due_campaigns(40.0, 5) == []
    assert await store.due_campaigns(60.0, 5) == [c.id]
    [job] = await store.claim_campaigns("w1", 60.0, 5, lease_until=70.0)
    assert (job.id, job.cursor) == (c.id, "")
    got = await store.dispatch_campaign(c.id)
    assert got.state == "sending" and got.started_at == 60.0
    with pytest.raises(CampaignStarted):  # an update made for a scheduled campaign: refused now, nothing written
        await store.update_dispatch_campaign(c.id, CampaignChange(name="late", state="scheduled"), 60.5)
    assert (await store.dispatch_campaign(c.id)).name == "c"
    assert await store.claim_campaigns("w2", 65.0, 5) == []  # held
    page = await store.segment_members(Segment(main), "", 2)
    copies = [_copy(m.address) for m, _ in page]
    rows = [DispatchRow(m.address, x.queue_id, got.contents[0].id, "html") for (m, _), x in zip(page, copies)]
    assert await store.dispatch_batch(c.id, "w1", "", "m1@x.test", copies, rows, False, 61.0) == "written"
    assert await store.dispatch_batch(c.id, "w1", "", "m1@x.test", copies, rows, False, 61.0) == "lost"  # stale cursor
    # the lease runs out ("a crash"): w2 resumes from the committed cursor
    [again] = await store.claim_campaigns("w2", 80.0, 5, lease_until=200.0)
    assert again.cursor == "m1@x.test" and again.copies == 2
    await store.set_campaign_paused(c.id, True, 81.0)
    page = await store.segment_members(Segment(main), "m1@x.test", 10)
    copies = [_copy(m.address) for m, _ in page]
    rows = [DispatchRow(m.address, x.queue_id, got.contents[0].id, "html") for (m, _), x in zip(page, copies)]
    assert await store.dispatch_batch(c.id, "w2", "m1@x.test", "m5@x.test", copies, rows, True, 82.0) == "stopped"
    assert await store.release_campaign(c.id, "w2")
    assert await store.claim_campaigns("w2", 83.0, 5) == []  # paused: not claimed
    await store.set_campaign_paused(c.id, False, 84.0)
    [resumed] = await store.claim_campaigns("w3", 85.0, 5)
    assert await store.dispatch_batch(c.id, "w3", "m1@x.test", "m5@x.test", copies, rows, True, 86.0) == "written"
    done = await store.dispatch_campaign(c.id)
    assert (done.state, done.finished_at, done.copies) == ("finished", 86.0, 6)
    figures = await store.campaign_figures(c.id)
    assert [(s.format, s.count) for s in figures.sent] == [("html", 6)]
    assert [(e.event, e.total, e.unique) for e in figures.events] == [("accepted", 6, 6)]
    assert sum(n for _, n in figures.in_queue) == 6
    assert await store.campaign_link_counts(c.id) == []
    await store.record_campaign_links(c.id, [(1, "https://b.example/"), (1, "https://A.example/")])
    await store.record_campaign_links(c.id, [(1, "https://b.example/")])
    assert [x.url for x in await store.campaign_links(c.id)] == ["https://A.example/", "https://b.example/"]


async def test_a_split_test_waits_for_its_decision_then_sends_the_rest(store):
    main, _, _ = await _lists(store)
    c = await store.create_dispatch_campaign(main, CampaignChange(name="ab", segment=[], state="scheduled", begins_at=1.0,
                                                         contents=[NewContent("A", "s", "html", "a"),
                                                                   NewContent("B", "t", "html", "b")]), 1.0)
    [job] = await store.claim_campaigns("w1", 10.0, 5, lease_until=100.0)
    assert await store.start_split(c.id, "w1") and not await store.start_split(c.id, "w1")
    assert (await store.dispatch_campaign(c.id)).ab_state == "split_testing"
    copies = [_copy("m0@x.test")]
    rows = [DispatchRow("m0@x.test", copies[0].queue_id, c.id, "html")]
    written = await store.dispatch_batch(c.id, "w1", "", "m5@x.test", copies, rows, True, 11.0, decide_at=20.0)
    assert written == "written"
    got = await store.dispatch_campaign(c.id)
    assert (got.state, got.ab_state, got.ab_decide_at, got.copies) == ("sending", "decision_delay", 20.0, 1)
    assert await store.claim_campaigns("w1", 15.0, 5) == []  # the decision is not due yet
    [again] = await store.claim_campaigns("w2", 21.0, 5, lease_until=100.0)
    assert again.cursor == "" and again.copies == 1  # the second walk starts over
    winner = got.contents[1].id
    assert not await store.decide_winner(c.id, "w1", winner, [], 22.0)  # not the holder
    assert await store.decide_winner(c.id, "w2", winner, [{"content_id": winner, "snapshot": {"opens_unique": 1}}],
                                     22.0)
    got = await store.dispatch_campaign(c.id)
    assert (got.ab_state, got.winner_id) == ("finished", winner)
    assert got.ab_snapshots == ({"content_id": winner, "snapshot": {"opens_unique": 1}},)


def _event(kind: str, copy: spool.Enqueue, ts: float, **extra) -> NewEvent:
    rcpt = copy.message.envelope.recipients[0]
    return NewEvent("example.com", shape.base_event(
        kind, timestamp=ts, recipient=rcpt, queue_id=copy.queue_id, message={"headers": {"message-id": "id@x"}},
        options={"campaigns": ["inboxfirst-1"]}, envelope={}, flags={}, extra=extra))


@pytest.fixture(params=BACKENDS)
def opener(request, tmp_path):
    o = Opener(request.param, tmp_path, request)
    yield o
    o.close_all()


async def test_figures_and_link_counts_are_counted_as_events_arrive_and_a_migration_recounts_them(opener):
    store = opener()
    main, _, _ = await _lists(store)
    c = await store.create_dispatch_campaign(main, CampaignChange(
        name="f", segment=[], state="scheduled", begins_at=1.0,
        contents=[NewContent("A", "s", "html", "a"), NewContent("B", "t", "text", "", "b")]), 1.0)
    a, b = (x.id for x in c.contents)
    await store.claim_campaigns("w1", 10.0, 5, lease_until=100.0)
    who = ["m0@x.test", "m1@x.test", "m2@x.test", "m3@x.test", "m4@x.test", "seed@x.test"]
    copies = [_copy(w) for w in who]
    rows = [DispatchRow(w, x.queue_id, a if i < 3 or i == 5 else b, "html" if i < 3 or i == 5 else "text", i == 5)
            for i, (w, x) in enumerate(zip(who, copies))]
    assert await store.dispatch_batch(c.id, "w1", "", "seed@x.test", copies, rows, True, 11.0) == "written"
    await store.record_campaign_links(c.id, [(a, "https://a.example/1"), (a, "https://a.example/2"),
                                             (b, "https://b.example/")])
    m0, m1, m2, m3, _, seed = copies
    u1, u2 = "https://a.example/1", "https://a.example/2"
    await store.record_events([
        _event("delivered", m0, 20), _event("delivered", m1, 20), _event("opened", m0, 21), _event("opened", m0, 22),
        _event("clicked", m0, 23, url=u2), _event("clicked", m0, 24, url=u1),
        _event("failed", m2, 20, severity="permanent", reason="bounce"),
        _event("failed", m3, 20, severity="temporary"), _event("opened", seed, 21), _event("clicked", seed, 22, url=u1),
        _event("delivered", _copy("stranger@x.test"), 20)])  # not a campaign copy: counts for nothing here
    await store.record_events([  # a later batch: m0's repeats are not unique any more
        _event("delivered", m3, 30), _event("opened", m1, 31), _event("clicked", m0, 32, url=u1),
        _event("clicked", m1, 33, url=u1), _event("clicked", m1, 34, url=u2), _event("opened", m0, 35),
        _event("unsubscribed", m3, 36), _event("complained", m3, 37),
        _event("clicked", m3, 38, url="https://x.example/")])

    async def read():
        f = await store.campaign_figures(c.id)
        return (sorted((s.content_id, s.format, s.seed, s.count) for s in f.sent),
                sorted((e.content_id, e.event, e.severity, e.total, e.unique) for e in f.events),
                f.unique_by_link, await store.campaign_link_counts(c.id))
    sent, events, by_link, links = await read()
    assert sent == [(a, "html", False, 3), (a, "html", True, 1), (b, "text", False, 2)]
    assert events == sorted([
        (a, "accepted", "", 3, 3), (b, "accepted", "", 2, 2), (a, "delivered", "", 2, 2), (b, "delivered", "", 1, 1),
        (a, "opened", "", 4, 2), (a, "clicked", "", 5, 2), (a, "failed", "permanent", 1, 1),
        (b, "failed", "temporary", 1, 1), (b, "unsubscribed", "", 1, 1), (b, "complained", "", 1, 1),
        (b, "clicked", "", 1, 1)])
    assert by_link == ((a, 4), (b, 1))  # (m0, u1) (m0, u2) (m1, u1) (m1, u2); (m3, x)
    # unique: the subscriber's first click in the campaign (m0: u2, m1: u1, m3: x)
    assert [(x.content_id, x.url, x.total, x.unique, x.unique_by_link) for x in links] == [
        (a, u1, 3, 1, 2), (a, u2, 2, 1, 2), (b, "https://x.example/", 1, 1, 1)]
    # a store migrated from before the counters (or again) gets the same figures from its events
    before = (sent, events, by_link, links)
    conn = opener.direct()  # the step recounts from the events whatever the tables hold (it may run again)
    migrations = pg_migrations if opener.backend == "postgresql" else sqlite_migrations
    [step] = [s for s in migrations.STEPS if s.description.startswith("if_campaign_counts")]
    step.apply(conn)
    assert await read() == before
    # and counts on from there
    await store.record_events([_event("opened", m1, 40), _event("opened", m2, 41)])
    _, events, _, _ = await read()
    assert (a, "opened", "", 6, 3) in events


def _machine(event: NewEvent) -> NewEvent:
    event.data["flags"] = {"is-machine": True}  # an Apple Mail Privacy Protection fetch, a link scanner
    return event


async def test_machines_opens_and_clicks_count_in_totals_never_as_a_persons_first(opener):
    store = opener()
    main, _, _ = await _lists(store)
    c = await store.create_dispatch_campaign(main, CampaignChange(
        name="m", segment=[], state="scheduled", begins_at=1.0, contents=[NewContent("A", "s", "html", "a")]), 1.0)
    (a,) = (x.id for x in c.contents)
    await store.claim_campaigns("w1", 10.0, 5, lease_until=100.0)
    copies = [_copy(w) for w in ("m0@x.test", "m1@x.test")]
    rows = [DispatchRow(w, x.queue_id, a, "html", False) for w, x in zip(("m0@x.test", "m1@x.test"), copies)]
    assert await store.dispatch_batch(c.id, "w1", "", "", copies, rows, True, 11.0) == "written"
    url = "https://a.example/1"
    await store.record_campaign_links(c.id, [(a, url)])
    m0, m1 = copies
    # the machine fetches first (as Apple's proxy does), then m0 opens and clicks for real; m1's only by machine
    await store.record_events([_machine(_event("opened", m0, 20)), _machine(_event("clicked", m0, 21, url=url)),
                               _machine(_event("opened", m1, 22))])
    await store.record_events([_event("opened", m0, 30), _event("clicked", m0, 31, url=url)])

    async def read():
        f = await store.campaign_figures(c.id)
        return (sorted((e.event, e.severity, e.total, e.unique) for e in f.events if e.event in ("opened", "clicked")),
                f.unique_by_link, [(x.url, x.total, x.unique, x.unique_by_link)
                                   for x in await store.campaign_link_counts(c.id)])
    events, by_link, links = await read()
    assert events == [("clicked", "", 1, 1), ("clicked", "machine", 1, 0),
                      ("opened", "", 1, 1), ("opened", "machine", 2, 0)]
    assert by_link == ((a, 1),) and links == [(url, 2, 1, 1)]
    # the recount of the migration step gives the same figures
    conn = opener.direct()
    migrations = pg_migrations if opener.backend == "postgresql" else sqlite_migrations
    [step] = [s for s in migrations.STEPS if s.description.startswith("if_campaign_counts")]
    step.apply(conn)
    assert await read() == (events, by_link, links)
