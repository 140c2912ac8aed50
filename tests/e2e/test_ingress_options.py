"""Mailgun sending options over SMTP: ``X-Mailgun-*`` headers on authenticated submissions are parsed into
the stored message's options and removed from the copy that will be relayed; malformed ones are
refused with a 5xx naming the header. Also: one delivery row per destination domain and one
``accepted`` event per recipient.
"""

from __future__ import annotations

import email.utils
import json
import smtplib

import pytest

from tests.e2e.helpers import message_count, queue_id, send, stored, submission
from tests.support.api import api_sync

DELIVER_BY = "Thu, 13 Oct 2033 18:02:00 +0000"
DELIVER_BY_EPOCH = email.utils.parsedate_to_datetime(DELIVER_BY).timestamp()


@pytest.fixture(scope="module")
def server(daemon_factory):
    daemon = daemon_factory()
    for campaign in ("spring-sale", "c1", "c2"):  # a send naming an unknown campaign is refused
        api_sync(daemon, "POST", "/v3/example.com/campaigns", data={"name": campaign, "id": campaign})
    return daemon


@pytest.fixture
def session(server, certs):
    with submission(server, certs.client_context()) as s:
        yield s


def message_with(headers: str, body: str = "Hello.\r\n") -> bytes:
    return (f"From: Sender <postmaster@example.com>\r\nTo: <someone@gmail.com>\r\nSubject: options\r\n"
            f"{headers}\r\n{body}").encode()


def assert_no_mailgun_headers(body: bytes) -> None:
    head = body.split(b"\r\n\r\n", 1)[0].lower()
    assert b"x-mailgun-" not in head, head
    # Folded continuation lines of removed headers must be gone too.
    for line in head.split(b"\r\n"):
        assert line, "an empty line inside the header block would end it early"


def test_every_option_parsed_and_every_header_removed(server, session):
    headers = (
        "X-Mailgun-Tag: newsletter\r\n"
        "X-Mailgun-Tag: weekly\r\n"
        "X-Mailgun-Campaign-Id: spring-sale\r\n"
        "X-Mailgun-Dkim: no\r\n"
        f"X-Mailgun-Deliver-By: {DELIVER_BY}\r\n"
        "X-Mailgun-Deliver-Within: 1h30m\r\n"
        "X-Mailgun-Drop-Message: yes\r\n"
        "X-Mailgun-Track: no\r\n"
        "X-Mailgun-Track-Clicks: htmlonly\r\n"
        "X-Mailgun-Track-Opens: yes\r\n"
        'X-Mailgun-Variables: {"customer": 42, "plan": "gold"}\r\n'
        'X-Mailgun-Variables: {"items": [1, 2],\r\n\t "plan": "platinum"}\r\n'
        "X-Mailgun-Require-TLS: yes\r\n"
        "X-Mailgun-Skip-Verification: yes\r\n"
        "X-Mailgun-Foo: bar\r\n"
        "X-Other: kept\r\n"
    )
    code, text = send(session, "postmaster@example.com", ["someone@gmail.com"], message_with(headers))
    assert code == 250, text
    msg = stored(server, queue_id(text))
    opts = msg["options"]
    assert opts["tags"] == ["newsletter", "weekly"]
    assert opts["campaigns"] == ["spring-sale"]
    assert opts["dkim"] is False
    assert opts["deliver_by"] == DELIVER_BY_EPOCH
    assert opts["deliver_within"] == 5400
    assert opts["test_mode"] is True
    assert opts["tracking"] is False
    assert opts["tracking_clicks"] == "htmlonly"
    assert opts["tracking_opens"] is True
    assert opts["variables"] == {"customer": 42, "plan": "platinum", "items": [1, 2]}  # merged, later wins
    assert opts["require_tls"] is True
    assert opts["skip_verification"] is True
    assert opts["unknown"] == [["X-Mailgun-Foo", "bar"]]
    body = msg["body"]
    assert_no_mailgun_headers(body)
    assert b"X-Other: kept\r\n" in body
    assert b"Subject: options\r\n" in body
    assert body.endswith(b"\r\n\r\nHello.\r\n")
    # Deliver-By holds the delivery back until then.
    assert server.query("SELECT next_attempt_at FROM deliveries WHERE message = ?", (msg["id"],)) == \
        [(DELIVER_BY_EPOCH,)]


@pytest.mark.parametrize("header, key, expected", [
    ("X-Mailgun-Deliver-By: 2000000000", "deliver_by", 2000000000.0),
    (f"X-Mailgun-Deliver-By: {DELIVER_BY}", "deliver_by", DELIVER_BY_EPOCH),
    ("X-Mailgun-Deliver-Within: 3d", "deliver_within", 3 * 86400),
    ("X-Mailgun-Deliver-Within: 45m", "deliver_within", 2700),
    ("X-Mailgun-Track-Clicks: yes", "tracking_clicks", "yes"),
    ("X-Mailgun-Track-Clicks: no", "tracking_clicks", "no"),
    ("X-Mailgun-Track: yes", "tracking", True),
    ("X-Mailgun-Dkim: yes", "dkim", True),
    ("X-Mailgun-Drop-Message: no", "test_mode", False),
    ("X-Mailgun-Require-TLS: false", "require_tls", False),
    ("x-mailgun-tag: lower-case-name", "tags", ["lower-case-name"]),
    ("X-Mailgun-Campaign-Id: c1\r\nX-Mailgun-Campaign-Id: c2", "campaigns", ["c1", "c2"]),
    ("X-Mailgun-Tag: =?utf-8?q?caf=C3=A9?=", "tags", ["café"]),
])
def test_single_option_values(server, session, header, key, expected):
    code, text = send(session, "postmaster@example.com", ["someone@gmail.com"], message_with(header + "\r\n"))
    assert code == 250, text
    msg = stored(server, queue_id(text))
    assert msg["options"][key] == expected
    assert_no_mailgun_headers(msg["body"])
    assert msg["body"].endswith(b"Subject: options\r\n\r\nHello.\r\n")


def test_three_tags_accepted(server, session):
    tags = "".join(f"X-Mailgun-Tag: t{i}\r\n" for i in range(3))
    code, text = send(session, "postmaster@example.com", ["someone@gmail.com"], message_with(tags))
    assert code == 250, text
    assert stored(server, queue_id(text))["options"]["tags"] == ["t0", "t1", "t2"]


@pytest.mark.parametrize("header, name", [
    ("X-Mailgun-Variables: [1, 2]", "X-Mailgun-Variables"),
    ('X-Mailgun-Variables: {"unterminated": ', "X-Mailgun-Variables"),
    ("X-Mailgun-Deliver-By: next tuesday", "X-Mailgun-Deliver-By"),
    ("X-Mailgun-Deliver-Within: soon", "X-Mailgun-Deliver-Within"),
    ("X-Mailgun-Track-Clicks: maybe", "X-Mailgun-Track-Clicks"),
    ("X-Mailgun-Dkim: perhaps", "X-Mailgun-Dkim"),
    ("".join(f"X-Mailgun-Tag: t{i}\r\n" for i in range(4)).rstrip(), "X-Mailgun-Tag"),
])
def test_malformed_option_refused_naming_the_header(server, session, header, name):
    before = message_count(server)
    code, text = send(session, "postmaster@example.com", ["someone@gmail.com"], message_with(header + "\r\n"))
    assert 500 <= code < 600, (code, text)
    assert name in text, text
    assert message_count(server) == before, "nothing is stored for a refused message"
    # The session goes on.
    code, text = send(session, "postmaster@example.com", ["someone@gmail.com"], message_with(""))
    assert code == 250, text


def test_one_delivery_per_domain_and_one_accepted_event_per_recipient(server, session):
    rcpts = ["a@gmail.com", "b@gmail.com", "c@yahoo.com", "d@outlook.com", "e@yahoo.com"]
    code, text = send(session, "postmaster@example.com", rcpts, message_with("X-Mailgun-Tag: multi\r\n"))
    assert code == 250, text
    qid = queue_id(text)
    rows = server.query("SELECT domain, recipients, state FROM deliveries WHERE message = ? ORDER BY domain", (qid,))
    assert [(d, sorted(json.loads(r)), s) for d, r, s in rows] == [
        ("gmail.com", ["a@gmail.com", "b@gmail.com"], "queued"),
        ("outlook.com", ["d@outlook.com"], "queued"),
        ("yahoo.com", ["c@yahoo.com", "e@yahoo.com"], "queued"),
    ]
    events = server.query("SELECT recipient, data FROM events WHERE queue_id = ? AND event = 'accepted'", (qid,))
    assert sorted(r for r, _ in events) == sorted(rcpts)
    for _, data in events:
        event = json.loads(data)
        assert event["tags"] == ["multi"]
        assert event["flags"]["is-authenticated"] is True
    # The body is stored once, not per recipient or per domain.
    assert server.query("SELECT count(*) FROM messages WHERE id = ?", (qid,)) == [(1,)]


def test_options_ignored_for_unauthenticated_inbound_mail(server):
    """Inbound mail is not a sending request: a stranger cannot set options for mtad's own sending."""
    with smtplib.SMTP("127.0.0.1", server.mx, local_hostname="client.test", timeout=10) as s:
        code, text = send(s, "stranger@example.net", ["user@inbound.test"],
                          message_with("X-Mailgun-Variables: not json\r\nX-Mailgun-Drop-Message: yes\r\n"))
    assert code == 250, text
    msg = stored(server, queue_id(text))
    assert msg["options"]["test_mode"] is False
    assert msg["options"]["variables"] == {}


def test_user_as_other_domain_options_stored_for_that_domain(server, certs):
    with submission(server, certs.client_context(), login="app@other.org") as s:
        code, text = send(s, "noreply@other.org", ["x@gmail.com"], message_with("X-Mailgun-Tag: other\r\n"))
    assert code == 250, text
    msg = stored(server, queue_id(text))
    assert msg["domain"] == "other.org"
    assert msg["envelope"]["auth_user"] == "app@other.org"
    assert msg["options"]["tags"] == ["other"]



def test_refused_authenticated_message_leaves_a_rejected_event(server, session):
    code, text = send(session, "postmaster@example.com", ["reject-me@gmail.com"],
                      message_with("X-Mailgun-Variables: [1, 2]\r\n"))
    assert code == 550, text
    rows = server.query("SELECT domain, data FROM events WHERE event = 'rejected' AND recipient = ?",
                        ("reject-me@gmail.com",))
    assert len(rows) == 1
    domain, data = rows[0]
    event = json.loads(data)
    assert domain == "example.com"
    assert "X-Mailgun-Variables" in event["reject"]["description"]
    assert event["envelope"]["sender"] == "postmaster@example.com"
    assert event["flags"]["is-authenticated"] is True
