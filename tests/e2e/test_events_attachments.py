"""Events list a message's attachments (``message.attachments``: filename, content-type, decoded size), as
Mailgun's do: a send through the HTTP API with two files, an SMTP submission with one, and routed inbound
mail with one, read back from ``GET /v3/{domain}/events`` for their ``accepted`` and final events."""

from __future__ import annotations

import os
import smtplib
from email import policy
from email.message import EmailMessage

import aiohttp
import pytest

from tests.e2e.events_support import World, events, running_world
from tests.support.api import api
from tests.support.wait import wait_for
from tests.support.daemon import PASSWORD

PDF = b"%PDF-1.4\n" + os.urandom(3001)
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(517)
NOTES = "Grüße aus dem Anhang\n" * 7


@pytest.fixture(scope="module")
def world(tmp_path_factory, certs):
    with running_world(tmp_path_factory, certs, "attachments") as w:
        yield w


def mime_with_attachment(sender: str, rcpt: str, subject: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, rcpt, subject
    msg.set_content("See the attached report.")
    msg.add_alternative("<p>See the attached report.</p>", subtype="html")
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="report Q3.pdf")
    return msg.as_bytes(policy=policy.SMTP)


async def final_events(world: World, domain: str, subject: str, kinds: set[str]) -> list[dict]:
    async def check():
        got = [e for e in await events(world, domain, ascending="yes") if e["message"]["headers"]["subject"] == subject]
        return got if kinds <= {e["event"] for e in got} else None
    return await wait_for(check, what=f"{kinds} events of {subject!r}")


async def test_api_send_with_two_attachments_lists_both(world):
    form = aiohttp.FormData()
    for name, value in (("from", "App <postmaster@example.com>"), ("to", "ok-api@dest.test"),
                        ("subject", "API with files"), ("text", "Two files attached.")):
        form.add_field(name, value)
    form.add_field("attachment", PNG, filename="chart.png", content_type="image/png")
    form.add_field("attachment", NOTES.encode(), filename="notes ü.txt", content_type="text/plain")
    sent = await api(world, "POST", "/v3/example.com/messages", data=form)
    assert sent["message"] == "Queued. Thank you."
    got = await final_events(world, "example.com", "API with files", {"accepted", "delivered"})
    expected = [{"filename": "chart.png", "content-type": "image/png", "size": len(PNG)},
                {"filename": "notes ü.txt", "content-type": "text/plain", "size": len(NOTES.encode())}]
    for event in got:
        assert event["message"]["attachments"] == expected, event["event"]


async def test_smtp_submission_with_one_attachment_lists_it(world):
    body = mime_with_attachment("postmaster@example.com", "ok-smtp@dest.test", "SMTP with a file")
    with smtplib.SMTP("127.0.0.1", world.mtad.submission, local_hostname="client.test", timeout=10) as s:
        s.starttls(context=world.certs.client_context())
        s.login("postmaster@example.com", PASSWORD)
        s.sendmail("postmaster@example.com", ["ok-smtp@dest.test", "bad-smtp@dest.test"], body)
    got = await final_events(world, "example.com", "SMTP with a file", {"accepted", "delivered", "failed"})
    assert len(got) == 4  # accepted x2, delivered, failed (550)
    for event in got:
        assert event["message"]["attachments"] == [
            {"filename": "report Q3.pdf", "content-type": "application/pdf", "size": len(PDF)}], event["event"]
    # a message without files keeps an empty list
    world.send(["ok-plain@dest.test"], "No files")
    plain = await final_events(world, "example.com", "No files", {"accepted", "delivered"})
    assert all(e["message"]["attachments"] == [] for e in plain)


async def test_routed_inbound_mail_lists_its_attachment(world):
    body = mime_with_attachment("someone@outside.test", "someone@inbound.test", "Inbound with a file")
    with smtplib.SMTP("127.0.0.1", world.mtad.mx, local_hostname="outside.test", timeout=10) as s:
        s.sendmail("someone@outside.test", ["someone@inbound.test"], body)
    got = await final_events(world, "inbound.test", "Inbound with a file", {"accepted", "delivered"})
    assert {e["event"] for e in got} == {"accepted", "delivered"}  # delivered: the route's forward to a URL
    for event in got:
        assert event["message"]["attachments"] == [
            {"filename": "report Q3.pdf", "content-type": "application/pdf", "size": len(PDF)}], event["event"]
    assert world.receiver.to("route"), "the route's URL got the message"
