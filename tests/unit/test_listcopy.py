"""A list member's copy (``mtad.mail.listcopy``) and its unsubscribe link (``mtad.mail.listlinks``)."""

from __future__ import annotations

import base64
import email
import email.policy

from mtad.mail import listcopy, listlinks
from mtad.mail.variables import RecipientContext

BODY = (b"From: a@example.com\r\nTo: list@example.com\r\nSubject: Hi %recipient_fname%\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes("Dear %recipient_fname% %recipient_lname% (%recipient.age%) <%recipient%>\n"
                             "leave: %mailing_list_unsubscribe_url% all: %unsubscribe_url% 50% off\n".encode())
        + b"\r\n--b\r\nContent-Type: text/html\r\n\r\n<a href=\"%mailing_list_unsubscribe_url%\">x</a>%recipient.city%\r\n"
        b"--b--\r\n")


def test_a_member_copy_has_its_variables_in_subject_text_and_html_and_keeps_later_stage_names():
    ctx = RecipientContext("ann@x.test", "Ann Marie Lee", {"age": 30},
                           {"mailing_list_unsubscribe_url": "https://api.test/list-unsubscribe/T"})
    msg = email.message_from_bytes(listcopy.personalise(BODY, ctx), policy=email.policy.default)
    assert msg["Subject"] == "Hi Ann"
    plain, html = [p.get_content() for p in msg.iter_parts()]
    assert plain.replace("\r\n", "\n") == ("Dear Ann Marie Lee (30) <Ann Marie Lee <ann@x.test>>\n"
                                           "leave: https://api.test/list-unsubscribe/T all: %unsubscribe_url% 50% off\n")
    assert html.startswith('<a href="https://api.test/list-unsubscribe/T">x</a>') and "%recipient" not in html
    assert msg.get_content_type() == "multipart/alternative"


def test_a_member_name_cannot_add_a_header():
    body = b"Subject: for %recipient_fname% %recipient.x%\r\n\r\nhi\r\n"
    out = listcopy.personalise(body, RecipientContext("a@x.test", "Eve", {"x": "a\r\nBcc: victim@x.test"}))
    assert out.split(b"\r\n\r\n")[0] == b"Subject: for Eve a Bcc: victim@x.test"


def test_a_message_without_variables_is_seen_as_such():
    assert listcopy.has_any_variable(BODY)
    assert not listcopy.has_any_variable(b"Subject: plain\r\n\r\n50% off, %unsubscribe_url%\r\n")
    assert listcopy.with_reply_to(b"Subject: x\r\n\r\nb", "l@x.test").startswith(b"Reply-To: l@x.test\r\n")
    assert listcopy.with_reply_to(b"Reply-To: me@x.test\r\n\r\nb", "l@x.test") == b"Reply-To: me@x.test\r\n\r\nb"


def test_unsubscribe_tokens_verify_only_as_made():
    key, other = b"k" * 32, b"o" * 32
    token = listlinks.token(key, 7, "Ann@X.test")
    assert listlinks.verify(key, token) == (7, "ann@x.test")
    assert listlinks.verify(other, token) is None
    payload, mac = token.split(".")
    forged = base64.urlsafe_b64encode(b"8:ann@x.test").decode().rstrip("=") + "." + mac
    assert listlinks.verify(key, forged) is None
    for junk in ("", ".", "a.b.c", "!!!.???", token[:-3], "x" * 5000):
        assert listlinks.verify(key, junk) is None
    assert listlinks.url("http://h:1/", key, 7, "a@x.test").startswith("http://h:1/list-unsubscribe/")


def test_a_prepared_edit_gives_what_the_two_edits_give():
    from mtad.mail import mimeedit

    def text(subtype, value):
        return value.replace("%x%", "é" * 3 if subtype == "plain" else "<b>y</b>")

    def header(name, value):
        return value.replace("%x%", "zé")
    bodies = [BODY.replace(b"%recipient_fname%", b"%x%").replace(b"%recipient.city%", b"%x%"),
              b"Subject: a %x%\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nplain %x% text\r\n",  # re-charset
              b"Subject: a %x%\r\n\r\nno mime %x%\r\n", b"Subject: none\r\n\r\nnothing\r\n"]
    for body in bodies:
        expected = mimeedit.edit_headers(mimeedit.edit_text_parts(body, text), header, ["Subject"])
        prepared = mimeedit.Prepared(body)
        assert prepared.render(text, header, ["Subject"]) == expected
        assert prepared.render(text, header, ["Subject"]) == expected  # reusable
