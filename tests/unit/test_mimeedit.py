"""mimeedit: per-recipient edits keep the MIME structure, charsets and transfer encodings."""

from __future__ import annotations

import email
import email.policy

from mtad.mail import compose, mimeedit


def _parsed(raw: bytes):
    return email.message_from_bytes(raw, policy=email.policy.default)


def _text_of(raw: bytes, subtype: str) -> str:
    msg = _parsed(raw)
    for part in msg.walk():
        if part.get_content_type() == f"text/{subtype}":
            return part.get_content()
    raise AssertionError(f"no text/{subtype}")


def _upper_links(subtype: str, text: str) -> str:
    return text.replace("https://example.com/a", "https://trk.example.net/c/XYZ")


def test_multipart_alternative_with_attachment_only_text_parts_change():
    copy = compose.compose([("from", "a@example.com"), ("to", "b@example.net"), ("subject", "s"),
                            ("text", "see https://example.com/a — ünïcode"),
                            ("html", "<p><a href=\"https://example.com/a\">x</a> ü</p>")],
                           [compose.Upload("attachment", "f.txt", "text/plain", b"https://example.com/a")],
                           domain="example.com", now=1.7e9, max_size=1 << 20).copies[0]
    raw = copy.content
    out = mimeedit.edit_text_parts(raw, _upper_links)
    assert "https://trk.example.net/c/XYZ" in _text_of(out, "plain")
    assert "ünïcode" in _text_of(out, "plain")
    assert 'href="https://trk.example.net/c/XYZ"' in _text_of(out, "html")
    msg = _parsed(out)
    attachment = [p for p in msg.walk() if p.get_filename() == "f.txt"][0]
    assert attachment.get_content() == "https://example.com/a"  # attachments are not edited
    assert [p.get_content_type() for p in msg.walk()] == [p.get_content_type() for p in _parsed(raw).walk()]
    # encodings unchanged
    before = [p.get("Content-Transfer-Encoding") for p in _parsed(raw).walk()]
    assert [p.get("Content-Transfer-Encoding") for p in msg.walk()] == before


def test_each_transfer_encoding_round_trips():
    for cte, payload in (("quoted-printable", b"caf=C3=A9 https://example.com/a=\r\n tail\r\n"),
                         ("base64", b"Y2Fmw6kgaHR0cHM6Ly9leGFtcGxlLmNvbS9hIHRhaWwK\r\n"),
                         ("8bit", "café https://example.com/a tail\r\n".encode()),):
        raw = (b"From: a@example.com\r\nTo: b@example.net\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: " + cte.encode() + b"\r\n\r\n"
               + payload)
        out = mimeedit.edit_text_parts(raw, _upper_links)
        msg = _parsed(out)
        assert msg["Content-Transfer-Encoding"] == cte
        assert "café https://trk.example.net/c/XYZ" in msg.get_content(), cte


def test_seven_bit_part_gaining_non_ascii_becomes_quoted_printable_and_latin1_stays_latin1():
    raw = (b"From: a@example.com\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\r\n"
           b"caf\xe9 https://example.com/a\r\n")
    out = mimeedit.edit_text_parts(raw, lambda s, t: t + "d\u00e9j\u00e0\r\n")
    msg = _parsed(out)
    assert msg.get_content_charset() == "iso-8859-1"
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert msg.get_content().replace("\r\n", "\n").endswith("déjà\n")
    out2 = mimeedit.edit_text_parts(raw, lambda s, t: t + "\u20ac")  # not in latin-1: becomes UTF-8
    assert _parsed(out2).get_content_charset() == "utf-8"
    assert "€" in _parsed(out2).get_content()


def test_unreadable_parts_are_left_alone():
    raw = (b"From: a@example.com\r\nContent-Type: text/plain; charset=x-unknown\r\n\r\nhttps://example.com/a\r\n")
    assert mimeedit.edit_text_parts(raw, _upper_links) == raw
    bad = b"From: a@example.com\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\xff\xfe https://example.com/a\r\n"
    assert mimeedit.edit_text_parts(bad, _upper_links) == bad


def test_edit_headers_encodes_non_ascii_and_refuses_line_breaks():
    raw = b"From: a@example.com\r\nSubject: Hi %recipient_fname%\r\n\r\nbody\r\n"
    out = mimeedit.edit_headers(raw, lambda n, v: v.replace("%recipient_fname%", "Zoë"), ["subject"])
    assert _parsed(out)["Subject"] == "Hi Zoë"
    assert out.endswith(b"\r\n\r\nbody\r\n")
    try:
        mimeedit.edit_headers(raw, lambda n, v: "x\r\nBcc: evil@example.org", ["subject"])
    except mimeedit.EditError:
        pass
    else:
        raise AssertionError("a header value with a line break was written")
