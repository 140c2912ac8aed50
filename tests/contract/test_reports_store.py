"""``ReportStore`` (``mtad.store.reports``) on every backend (SQLite and PostgreSQL): finding the delivered recipients
of a message by queue id and by Message-ID, and committing a report with its events and list entries in one
transaction (all or nothing; allowlisted addresses skipped)."""

from __future__ import annotations

import pytest

from mtad.base.types import Envelope, HeaderSummary, NewMessage
from mtad.events import shape
from mtad.store import queue as spool
from mtad.store.eventquery import EventQuery, Match
from mtad.store.events import NewEvent
from mtad.store.reports import ListEntry
from mtad.store.suppressions import Suppression
from tests.support.stores import BACKENDS, Opener


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    opener = Opener(request.param, tmp_path, request)
    yield opener()
    opener.close_all()


def delivered(queue_id: str, rcpt: str, now: float, attempt: int = 1, message_id: str = "m1@example.com") -> NewEvent:
    event = shape.base_event("delivered", timestamp=now, recipient=rcpt, queue_id=queue_id,
                             message=shape.message_part({"message-id": message_id, "subject": "s"}, 10),
                             options={"tags": ["t1"]}, envelope={"sender": "s@example.com", "targets": rcpt},
                             flags={"is-delayed-bounce": False},
                             extra={"delivery-status": {"code": 250, "attempt-no": attempt}})
    return NewEvent("example.com", event)


def report(queue_id: str, events: tuple[NewEvent, ...] = ()) -> spool.Enqueue:
    msg = NewMessage(Envelope("", ("fbl@feedback.test",)), b"Subject: report\r\n\r\nhi\r\n", "inbound", "example.com",
                     HeaderSummary("r1@isp.test", "isp@isp.test", "fbl@feedback.test", "report"))
    return spool.Enqueue(queue_id, msg, events, (), ())


async def test_the_delivered_recipients_of_a_message_by_queue_id_and_message_id(store):
    qid, other = spool.new_queue_id(), spool.new_queue_id()
    accepted = shape.base_event("accepted", timestamp=1.0, recipient="c@x.test", queue_id=qid,
                                message=shape.message_part({"message-id": "m1@example.com"}, 10), options={},
                                envelope={}, flags={})
    await store.record_events([NewEvent("example.com", accepted), delivered(qid, "a@x.test", 2.0),
                               delivered(qid, "B@x.test", 2.0), delivered(qid, "b@x.test", 3.0, attempt=2),
                               delivered(other, "a@x.test", 2.0, message_id="m2@example.com")])
    found = await store.sent_by_queue_id(qid)
    assert sorted((r.recipient.lower(), r.domain, r.event["delivery-status"]["attempt-no"]) for r in found) == [
        ("a@x.test", "example.com", 1), ("b@x.test", "example.com", 2)]  # newest delivery per recipient; no accepted
    assert {r.queue_id for r in found} == {qid} and found[0].event["tags"] == ["t1"]
    by_id = await store.sent_by_message_id("m1@example.com")
    assert sorted(r.recipient.lower() for r in by_id) == ["a@x.test", "b@x.test"]
    assert [r.queue_id for r in await store.sent_by_message_id("m2@example.com")] == [other]
    assert await store.sent_by_queue_id(spool.new_queue_id()) == ()
    assert await store.sent_by_message_id("nobody@example.com") == ()


async def test_a_report_commits_with_its_events_and_list_entries_or_not_at_all(store):
    await store.add_suppressions("example.com", [Suppression("whitelists", "vip@x.test", 1.0)])
    qid = spool.new_queue_id()
    complained = shape.complained(delivered(qid, "a@x.test", 2.0).data, 5.0)
    entries = (ListEntry("example.com", Suppression("complaints", "a@x.test", 5.0)),
               ListEntry("example.com", Suppression("complaints", "vip@x.test", 5.0)),
               ListEntry("example.com", Suppression("bounces", "gone@x.test", 5.0, code="550", error="no such user")))
    report_id = spool.new_queue_id()
    added = await store.commit_report(report(report_id, (NewEvent("example.com", complained),)), entries, 100.0, 5.0)
    assert added == 2  # the allowlisted address is not listed
    kept = await store.message(report_id)
    assert kept is not None and kept.direction == "inbound" and kept.stored_until == 100.0
    assert await store.list_queue() == ()  # no work: never routed, never delivered
    assert await store.count_events(EventQuery(None, (Match("event", "complained"),), limit=10)) == 1
    assert (await store.get_suppression("example.com", "complaints", "a@x.test")) is not None
    assert (await store.get_suppression("example.com", "complaints", "vip@x.test")) is None
    assert (await store.get_suppression("example.com", "bounces", "gone@x.test")).error == "no such user"

    # The same queue id again: refused, and nothing of it is written (its entry, its event).
    again = (ListEntry("example.com", Suppression("complaints", "c@x.test", 6.0)),)
    with pytest.raises(Exception):
        await store.commit_report(report(report_id, (NewEvent("example.com", complained | {"id": "other"}),)), again,
                                  100.0, 6.0)
    assert (await store.get_suppression("example.com", "complaints", "c@x.test")) is None
    assert await store.count_events(EventQuery(None, (Match("event", "complained"),), limit=10)) == 1
    assert await store.expire_stored(101.0) == 1 and await store.message(report_id) is None  # kept, then expired


async def test_an_outcome_is_recorded_once_per_message_recipient_and_kind(store):
    """A replayed report (the same queue id, recipient and kind): the report is kept, its outcome not recorded
    again; another kind for the same recipient is. A list outcome sets the member unsubscribed."""
    from mtad.store.lists import ListMember, MailingList
    from mtad.store.reports import ReportOutcome
    qid = spool.new_queue_id()
    sent = delivered(qid, "a@x.test", 2.0).data

    def bounce(now: float) -> ReportOutcome:
        return ReportOutcome((qid, "a@x.test", "bounce"),
                             (NewEvent("example.com", shape.delayed_bounce(sent, now, permanent=True, code=550,
                                                                           enhanced="5.1.1", message="gone",
                                                                           mx_host="mx")),),
                             (ListEntry("example.com", Suppression("bounces", "a@x.test", now, code="550")),))
    first, replay = spool.new_queue_id(), spool.new_queue_id()
    assert await store.commit_report(report(first), (), 100.0, 5.0, [bounce(5.0)]) == 1
    assert await store.commit_report(report(replay), (), 100.0, 6.0, [bounce(6.0)]) == 0
    assert (await store.message(replay)) is not None  # the replay is kept
    assert await store.count_events(EventQuery(None, (Match("event", "failed"),), limit=10)) == 1
    complaint = ReportOutcome((qid, "a@x.test", "complaint"), (NewEvent("example.com", shape.complained(sent, 7.0)),))
    await store.commit_report(report(spool.new_queue_id()), (), 100.0, 7.0, [complaint])
    assert await store.count_events(EventQuery(None, (Match("event", "complained"),), limit=10)) == 1

    lst = await store.create_list(MailingList(0, "news@example.com", created_at=1.0))
    await store.add_members("news@example.com", [ListMember("a@x.test")], "strict", 1.0)
    left = shape.about_delivered("unsubscribed", sent, 8.0, {}, {"mailing-list": {"address": lst.address}})
    member = ReportOutcome((qid, "a@x.test", "unsubscribe"), (NewEvent("example.com", left),),
                           member=(lst.id, "a@x.test"))
    for _ in range(2):
        await store.commit_report(report(spool.new_queue_id()), (), 100.0, 8.0, [member])
    assert (await store.get_member("news@example.com", "a@x.test")).subscribed is False
    assert await store.count_events(EventQuery(None, (Match("event", "unsubscribed"),), limit=10)) == 1
    assert (await store.get_suppression("example.com", "unsubscribes", "a@x.test")) is None  # a list's own matter

    # past event retention the keys go with the events (a report then finds no delivered event to match anyway)
    await store.prune_events(50.0, 1000)
    await store.commit_report(report(spool.new_queue_id()), (), 100.0, 60.0, [bounce(60.0)])
    assert await store.count_events(EventQuery(None, (Match("event", "failed"),), limit=10)) == 1  # the new one
