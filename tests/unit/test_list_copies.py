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
