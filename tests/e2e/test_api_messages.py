"""Sending through the HTTP API: ``POST /v3/{domain}/messages`` and ``/messages.mime`` over real sockets.

mtad runs with delivery on; recipients' domains resolve (through the loopback DNS server) to an aiosmtpd
MX on 127.0.0.1, so what the tests read is what a receiving server got. Options are compared with their
SMTP twins (``X-Mailgun-*`` headers on an authenticated submission): same stored options, same outcome.

Runs on both store backends (``store_backend``: SQLite and PostgreSQL).
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import json
import re
import time

import aiohttp
import dkim as dkimpy
import pytest

from mtad.mail import dkim as dkim_mod
from tests.e2e.apihelpers import delivering, dkim_domain, txt_lookup
from tests.e2e.helpers import send as smtp_send, submission
from tests.support.daemon import _FAST_HASH
from tests.support.dns_server import DnsServer
from tests.support.api import api, api_sync, basic_auth
from tests.support.stores import both_backends as store_backend  # noqa: F401,E402 (fixture: on both backends)

FROM = "Sender <postmaster@example.com>"
DEST = "dest.test"


@pytest.fixture(scope="module")
def env(daemon_factory, tmp_path_factory, mx_farm):
    dns = DnsServer(ttl=300).start()
    sink = mx_farm.add("mx.sink.test")
    dkim_cfg, key = dkim_domain(tmp_path_factory.mktemp("dkim"), "example.com")
    name, value = dkim_mod.dns_record(key)
    dns.add_txt(name, value)
    top = delivering(dns, sink, [DEST])
    top["sending_domains"] = {
        "example.com": {"users": {"postmaster": {"password_hash": _FAST_HASH, "send_as": ["example.com"]}},
                        **dkim_cfg},
    }
    daemon = daemon_factory(limits={"max_message_size": "2MB"}, **top)
    # a send naming an unknown campaign is refused
    api_sync(daemon, "POST", "/v3/example.com/campaigns", data={"name": "c1", "id": "c1"})
    yield daemon, sink, (name, value)
    dns.stop()


def stored_by_message_id(daemon, message_id: str) -> list[dict]:
    rows = daemon.query("SELECT id, recipients, options, envelope, body, domain FROM messages WHERE message_id = ?"
                        " ORDER BY id", (message_id.strip("<>"),))
    return [{"id": r[0], "recipients": json.loads(r[1]), "options": json.loads(r[2]),
             "envelope": json.loads(r[3]), "body": bytes(r[4]), "domain": r[5]} for r in rows]


def text(part) -> str:
    """A text part's content with LF line ends (the parser keeps the message's CRLF)."""
    return part.get_content().replace("\r\n", "\n")


def parse(content: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(content, policy=email.policy.default)


async def send(daemon, data, *, expect=200, path="/v3/example.com/messages"):
    return await api(daemon, "POST", path, data=data, expect=expect)


async def test_text_html_attachments_and_inline_images_arrive_intact(env):
    daemon, sink, _ = env
    png = bytes(range(256)) * 40
    pdf = b"%PDF-1.4\n" + bytes(range(255, -1, -1)) * 30
    form = aiohttp.FormData()
    for name, value in [("from", FROM), ("to", f"Anna <anna@{DEST}>"), ("subject", "Résumé attached"),
                        ("text", "Hello Anna,\nsee attached. Ünïcödé.\n"),
                        ("html", '<p>Hello <img src="cid:logo.png"></p>'), ("o:tag", "welcome"),
                        ("amp-html", "<html amp4email><body>AMP Anna</body></html>")]:
        form.add_field(name, value)
    form.add_field("attachment", pdf, filename="report.pdf", content_type="application/pdf")
    form.add_field("attachment", b"plain notes\n", filename="notes ü.txt", content_type="text/plain")
    form.add_field("inline", png, filename="logo.png", content_type="image/png")
    body = await send(daemon, form)
    assert body["message"] == "Queued. Thank you."
    assert body["id"].startswith("<") and body["id"].endswith("@example.com>")
    got = (await sink.wait_for(f"anna@{DEST}"))[0]
    msg = parse(got.data)
    assert msg["Message-ID"] == body["id"]
    assert msg["Subject"] == "Résumé attached"
    assert msg["To"] == f"Anna <anna@{DEST}>"
    assert text(msg.get_body(("plain",))) == "Hello Anna,\nsee attached. Ünïcödé.\n"
    assert 'cid:logo.png' in text(msg.get_body(("html",)))
    alternative = next(p for p in msg.walk() if p.get_content_type() == "multipart/alternative")
    assert [p.get_content_type() for p in alternative.iter_parts()] == ["text/plain", "text/x-amp-html", "text/html"]
    assert "AMP Anna" in text(list(alternative.iter_parts())[1])
    parts = {p.get_filename(): p for p in msg.walk() if p.get_filename()}
    assert parts["report.pdf"].get_content() == pdf
    assert parts["report.pdf"].get_content_disposition() == "attachment"
    assert parts["notes ü.txt"].get_payload(decode=True) == b"plain notes\n"
    assert parts["logo.png"].get_content() == png
    assert parts["logo.png"].get_content_disposition() == "inline"
    assert parts["logo.png"]["Content-ID"] == "<logo.png>"
    related = next(p for p in msg.walk() if p.get_content_type() == "multipart/related")
    assert any(p.get_filename() == "logo.png" for p in related.iter_parts())
    assert "DKIM-Signature" in msg  # example.com signs by default
    assert got.data.startswith(b"DKIM-Signature:") and b"with HTTP id" in got.data


async def test_a_non_ascii_inline_file_gets_an_ascii_content_id_its_cid_reference_follows(env):
    # a Content-ID is an ASCII msg-id (RFC 2045/5322): a non-ASCII inline name is escaped in it, the HTML's
    # cid:NAME references (as written, or percent-encoded as RFC 2392 says) are rewritten to match, and the
    # file name stays whole in the RFC 2231 filename parameter
    daemon, sink, _ = env
    jpeg = bytes(range(256)) * 8
    name = "Bild für Mama ☺.jpg"
    form = aiohttp.FormData()
    for field, value in [("from", FROM), ("to", f"inline@{DEST}"), ("subject", "Inline"),
                         ("html", f'<p><img src="cid:{name}"> <img src="cid:Bild%20f%C3%BCr%20Mama%20%E2%98%BA.jpg">'
                                  ' <img src="cid:logo.png"></p>')]:
        form.add_field(field, value)
    form.add_field("inline", jpeg, filename=name, content_type="image/jpeg")
    form.add_field("inline", b"png", filename="logo.png", content_type="image/png")
    await send(daemon, form)
    got = (await sink.wait_for(f"inline@{DEST}"))[0]
    assert got.data.isascii()  # every header (and, encoded, every body) is ASCII
    msg = parse(got.data)
    parts = {p.get_filename(): p for p in msg.walk() if p.get_filename()}
    assert set(parts) == {name, "logo.png"}
    part = parts[name]
    assert part.get_content() == jpeg and part.get_content_disposition() == "inline"
    assert "filename*=utf-8''Bild%20f%C3%BCr%20Mama%20%E2%98%BA.jpg" in got.data.decode()  # RFC 2231
    cid = str(part["Content-ID"])
    assert cid.startswith("<") and cid.endswith(">") and cid.isascii() and " " not in cid
    ident = cid[1:-1]
    id_left = email.utils.unquote(ident)
    assert id_left == ident  # a bare dot-atom: nothing to quote
    html = text(msg.get_body(("html",)))
    refs = re.findall(r'src="cid:([^"]+)"', html)
    assert refs == [ident, ident, "logo.png"]  # both spellings of the name resolve to the part
    assert str(parts["logo.png"]["Content-ID"]) == "<logo.png>"  # ASCII names stay as Mailgun writes them
    related = next(p for p in msg.walk() if p.get_content_type() == "multipart/related")
    by_id = {str(p["Content-ID"])[1:-1]: p for p in related.iter_parts() if p["Content-ID"]}
    assert by_id[refs[0]].get_content() == jpeg


async def test_batch_send_makes_one_substituted_copy_per_recipient(env):
    daemon, sink, _ = env
    people = {f"p{i}@{DEST}": {"first": f"Name{i}", "id": i} for i in range(3)}
    data = [("from", FROM), ("to", ", ".join(people)), ("subject", "Hi %recipient.first%"),
            ("text", "Dear %recipient.first%, your id is %recipient.id%.%recipient.missing%"),
            ("html", "<b>%recipient.first%</b>"), ("v:customer", "%recipient.id%"),
            ("recipient-variables", json.dumps(people))]
    body = await send(daemon, data)
    for address, variables in people.items():
        copies = await sink.wait_for(address)
        assert len(copies) == 1, address
        assert copies[0].rcpt_tos == [address]  # each copy goes to one recipient only
        msg = parse(copies[0].data)
        assert msg["To"] == address  # nobody sees the others
        assert msg["Subject"] == f"Hi {variables['first']}"
        assert msg["Message-ID"] == body["id"]
        assert text(msg.get_body(("plain",))).strip() == \
            f"Dear {variables['first']}, your id is {variables['id']}."
        assert f"<b>{variables['first']}</b>" in text(msg.get_body(("html",)))
    rows = stored_by_message_id(daemon, body["id"])
    assert sorted(r["recipients"][0] for r in rows) == sorted(people)
    assert {r["recipients"][0]: r["options"]["variables"]["customer"] for r in rows} == \
        {a: str(v["id"]) for a, v in people.items()}


async def test_urlencoded_send_with_cc_and_bcc(env):
    daemon, sink, _ = env
    data = {"from": FROM, "to": f"to1@{DEST}", "cc": f"cc1@{DEST}", "bcc": f"bcc1@{DEST}",
            "subject": "form", "text": "urlencoded body"}
    body = await send(daemon, data)  # aiohttp sends a dict as application/x-www-form-urlencoded
    for rcpt in ("to1", "cc1", "bcc1"):
        got = (await sink.wait_for(f"{rcpt}@{DEST}"))[0]
        msg = parse(got.data)
        assert msg["Cc"] == f"cc1@{DEST}"
        assert b"bcc1" not in got.data.split(b"\r\n\r\n")[0]  # Bcc is in no header of any copy
    assert stored_by_message_id(daemon, body["id"])[0]["envelope"]["transport"] == "http"


async def test_mime_send_parses_and_strips_mailgun_headers(env):
    daemon, sink, _ = env
    mime = (f"From: {FROM}\nTo: someone@{DEST}\nSubject: prebuilt\nX-Mailgun-Tag: from-header\n"
            "X-Mailgun-Variables: {\"k\": 1}\nMIME-Version: 1.0\nContent-Type: text/plain\n\nBuilt by the client.\n")
    form = aiohttp.FormData()
    form.add_field("to", f"mime@{DEST}")
    form.add_field("o:tag", "from-field")
    form.add_field("message", mime.encode(), filename="message.mime", content_type="message/rfc822")
    body = await send(daemon, form, path="/v3/example.com/messages.mime")
    got = (await sink.wait_for(f"mime@{DEST}"))[0]
    assert b"X-Mailgun" not in got.data
    msg = parse(got.data)
    assert msg["Subject"] == "prebuilt" and msg["Message-ID"] == body["id"]
    assert text(msg) == "Built by the client.\n"
    row = stored_by_message_id(daemon, body["id"])[0]
    assert row["options"]["tags"] == ["from-header", "from-field"]
    assert row["options"]["variables"] == {"k": 1}
    err = await send(daemon, {"to": f"x@{DEST}"}, path="/v3/example.com/messages.mime", expect=400)
    assert "'message'" in err["message"]


async def test_every_option_is_stored_as_its_smtp_twin(env, certs):
    daemon, _, _ = env
    deliver = "Thu, 13 Oct 2033 18:02:00 +0000"
    api_fields = [("from", FROM), ("to", f"twin@{DEST}"), ("subject", "twin"), ("text", "t"),
                  ("o:tag", "a"), ("o:tag", "b"), ("o:campaign", "c1"), ("o:dkim", "no"), ("o:deliverytime", deliver),
                  ("o:deliver-within", "1h30m"), ("o:testmode", "yes"), ("o:tracking", "no"),
                  ("o:tracking-clicks", "htmlonly"), ("o:tracking-opens", "yes"), ("o:require-tls", "yes"),
                  ("o:skip-verification", "yes"), ("v:plan", "gold"), ("v:data", '{"n": 1}')]
    body = await send(daemon, api_fields)
    via_api = stored_by_message_id(daemon, body["id"])[0]["options"]
    headers = ("X-Mailgun-Tag: a\r\nX-Mailgun-Tag: b\r\nX-Mailgun-Campaign-Id: c1\r\nX-Mailgun-Dkim: no\r\n"
               f"X-Mailgun-Deliver-By: {deliver}\r\nX-Mailgun-Deliver-Within: 1h30m\r\n"
               "X-Mailgun-Drop-Message: yes\r\nX-Mailgun-Track: no\r\nX-Mailgun-Track-Clicks: htmlonly\r\n"
               "X-Mailgun-Track-Opens: yes\r\nX-Mailgun-Require-TLS: yes\r\nX-Mailgun-Skip-Verification: yes\r\n"
               'X-Mailgun-Variables: {"plan": "gold", "data": {"n": 1}}\r\n')
    with submission(daemon, certs.client_context()) as s:
        code, text = smtp_send(s, "postmaster@example.com", [f"twin@{DEST}"],
                               f"From: {FROM}\r\nTo: twin@{DEST}\r\nSubject: twin\r\n{headers}\r\nt\r\n".encode())
    assert code == 250, text
    qid = text.rsplit(" ", 1)[-1]
    via_smtp = json.loads(daemon.query("SELECT options FROM messages WHERE id = ?", (qid,))[0][0])
    assert via_api == via_smtp
    assert via_api["deliver_by"] == email.utils.parsedate_to_datetime(deliver).timestamp()


async def test_testmode_delivers_nothing_like_drop_message(env, certs):
    daemon, sink, _ = env
    body = await send(daemon, {"from": FROM, "to": f"test-api@{DEST}", "subject": "t", "text": "t",
                                  "o:testmode": "yes"})
    with submission(daemon, certs.client_context()) as s:
        code, text = smtp_send(s, "postmaster@example.com", [f"test-smtp@{DEST}"],
                               f"From: {FROM}\r\nSubject: t\r\nX-Mailgun-Drop-Message: yes\r\n\r\nt\r\n".encode())
    assert code == 250
    outcomes = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(outcomes) < 2:
        rows = daemon.query("SELECT recipient, data FROM events WHERE event = 'delivered' AND recipient LIKE 'test-%'")
        outcomes = {r[0]: json.loads(r[1]) for r in rows}
        time.sleep(0.1)
    for rcpt in (f"test-api@{DEST}", f"test-smtp@{DEST}"):
        assert outcomes[rcpt]["delivery-status"]["code"] == 650
        assert outcomes[rcpt]["flags"]["is-test-mode"] is True
    assert not sink.to(f"test-api@{DEST}") and not sink.to(f"test-smtp@{DEST}")


async def test_deliverytime_holds_the_message_like_deliver_by(env, certs):
    daemon, sink, _ = env
    later = time.time() + 3600
    body = await send(daemon, {"from": FROM, "to": f"later-api@{DEST}", "subject": "t", "text": "t",
                                  "o:deliverytime": email.utils.formatdate(later)})
    with submission(daemon, certs.client_context()) as s:
        code, text = smtp_send(s, "postmaster@example.com", [f"later-smtp@{DEST}"],
                               f"From: {FROM}\r\nSubject: t\r\nX-Mailgun-Deliver-By: {email.utils.formatdate(later)}"
                               "\r\n\r\nt\r\n".encode())
    assert code == 250
    due = {json.loads(rcpts)[0]: at for rcpts, at in daemon.query(
        "SELECT recipients, next_attempt_at FROM deliveries WHERE recipients LIKE '%later-%'")}
    assert due[f"later-api@{DEST}"] == due[f"later-smtp@{DEST}"] == int(later)
    time.sleep(1.0)  # several scheduler polls
    assert not sink.to(f"later-api@{DEST}") and not sink.to(f"later-smtp@{DEST}")


async def test_dkim_no_sends_unsigned_like_its_smtp_twin(env, certs):
    daemon, sink, record = env
    await send(daemon, {"from": FROM, "to": f"signed@{DEST}", "subject": "s", "text": "signed"})
    await send(daemon, {"from": FROM, "to": f"unsigned-api@{DEST}", "subject": "s", "text": "unsigned",
                        "o:dkim": "no"})
    with submission(daemon, certs.client_context()) as s:
        code, _ = smtp_send(s, "postmaster@example.com", [f"unsigned-smtp@{DEST}"],
                            f"From: {FROM}\r\nSubject: s\r\nX-Mailgun-Dkim: no\r\n\r\nunsigned\r\n".encode())
    assert code == 250
    signed = (await sink.wait_for(f"signed@{DEST}"))[0].data
    assert dkimpy.verify(signed, dnsfunc=txt_lookup({record[0]: record[1]}))
    for rcpt in ("unsigned-api", "unsigned-smtp"):
        content = (await sink.wait_for(f"{rcpt}@{DEST}"))[0].data
        assert b"DKIM-Signature" not in content


@pytest.mark.parametrize("field, value, named", [
    ("subject", "hello\r\nBcc: victim@evil.test", "'subject'"),
    ("h:X-Custom", "v\nInjected: yes", "'h:X-Custom'"),
    ("from", "a@example.com\r\nX-Evil: 1", "'from'"),
    ("to", "victim@dest.test\nBcc: other@evil.test", "'to'"),
])
async def test_header_injection_is_refused_naming_the_field(env, field, value, named):
    daemon, _, _ = env
    before = daemon.query("SELECT count(*) FROM messages")[0][0]
    data = {"from": FROM, "to": f"x@{DEST}", "subject": "s", "text": "t", field: value}
    err = await send(daemon, data, expect=400)
    assert named in err["message"] and "line break" in err["message"]
    assert daemon.query("SELECT count(*) FROM messages")[0][0] == before


async def test_header_injection_through_recipient_variables_is_refused(env):
    daemon, _, _ = env
    data = {"from": FROM, "to": f"x@{DEST}", "subject": "Hi %recipient.name%", "text": "t",
            "recipient-variables": json.dumps({f"x@{DEST}": {"name": "x\r\nBcc: victim@evil.test"}})}
    err = await send(daemon, data, expect=400)
    assert "'recipient-variables'" in err["message"]


@pytest.mark.parametrize("data, status, named", [
    ({"to": f"x@{DEST}", "text": "t"}, 400, "'from' parameter is missing"),
    ({"from": FROM, "text": "t"}, 400, "'to' parameter is missing"),
    ({"from": FROM, "to": f"x@{DEST}"}, 400, "'text'"),
    ({"from": FROM, "to": "not an address", "text": "t"}, 400, "'to' parameter is not a valid address"),
    ({"from": FROM, "to": f"x@{DEST}", "text": "t", "o:deliverytime": "tomorrow"}, 400, "o:deliverytime"),
    ({"from": FROM, "to": f"x@{DEST}", "text": "t", "o:testmode": "maybe"}, 400, "o:testmode"),
    ({"from": FROM, "to": f"x@{DEST}", "text": "t", "recipient-variables": "{not json"}, 400, "'recipient-variables'"),
    ({"from": FROM, "to": f"x@{DEST}", "text": "t", "h:Content-Type": "text/html"}, 400, "'h:Content-Type'"),
])
async def test_bad_requests_get_400_naming_the_field(env, data, status, named):
    daemon, _, _ = env
    err = await send(daemon, data, expect=status)
    assert named in err["message"], err


async def test_limits_recipients_size_domain_and_auth(env):
    daemon, _, _ = env
    many = ", ".join(f"r{i}@{DEST}" for i in range(1001))
    err = await send(daemon, {"from": FROM, "to": many, "text": "t"}, expect=400)
    assert "at most 1000" in err["message"]
    form = aiohttp.FormData()
    for k, v in {"from": FROM, "to": f"x@{DEST}", "text": "t"}.items():
        form.add_field(k, v)
    form.add_field("attachment", b"\0" * 2_100_000, filename="big.bin")  # the daemon's limit here is 2 MB
    err = await send(daemon, form, expect=400)
    assert "'message'" in err["message"] and "over the limit" in err["message"]
    err = await send(daemon, {"from": FROM, "to": f"x@{DEST}", "text": "t"}, path="/v3/unknown.test/messages",
                      expect=404)
    assert err["message"] == "Domain not found: unknown.test"
    await api(daemon, "POST", "/v3/example.com/messages", data={"from": FROM}, expect=401,
              auth=basic_auth("api", "wrong"))


async def test_time_zone_localize_schedules_and_sto_is_accepted(env):
    daemon, _, _ = env
    body = await send(daemon, {"from": FROM, "to": f"tzl@{DEST}", "text": "t", "o:time-zone-localize": "23:59",
                                  "o:deliverytime-optimize-period": "24h", "o:sending-ip-pool": "ignored"})
    opts = stored_by_message_id(daemon, body["id"])[0]["options"]
    at = time.gmtime(opts["deliver_by"])
    assert (at.tm_hour, at.tm_min) == (23, 59) and opts["deliver_by"] > time.time() - 60
    err = await send(daemon, {"from": FROM, "to": f"x@{DEST}", "text": "t",
                                 "o:deliverytime-optimize-period": "5h"}, expect=400)
    assert "o:deliverytime-optimize-period" in err["message"]


async def test_a_batch_of_1000_is_committed_as_1000_copies_at_once(env):
    daemon, _, _ = env
    people = {f"bulk{i}@{DEST}": {"n": i} for i in range(1000)}
    started = time.monotonic()
    body = await send(daemon, {"from": FROM, "to": ", ".join(people), "subject": "Bulk %recipient.n%",
                                  "text": "Number %recipient.n%", "o:testmode": "yes",
                                  "recipient-variables": json.dumps(people)})
    elapsed = time.monotonic() - started
    rows = [(json.loads(rcpts)[0], json.loads(headers)["subject"]) for rcpts, headers in daemon.query(
        "SELECT recipients, headers FROM messages WHERE message_id = ?", (body["id"].strip("<>"),))]
    assert len(rows) == 1000
    assert {r: s for r, s in rows} == {a: f"Bulk {v['n']}" for a, v in people.items()}
    assert elapsed < 15, f"a 1,000-recipient batch took {elapsed:.1f}s"
