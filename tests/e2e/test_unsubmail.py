"""Unsubscribing by email, client addresses behind a reverse proxy, and replayed reports (issue 13, the rest).

One running arrangement (``events_support.World``): mtad signs example.com with DKIM and delivers dest.test mail to
a sink MX; unsubscribe tracking is on by default. What the sink got is read as a mail program would: its
``List-Unsubscribe`` header names an https URL and a ``mailto:`` (RFC 2369); mailing that address with smtplib at
mtad's MX listener unsubscribes the recipient (event, unsubscribes list, the next message suppressed). A forged
address is refused at RCPT. ``tracking.trusted_proxies`` names 127.0.0.2: a request from there has its client
address taken from ``X-Forwarded-For``, one from 127.0.0.1 never. A DSN or ARF report sent twice records one
event.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import re
import smtplib
from pathlib import Path

import aiohttp
import dkim as dkimpy
import pytest

from mtad.base.keys import derive
from mtad.mail import dkim, unsubaddr
from tests.e2e.apihelpers import txt_lookup
from tests.e2e.events_support import SIGNING_KEY, World, events, running_world
from tests.e2e.test_reports import FBL, arf, dsn_message, mx_send, rcpt_reply, report_outcome
from tests.support.api import api
from tests.support.daemon import PASSWORD
from tests.support.wait import wait_for

KEYS: dict[str, dkim.DkimKey] = {}
CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
          "Safari/537.36")
MAILTO = re.compile(r"<mailto:(unsubscribe\+[^>@]+@example\.com)>")


def configure(cfg: dict, world: World) -> None:
    tmp = Path(cfg["state_dir"]).parent
    pem = dkim.generate_key("rsa", 1024)
    (tmp / "example.com.pem").write_bytes(pem)
    cfg["sending_domains"]["example.com"]["dkim"] = [{"selector": "s1", "key_file": str(tmp / "example.com.pem")}]
    KEYS["example.com"] = dkim.load_key("example.com", "s1", pem)
    cfg["feedback"] = {"addresses": [FBL]}
    cfg["tracking"] = {"scanner_window": "0s", "defaults": {"unsubscribe": True},
                       "trusted_proxies": ["127.0.0.2/32", "10.9.0.0/16"]}


@pytest.fixture(scope="module")
def world(tmp_path_factory, certs, daemons_store):
    with running_world(tmp_path_factory, certs, "unsubmail", configure) as w:
        yield w


def verifies(data: bytes) -> bool:
    return dkimpy.verify(data, dnsfunc=txt_lookup(dict(dkim.dns_record(k) for k in KEYS.values())))


async def one(world: World, kind: str, rcpt: str, n: int = 1) -> list[dict]:
    async def check() -> list[dict] | None:
        found = await events(world, "example.com", event=kind, recipient=rcpt)
        return found if len(found) >= n else None
    return await wait_for(check, 10, f"{n} {kind} event(s) of {rcpt}")


def _send_text(world: World, rcpt: str, subject: str, text: str) -> str:
    """An authenticated submission of a text message; its queue id."""
    body = f"From: Sender <postmaster@example.com>\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\n{text}\r\n".encode()
    with smtplib.SMTP("127.0.0.1", world.mtad.submission, local_hostname="client.test", timeout=10) as s:
        s.starttls(context=world.certs.client_context())
        s.ehlo()
        s.login("postmaster@example.com", PASSWORD)
        s.mail("postmaster@example.com")
        assert s.rcpt(rcpt)[0] == 250
        code, reply = s.data(body)
    assert code == 250, reply
    return reply.decode().rsplit(" ", 1)[-1]


def unsubscribe_mail(world: World, address: str, sender: str) -> int:
    """What a mail program sends for a ``mailto:`` List-Unsubscribe (RFC 2369): an empty mail, at mtad's MX."""
    body = (f"From: <{sender}>\r\nTo: <{address}>\r\nSubject: unsubscribe\r\n\r\n").encode()
    with smtplib.SMTP("127.0.0.1", world.mtad.mx, local_hostname="mail.dest.test", timeout=10) as s:
        refused = s.sendmail(sender, [address], body)
    assert refused == {}
    return 250


async def test_the_list_unsubscribe_mailto_unsubscribes_and_suppresses_the_next_message(world):
    rcpt = "mailer@dest.test"
    _send_text(world, rcpt, "Weekly", "Hello. To leave, write to %unsubscribe_email% .")
    got = (await world.sink.wait_for(rcpt))[0]
    assert verifies(got.data)  # the List-Unsubscribe with its mailto: is signed
    msg = email.message_from_bytes(got.data, policy=email.policy.default)
    value = str(msg["List-Unsubscribe"])
    url, mailto = [v.strip() for v in value.split(",")]
    assert re.fullmatch(r"<" + re.escape(world.api_url) + r"/u/[A-Za-z0-9_-]+>", url)
    address = MAILTO.fullmatch(mailto).group(1)
    assert len(address.partition("@")[0]) <= 64
    signed = re.search(rb"h=([^;]+);", got.data.replace(b"\r\n\t", b"").replace(b"\r\n ", b"")).group(1).lower()
    assert b"list-unsubscribe" in signed
    assert f"write to {address} ." in msg.get_content()  # %unsubscribe_email% is the same address
    delivered = (await one(world, "delivered", rcpt))[0]

    unsubscribe_mail(world, address, rcpt)
    (event,) = await one(world, "unsubscribed", rcpt)
    assert event["storage"]["key"] == delivered["storage"]["key"]
    assert event["message"]["headers"]["subject"] == "Weekly"
    listed = await api(world, "GET", f"/v3/example.com/unsubscribes/{rcpt}")
    assert listed["address"] == rcpt and listed["tags"] == ["*"]
    # the mail was taken as a report: kept, never routed, and a second one records nothing
    unsubscribe_mail(world, address.upper().replace("@EXAMPLE.COM", "@example.com"), rcpt)  # case folded
    await asyncio.sleep(0.5)
    assert len(await events(world, "example.com", event="unsubscribed", recipient=rcpt)) == 1
    # the next message to that address is suppressed
    world.send([rcpt], "Next week")
    failed = await wait_for(lambda: _failed(world, rcpt), 10, "the suppressed failure")
    assert failed[0]["reason"] == "suppress-unsubscribe"
    assert len(world.sink.to(rcpt)) == 1


async def _failed(world: World, rcpt: str) -> list[dict] | None:
    return await events(world, "example.com", event="failed", recipient=rcpt) or None


async def test_a_tag_scoped_unsubscribe_address_lists_the_message_tags(world):
    rcpt = "tagger@dest.test"
    qid = world.send([rcpt], "Tagged", tags=("spring",))
    await one(world, "delivered", rcpt)
    key = derive(SIGNING_KEY, unsubaddr.PURPOSE)
    unsubscribe_mail(world, unsubaddr.address(key, qid, rcpt, "example.com", unsubaddr.TAG), rcpt)
    await one(world, "unsubscribed", rcpt)
    listed = await api(world, "GET", f"/v3/example.com/unsubscribes/{rcpt}")
    assert listed["tags"] == ["spring"]


async def test_a_list_copy_unsubscribe_mailto_leaves_the_list(world):
    members = ["stays@dest.test", "goes@dest.test"]
    await api(world, "POST", "/v3/lists", data={"address": "club@example.com"})
    await api(world, "POST", "/v3/lists/club@example.com/members.json", data={"members": json.dumps(members)})
    await api(world, "POST", "/v3/example.com/messages", data={
        "from": "news@example.com", "to": "club@example.com", "subject": "Club news", "text": "Hello club."})
    got = (await world.sink.wait_for("goes@dest.test"))[0]
    assert verifies(got.data)
    msg = email.message_from_bytes(got.data, policy=email.policy.default)
    url, mailto = [v.strip() for v in str(msg["List-Unsubscribe"]).split(",")]
    assert "/list-unsubscribe/" in url and msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    address = MAILTO.fullmatch(mailto).group(1)
    assert address.startswith("unsubscribe+l")
    await one(world, "delivered", "goes@dest.test")
    unsubscribe_mail(world, address, "goes@dest.test")
    (event,) = await one(world, "unsubscribed", "goes@dest.test")
    assert event["mailing-list"]["address"] == "club@example.com"
    got = await api(world, "GET", "/v3/lists/club@example.com/members/goes@dest.test")
    assert got["member"]["subscribed"] is False
    await api(world, "GET", "/v3/example.com/unsubscribes/goes@dest.test", expect=404)  # the list's matter only
    await api(world, "POST", "/v3/example.com/messages", data={
        "from": "news@example.com", "to": "club@example.com", "subject": "Again", "text": "Hello again."})
    await world.sink.wait_for("stays@dest.test", count=2)
    await asyncio.sleep(0.5)
    assert len(world.sink.to("goes@dest.test")) == 1


async def test_a_forged_or_altered_unsubscribe_address_is_refused_at_rcpt(world):
    rcpt = "victim@dest.test"
    qid = world.send([rcpt], "Forge me")
    await one(world, "delivered", rcpt)
    real = MAILTO.search(world.sink.to(rcpt)[-1].data.decode()).group(1)
    wrong_key = derive("not the signing key", unsubaddr.PURPOSE)
    forged = unsubaddr.address(wrong_key, qid, rcpt, "example.com")
    local, _, domain = real.partition("@")
    altered = local[:-1] + ("a" if local[-1] != "a" else "b") + "@" + domain
    other_scope = real.replace("unsubscribe+d.", "unsubscribe+t.")
    replies = rcpt_reply(world, [forged, altered, other_scope, "unsubscribe+nothing@example.com"])
    for code, text in replies:
        assert (code, text[:5]) == (550, "5.1.1") and "invalid unsubscribe address" in text, replies
    await asyncio.sleep(0.3)
    assert await events(world, "example.com", event="unsubscribed", recipient=rcpt) == []
    await api(world, "GET", f"/v3/example.com/unsubscribes/{rcpt}", expect=404)


async def fetch_from(url: str, source: str, forwarded_for: str | None) -> int:
    headers = {"User-Agent": CHROME}
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        async with session.get(url, allow_redirects=False) as resp:
            await resp.read()
            return resp.status


@pytest.mark.parametrize("source, forwarded_for, ip", [
    ("127.0.0.1", "203.0.113.7", "127.0.0.1"),  # not a trusted proxy: the header is never read
    ("127.0.0.2", "203.0.113.7", "203.0.113.7"),  # a trusted proxy: the client it names
    ("127.0.0.2", "198.51.100.1, 203.0.113.8, 10.9.1.1", "203.0.113.8"),  # the right-most untrusted hop
    ("127.0.0.2", "garbage", "127.0.0.2"),  # not an address: the proxy itself
    ("127.0.0.2", None, "127.0.0.2"),
])
async def test_the_client_address_comes_from_x_forwarded_for_only_behind_a_trusted_proxy(world, source,
                                                                                      forwarded_for, ip):
    rcpt = f"opener-{source[-1]}-{abs(hash(forwarded_for)) % 10000}@dest.test"
    html = "<html><body><p>Hi</p></body></html>"
    await api(world, "POST", "/v3/example.com/messages", data={
        "from": "news@example.com", "to": rcpt, "subject": "Pixel", "html": html, "o:tracking-opens": "yes"})
    got = (await world.sink.wait_for(rcpt))[0]
    pixel = re.search(re.escape(world.api_url) + r"/o/[A-Za-z0-9_-]+", got.data.decode().replace("=\r\n", ""))
    assert await fetch_from(pixel.group(0), source, forwarded_for) == 200
    (event,) = await one(world, "opened", rcpt)
    assert event["ip"] == ip


async def test_the_list_unsubscribe_link_behind_a_trusted_proxy_records_the_forwarded_address(world):
    await api(world, "POST", "/v3/lists", data={"address": "proxied@example.com"})
    await api(world, "POST", "/v3/lists/proxied@example.com/members.json",
              data={"members": json.dumps(["behind@dest.test"])})
    await api(world, "POST", "/v3/example.com/messages", data={
        "from": "news@example.com", "to": "proxied@example.com", "subject": "Proxied", "text": "Hi."})
    got = (await world.sink.wait_for("behind@dest.test"))[0]
    msg = email.message_from_bytes(got.data, policy=email.policy.default)
    link = str(msg["List-Unsubscribe"]).split(",")[0].strip().strip("<>")
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector, headers={"X-Forwarded-For": "203.0.113.44"}) as http:
        async with http.post(link, data={"List-Unsubscribe": "One-Click"}) as resp:
            assert resp.status == 200
    (event,) = await one(world, "unsubscribed", "behind@dest.test")
    assert event["ip"] == "203.0.113.44"


async def test_a_replayed_dsn_or_arf_report_records_one_event(world):
    rcpt = "replay@dest.test"
    qid = world.send([rcpt], "Replayed")
    await one(world, "delivered", rcpt)
    got = world.sink.to(rcpt)[-1]
    status = ("Reporting-MTA: dns; gw.dest.test\r\n\r\nFinal-Recipient: rfc822; replay@dest.test\r\nAction: failed\r\n"
              "Status: 5.1.1\r\nRemote-MTA: dns; inner.dest.test\r\n"
              "Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n")
    report = dsn_message(status, b"Message-ID: <whatever@x>\r\n")
    for _ in range(2):
        code, reply = mx_send(world, "", [got.mail_from], report)
        assert code == 250  # a replay is taken (and kept): refusing it would only make the sender retry
    second = reply.rsplit(" ", 1)[-1]
    assert "replay@dest.test" in report_outcome(world, second)
    (failed,) = await one(world, "failed", rcpt)
    assert failed["storage"]["key"] == qid and failed["flags"]["is-delayed-bounce"] is True
    for _ in range(2):
        assert mx_send(world, "fbl@isp.test", [FBL], arf(got.data))[0] == 250
    await one(world, "complained", rcpt)
    await asyncio.sleep(0.5)
    assert len(await events(world, "example.com", event="failed", recipient=rcpt)) == 1
    assert len(await events(world, "example.com", event="complained", recipient=rcpt)) == 1
