"""A mailing-list member's copy (outbound.lists.member_copy) made from what its plan builds once (the accepted
event's shared parts, the subject cut at its variables, a page's queue ids) equals the one made the reference way
(shape.accepted + with_list, variables.substitute, new_queue_id) but for the event's id."""

from __future__ import annotations

import dataclasses
import re

import pytest

from mtad.base.types import HeaderSummary, SendOptions
from mtad.events import lists as list_events
from mtad.events import shape
from mtad.mail import variables as V
from mtad.outbound import lists
from mtad.store import queue as spool
from mtad.store.lists import ListMember, MailingList

BODY = (b"From: News <news@example.com>\r\nTo: list@example.com\r\nSubject: Hello %recipient_fname%\r\n"
        b"Message-ID: <m1@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        b"Dear %recipient_fname% of %recipient.city%,\r\nLeave: %mailing_list_unsubscribe_url%\r\n")


def _message(body: bytes, direction: str = "outbound", subject: str = "Hello %recipient_fname%",
             options: SendOptions | None = None) -> spool.QueuedMessage:
    options = options or SendOptions(tags=("t1", "t2"), campaigns=("c1",), variables={"k": "v", "n": 2})
    return spool.QueuedMessage(
        "Q1", 0.0, direction, "example.com", "news@example.com", ("list@example.com",), "m1@example.com",
        HeaderSummary("m1@example.com", "News <news@example.com>", "list@example.com", subject).to_json(),
        options.to_json(), {"client_ip": "192.0.2.7", "client_helo": "h", "auth_user": "api", "tls": True,
                            "transport": "http", "listener": "api"}, len(body), body,
        attachments=({"filename": "a.pdf", "content-type": "application/pdf", "size": 3},))


MEMBERS = [ListMember("Ann@Example.NET", "Ann Lee", {"city": "Paris"}),
           ListMember("bo@example.org", "", {}),
           ListMember("cy@example.net", "Cy \u00c9mile", {"city": "Z\u00fcrich"})]


@pytest.mark.parametrize("message", [_message(BODY), _message(BODY.replace(b"%", b"#"), subject="Hello"),
                                     _message(BODY, options=SendOptions()),
                                     _message(BODY, direction="inbound", subject="Re: %recipient% 50% off")],
                         ids=["personal", "plain", "no-options", "inbound"])
@pytest.mark.parametrize("lst", [MailingList(7, "list@example.com"),
                                 MailingList(8, "posts@lists.example.com", access_level="members")],
                         ids=["readonly", "members"])
def test_a_copy_from_the_plan_equals_the_reference_copy(message, lst):
    p = lists.plan(message, lst, srs_key=b"s" * 32, now=1.7e9)
    reference = dataclasses.replace(p, events=None, subject=(message.headers["subject"],))
    ids = spool.new_queue_ids(len(MEMBERS))
    for member, qid in zip(MEMBERS, ids):
        url = f"https://mtad.example/list-unsubscribe/{member.address}"
        fast = lists.member_copy(p, member, url, 1.7e9, None, qid)
        slow = lists.member_copy(reference, member, url, 1.7e9, None, qid)
        if "%" in message.headers["subject"] and p.personal is not None:  # the reference substitutes the subject
            ctx = V.RecipientContext(member.address, member.name, member.vars,
                                     {"mailing_list_unsubscribe_url": url})
            slow = dataclasses.replace(slow, message=dataclasses.replace(slow.message, headers=dataclasses.replace(
                slow.message.headers, subject=V.substitute(message.headers["subject"], ctx))))
            slow = dataclasses.replace(slow, events=list_events.with_list(
                shape.accepted(slow.message, qid, 1.7e9), lst.address))
        assert fast.queue_id == qid and fast.message == slow.message
        assert len(fast.events) == len(slow.events) == 1
        (f,), (s,) = fast.events, slow.events
        assert (f.domain, f.system) == (s.domain, s.system)
        assert list(f.data) == list(s.data)  # the same keys in the same order (the stored JSON is the same)
        assert {**f.data, "id": ""} == {**s.data, "id": ""}
        assert f.data["id"] != s.data["id"] and len(f.data["id"]) == 22


def test_new_queue_ids_look_like_new_queue_id_and_differ():
    ids = spool.new_queue_ids(1000)
    one = spool.new_queue_id()
    assert len(set(ids)) == 1000 and spool.new_queue_ids(0) == []
    for qid in ids + [one]:
        assert re.fullmatch(r"[0-9A-F]{19}", qid)
    assert ids[0][:11] <= one[:11]  # the same clock, in order


async def _expansion_store(tmp_path, members: int):
    import time

    from mtad.base.types import Envelope, NewMessage
    from mtad.store.sqlite import SqliteStore
    store = SqliteStore(tmp_path / "t.sqlite3")
    store.open()
    lst = await store.create_list(MailingList(0, "list@example.com", created_at=time.time()))
    await store.add_members("list@example.com", [ListMember(f"m{i:04d}@example.net", f"F{i} L", {"city": str(i)})
                                                 for i in range(members)], "ignore", time.time())
    msg = NewMessage(Envelope("news@example.com", ("list@example.com",), auth_user="api", transport="http"), BODY,
                     "outbound", "example.com", HeaderSummary("m1@example.com", "news@example.com",
                                                              "list@example.com", "Hello %recipient_fname%"),
                     SendOptions(tags=("t",)))
    qid = spool.new_queue_id()
    await store.enqueue([spool.Enqueue(qid, msg, shape.accepted(msg, qid, time.time()), deliver_to=(),
                                       lists=(lst.id,))], time.time())
    return store


async def _until(store, sql: str, want, seconds: float = 10.0):
    import asyncio
    for _ in range(int(seconds / 0.05)):
        got = tuple(await store.read(lambda c: c.execute(sql).fetchone()))
        if got == want:
            return got
        await asyncio.sleep(0.05)
    return got


async def test_the_expander_is_a_work_loop_expanding_page_by_page_and_giving_back_a_failure(tmp_path):
    """The claim loop is ``store.workloop``'s: a claimed row is expanded to its end in pages (each member once)
    and released; an expansion that fails is given back at once (unlocked, due again later), not kept locked."""
    import asyncio
    store = await _expansion_store(tmp_path, 1203)
    failing = [True]

    def url(list_id: int, address: str) -> str:
        if failing[0] and address == "m0700@example.net":
            raise RuntimeError("a bug in the second page")
        return f"https://mtad.example/u/{list_id}/{address}"
    expander = lists.Expander(store=store, unsubscribe_url=url, batch_size=500, poll_interval=0.05)
    task = asyncio.create_task(expander.run())
    try:
        import time
        for _ in range(200):  # given back after the error: unlocked, due again RETRY_AFTER_ERROR later
            locked, copies, due = await store.read(lambda c: c.execute(
                "SELECT locked_by, copies, next_attempt_at FROM list_expansions").fetchone())
            if locked is None and due > time.time() + 30:
                break
            await asyncio.sleep(0.05)
        assert locked is None and due > time.time() + 30 and copies in (0, 500) and not expander.leases.held
        failing[0] = False
        await store.write(lambda c: c.execute("UPDATE list_expansions SET next_attempt_at = 0"))
        expander.wake()
        assert await _until(store, "SELECT state, locked_by, copies FROM list_expansions", ("done", None, 1203)) \
            == ("done", None, 1203)
        rows = tuple(await store.read(lambda c: c.execute(
            "SELECT count(*), count(DISTINCT recipients) FROM deliveries").fetchone()))
        assert rows == (1203, 1203)  # every member once
    finally:
        await expander.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        store.close()


def test_unsubscribe_tokens_are_hmac_sha256_of_their_payload_under_each_key():
    # the MAC comes from a keyed HMAC made once per key and copied per link: the same bytes as a new HMAC
    import base64
    import hashlib
    import hmac

    from mtad.mail import listlinks
    for key, list_id, address in [(b"a" * 32, 7, "Ann@X.test"), (b"b" * 32, 7, "ann@x.test"), (b"a" * 32, 8, "b@y.test")]:
        token = listlinks.token(key, list_id, address)
        payload = f"{list_id}:{address.lower()}".encode()
        mac = hmac.new(key, payload, hashlib.sha256).digest()[:16]
        assert token.split(".")[1] == base64.urlsafe_b64encode(mac).decode().rstrip("=")
        assert listlinks.verify(key, token) == (list_id, address.lower())
        assert listlinks.verify(b"c" * 32, token) is None


@pytest.mark.parametrize("message", [_message(BODY), _message(BODY.replace(b"%", b"#"), subject="Hello"),
                                     _message(BODY, direction="inbound", subject="Re: %recipient% 50% off")],
                         ids=["personal", "plain", "inbound"])
def test_the_expanders_page_of_rows_holds_what_member_copy_makes(message, monkeypatch):
    """``Expander._copies`` makes a page as rows (``store.lists.CopyPage``): each copy's body, subject, recipient
    and accepted event are ``member_copy``'s (the rows themselves are checked against ``Enqueue``'s in the store's
    contract tests)."""
    import json
    lst = MailingList(8, "posts@lists.example.com", access_level="members")
    p = lists.plan(message, lst, srs_key=b"s" * 32, now=1.7e9)
    ids = sorted(spool.new_queue_ids(len(MEMBERS)))  # the page's are in order
    monkeypatch.setattr(spool, "new_queue_ids", lambda n: ids[:n])
    expander = lists.Expander(store=None, unsubscribe_url=lambda list_id, a: f"https://mtad.example/u/{list_id}/{a}",
                              unsubscribe_address=lambda list_id, qid, a, d: f"u-{qid}-{a}@{d}")
    page = expander._copies(p, MEMBERS, 1.7e9)
    assert len(page) == len(MEMBERS)
    for member, qid, row, delivery, event in zip(MEMBERS, ids, page.messages, page.deliveries, page.events):
        ref = lists.member_copy(p, member, f"https://mtad.example/u/8/{member.address}", 1.7e9,
                                expander.unsubscribe_address, qid)
        assert row[0] == delivery[0] == qid and row[11] == ref.message.body and row[10] == len(ref.message.body)
        assert json.loads(row[7]) == ref.message.headers.to_json() and json.loads(row[5]) == [member.address]
        assert row[4] == ref.message.envelope.sender and row[3] == ref.message.domain
        (r,) = ref.events
        assert (event.domain, event.system) == (r.domain, r.system) and list(event.data) == list(r.data)
        assert {**event.data, "id": ""} == {**r.data, "id": ""}


def test_new_event_ids_look_like_new_event_id_differ_and_come_in_order():
    ids = shape.new_event_ids(1000)
    one = shape.new_event_id()
    assert len(set(ids)) == 1000 and ids == sorted(ids) and shape.new_event_ids(0) == []
    for event_id in ids + [one]:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", event_id)
    assert ids[0][:8] <= one[:8]  # the same clock (48 bits of milliseconds: 8 characters)
