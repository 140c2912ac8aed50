"""Sending stored templates and template variables (issue 14, items 3 and 4), read at a receiving MX.

mtad delivers ``DEST`` through the loopback DNS fixture to a sink MX: what the tests read is what a receiving
server got. A template with versions is rendered over the API (``template``, ``t:version``, ``t:text``,
``t:variables``, ``h:X-Mailgun-Variables``, ``v:``), the way django-anymail sends it (``template`` beside an empty
``text``: the template wins, never a blank message), over ``messages.mime`` and over SMTP
(``X-Mailgun-Template-*`` headers: the body is replaced). A template that does not exist or does not render is a
400 (SMTP: 550) naming it, and nothing is queued; a hostile template is refused in bounded time. Template
variables (``%recipient%``, ``%recipient_fname%``, ``%recipient.KEY%``, ...) are filled in the subject, headers
and bodies of each recipient's copy, missing ones empty.
"""

from __future__ import annotations

import json
import time

import aiohttp
import pytest

from tests.e2e.helpers import message_count, send as smtp_send, submission
from tests.support.api import api, api_sync

FROM = "Sender <postmaster@example.com>"
DEST = "tpl.test"


def form(fields: list[tuple[str, str]]) -> aiohttp.FormData:
    data = aiohttp.FormData()
    for name, value in fields:
        data.add_field(name, value)
    return data


@pytest.fixture(scope="module")
def env(delivering_env):
    return delivering_env


@pytest.fixture(scope="module")
def welcome(env):
    """Template ``welcome``: v1 (active, with a Subject header) and v2, both HTML with variables."""
    daemon, _ = env
    api_sync(daemon, "POST", "/v3/example.com/templates", data=form([
        ("name", "welcome"), ("description", "d"), ("tag", "v1"),
        ("template", "<h1>Hello {{name}}</h1><p>{{#each items}}{{this}};{{/each}} {{note}}</p>"),
        ("headers", json.dumps({"Subject": "Welcome {{name}}"}))]))
    api_sync(daemon, "POST", "/v3/example.com/templates/welcome/versions", data=form([
        ("tag", "v2"), ("template", "<p>Version two for {{name}} &amp; {{{raw}}}</p>")]))
    return "welcome"


async def send(daemon, fields, expect=200):
    return await api(daemon, "POST", "/v3/example.com/messages", data=form(fields), expect=expect)


def parts(received) -> dict[str, str]:
    msg = received.message
    return {p.get_content_type(): p.get_content() for p in msg.walk() if not p.is_multipart()}


async def test_the_active_version_renders_with_t_variables_over_user_variables(env, welcome):
    daemon, sink = env
    rcpt = f"active@{DEST}"
    body = await send(daemon, [("from", FROM), ("to", rcpt), ("template", "welcome"),
                               ("t:variables", json.dumps({"name": "Zoë <b>", "items": ["a", "b"]})),
                               ("v:name", "overridden"), ("v:note", "from v:"),
                               ("h:X-Mailgun-Variables", json.dumps({"note": "from header"}))])
    got = (await sink.wait_for(rcpt))[0]
    html = parts(got)["text/html"]
    assert "<h1>Hello Zoë &lt;b&gt;</h1>" in html and "a;b;" in html  # {{x}} escaped as Handlebars does
    assert "from v:" in html  # v: over h:X-Mailgun-Variables, t:variables over both
    assert got.message["Subject"] == "Welcome Zoë <b>"  # the version's Subject, rendered without escaping
    assert "text/plain" not in parts(got)
    assert got.message["Message-ID"].strip("<>") == body["id"].strip("<>")


async def test_a_named_version_and_t_text_make_both_parts(env, welcome):
    daemon, sink = env
    rcpt = f"version@{DEST}"
    await send(daemon, [("from", FROM), ("to", rcpt), ("subject", "Mine"), ("template", "welcome"),
                        ("t:version", "v2"), ("t:text", "yes"),
                        ("t:variables", json.dumps({"name": "Ann", "raw": "<i>raw</i>"}))])
    got = (await sink.wait_for(rcpt))[0]
    p = parts(got)
    assert p["text/html"].strip() == "<p>Version two for Ann &amp; <i>raw</i></p>"
    assert p["text/plain"].strip() == "Version two for Ann & raw"
    assert got.message["Subject"] == "Mine"  # the message's own Subject wins over the template's


async def test_the_django_anymail_way_sends_the_template_not_a_blank_message(env, welcome):
    daemon, sink = env
    rcpt = f"anymail@{DEST}"
    # django-anymail: template, an empty text, merge data as recipient-variables and user variables as v:
    await send(daemon, [("from", FROM), ("to", f"Anna Smith <{rcpt}>"), ("subject", "Hi %recipient.first%"),
                        ("template", "welcome"), ("text", ""),
                        ("recipient-variables", json.dumps({rcpt: {"first": "Anna"}})),
                        ("h:X-Mailgun-Variables", json.dumps({"name": "Anna"}))])
    got = (await sink.wait_for(rcpt))[0]
    assert "<h1>Hello Anna</h1>" in parts(got)["text/html"]
    assert got.message["Subject"] == "Hi Anna"


async def test_the_template_is_used_over_messages_mime(env, welcome):
    daemon, sink = env
    rcpt = f"mime@{DEST}"
    data = aiohttp.FormData()
    data.add_field("to", rcpt)
    mime = (b"From: postmaster@example.com\r\nTo: " + rcpt.encode() + b"\r\nX-Mailgun-Template-Name: welcome\r\n"
            b"X-Mailgun-Template-Variables: {\"name\": \"Mime\"}\r\nContent-Type: text/plain\r\n\r\nreplaced\r\n")
    data.add_field("message", mime, filename="m.mime", content_type="message/rfc822")
    await api(daemon, "POST", "/v3/example.com/messages.mime", data=data)
    got = (await sink.wait_for(rcpt))[0]
    assert "<h1>Hello Mime</h1>" in parts(got)["text/html"] and b"replaced" not in got.data
    assert got.message["Subject"] == "Welcome Mime" and b"X-Mailgun-Template" not in got.data


async def test_smtp_headers_replace_the_body_with_the_template(env, welcome, certs):
    daemon, sink = env
    rcpt = f"smtp@{DEST}"
    message = (f"From: postmaster@example.com\r\nTo: {rcpt}\r\nSubject: Over SMTP\r\n"
               "X-Mailgun-Template-Name: Welcome\r\nX-Mailgun-Template-Version: v2\r\n"
               'X-Mailgun-Template-Variables: {"name": "Smtp", "raw": "<u>u</u>"}\r\n'
               "Content-Type: text/plain\r\n\r\nthis body is replaced\r\n").encode()
    with submission(daemon, certs.client_context()) as s:
        code, text = smtp_send(s, "postmaster@example.com", [rcpt], message)
    assert code == 250, text
    got = (await sink.wait_for(rcpt))[0]
    assert parts(got)["text/html"].strip() == "<p>Version two for Smtp &amp; <u>u</u></p>"
    assert b"this body is replaced" not in got.data and b"X-Mailgun-Template" not in got.data
    assert got.message["Subject"] == "Over SMTP"


async def test_smtp_naming_a_missing_template_is_refused(env, welcome, certs):
    daemon, _ = env
    before = message_count(daemon)
    message = (f"From: postmaster@example.com\r\nTo: x@{DEST}\r\nSubject: s\r\n"
               "X-Mailgun-Template-Name: nope\r\n\r\nbody\r\n").encode()
    with submission(daemon, certs.client_context()) as s:
        code, text = smtp_send(s, "postmaster@example.com", [f"x@{DEST}"], message)
    assert code == 550 and "'nope'" in text and "does not exist" in text, (code, text)
    assert message_count(daemon) == before


@pytest.mark.parametrize("fields, words", [
    ([("template", "nope")], ["'template'", "'nope'", "does not exist"]),
    ([("template", "welcome"), ("t:version", "v9")], ["'template'", "'welcome'", "'v9'"]),
    ([("template", "welcome"), ("t:variables", "{not json")], ["'t:variables'", "JSON"]),
    ([("template", "welcome"), ("t:variables", "[1, 2]")], ["'t:variables'", "object"]),
])
async def test_a_template_that_cannot_be_sent_is_a_400_naming_it(env, welcome, fields, words):
    daemon, _ = env
    before = message_count(daemon)
    body = await send(daemon, [("from", FROM), ("to", f"x@{DEST}")] + fields, expect=400)
    assert set(body) == {"message"} and all(w in body["message"] for w in words), body
    assert message_count(daemon) == before


async def test_a_template_failing_to_render_is_a_400_naming_it(env, welcome):
    daemon, _ = env
    await api(daemon, "POST", "/v3/example.com/templates", data=form([
        ("name", "helper"), ("template", "<p>{{shout name}}</p>")]))  # valid syntax, a helper that is not there
    before = message_count(daemon)
    body = await send(daemon, [("from", FROM), ("to", f"x@{DEST}"), ("template", "helper")], expect=400)
    assert "'helper'" in body["message"] and "shout" in body["message"], body
    await api(daemon, "POST", "/v3/example.com/templates", data=form([("name", "empty"), ("template", "{{nothing}}")]))
    body = await send(daemon, [("from", FROM), ("to", f"x@{DEST}"), ("template", "empty")], expect=400)
    assert "'empty'" in body["message"] and "empty message" in body["message"], body
    assert message_count(daemon) == before


async def test_a_hostile_template_is_refused_in_bounded_time(env, welcome):
    daemon, _ = env
    loops = "{{#each a}}{{#each ../a}}{{#each ../../a}}{{#each ../../../a}}x{{/each}}{{/each}}{{/each}}{{/each}}"
    await api(daemon, "POST", "/v3/example.com/templates", data=form([("name", "bomb"), ("template", loops)]))
    await api(daemon, "POST", "/v3/example.com/templates", data=form([("name", "wide"),
                                                                       ("template", "{{{a}}}" * 1500)]))
    before = message_count(daemon)
    started = time.monotonic()
    body = await send(daemon, [("from", FROM), ("to", f"x@{DEST}"), ("template", "bomb"),
                               ("t:variables", json.dumps({"a": list(range(1000))}))], expect=400)
    assert "'bomb'" in body["message"] and "limit" in body["message"], body
    body = await send(daemon, [("from", FROM), ("to", f"x@{DEST}"), ("template", "wide"),
                               ("t:variables", json.dumps({"a": "y" * 100_000}))], expect=400)
    assert "'wide'" in body["message"] and "limit" in body["message"], body
    assert time.monotonic() - started < 20
    assert message_count(daemon) == before
    assert (await api(daemon, "GET", "/healthz"))["status"] == "ok"


async def test_variables_fill_subject_headers_and_bodies_per_recipient(env):
    daemon, sink = env
    a, b, c = f"ann@{DEST}", f"bob@{DEST}", f"cat@{DEST}"
    text = "Hi %recipient_fname% %recipient_lname% <%recipient_email%> [%recipient.code%] to %recipient%"
    await send(daemon, [("from", FROM), ("to", f"Ann Lee <{a}>, {b}"), ("cc", f"Cat Cole <{c}>"),
                        ("subject", "For %recipient_fname%"), ("text", text), ("html", f"<p>{text}</p>"),
                        ("h:X-Who", "%recipient_email%")])
    ann, bob, cat = (await sink.wait_for(a))[0], (await sink.wait_for(b))[0], (await sink.wait_for(c))[0]
    assert ann.rcpt_tos == [a] and bob.rcpt_tos == [b] and cat.rcpt_tos == [c]  # a copy each
    assert ann.message["Subject"] == "For Ann" and ann.message["X-Who"] == a
    assert parts(ann)["text/plain"].strip() == f"Hi Ann Lee <{a}> [] to Ann Lee <{a}>"
    assert parts(bob)["text/plain"].strip() == f"Hi   <{b}> [] to {b}"  # no name: both empty, as Mailgun
    assert parts(cat)["text/html"].strip() == f"<p>Hi Cat Cole <{c}> [] to Cat Cole <{c}></p>"
    assert all(m.message["To"] == f"Ann Lee <{a}>, {b}" for m in (ann, bob, cat))  # one message to all of them


async def test_recipient_variables_in_a_batch_with_a_template(env, welcome):
    daemon, sink = env
    rcpts = [f"batch{i}@{DEST}" for i in range(3)]
    await send(daemon, [("from", FROM), ("to", f"First{0} Last <{rcpts[0]}>"), ("to", rcpts[1]), ("to", rcpts[2]),
                        ("subject", "Code %recipient.code% for %recipient_fname%"), ("template", "welcome"),
                        ("t:variables", json.dumps({"name": "%recipient.first%", "note": "%recipient.code%"})),
                        ("recipient-variables", json.dumps({rcpts[0]: {"first": "Zed", "code": 7},
                                                            rcpts[1]: {"first": "Yan"}}))])
    for rcpt, first, code, fname in ((rcpts[0], "Zed", "7", "First0"), (rcpts[1], "Yan", "", ""),
                                     (rcpts[2], "", "", "")):
        got = (await sink.wait_for(rcpt))[0]
        assert got.rcpt_tos == [rcpt] and rcpt in got.message["To"] and "," not in got.message["To"]
        assert f"<h1>Hello {first}</h1>" in parts(got)["text/html"] and f"</p>" in parts(got)["text/html"]
        assert got.message["Subject"] == f"Code {code} for {fname}"
