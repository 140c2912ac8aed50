"""mtad.compose: API fields -> MIME copies, options through the one parser, refusals naming the field."""

from __future__ import annotations

import email
import email.policy
import json

import pytest

from mtad.mail import compose
from mtad.mail.compose import ComposeError, Upload

NOW = 1_900_000_000.0
BASE = [("from", "Sender <me@example.com>"), ("to", "a@x.test"), ("subject", "Hi"), ("text", "Hello")]


def build(fields, uploads=(), max_size=25_000_000):
    return compose.compose(fields, list(uploads), domain="example.com", now=NOW, max_size=max_size)


def text(part) -> str:
    """A text part's content with LF line ends (the parser keeps the message's CRLF)."""
    return part.get_content().replace("\r\n", "\n")


def parsed(copy) -> email.message.EmailMessage:
    return email.message_from_bytes(copy.content, policy=email.policy.default)


def test_text_only_is_a_single_part_with_crlf_and_required_headers():
    c = build(BASE)
    assert len(c.copies) == 1
    content = c.copies[0].content
    assert b"\n" not in content.replace(b"\r\n", b"")
    msg = parsed(c.copies[0])
    assert msg.get_content_type() == "text/plain"
    assert msg["Message-ID"] == f"<{c.message_id}>" and c.message_id.endswith("@example.com")
    assert msg["Date"] and msg["MIME-Version"] == "1.0"
    assert c.sender == "me@example.com"


def test_structure_mixed_related_alternative():
    c = build(BASE + [("html", "<p>x</p>"), ("amp-html", "<html amp4email></html>")],
              [Upload("inline", "i.png", "image/png", b"png"), Upload("attachment", "a.bin", "", b"\x00\x01")])
    msg = parsed(c.copies[0])
    types = [p.get_content_type() for p in msg.walk()]
    assert types == ["multipart/mixed", "multipart/related", "multipart/alternative", "text/plain",
                     "text/x-amp-html", "text/html", "image/png", "application/octet-stream"]


def test_non_ascii_headers_are_encoded_and_bodies_quoted_printable():
    c = build([("from", "Zoë <me@example.com>"), ("to", "Ünal <a@x.test>"), ("subject", "Grüße " * 30),
               ("text", "ä" * 2000)])
    content = c.copies[0].content
    assert content.isascii()
    assert max(len(line) for line in content.split(b"\r\n")) <= 998
    msg = parsed(c.copies[0])
    assert msg["Subject"].strip() == ("Grüße " * 30).strip()
    assert msg["From"].addresses[0].display_name == "Zoë"
    assert msg["To"].addresses[0].display_name == "Ünal"
    assert text(msg) == "ä" * 2000 + "\n"


def test_bcc_is_in_the_envelope_only_and_recipients_are_deduplicated():
    c = build(BASE + [("cc", "b@x.test, a@x.test"), ("bcc", "hidden@x.test")])
    copy = c.copies[0]
    assert copy.recipients == ("a@x.test", "b@x.test", "hidden@x.test")
    assert b"hidden" not in copy.content


def test_batch_sending_substitutes_per_recipient_and_isolates_recipients():
    variables = {"a@x.test": {"name": "Ann", "n": 1}, "b@x.test": {"name": "Bob", "n": {"k": 2}}}
    c = build([("from", "me@example.com"), ("to", "a@x.test, Bee <b@x.test>"), ("bcc", "audit@x.test"),
               ("subject", "Hi %recipient.name%"), ("text", "n=%recipient.n% %recipient.none%!"),
               ("v:who", "%recipient.name%"), ("recipient-variables", json.dumps(variables))])
    assert [cp.recipients for cp in c.copies] == [("a@x.test", "audit@x.test"), ("b@x.test", "audit@x.test")]
    first, second = (parsed(cp) for cp in c.copies)
    assert first["To"] == "a@x.test" and second["To"] == "Bee <b@x.test>"
    assert first["Subject"] == "Hi Ann" and second["Subject"] == "Hi Bob"
    assert text(first) == "n=1 !\n" and text(second) == 'n={"k": 2} !\n'
    assert [cp.options.variables["who"] for cp in c.copies] == ["Ann", "Bob"]
    assert first["Message-ID"] == second["Message-ID"]


def test_options_from_o_fields_and_h_mailgun_headers_use_the_one_parser():
    c = build(BASE + [("o:tag", "t1"), ("h:X-Mailgun-Tag", "t2"), ("o:dkim", "no"), ("o:testmode", "yes"),
                      ("v:plan", "gold"), ("h:X-Mailgun-Foo", "bar"), ("o:unknown-thing", "x")])
    opts = c.copies[0].options
    assert set(opts.tags) == {"t1", "t2"} and opts.dkim is False and opts.test_mode is True
    assert opts.variables == {"plan": "gold"}
    assert opts.unknown == (("X-Mailgun-Foo", "bar"),)
    assert b"X-Mailgun" not in c.copies[0].content
    assert c.ignored == ("o:unknown-thing",)


@pytest.mark.parametrize("field", ["subject", "h:X-A", "from", "to", "cc", "bcc"])
@pytest.mark.parametrize("bad", ["\r\n", "\n", "\r", "\0"])
def test_line_breaks_in_header_fields_are_refused(field, bad):
    fields = dict(BASE)
    value = fields.get(field, "v@x.test")
    fields[field] = value + bad + "Bcc: evil@x.test"
    with pytest.raises(ComposeError) as exc:
        build(list(fields.items()))
    assert exc.value.field == field


def test_line_breaks_in_a_filename_are_refused():
    with pytest.raises(ComposeError) as exc:
        build(BASE, [Upload("attachment", "a\r\nX: y", "text/plain", b"x")])
    assert exc.value.field == "attachment"


def test_limits():
    with pytest.raises(ComposeError, match="at most 1000"):
        build([("from", "me@example.com"), ("to", ",".join(f"r{i}@x.test" for i in range(1001))), ("text", "t")])
    with pytest.raises(ComposeError) as exc:
        build(BASE, [Upload("attachment", "big", "", b"x" * 10_000)], max_size=5_000)
    assert exc.value.field == "message"


@pytest.mark.parametrize("fields, name", [
    ([("to", "a@x.test"), ("text", "t")], "from"),
    ([("from", "me@example.com"), ("text", "t")], "to"),
    ([("from", "me@example.com"), ("to", "a@x.test")], "text"),
    ([("from", "me@example.com"), ("to", "nobody"), ("text", "t")], "to"),
    ([("from", "me@example.com"), ("to", "a@x.test"), ("text", "t"), ("o:deliverytime", "soon")], "o:deliverytime"),
    ([("from", "me@example.com"), ("to", "a@x.test"), ("text", "t"), ("h:Bad Name", "v")], "h:Bad Name"),
    ([("from", "me@example.com"), ("to", "a@x.test"), ("text", "t"), ("h:MIME-Version", "2")], "h:MIME-Version"),
    ([("from", "me@example.com"), ("to", "a@x.test"), ("text", "t"), ("recipient-variables", "[1]")],
     "recipient-variables"),
])
def test_missing_and_malformed_fields_are_named(fields, name):
    with pytest.raises(ComposeError) as exc:
        build(fields)
    assert exc.value.field == name


def test_user_headers_override_and_message_id_is_kept():
    c = build(BASE + [("h:Reply-To", "r@example.com"), ("h:Message-Id", "<custom@example.com>"),
                      ("h:X-Campaign", "spring")])
    msg = parsed(c.copies[0])
    assert c.message_id == "custom@example.com" and msg["Message-ID"] == "<custom@example.com>"
    assert msg["Reply-To"] == "r@example.com" and msg["X-Campaign"] == "spring"
    assert len(msg.get_all("Message-ID")) == 1


def test_envelope_sender_stays_in_the_sending_domain():
    assert compose.envelope_sender("a@example.com", "example.com") == "a@example.com"
    assert compose.envelope_sender("a@news.example.com", "example.com") == "a@news.example.com"
    assert compose.envelope_sender("a@gmail.test", "example.com") == "postmaster@example.com"


def test_mime_upload_gets_crlf_ids_and_options_from_headers_and_fields():
    raw = b"From: me@example.com\nSubject: s\nX-Mailgun-Tag: h\n\nbody\n"
    c = compose.from_mime(raw, [("to", "a@x.test, b@x.test"), ("o:tag", "f")], domain="example.com", now=NOW,
                          max_size=10_000, max_header_count=100, max_header_size=10_000)
    copy = c.copies[0]
    assert copy.recipients == ("a@x.test", "b@x.test")
    assert copy.options.tags == ("h", "f")
    assert b"X-Mailgun" not in copy.content and b"\r\nbody\r\n" in copy.content
    assert copy.content.startswith(f"Message-ID: <{c.message_id}>\r\nDate: ".encode())


def test_time_zone_localize_becomes_a_delivery_time():
    c = build(BASE + [("o:time-zone-localize", "2:30PM")])
    at = c.copies[0].options.deliver_by
    assert at is not None and NOW <= at < NOW + 86400
    import time
    assert time.gmtime(at)[3:5] == (14, 30)


def test_utf8_addresses_and_header_spans_match_the_parser():
    from mtad.mail import headers
    c = build([("from", "Zoë <me@example.com>"), ("to", "josé@x.test, Ünal <ü@x.test>"), ("subject", "Grüße"),
               ("h:X-Note", "ça va"), ("text", "t")])
    copy = c.copies[0]
    fields, _ = headers.parse_block(copy.content, 100, 100_000)
    assert list(copy.fields) == fields
    assert copy.summary == headers.summary(fields)
    assert copy.recipients == ("josé@x.test", "ü@x.test")


def test_batch_gives_one_copy_per_address_and_refuses_a_bcc_header():
    c = build([("from", "me@example.com"), ("to", "B@x.test, b@x.test, c@x.test"), ("text", "t"),
               ("recipient-variables", "{}")])
    assert [cp.recipients for cp in c.copies] == [("B@x.test",), ("c@x.test",)]
    with pytest.raises(ComposeError) as exc:
        build(BASE + [("h:Bcc", "hidden@x.test")])
    assert exc.value.field == "h:Bcc"


@pytest.mark.parametrize("field", ["subject", "h:X-A"])
@pytest.mark.parametrize("bad", ["\n", "\r\n", "\r"])
def test_a_trailing_line_break_is_refused_too(field, bad):
    """email.policy on Python 3.11.7 lets this one through, and it would end the header block early."""
    fields = dict(BASE)
    fields[field] = "Hi" + bad
    with pytest.raises(ComposeError) as exc:
        build(list(fields.items()))
    assert exc.value.field == field


@pytest.mark.parametrize("separator", ["\x85", "\u2028", "\u2029"])
def test_unicode_line_separators_in_a_subject_are_encoded_not_written_raw(separator):
    from mtad.mail import headers
    c = build([("from", "me@example.com"), ("to", "a@x.test"), ("subject", f"one{separator}two: x"), ("text", "t")])
    content = c.copies[0].content
    assert content.isascii()  # RFC 2047 encoded words; the separator becomes a fold, never a raw line break
    fields, _ = headers.parse_block(content, 100, 100_000)
    assert [f.name for f in fields] == ["From", "To", "Subject", "Message-ID", "Date", "MIME-Version", "Content-Type",
                                        "Content-Transfer-Encoding"]
    assert c.copies[0].summary.subject == "one two: x"


def test_attachment_names_are_quoted_or_rfc2231_encoded():
    c = build(BASE, [Upload("attachment", 'a "q" \\ b.txt', "text/plain", b"x"),
                     Upload("attachment", "rapport é.pdf", "application/pdf", b"y")])
    content = c.copies[0].content
    assert b'filename="a \\"q\\" \\\\ b.txt"' in content
    assert b"filename*=utf-8''rapport%20%C3%A9.pdf" in content
    names = [p.get_filename() for p in parsed(c.copies[0]).iter_attachments()]
    assert names == ['a "q" \\ b.txt', "rapport é.pdf"]


# --- stored templates and template variables (issue 14) ----------------------------------------------------------

def test_template_named_reads_the_fields_and_their_header_twins():
    from mtad.mail.compose import template_named
    assert template_named([("template", " Welcome "), ("t:version", "v2")]) == ("welcome", "v2")
    assert template_named([("h:X-Mailgun-Template-Name", "w")]) == ("w", None)
    assert template_named([("text", "x")]) is None
    with pytest.raises(ComposeError, match="'template' is empty"):
        template_named([("template", " ")])


def test_copies_are_built_when_read():
    from mtad.mail.compose import Copies, compose
    fields = [("from", "a@example.com"), ("subject", "Hi %recipient.n%"), ("text", "x")]
    fields += [("to", f"r{i}@x.test") for i in range(1000)]
    fields.append(("recipient-variables", json.dumps({f"r{i}@x.test": {"n": i} for i in range(1000)})))
    c = compose(fields, [], domain="example.com", now=1.7e9, max_size=1 << 20)
    assert isinstance(c.copies, Copies) and len(c.copies) == 1000 and c.copies.recipient_count == 1000
    assert b"Subject: Hi 999" in c.copies[999].content and c.copies[999].recipients == ("r999@x.test",)


def test_a_template_renders_into_the_html_part_and_its_headers_fill_what_is_missing():
    from mtad.mail.compose import StoredTemplate, compose
    stored = StoredTemplate("t", "v1", "<b>{{who}}</b>", (("Subject", "About {{who}}"), ("From", "T <t@example.com>")))
    c = compose([("to", "r@x.test"), ("template", "t"), ("text", ""), ("t:variables", '{"who": "A&B"}')], [],
                domain="example.com", now=1.7e9, max_size=1 << 20, template=stored)
    msg = parsed(c.copies[0])
    assert msg["Subject"] == "About A&B" and msg["From"] == "T <t@example.com>"
    assert msg.get_body(("html",)).get_content().strip() == "<b>A&amp;B</b>" and c.ignored == ("text",)


def test_a_mailing_list_recipient_keeps_its_variables_for_the_expansion():
    """A list's copy is personalised per member by the expansion: compose leaves its variables as written."""
    composed = compose.compose([("from", "a@example.com"), ("to", "news@lists.test"), ("to", "Bo Li <bo@x.test>"),
                                ("subject", "Hi %recipient_fname%"), ("text", "you are %recipient%")], [],
                               domain="example.com", now=1.7e9, max_size=1 << 20,
                               lists=frozenset({"news@lists.test"}))
    by_rcpt = {c.recipients: c for c in composed.copies}
    assert set(by_rcpt) == {("news@lists.test",), ("bo@x.test",)}
    assert b"Subject: Hi %recipient_fname%" in by_rcpt[("news@lists.test",)].content
    assert b"Subject: Hi Bo" in by_rcpt[("bo@x.test",)].content


def test_inline_content_ids_are_ascii_and_cid_references_follow():
    from mtad.mail.compose import cid_references, content_id
    assert content_id("logo.png") == "logo.png"  # as Mailgun writes it
    assert content_id("logo ü.png") == "logo=20=C3=BC.png"
    assert content_id("a=b.png") == "a=3Db.png" != content_id("a=3Db.png")  # '=' escaped: no two names share one
    assert all(content_id(n).isascii() for n in ("日本.gif", "x\u2028y", "\ud800.png"))
    html = ('<img src="cid:logo ü.png"> <img src=\'cid:logo%20%C3%BC.png\'> <img src=cid:logo ü.png>'
            ' cid:logo ü.pngx <img src="CID:logo.png">')
    assert cid_references(html, ["logo ü.png", "logo.png"]) == (
        '<img src="cid:logo=20=C3=BC.png"> <img src=\'cid:logo=20=C3=BC.png\'> <img src=cid:logo=20=C3=BC.png>'
        ' cid:logo ü.pngx <img src="CID:logo.png">')
    assert cid_references(None, ["x ü"]) is None
