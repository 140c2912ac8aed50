"""Sending to a mailing list (issue 14): over the API, over authenticated SMTP and over the MX listener (by the
list's ``access_level``), each member gets one personalised copy at a receiving MX with events of its own;
unsubscribed members get nothing, suppressed ones the usual ``failed`` event; the list-unsubscribe link; a list
and a route on the same address both act."""

from __future__ import annotations

import asyncio
import email.policy
import json
import re
import smtplib
from email import message_from_bytes

import aiohttp
import pytest

from tests.e2e.helpers import submission
from tests.support.api import api
from tests.support.wait import wait_for

DEST = "members.test"  # where members live: the sink MX


@pytest.fixture(scope="module")
def env(delivering_env):
    return delivering_env


async def _list(daemon, address: str, members: list, **fields) -> None:
    await api(daemon, "POST", "/v3/lists", data={"address": address, **fields})
    await api(daemon, "POST", f"/v3/lists/{address}/members.json", data={"members": json.dumps(members)})


def _text(received) -> tuple[str, str, str]:
    """(subject, text part, html part) of a received copy, decoded."""
    msg = message_from_bytes(received.data, policy=email.policy.default)
    plain = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    return (str(msg["Subject"]), plain.get_content() if plain else "", html.get_content() if html else "")


async def _events(daemon, domain: str, **params) -> list[dict]:
    body = await api(daemon, "GET", f"/v3/{domain}/events", params={"limit": "300", **params})
    return body["items"]


async def test_an_api_send_to_a_list_reaches_each_member_once_personalised(env):
    daemon, sink = env
    await _list(daemon, "news@example.com", [
        {"address": f"ann@{DEST}", "name": "Ann Marie Lee", "vars": {"city": "Paris"}},
        {"address": f"bob@{DEST}", "name": "Bob", "vars": {"city": "Rome"}},
        f"Carl Carlsson <carl@{DEST}>"])
    body = await api(daemon, "POST", "/v3/example.com/messages", data={
        "from": "News <news@example.com>", "to": "news@example.com", "subject": "Hello %recipient_fname%",
        "text": "Dear %recipient_fname% %recipient_lname% of %recipient.city%, you are %recipient%.\n"
                "Leave: %mailing_list_unsubscribe_url%\n",
        "html": "<p>Hi %recipient_fname%</p><a href=\"%mailing_list_unsubscribe_url%\">leave</a>",
        "o:tag": "weekly", "v:campaign": "c1"})
    assert body["message"] == "Queued. Thank you."
    ann, bob, carl = [(await sink.wait_for(f"{who}@{DEST}"))[0] for who in ("ann", "bob", "carl")]
    subject, text, html = _text(ann)
    assert subject == "Hello Ann"
    assert f"Dear Ann Marie Lee of Paris, you are Ann Marie Lee <ann@{DEST}>." in text  # %recipient%: the full spec
    link = re.search(r"Leave: (\S+)", text).group(1)
    assert link.startswith(daemon.api_url + "/list-unsubscribe/") and f'href="{link}"' in html
    assert "<p>Hi Bob</p>" in _text(bob)[2] and "of Rome" in _text(bob)[1]
    assert _text(carl)[0] == "Hello Carl" and "Dear Carl Carlsson of ," in _text(carl)[1]
    assert ann.rcpt_tos == [f"ann@{DEST}"]
    assert ann.mail_from.startswith("bounce+") and ann.mail_from.endswith("@example.com")  # the per-message return path
    links = {re.search(r"Leave: (\S+)", _text(r)[1]).group(1) for r in (ann, bob, carl)}
    assert len(links) == 3  # one link per member

    accepted = await wait_for(lambda: _events(daemon, "example.com", event="accepted", tags="weekly"))
    per_member = [e for e in accepted if e["recipient"].endswith("@" + DEST)]
    assert sorted(e["recipient"] for e in per_member) == [f"{w}@{DEST}" for w in ("ann", "bob", "carl")]
    assert all(e["mailing-list"]["address"] == "news@example.com" for e in per_member)
    assert all(e["user-variables"] == {"campaign": "c1"} for e in per_member)
    await wait_for(lambda: _count(daemon, "delivered", DEST, "weekly", 3))
    await asyncio.sleep(0.5)
    assert [len(sink.to(f"{w}@{DEST}")) for w in ("ann", "bob", "carl")] == [1, 1, 1]


async def _count(daemon, kind: str, dest: str, tag: str, n: int) -> bool:
    events = await _events(daemon, "example.com", event=kind, tags=tag)
    return len([e for e in events if e["recipient"].endswith("@" + dest)]) >= n


async def test_unsubscribed_members_are_skipped_and_suppressed_ones_fail_as_usual(env):
    daemon, sink = env
    await _list(daemon, "skip@example.com", [f"in1@{DEST}", f"in2@{DEST}", f"bounced@{DEST}",
                                            {"address": f"gone@{DEST}", "subscribed": False}])
    await api(daemon, "POST", "/v3/example.com/bounces", data={"address": f"bounced@{DEST}", "code": "550"})
    await api(daemon, "POST", "/v3/example.com/messages", data={
        "from": "news@example.com", "to": "skip@example.com", "subject": "skip test", "text": "hi", "o:tag": "skip"})
    await sink.wait_for(f"in1@{DEST}")
    await sink.wait_for(f"in2@{DEST}")
    failed = await wait_for(lambda: _events(daemon, "example.com", event="failed", recipient=f"bounced@{DEST}"))
    assert failed[0]["reason"] == "suppress-bounce" and failed[0]["tags"] == ["skip"]
    await asyncio.sleep(0.5)
    assert sink.to(f"bounced@{DEST}") == [] and sink.to(f"gone@{DEST}") == []
    assert await _events(daemon, "example.com", recipient=f"gone@{DEST}") == []


async def test_an_authenticated_smtp_send_to_a_list_is_expanded(env, certs):
    daemon, sink = env
    await _list(daemon, "smtp-list@example.com", [{"address": f"s1@{DEST}", "name": "Sam One"}, f"s2@{DEST}"])
    s = submission(daemon, certs.client_context())
    try:
        s.sendmail("postmaster@example.com", ["smtp-list@example.com"],
                   b"From: postmaster@example.com\r\nTo: smtp-list@example.com\r\nSubject: for %recipient_fname%\r\n"
                   b"X-Mailgun-Tag: smtp-list\r\n\r\nHello %recipient%\r\n")
    finally:
        s.quit()
    one = (await sink.wait_for(f"s1@{DEST}"))[0]
    assert _text(one)[0] == "for Sam" and f"Hello Sam One <s1@{DEST}>" in _text(one)[1]
    assert f"Hello s2@{DEST}" in _text((await sink.wait_for(f"s2@{DEST}"))[0])[1]
    assert b"X-Mailgun-Tag" not in one.data


def _mx_send(daemon, sender: str, rcpt: str, body: bytes) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", daemon.mx, local_hostname="client.test", timeout=10) as s:
        s.ehlo()
        s.mail(sender)
        code, text = s.rcpt(rcpt)
        if code != 250:
            return code, text.decode()
        code, text = s.data(body)
        return code, text.decode()


async def test_access_level_decides_who_may_post_over_the_mx_listener(env):
    daemon, sink = env
    await _list(daemon, "announce@inbound.test", [f"a1@{DEST}"])  # readonly
    await _list(daemon, "team@inbound.test", [f"t1@{DEST}", f"t2@{DEST}"], access_level="members")
    await _list(daemon, "open@inbound.test", [f"o1@{DEST}"], access_level="everyone")
    post = b"From: %s\r\nSubject: post\r\n\r\nreply text\r\n"

    code, text = await asyncio.to_thread(_mx_send, daemon, "outsider@else.test", "announce@inbound.test",
                                         post % b"outsider@else.test")
    assert code == 550 and "authenticated" in text
    code, text = await asyncio.to_thread(_mx_send, daemon, "outsider@else.test", "team@inbound.test",
                                         post % b"outsider@else.test")
    assert code == 550 and "may not post" in text
    code, _ = await asyncio.to_thread(_mx_send, daemon, f"t1@{DEST}", "team@inbound.test", post % f"t1@{DEST}".encode())
    assert code == 250
    got = (await sink.wait_for(f"t2@{DEST}"))[0]
    assert got.message["Reply-To"] == "team@inbound.test"  # a members list prefers replies to the list
    assert got.mail_from.startswith("SRS0=") and got.mail_from.endswith("@inbound.test")
    code, _ = await asyncio.to_thread(_mx_send, daemon, "anyone@else.test", "open@inbound.test",
                                      post % b"anyone@else.test")
    assert code == 250
    await sink.wait_for(f"o1@{DEST}")
    await asyncio.sleep(0.3)
    assert sink.to(f"a1@{DEST}") == []


async def test_the_list_unsubscribe_link_unsubscribes_the_member_from_the_list(env):
    daemon, sink = env
    await _list(daemon, "leave@example.com", [f"stay@{DEST}", f"leaver@{DEST}"])
    await api(daemon, "POST", "/v3/example.com/messages", data={
        "from": "news@example.com", "to": "leave@example.com", "subject": "one", "text": "bye %mailing_list_unsubscribe_url%"})
    copy = (await sink.wait_for(f"leaver@{DEST}"))[0]
    link = re.search(r"bye (\S+)", _text(copy)[1]).group(1)
    async with aiohttp.ClientSession() as http:  # no API key: the link is public
        async with http.get(link) as resp:
            page = await resp.text()
            assert resp.status == 200 and "text/html" in resp.content_type and f"leaver@{DEST}" in page
            assert "<form method=\"post\">" in page
        got = await api(daemon, "GET", f"/v3/lists/leave@example.com/members/leaver@{DEST}")
        assert got["member"]["subscribed"] is True  # a GET (a link scanner) unsubscribes nobody
        async with http.post(link, data={"List-Unsubscribe": "One-Click"}) as resp:
            assert resp.status == 200 and "no longer receive" in await resp.text()
        async with http.get(link[:-4] + "AAAA") as resp:
            assert resp.status == 404
    got = await api(daemon, "GET", f"/v3/lists/leave@example.com/members/leaver@{DEST}")
    assert got["member"]["subscribed"] is False
    [event] = await _events(daemon, "example.com", event="unsubscribed", recipient=f"leaver@{DEST}")
    assert event["mailing-list"]["address"] == "leave@example.com"
    await api(daemon, "POST", "/v3/example.com/messages", data={
        "from": "news@example.com", "to": "leave@example.com", "subject": "two", "text": "again"})
    await sink.wait_for(f"stay@{DEST}", count=2)
    await asyncio.sleep(0.5)
    assert len(sink.to(f"leaver@{DEST}")) == 1


async def test_a_list_and_a_route_on_the_same_address_both_act(env):
    daemon, sink = env
    await api(daemon, "POST", "/v3/routes", data={"priority": "0", "expression": "match_recipient('both@inbound.test')",
                                                  "action": f"forward('archive@{DEST}')"})
    await _list(daemon, "both@inbound.test", [f"b1@{DEST}"], access_level="everyone")
    code, _ = await asyncio.to_thread(_mx_send, daemon, "poster@else.test", "both@inbound.test",
                                      b"From: poster@else.test\r\nSubject: both\r\n\r\nto both\r\n")
    assert code == 250
    await sink.wait_for(f"archive@{DEST}")  # the route's forward
    await sink.wait_for(f"b1@{DEST}")  # the list's copy
