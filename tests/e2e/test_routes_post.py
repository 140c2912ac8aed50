"""Route POSTs end to end: mail sent with smtplib to mtad's MX listener, forwarded by a route to an aiohttp
application on loopback, read there field by field: Mailgun's parsed format (every field, attachments as
file uploads with names, types and bytes, content-id-map, message-headers, each header as its own field,
a signature the seed manual's verify() accepts), the raw format (URL ending in ``mime``), and messages in
ISO-8859-1 quoted-printable, windows-1251 base64 and 8-bit Latin-1 all arriving as UTF-8.

Runs on both store backends (``store_backend``: SQLite and PostgreSQL).
"""

from __future__ import annotations

import base64
import email
import json
import time

import pytest

from tests.e2e.routes_support import (SIGNING_KEY, accepted, assert_clean_exit, forward_events, route, routing_config,
    verify)
from tests.support.wait import wait_until
from tests.support.daemon import Mtad, base_config
from tests.support.stores import both_backends as store_backend  # noqa: F401,E402 (fixture: on both backends)

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n" + bytes(range(256))
CSV = "name;city\r\nJürgen;Köln\r\n".encode("utf-8")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, certs, app, daemons_store):
    tmp = tmp_path_factory.mktemp("routes-post")
    cfg = routing_config(base_config(tmp, certs), [
        route('match_recipient("fields[0-9]*@inbound.test")', f'forward("{app.url("fields")}")', "stop()"),
        route("match_recipient('raw@inbound.test')", f"forward('{app.url('post_mime')}')", "stop()"),
        route('match_recipient(r"charset-(\\w+)@inbound\\.test")',
              f'forward("{app.url("charset/parsed")}, {app.url("charset/raw-mime")}")', "stop()"),
    ])
    cfg["delivery"]["enabled"] = False
    d = Mtad(tmp, cfg).start()
    yield d
    problems = assert_clean_exit(d)
    assert not problems, "\n".join(problems)


def b64_lines(data: bytes) -> str:
    text = base64.b64encode(data).decode()
    return "\r\n".join(text[i:i + 76] for i in range(0, len(text), 76))


# A reply as a mail client writes it: text and HTML alternatives (quoted history, a signature, an inline image)
# inside multipart/related, then three attachments; headers with an encoded word, a folded line, a repeated name,
# and lower-case "timestamp" trying to shadow the signature field.
HEADERS = [
    ("From", "=?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <juergen@sender.test>"),
    ("To", "Fields <fields@inbound.test>, Fields Two <fields2@inbound.test>"),
    ("Subject", "=?utf-8?b?R3LDvMOfZSBhdXMgS8O2bG4=?= (quarterly numbers)"),
    ("Date", "Mon, 03 Jun 2024 10:00:00 +0200"),
    ("Message-ID", "<reply-1@sender.test>"),
    ("In-Reply-To", "<question-1@inbound.test>"),
    ("X-Custom", "first value"),
    ("X-Custom", "second value"),
    ("X-Folded", "a header value\r\n that was folded"),
    ("timestamp", "1"),
    ("MIME-Version", "1.0"),
    ("Content-Type", 'multipart/mixed; boundary="outer"'),
]
PLAIN = ("Thanks, the numbers look right.\r\n"
         "I will send the report on Friday.\r\n"
         "\r\n"
         "-- \r\n"
         "Jürgen Müller\r\n"
         "Sales, Sender Inc.\r\n"
         "\r\n"
         "On Mon, 3 Jun 2024 at 09:00, Bob <bob@inbound.test> wrote:\r\n"
         "> Can you check the numbers?\r\n"
         "> Bob\r\n")
HTML = ('<html><body><p>Thanks, the numbers look <b>right</b>.</p><img src="cid:logo@sender.test">'
        '<blockquote type="cite"><p>Can you check the numbers?</p></blockquote></body></html>')
BODY = (
    "This is a multi-part message in MIME format.\r\n"
    "--outer\r\n"
    'Content-Type: multipart/related; boundary="related"\r\n\r\n'
    "--related\r\n"
    'Content-Type: multipart/alternative; boundary="alt"\r\n\r\n'
    "--alt\r\n"
    "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    f"{PLAIN}"
    "--alt\r\n"
    "Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    f"{HTML.replace('=', '=3D')}\r\n"
    "--alt--\r\n"
    "--related\r\n"
    "Content-Type: image/png\r\nContent-Transfer-Encoding: base64\r\nContent-ID: <logo@sender.test>\r\n"
    "Content-Disposition: inline\r\n\r\n"
    f"{b64_lines(PNG)}\r\n"
    "--related--\r\n"
    "--outer\r\n"
    "Content-Type: text/calendar; charset=utf-8; method=REQUEST\r\n\r\n"
    "BEGIN:VCALENDAR\r\nSUMMARY:Review\r\nEND:VCALENDAR\r\n"
    "--outer\r\n"
    'Content-Type: application/pdf; name="report.pdf"\r\nContent-Transfer-Encoding: base64\r\n'
    'Content-Disposition: attachment; filename="report.pdf"\r\n\r\n'
    f"{b64_lines(PDF)}\r\n"
    "--outer\r\n"
    "Content-Type: text/csv; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n"
    "Content-Disposition: attachment; filename*=utf-8''K%C3%B6ln%20data.csv\r\n\r\n"
    f"{b64_lines(CSV)}\r\n"
    "--outer--\r\n"
)
MESSAGE = ("".join(f"{n}: {v}\r\n" for n, v in HEADERS) + "\r\n" + BODY).encode()
DECODED_HEADERS = [
    ["From", "Jürgen Müller <juergen@sender.test>"],
    ["To", "Fields <fields@inbound.test>, Fields Two <fields2@inbound.test>"],
    ["Subject", "Grüße aus Köln (quarterly numbers)"],
    ["Date", "Mon, 03 Jun 2024 10:00:00 +0200"],
    ["Message-ID", "<reply-1@sender.test>"],
    ["In-Reply-To", "<question-1@inbound.test>"],
    ["X-Custom", "first value"],
    ["X-Custom", "second value"],
    ["X-Folded", "a header value that was folded"],
    ["timestamp", "1"],
    ["MIME-Version", "1.0"],
    ["Content-Type", 'multipart/mixed; boundary="outer"'],
]


def lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").rstrip("\n").split("\n")


def test_parsed_post_carries_every_field_for_each_recipient(daemon, app):
    sent_at = time.time()
    qid = accepted(daemon, ["fields@inbound.test", "fields2@inbound.test"], MESSAGE, sender="bounces@sender.test")
    posts = wait_until(lambda: len(app.to("fields")) == 2 and app.to("fields"), what="two POSTs")
    assert sorted(p.get("recipient") for p in posts) == ["fields2@inbound.test", "fields@inbound.test"]
    for post in posts:
        assert post.headers["Content-Type"].startswith("multipart/form-data")
        assert post.get("sender") == "bounces@sender.test"  # MAIL FROM, not the From header
        assert post.get("from") == "Jürgen Müller <juergen@sender.test>"
        assert post.get("subject") == "Grüße aus Köln (quarterly numbers)"
        assert lines(post.get("body-plain")) == lines(PLAIN)
        assert post.get("stripped-text") == "Thanks, the numbers look right.\nI will send the report on Friday."
        assert post.get("stripped-signature") == "-- \nJürgen Müller\nSales, Sender Inc."
        assert post.get("body-html").strip() == HTML
        stripped_html = post.get("stripped-html")
        assert "Thanks, the numbers look <b>right</b>." in stripped_html and 'src="cid:logo@sender.test"' in stripped_html
        assert "Can you check" not in stripped_html
        assert lines(post.get("body-calendar")) == ["BEGIN:VCALENDAR", "SUMMARY:Review", "END:VCALENDAR"]

        assert post.get("attachment-count") == "3"
        assert set(post.files) == {"attachment-1", "attachment-2", "attachment-3"}
        logo, report, table = (post.files[f"attachment-{i}"] for i in (1, 2, 3))
        assert (logo.content_type, logo.data) == ("image/png", PNG)
        assert (report.filename, report.content_type, report.data) == ("report.pdf", "application/pdf", PDF)
        assert (table.filename, table.content_type, table.data) == ("Köln data.csv", "text/csv", CSV)
        assert json.loads(post.get("content-id-map")) == {"<logo@sender.test>": "attachment-1"}

        headers = json.loads(post.get("message-headers"))
        assert headers[0][0] == "Received" and "by mtad.test" in headers[0][1] and qid in headers[0][1]
        assert headers[1:] == DECODED_HEADERS  # every header, in order, decoded
        for name, value in headers:  # ... and each one as its own field, repeated names repeated
            if name not in ("timestamp",):
                assert value in post.all(name), name
        assert post.all("X-Custom") == ["first value", "second value"]

        # the signature: the seed's verify() with the configured key; a header cannot shadow the fields
        timestamp, token, signature = post.get("timestamp"), post.get("token"), post.get("signature")
        assert verify(SIGNING_KEY, token, timestamp, signature)
        assert not verify("key-not-the-signing-key", token, timestamp, signature)
        assert len(token) == 50 and token.isalnum() and abs(int(timestamp) - sent_at) < 60
    assert posts[0].get("token") != posts[1].get("token")
    # the forwards were recorded as delivered, each with its URL and HTTP status
    events = wait_until(lambda: len(forward_events(daemon, qid)) == 2 and forward_events(daemon, qid))
    assert {(e["event"], e["recipient"], e["delivery-status"]["url"], e["delivery-status"]["code"]) for e in events} \
        == {("delivered", r, app.url("fields"), 200) for r in ("fields@inbound.test", "fields2@inbound.test")}


def test_raw_mime_post_for_a_url_ending_in_mime(daemon, app):
    message = MESSAGE.replace(b"fields@inbound.test", b"raw@inbound.test")
    qid = accepted(daemon, ["raw@inbound.test"], message)
    post = wait_until(lambda: app.to("post_mime"), what="the raw POST")[0]
    assert post.headers["Content-Type"].startswith("multipart/form-data")
    assert post.names() == ["recipient", "sender", "from", "subject", "body-mime", "timestamp", "token", "signature"]
    assert post.files == {}
    assert post.get("recipient") == "raw@inbound.test" and post.get("sender") == "alice@sender.test"
    assert post.get("from") == "Jürgen Müller <juergen@sender.test>"
    assert post.get("subject") == "Grüße aus Köln (quarterly numbers)"
    stored = bytes(daemon.query("SELECT body FROM messages WHERE id = ?", (qid,))[0][0])
    assert post.get("body-mime").encode() == stored  # a UTF-8 message arrives byte for byte
    assert stored.endswith(message) and stored.startswith(b"Received: ")
    assert verify(SIGNING_KEY, post.get("token"), post.get("timestamp"), post.get("signature"))


LATIN1_QP = (
    "From: =?iso-8859-1?q?Fran=E7ois_K=F6hler?= <fk@sender.test>\r\n"
    "To: charset-qp@inbound.test\r\n"
    "Subject: =?ISO-8859-1?Q?Gr=FC=DFe_aus_K=F6ln?=\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=ISO-8859-1\r\n"
    "Content-Transfer-Encoding: quoted-printable\r\n"
    "\r\n"
    "Gr=FC=DFe aus K=F6ln, =E0 bient=F4t =A3=A7=B5!\r\n"
    "Une ligne tr=E8s longue qui est coup=E9e par un saut de ligne doux, comme le=\r\n"
    "s clients le font.\r\n"
).encode("ascii")
LATIN1_QP_TEXT = ["Grüße aus Köln, à bientôt £§µ!",
                  "Une ligne très longue qui est coupée par un saut de ligne doux, comme les clients le font."]

CYRILLIC = "Привет из Москвы, отчёт во вложении."
WIN1251_BASE64 = (
    "From: =?windows-1251?b?" + base64.b64encode("Иван Петров".encode("cp1251")).decode() + "?= <ivan@sender.test>\r\n"
    "To: charset-b64@inbound.test\r\n"
    "Subject: =?windows-1251?b?" + base64.b64encode("Отчёт".encode("cp1251")).decode() + "?=\r\n"
    "MIME-Version: 1.0\r\n"
    'Content-Type: multipart/alternative; boundary="b"\r\n'
    "\r\n"
    "--b\r\n"
    "Content-Type: text/plain; charset=windows-1251\r\n"
    "Content-Transfer-Encoding: base64\r\n"
    "\r\n"
    + b64_lines(CYRILLIC.encode("cp1251")) + "\r\n"
    "--b\r\n"
    "Content-Type: text/html; charset=koi8-r\r\n"
    "Content-Transfer-Encoding: base64\r\n"
    "\r\n"
    + b64_lines(f"<p>{CYRILLIC}</p>".encode("koi8-r")) + "\r\n"
    "--b--\r\n"
).encode("ascii")

LATIN1_8BIT = (
    "From: Zoë <zoe@sender.test>\r\n"
    "To: charset-8bit@inbound.test\r\n"
    "Subject: Café crème\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=iso-8859-1\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n"
    "Un café crème, s'il vous plaît.\r\n"
).encode("latin-1")


@pytest.mark.parametrize("name, message, sender_name, subject, text", [
    ("qp", LATIN1_QP, "François Köhler", "Grüße aus Köln", LATIN1_QP_TEXT),
    ("b64", WIN1251_BASE64, "Иван Петров", "Отчёт", [CYRILLIC]),
    ("8bit", LATIN1_8BIT, "Zoë", "Café crème", ["Un café crème, s'il vous plaît."]),
], ids=["iso-8859-1-quoted-printable", "windows-1251-base64", "iso-8859-1-8bit"])
def test_messages_in_other_charsets_arrive_as_utf8(daemon, app, name, message, sender_name, subject, text):
    rcpt = f"charset-{name}@inbound.test"
    accepted(daemon, [rcpt], message)
    parsed = wait_until(lambda: [p for p in app.to("charset/parsed") if p.get("recipient") == rcpt], what="parsed")[0]
    raw = wait_until(lambda: [p for p in app.to("charset/raw-mime") if p.get("recipient") == rcpt], what="raw")[0]
    # App decodes every field as strict UTF-8, so both posts already proved to be UTF-8
    assert parsed.get("from").startswith(sender_name) and parsed.get("subject") == subject
    assert lines(parsed.get("body-plain")) == text
    assert lines(parsed.get("stripped-text")) == text
    if name == "b64":
        assert parsed.get("body-html").strip() == f"<p>{CYRILLIC}</p>"
    assert raw.get("from").startswith(sender_name) and raw.get("subject") == subject
    mime = raw.get("body-mime")
    if name == "8bit":  # 8-bit Latin-1 is re-encoded as UTF-8, labelled so, headers included
        assert "\r\nFrom: Zoë <zoe@sender.test>\r\n" in mime and "\r\nSubject: Café crème\r\n" in mime
        part = email.message_from_bytes(mime.encode("utf-8"))
        assert part.get_content_charset() == "utf-8"
        assert part.get_payload(decode=True).decode("utf-8").rstrip() == "Un café crème, s'il vous plaît."
    else:  # 7-bit on the wire: the message is already UTF-8 text, passed as is (its labels stay right)
        assert mime.encode().endswith(message)


def test_html_only_and_broken_messages_are_still_forwarded(daemon, app):
    html_only = (b"From: a@sender.test\r\nTo: charset-html@inbound.test\r\nSubject: only html\r\nMIME-Version: 1.0\r\n"
                 b"Content-Type: text/html; charset=utf-8\r\n\r\n"
                 b"<html><head><style>p {color: red}</style></head><body><h1>Title</h1>"
                 b"<p>First &amp; second</p><p>Third</p></body></html>\r\n")
    # no boundary parameter, an unknown charset, 8-bit bytes
    no_boundary = (b"From: a@sender.test\r\nTo: charset-broken@inbound.test\r\nSubject: broken\r\nMIME-Version: 1.0\r\n"
                   b"Content-Type: multipart/mixed\r\n\r\n"
                   b"--lost\r\nContent-Type: text/plain; charset=no-such-charset\r\n\r\nStill readable \xc3\xa9.\r\n"
                   b"--lost\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=a.bin\r\n"
                   b"\r\n\x01\x02\xff\r\n--lost--\r\n")
    # control characters in a file name and in a content type (which no HTTP part header may carry)
    hostile = (b"From: a@sender.test\r\nTo: charset-hostile@inbound.test\r\nSubject: hostile\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nbody\r\n"
               b"--b\r\nContent-Type: application/pdf\r\n"
               b"Content-Disposition: attachment; filename*=utf-8''re%01port%0D%0A%7F.pdf\r\n\r\n%PDF\r\n"
               b"--b\r\nContent-Type: text/x\x01y\r\n\r\nodd\r\n--b--\r\n")
    for rcpt, message in (("charset-html@inbound.test", html_only), ("charset-broken@inbound.test", no_boundary),
                          ("charset-hostile@inbound.test", hostile)):
        accepted(daemon, [rcpt], message)

    def parsed(rcpt: str):
        return wait_until(lambda: [p for p in app.to("charset/parsed") if p.get("recipient") == rcpt], what=rcpt)[0]
    html = parsed("charset-html@inbound.test")
    assert [x for x in lines(html.get("body-plain")) if x] == ["Title", "First & second", "Third"]
    assert "<h1>Title</h1>" in html.get("body-html")
    broken = parsed("charset-broken@inbound.test")
    assert broken.get("subject") == "broken" and broken.get("body-plain").strip() == "Still readable é."
    assert broken.get("attachment-count") == "1" and broken.files["attachment-1"].data == b"\x01\x02\xff"
    broken_raw = wait_until(lambda: [p for p in app.to("charset/raw-mime")
                                     if p.get("recipient") == "charset-broken@inbound.test"])[0]
    assert broken_raw.get("body-mime").endswith("Still readable é.\r\n--lost\r\nContent-Type: application/octet-stream"
                                                "\r\nContent-Disposition: attachment; filename=a.bin\r\n\r\n\x01\x02ÿ"
                                                "\r\n--lost--\r\n")  # whole, every line decoded
    hostile_post = parsed("charset-hostile@inbound.test")
    assert hostile_post.get("body-plain").strip() == "body" and hostile_post.get("attachment-count") == "2"
    report, odd = hostile_post.files["attachment-1"], hostile_post.files["attachment-2"]
    assert (report.filename, report.content_type, report.data) == ("report .pdf", "application/pdf", b"%PDF")  # CRLF unfolds to a space
    assert (odd.content_type, odd.data) == ("application/octet-stream", b"odd")
