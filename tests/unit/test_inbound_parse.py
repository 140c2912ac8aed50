"""Received messages turned into Mailgun's route POST fields, including broken ones."""

from __future__ import annotations

import base64
import json
from email.message import EmailMessage

import pytest

from mtad.inbound.form.parse import parsed_fields, raw_fields

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 4


def fields(post) -> dict[str, str]:
    """Last value per name (names repeat only for repeated headers)."""
    return dict(post.fields)


def full_message() -> bytes:
    """multipart/mixed: related(alternative(plain, html), inline image with Content-ID), a PDF attachment."""
    msg = EmailMessage()
    msg["Received"] = "from a.example by mx.example; Mon, 1 Jan 2024 10:00:00 +0000"
    msg["Received"] = "from b.example by a.example; Mon, 1 Jan 2024 09:59:59 +0000"
    msg["From"] = "Jörg Müller <jorg@example.de>"
    msg["To"] = "support@bar.example"
    msg["Subject"] = "Réunion à 10h — ok?"
    msg["X-Mailgun-Variables"] = '{"ticket": 42}'
    msg["Message-ID"] = "<m1@example.de>"
    msg.set_content("Yes, 10h works.\n\nThanks,\nJörg\n\nOn Mon, Jan 1, 2024 at 9:00 AM Ann <ann@bar.example> wrote:\n"
                    "> Does 10h work?\n> Ann\n")
    msg.add_alternative('<html><body><p>Yes, 10h works.</p><img src="cid:logo@example.de">'
                        '<div class="gmail_quote">On Mon, Ann wrote:<blockquote>Does 10h work?</blockquote></div>'
                        '</body></html>', subtype="html")
    msg.get_payload()[1].add_related(PNG, "image", "png", cid="<logo@example.de>", filename="logo.png")
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="agenda été.pdf")
    return msg.as_bytes()


def test_every_field_of_a_multipart_message_with_attachment_and_inline_image():
    post = parsed_fields(full_message(), "support@bar.example", "bounce@example.de")
    f = fields(post)
    names = [name for name, _ in post.fields]
    assert names[:13] == ["recipient", "sender", "from", "subject", "body-plain", "stripped-text",
                          "stripped-signature", "body-html", "stripped-html", "attachment-count", "content-id-map",
                          "message-headers", "Received"]
    assert f["recipient"] == "support@bar.example"
    assert f["sender"] == "bounce@example.de"
    assert f["from"] == "Jörg Müller <jorg@example.de>"
    assert f["subject"] == "Réunion à 10h — ok?"
    assert f["body-plain"].startswith("Yes, 10h works.\n\nThanks,\nJörg\n\nOn Mon")
    assert f["stripped-text"] == "Yes, 10h works."
    assert f["stripped-signature"] == "Thanks,\nJörg"
    assert f["body-html"].startswith("<html><body><p>Yes, 10h works.</p>")
    assert f["stripped-html"].rstrip() == '<html><body><p>Yes, 10h works.</p><img src="cid:logo@example.de"></body></html>'
    assert f["attachment-count"] == "2"
    assert json.loads(f["content-id-map"]) == {"<logo@example.de>": "attachment-1"}
    image, pdf = post.attachments
    assert (image.field_name, image.filename, image.content_type, image.data) == ("attachment-1", "logo.png",
                                                                                  "image/png", PNG)
    assert (pdf.field_name, pdf.filename, pdf.content_type, pdf.data) == ("attachment-2", "agenda été.pdf",
                                                                          "application/pdf", PDF)
    headers = json.loads(f["message-headers"])
    assert [h[0] for h in headers][:7] == ["Received", "Received", "From", "To", "Subject", "X-Mailgun-Variables",
                                           "Message-ID"]
    assert ["Subject", "Réunion à 10h — ok?"] in headers
    # every top-level header as its own field, repeated ones repeated, decoded
    assert [v for n, v in post.fields if n == "Received"] == [h[1] for h in headers if h[0] == "Received"]
    assert f["Subject"] == "Réunion à 10h — ok?"
    assert f["X-Mailgun-Variables"] == '{"ticket": 42}'
    assert f["Content-Type"].startswith("multipart/mixed")
    assert f["MIME-Version"] == "1.0"


def latin1_message(encoding: str) -> bytes:
    body = "Café crème, déjà vu — à bientôt".replace("—", "-").encode("iso-8859-1")
    if encoding == "quoted-printable":
        import quopri
        payload = quopri.encodestring(body)
    elif encoding == "base64":
        payload = base64.encodebytes(body)
    else:
        payload = body
    return (b"From: =?ISO-8859-1?Q?Andr=E9?= <andre@example.fr>\r\nSubject: =?iso-8859-1?b?Q2Fm6Q==?= ok\r\n"
            b"Content-Type: text/plain; charset=ISO-8859-1\r\nContent-Transfer-Encoding: " + encoding.encode()
            + b"\r\n\r\n" + payload + b"\r\n")


@pytest.mark.parametrize("encoding", ["quoted-printable", "base64", "8bit"])
def test_iso_8859_1_bodies_arrive_as_utf8(encoding):
    f = fields(parsed_fields(latin1_message(encoding), "r@x.example", "s@y.example"))
    assert f["body-plain"].strip() == "Café crème, déjà vu - à bientôt"
    assert f["from"] == "André <andre@example.fr>"
    assert f["subject"] == "Café ok"
    assert f["body-plain"].encode("utf-8")  # posted as UTF-8 text


def test_raw_format_is_the_whole_message_as_utf8_text():
    raw = full_message()
    post = raw_fields(raw, "support@bar.example", "bounce@example.de")
    assert [n for n, _ in post.fields] == ["recipient", "sender", "from", "subject", "body-mime"]
    f = fields(post)
    assert f["body-mime"] == raw.decode()  # already UTF-8: passed byte for byte
    assert f["subject"] == "Réunion à 10h — ok?"
    assert post.attachments == ()


def test_raw_format_transcodes_8bit_latin1_parts_to_utf8():
    body_mime = fields(raw_fields(latin1_message("8bit"), "r@x.example", "s@y.example"))["body-mime"]
    assert 'charset="utf-8"' in body_mime and "\r\n" in body_mime
    reparsed = parsed_fields(body_mime.encode("utf-8"), "r@x.example", "s@y.example")
    assert fields(reparsed)["body-plain"].strip() == "Café crème, déjà vu - à bientôt"


def test_rfc2047_subject_in_several_charsets_and_encodings():
    raw = (b"Subject: =?UTF-8?B?0J/RgNC40LLQtdGC?= =?iso-8859-15?q?=A4uro?= and =?utf-8?q?caf=C3=A9?=\r\n"
           b"\r\nbody\r\n")
    assert fields(parsed_fields(raw, "r", "s"))["subject"] == "Привет€uro and café"


def test_html_only_message_gets_a_text_body_plain():
    raw = (b"Subject: html\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
           b"<html><head><style>p{}</style></head><body><p>Hello <b>there</b> &amp; welcome</p>"
           b"<p>Second&nbsp;line</p></body></html>\r\n")
    f = fields(parsed_fields(raw, "r", "s"))
    assert f["body-plain"] == "Hello there & welcome\n\nSecond line"
    assert f["body-html"].startswith("<html>")
    assert f["stripped-text"] == "Hello there & welcome\n\nSecond line"


def test_other_text_parts_are_posted_as_body_subtype():
    raw = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
           b"--b\r\nContent-Type: text/calendar; method=REQUEST\r\n\r\nBEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n"
           b"--b\r\nContent-Type: text/enriched\r\n\r\n<bold>hi</bold>\r\n--b--\r\n")
    f = fields(parsed_fields(raw, "r", "s"))
    assert f["body-plain"] == "hi"
    assert f["body-calendar"] == "BEGIN:VCALENDAR\r\nEND:VCALENDAR"
    assert f["body-enriched"] == "<bold>hi</bold>"
    assert f["attachment-count"] == "0"


def test_missing_boundary_is_recovered_from_the_body():
    raw = (b"Subject: nb\r\nContent-Type: multipart/mixed\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nhi there\r\n"
           b"--x\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=a.pdf\r\n\r\nPDF\r\n"
           b"--x--\r\n")
    post = parsed_fields(raw, "r", "s")
    assert fields(post)["body-plain"] == "hi there"
    assert [(a.filename, a.data) for a in post.attachments] == [("a.pdf", b"PDF")]


def test_missing_boundary_without_parts_is_text():
    f = fields(parsed_fields(b"Content-Type: multipart/mixed\r\n\r\njust text\r\n", "r", "s"))
    assert f["body-plain"] == "just text\r\n"


@pytest.mark.parametrize("charset", ["foo-bar-9", "base64", "unicode_escape", "\"\"", "utf-8"])
def test_bad_or_lying_charset_names_fall_back(charset):
    raw = b"Content-Type: text/plain; charset=" + charset.encode() + b"\r\n\r\n\xe9t\xe9 \\u0041\r\n"
    assert fields(parsed_fields(raw, "r", "s"))["body-plain"] == "été \\u0041\r\n"


def test_malformed_header_line_keeps_the_headers_before_it():
    raw = b"From: a@b.example\r\nThis is not a header\r\nSubject: x\r\n\r\nbody\r\n"
    f = fields(parsed_fields(raw, "r", "s"))
    assert f["from"] == "a@b.example"
    assert "body" in f["body-plain"]


def test_8bit_headers_and_truncated_base64():
    raw = (b"Subject: caf\xe9\r\nFrom: J\xc3\xb6rg <j@x.example>\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\naGVsbG8gd29ybG\r\n")
    f = fields(parsed_fields(raw, "r", "s"))
    assert (f["subject"], f["from"], f["body-plain"]) == ("café", "Jörg <j@x.example>", "hello worl")


def test_a_header_cannot_shadow_the_posted_fields():
    raw = b"signature: forged\r\nrecipient: someone@else\r\nSender: real-header@x.example\r\n\r\nhi\r\n"
    post = parsed_fields(raw, "r@x.example", "s@y.example")
    assert [v for n, v in post.fields if n == "recipient"] == ["r@x.example"]
    assert "signature" not in dict(post.fields)
    assert dict(post.fields)["Sender"] == "real-header@x.example"
    assert ["signature", "forged"] in json.loads(dict(post.fields)["message-headers"])


def test_nesting_and_part_limits():
    inner = b"Content-Type: text/plain\r\n\r\ndeep\r\n"
    for level in range(30):
        inner = (b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (level, level) + inner
                 + b"\r\n--b%d--\r\n" % level)
    assert fields(parsed_fields(inner, "r", "s", max_depth=20))["body-plain"] == ""
    assert fields(parsed_fields(inner, "r", "s", max_depth=40))["body-plain"].strip() == "deep"
    many = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"".join(
        b"--b\r\nContent-Type: application/octet-stream\r\n\r\nx\r\n" for _ in range(50)) + b"--b--\r\n"
    assert len(parsed_fields(many, "r", "s", max_parts=10).attachments) == 9  # the container is a part too


def test_attached_message_is_one_attachment():
    attached = b"From: x@y.example\r\nSubject: inner\r\n\r\ninner body\r\n"
    raw = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee below\r\n"
           b"--b\r\nContent-Type: message/rfc822\r\n\r\n" + attached + b"--b--\r\n")
    post = parsed_fields(raw, "r", "s")
    (a,) = post.attachments
    assert (a.filename, a.content_type) == ("message.eml", "message/rfc822")
    assert b"Subject: inner" in a.data and b"inner body" in a.data
    assert fields(post)["body-plain"] == "see below"


@pytest.mark.parametrize("raw", [b"", b"\x00\xff" * 1000, b"\r\n\r\n", b"Content-Type: multipart/mixed; boundary=\r\n\r\n--",
                                 b"From: " + b"=?utf-8?b?" * 1000 + b"\r\n\r\n", bytes(range(256)) * 40])
def test_garbage_never_raises(raw):
    post = parsed_fields(raw, "r", "s")
    assert "body-plain" in dict(post.fields)
    assert dict(raw_fields(raw, "r", "s").fields)["recipient"] == "r"
