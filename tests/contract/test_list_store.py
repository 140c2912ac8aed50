"""The mailing-list part of the store's contract (``mtad.store.lists.ListStore``), run on every backend.

- lists: create (an address in use is refused), read with ``members_count``, rename (members follow), delete
  (members go); pages in address order, both ways;
- members: strict add refuses a duplicate and writes nothing, ``ignore`` keeps the old, ``upsert`` replaces;
  update and delete; pages filtered by ``subscribed``;
- expansions: a message committed with ``Enqueue.lists`` has one expansion row; ``expand_batch`` commits copies
  with the cursor's move only for the holder at that cursor (a stale worker writes nothing); a claim is a lease;
  resuming from the committed cursor after a "crash" makes each member's copy exactly once.
"""

from __future__ import annotations

import dataclasses

import pytest

from mtad.base.types import Envelope, HeaderSummary, NewMessage, SendOptions
from mtad.events import shape
from mtad.store import queue as spool
from mtad.store.lists import ListChange, ListExists, ListMember, MailingList, MemberChange, MemberExists
from tests.support.stores import BACKENDS, Opener


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    opener = Opener(request.param, tmp_path, request)
    yield opener()
    opener.close_all()


def _msg(rcpt: str) -> NewMessage:
    return NewMessage(Envelope("s@example.com", (rcpt,), auth_user="api", transport="http"),
                      b"Subject: hi %recipient_fname%\r\n\r\nhello\r\n", "outbound", "example.com",
                      HeaderSummary("id@example.com", "s@example.com", rcpt, "hi"), SendOptions(tags=("news",)))


async def test_lists_are_created_read_renamed_paged_and_deleted(store):
    made = await store.create_list(MailingList(0, "News@Example.com", "News", "d", "members", "sender", 10.0))
    assert made.address == "news@example.com" and made.id > 0 and made.access_level == "members"
    with pytest.raises(ListExists):
        await store.create_list(MailingList(0, "news@example.com", created_at=11.0))
    for name in ("a", "c", "b"):
        await store.create_list(MailingList(0, f"{name}@example.com", created_at=12.0))
    await store.add_members("news@example.com", [ListMember("x@y.test"), ListMember("z@y.test", subscribed=False)],
                            "strict", 13.0)
    got = await store.get_list("NEWS@example.com")
    assert got.members_count == 2 and got.name == "News" and got.reply_preference == "sender"
    assert [lst.address for lst in await store.lists_page(2)] == ["a@example.com", "b@example.com"]
    assert [lst.address for lst in await store.lists_page(2, "next", "b@example.com")] == ["c@example.com",
                                                                                          "news@example.com"]
    assert [lst.address for lst in await store.lists_page(2, "last")] == ["c@example.com", "news@example.com"]
    assert [lst.address for lst in await store.lists_page(5, "previous", "c@example.com")] == ["a@example.com",
                                                                                              "b@example.com"]
    total, items = await store.lists_skip(1, 2)
    assert total == 4 and [lst.address for lst in items] == ["b@example.com", "c@example.com"]

    renamed = await store.update_list("news@example.com", ListChange(address="Letters@example.com",
                                                                      description="new"))
    assert renamed.address == "letters@example.com" and renamed.id == made.id and renamed.description == "new"
    assert await store.get_list("news@example.com") is None
    assert (await store.get_member("letters@example.com", "x@y.test")).subscribed
    with pytest.raises(ListExists):
        await store.update_list("letters@example.com", ListChange(address="a@example.com"))
    assert await store.update_list("nobody@example.com", ListChange(name="x")) is None
    assert await store.delete_list("letters@example.com")
    assert not await store.delete_list("letters@example.com")
    assert await store.get_member("letters@example.com", "x@y.test") is None
    assert {lst.address for lst in await store.load_lists()} == {"a@example.com", "b@example.com", "c@example.com"}


async def test_members_are_added_strictly_ignored_or_upserted_updated_paged_and_deleted(store):
    lst = await store.create_list(MailingList(0, "l@example.com", created_at=1.0))
    assert await store.add_members("none@example.com", [ListMember("a@x.test")], "strict", 1.0) is None
    await store.add_members("l@example.com", [ListMember("A@x.test", "Ann Lee", {"age": 3})], "strict", 1.0)
    with pytest.raises(MemberExists):
        await store.add_members("l@example.com", [ListMember("b@x.test"), ListMember("a@x.test")], "strict", 2.0)
    assert await store.get_member("l@example.com", "b@x.test") is None  # nothing of a refused add
    after = await store.add_members("l@example.com", [ListMember("a@x.test", "Other"), ListMember("b@x.test")],
                                    "ignore", 2.0)
    assert after.members_count == 2 and (await store.get_member("l@example.com", "a@x.test")).name == "Ann Lee"
    await store.add_members("l@example.com", [ListMember("a@x.test", "Ann B", {"k": "v"}, False)], "upsert", 3.0)
    assert await store.get_member("l@example.com", "A@X.test") == ListMember("a@x.test", "Ann B", {"k": "v"}, False)

    updated = await store.update_member("l@example.com", "a@x.test", MemberChange(subscribed=True, vars={"n": 1}))
    assert updated == ListMember("a@x.test", "Ann B", {"n": 1}, True)
    with pytest.raises(MemberExists):
        await store.update_member("l@example.com", "a@x.test", MemberChange(address="b@x.test"))
    moved = await store.update_member("l@example.com", "a@x.test", MemberChange(address="c@x.test"))
    assert moved.address == "c@x.test" and await store.get_member("l@example.com", "a@x.test") is None
    await store.update_member("l@example.com", "b@x.test", MemberChange(subscribed=False))

    assert [m.address for m in await store.members_page(lst.id, 10)] == ["b@x.test", "c@x.test"]
    assert [m.address for m in await store.members_page(lst.id, 10, subscribed=True)] == ["c@x.test"]
    assert [m.address for m in await store.members_page(lst.id, 10, "next", "b@x.test")] == ["c@x.test"]
    total, items = await store.members_skip(lst.id, 0, 10, subscribed=False)
    assert total == 1 and items[0].address == "b@x.test"
    assert await store.delete_member("l@example.com", "b@x.test")
    assert not await store.delete_member("l@example.com", "b@x.test")


async def _copies(store, job, worker: str, page: int, now: float) -> tuple[bool, str]:
    """One page of an expansion as the worker makes it: (committed, new cursor)."""
    members = await store.expansion_members(job.list_id, job.cursor, page)
    cursor = members[-1].address if members else job.cursor
    items = []
    for m in members:
        qid = spool.new_queue_id()
        msg = _msg(m.address)
        items.append(spool.Enqueue(qid, msg, shape.accepted(msg, qid, now)))
    ok = await store.expand_batch(job.id, worker, job.cursor, cursor, items, len(members) < page, now)
    return ok, cursor


async def test_an_expansion_commits_each_page_once_and_only_for_its_holder(store):
    lst = await store.create_list(MailingList(0, "big@example.com", created_at=1.0))
    members = [ListMember(f"m{i:03d}@x.test") for i in range(25)] + [ListMember("off@x.test", subscribed=False)]
    await store.add_members("big@example.com", members, "strict", 1.0)
    qid = spool.new_queue_id()
    original = _msg("big@example.com")
    await store.enqueue([spool.Enqueue(qid, original, shape.accepted(original, qid, 1.0), deliver_to=(),
                                       lists=(lst.id,))], 1.0)

    [job] = await store.claim_expansions("w1", 2.0, 10, lease_until=100.0)
    assert job.queue_id == qid and job.cursor == "" and job.list_id == lst.id
    assert await store.claim_expansions("w2", 3.0, 10, lease_until=100.0) == []  # held by w1
    ok, cursor = await _copies(store, job, "w1", 10, 4.0)
    assert ok and cursor == "m009@x.test"
    # w1 "crashes": its lease runs out and w2 takes the row over at the committed cursor
    [taken] = await store.claim_expansions("w2", 200.0, 10, lease_until=300.0)
    assert taken.cursor == "m009@x.test" and taken.copies == 10
    stale_ok, _ = await _copies(store, job, "w1", 10, 201.0)  # the old holder at the old cursor: nothing written
    assert not stale_ok
    for _ in range(2):  # the holder goes on from its own cursor: pages of 10, then 5 (the end)
        ok, cursor = await _copies(store, taken, "w2", 10, 202.0)
        assert ok
        taken = dataclasses.replace(taken, cursor=cursor)
    assert (await _copies(store, taken, "w2", 10, 203.0))[0] is False  # done: nothing more is written
    recipients = [e.recipients[0] for e in await store.list_queue(limit=1000)]
    assert sorted(recipients) == [f"m{i:03d}@x.test" for i in range(25)]  # each once, not the unsubscribed
    assert await store.claim_expansions("w3", 1000.0, 10) == []  # done


async def test_unsubscribing_a_member_records_its_event_with_the_change(store):
    from mtad.store.eventquery import EventQuery, Match
    from mtad.store.events import NewEvent
    lst = await store.create_list(MailingList(0, "u@example.com", created_at=1.0))
    await store.add_members("u@example.com", [ListMember("a@x.test")], "strict", 1.0)
    event = shape.base_event("unsubscribed", timestamp=5.0, recipient="a@x.test", queue_id="", message={},
                             options={}, envelope={}, flags={}, extra={"mailing-list": {"address": "u@example.com"}})
    gone = await store.unsubscribe_member(lst.id, "A@x.test", [NewEvent("example.com", event)])
    assert gone.subscribed is False and not (await store.get_member("u@example.com", "a@x.test")).subscribed
    assert await store.unsubscribe_member(lst.id, "nobody@x.test", []) is None
    assert await store.count_events(EventQuery(None, (Match("event", "unsubscribed"),), limit=10)) == 1


async def test_member_vars_read_back_as_written_whatever_their_numbers(store):
    # read by the hundred thousand in an expansion (a faster JSON reader): the same values as the stdlib's
    lst = await store.create_list(MailingList(0, "v@example.com", created_at=1.0))
    odd = {"big": 123456789012345678901234567890, "neg": -9223372036854775809, "max": 18446744073709551615,
           "f": 0.1, "nan": float("inf"), "s": "caf\u00e9 \U0001F600", "lone": "\ud800", "n": None, "l": [1, {"a": 2}]}
    await store.add_members("v@example.com", [ListMember("a@x.test", "A", odd), ListMember("b@x.test", "B", {"k": 1})],
                            "strict", 1.0)
    got = {m.address: m.vars for m in await store.expansion_members(lst.id, "", 10)}
    assert got["b@x.test"] == {"k": 1}
    assert got["a@x.test"] == odd and type(got["a@x.test"]["big"]) is int
    assert (await store.get_member("v@example.com", "a@x.test")).vars == odd


async def test_a_page_of_copies_as_rows_writes_what_the_same_copies_as_enqueue_items_write(store):
    """``expand_batch`` of a ``CopyPage`` (the rows made where the copies are made) writes the messages, deliveries
    and events that the same copies as ``Enqueue`` items write (``queue.enqueue``'s rows), value for value."""
    from mtad.events import lists as list_events
    from mtad.store.lists import CopyTemplate
    options = SendOptions(tags=("news", "t2"), campaigns=("c1",), variables={"k": "v\u00e9"}, deliver_by=50.0)
    envelope = Envelope("s@example.com", (), "192.0.2.7", "helo.test", "api", True, "http", "api")
    attachments = ({"filename": "a.pdf", "content-type": "application/pdf", "size": 3},)
    events = list_events.CopyEvents(envelope, options, attachments, "example.com", "l@example.com")
    template = CopyTemplate(envelope, "example.com", HeaderSummary("id@example.com", "S <s@example.com>",
                                                                   "l@example.com", "hi"), options, attachments)
    lists = []
    for name in ("one", "two"):
        lst = await store.create_list(MailingList(0, f"{name}@example.com", created_at=1.0))
        await store.add_members(lst.address, [ListMember("m1@x.test"), ListMember("M2@Y.test")], "strict", 1.0)
        qid = spool.new_queue_id()
        original = _msg(lst.address)
        await store.enqueue([spool.Enqueue(qid, original, shape.accepted(original, qid, 1.0), deliver_to=(),
                                           lists=(lst.id,))], 1.0)
        lists.append(lst)
    jobs = await store.claim_expansions("w", 2.0, 10, lease_until=100.0)
    subjects = {"m1@x.test": "hi", "M2@Y.test": "hi \u00c9mile \"q\""}
    written = []
    for job, as_rows in zip(sorted(jobs, key=lambda j: j.list_id), (False, True)):
        ids = spool.new_queue_ids(2)
        page, items = template.page(3.0), []
        for qid, rcpt in zip(ids, subjects):
            body = f"Subject: {subjects[rcpt]}\r\n\r\nhello {rcpt}\r\n".encode()
            headers = HeaderSummary("id@example.com", "S <s@example.com>", "l@example.com", subjects[rcpt])
            accepted = events.accepted(qid, 3.0, rcpt, headers.to_json(), len(body))
            page.add(qid, rcpt, subjects[rcpt], body, accepted)
            items.append(spool.Enqueue(qid, NewMessage(dataclasses.replace(envelope, recipients=(rcpt,)), body,
                                                       "outbound", "example.com", headers, options, attachments),
                                       accepted))
        assert len(page) == 2
        assert await store.expand_batch(job.id, "w", "", "z", page if as_rows else items, True, 3.0)
        written.append(ids)

    def rows(ids):
        def read(c):
            marks = ",".join("?" * len(ids))
            out = []
            for sql in (f"SELECT * FROM messages WHERE id IN ({marks}) ORDER BY id",
                        f"SELECT message, domain, recipients, state, next_attempt_at, created_at, updated_at"
                        f" FROM deliveries WHERE message IN ({marks}) ORDER BY message",
                        f"SELECT timestamp, domain, event, recipient, message_id, queue_id, severity, data"
                        f" FROM events WHERE queue_id IN ({marks}) ORDER BY queue_id"):
                found = [[bytes(v) if isinstance(v, memoryview) else v for v in r] for r in c.execute(sql, ids)]
                for r in found:  # the copies' own ids, normalised
                    for i, v in enumerate(r):
                        for n, qid in enumerate(ids):
                            if isinstance(v, str):
                                v = r[i] = v.replace(qid, f"Q{n}")
                out.append(sorted(found, key=repr))
            return out
        return store.read(read)
    before, after = await rows(written[0]), await rows(written[1])
    assert [len(t) for t in after] == [2, 2, 2]
    import json
    for table in before[2], after[2]:  # the events' own ids differ: made per copy
        for r in table:
            data = json.loads(r[-1])
            data["id"] = ""
            r[-1] = data
    assert before == after
