"""Bounds on what one send request may carry (issue 10, items 3 and 8), over real sockets.

- user variables (``v:`` fields, ``h:X-Mailgun-Variables``, and the SMTP ``X-Mailgun-Variables`` header) total
  at most 4 KB, as Mailgun's; every event carries them, so more would multiply in the store;
- ``h:`` headers: the composed header block meets the SMTP limits (``limits.max_header_count`` fields,
  ``limits.max_header_size`` bytes), so the API cannot relay what mtad's own SMTP listener refuses;
- a request naming a stored template that does not exist, or template options without a template, is refused,
  never sent without its content (tests/e2e/test_templates_send.py sends templates that exist).

Every refusal is a 400 in the API's error shape naming the field, and nothing is queued.
"""

from __future__ import annotations

import json

import aiohttp
import pytest

from tests.support.api import api
from tests.e2e.helpers import message_count, send as smtp_send, submission

FROM = "Sender <postmaster@example.com>"
BASE = [("from", FROM), ("to", "anna@dest.test"), ("subject", "Limits"), ("text", "Hello")]


@pytest.fixture(scope="module")
def daemon(daemon_factory):
    return daemon_factory()


async def post(daemon, fields, *, expect, path="/v3/example.com/messages"):
    form = aiohttp.FormData()
    for name, value in fields:
        form.add_field(name, value)
    return await api(daemon, "POST", path, data=form, expect=expect)


async def refused(daemon, fields, *, path="/v3/example.com/messages") -> str:
    """The 400 message of a refused send; nothing was queued."""
    before = message_count(daemon)
    body = await post(daemon, fields, expect=400, path=path)
    assert isinstance(body, dict) and set(body) == {"message"}, body
    assert message_count(daemon) == before, "nothing is queued for a refused send"
    return body["message"]


# --- user variables -------------------------------------------------------------------------------------------

async def test_variables_up_to_4kb_are_accepted(daemon):
    fields = BASE + [("v:order", "o-1"), ("v:blob", "x" * 4000)]  # 4,086 bytes of names and values
    body = await post(daemon, fields, expect=200)
    rows = daemon.query("SELECT options FROM messages WHERE message_id = ?", (body["id"].strip("<>"),))
    assert json.loads(rows[0][0])["variables"] == {"order": "o-1", "blob": "x" * 4000}


@pytest.mark.parametrize("extra, field", [
    ([("v:blob", "x" * 4100)], "v:blob"),
    ([("v:a", "x" * 2100), ("v:b", "y" * 2100)], "v:b"),  # the total counts, not each variable
    ([("h:X-Mailgun-Variables", json.dumps({"blob": "x" * 4100}))], "X-Mailgun-Variables"),  # as o: twins name it
    ([("v:a", "x" * 3000), ("h:X-Mailgun-Variables", json.dumps({"b": "y" * 2000}))], "v:a"),
])
async def test_variables_over_4kb_are_refused(daemon, extra, field):
    message = await refused(daemon, BASE + extra)
    assert message.startswith(f"'{field}'") and "4096 bytes" in message and "4 KB" in message, message


async def test_variables_over_4kb_are_refused_in_a_mime_send(daemon):
    mime = b"From: postmaster@example.com\r\nTo: anna@dest.test\r\nSubject: m\r\n\r\nbody\r\n"
    form = aiohttp.FormData()
    form.add_field("to", "anna@dest.test")
    form.add_field("v:blob", "x" * 5000)
    form.add_field("message", mime, filename="message.mime", content_type="message/rfc822")
    before = message_count(daemon)
    body = await api(daemon, "POST", "/v3/example.com/messages.mime", data=form, expect=400)
    assert "4096 bytes" in body["message"] and message_count(daemon) == before


async def test_variables_over_4kb_are_refused_over_smtp_too(daemon, certs):
    """The one option parser: the X-Mailgun-Variables headers of a submission are bounded alike."""
    lines = ",\r\n\t".join(f'"k{i}": "{"v" * 500}"' for i in range(9))  # folded: 9 x ~508 bytes
    message = (f"From: <postmaster@example.com>\r\nTo: <anna@dest.test>\r\nSubject: vars\r\n"
               f"X-Mailgun-Variables: {{{lines}}}\r\n\r\nHello\r\n").encode()
    before = message_count(daemon)
    with submission(daemon, certs.client_context()) as s:
        code, text = smtp_send(s, "postmaster@example.com", ["anna@dest.test"], message)
    assert code == 550 and "X-Mailgun-Variables" in text and "4096 bytes" in text, (code, text)
    assert message_count(daemon) == before


# --- h: headers -------------------------------------------------------------------------------------------------

async def test_headers_within_the_smtp_limits_are_accepted(daemon):
    fields = BASE + [(f"h:X-Custom-{i}", f"value {i}") for i in range(980)]
    body = await post(daemon, fields, expect=200)
    content = bytes(daemon.query("SELECT body FROM messages WHERE message_id = ?", (body["id"].strip("<>"),))[0][0])
    assert content.count(b"\r\nX-Custom-") == 980


async def test_more_headers_than_smtp_takes_are_refused(daemon):
    message = await refused(daemon, BASE + [(f"h:X-Custom-{i}", "v") for i in range(1001)])
    assert message.startswith("'h:'") and "over the limit of 1000" in message, message


async def test_headers_and_generated_ones_together_over_the_count_are_refused(daemon):
    """995 h: headers pass the quick check, but the message would hold 1,003 fields with mtad's own."""
    message = await refused(daemon, BASE + [(f"h:X-Custom-{i}", "v") for i in range(995)])
    assert "header fields, over the limit of 1000" in message, message


async def test_a_header_block_over_the_size_limit_is_refused(daemon):
    big = " ".join(["word"] * 210_000)  # 1,050,000 bytes, folded into lines of 78
    message = await refused(daemon, BASE + [("h:X-Big", big)])
    assert message.startswith("'h:'") and "over the limit of 1000000" in message, message


async def test_many_recipients_with_many_headers_are_refused_before_composing(daemon):
    """20,000 h: headers with 100 recipients (the issue's probe): one quick 400, not 100 copies built."""
    fields = [("from", FROM), ("subject", "s"), ("text", "t"), ("recipient-variables", "{}")]
    fields += [("to", f"r{i}@dest.test") for i in range(100)]
    fields += [(f"h:X-H{i}", "v") for i in range(20_000)]
    message = await refused(daemon, fields)
    assert "over the limit of 1000" in message, message


# --- stored templates -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, field", [
    ([("from", FROM), ("to", "anna@dest.test"), ("subject", "T"), ("template", "welcome"), ("text", "")],
     "template"),  # how django-anymail sends a template: an empty text beside it
    ([("from", FROM), ("to", "anna@dest.test"), ("template", "welcome")], "template"),
    (BASE + [("template", "welcome")], "template"),
    (BASE + [("h:X-Mailgun-Template-Name", "welcome")], "template"),
])
async def test_a_request_naming_a_template_that_does_not_exist_is_refused(daemon, fields, field):
    message = await refused(daemon, fields)
    assert message.startswith(f"'{field}'") and "'welcome'" in message and "does not exist" in message, message


@pytest.mark.parametrize("fields, field", [
    (BASE + [("t:version", "v2")], "t:version"),
    (BASE + [("t:text", "yes")], "t:text"),
    (BASE + [("t:variables", '{"name": "Anna"}')], "t:variables"),
    (BASE + [("h:X-Mailgun-Template-Variables", '{"a": 1}')], "t:variables"),
    (BASE + [("t:colour", "red")], "t:colour"),
])
async def test_template_options_without_a_template_are_refused(daemon, fields, field):
    message = await refused(daemon, fields)
    assert message.startswith(f"'{field}'") and "template" in message, message


async def test_a_mime_send_naming_a_template_that_does_not_exist_is_refused(daemon):
    for extra, header in ([("template", "welcome")], b""), ([], b"X-Mailgun-Template-Name: welcome\r\n"):
        form = aiohttp.FormData()
        form.add_field("to", "anna@dest.test")
        for name, value in extra:
            form.add_field(name, value)
        mime = b"From: postmaster@example.com\r\nTo: anna@dest.test\r\n" + header + b"Subject: m\r\n\r\nbody\r\n"
        form.add_field("message", mime, filename="message.mime", content_type="message/rfc822")
        before = message_count(daemon)
        body = await api(daemon, "POST", "/v3/example.com/messages.mime", data=form, expect=400)
        assert "'welcome'" in body["message"] and "does not exist" in body["message"], body
        assert message_count(daemon) == before
