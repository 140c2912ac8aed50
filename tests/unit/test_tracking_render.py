"""Tracking tokens, link finding and per-recipient rendering (``mtad.mail.tracktoken``, ``links``, ``render``)."""

from __future__ import annotations

import base64
import email
import email.policy
import os

import pytest

from mtad.base.keys import derive
from mtad.mail import links, render, tracktoken

KEY = derive("key-test", "tracking")
UNSUB = derive("key-test", "unsubscribe")


def spec(**kw) -> render.RenderSpec:
    base = dict(queue_id="0123456789ABCDEF012", recipient="r@x.test", base_url="https://t.example", clicks="yes",
                opens=True, unsubscribe=False, tracking_key=KEY, unsubscribe_key=UNSUB)
    return render.RenderSpec(**{**base, **kw})


def test_tokens_round_trip_and_refuse_any_change():
    sealer = tracktoken.Sealer(KEY)
    token = tracktoken.Token(tracktoken.CLICK, "0123456789ABCDEF012", "Ré@x.test", 4999)
    text = sealer.seal(token)
    assert sealer.open(text) == token and sealer.seal(token) == text  # deterministic
    assert "x.test" not in base64.urlsafe_b64decode(text + "==").decode("latin-1")  # nothing in clear
    for i in range(len(text)):
        changed = text[:i] + ("A" if text[i] != "A" else "B") + text[i + 1:]
        assert sealer.open(changed) is None
    assert tracktoken.Sealer(UNSUB).open(text) is None  # another purpose's key
    assert sealer.open(text[:-1]) is None and sealer.open("") is None and sealer.open("é" * 50) is None
    assert sealer.open("A" * 5000) is None


def test_html_links_are_found_by_the_tokenizer_and_only_http():
    html = ('<A HREF="https://a.example/x?a=1&amp;b=2">a</A><a href=javascript:alert(1)>j</a>'
            "<a href='data:text/html,x'>d</a><a href=\"mailto:m@x\">m</a><a href=\"#top\">t</a>"
            '<a href="/relative">r</a><a data-no-track href="https://kept.example/">k</a>'
            '<area href="http://b.example/"><!-- <a href="https://comment.example/"> -->')
    found = links.html_links(html)
    assert [link.url for link in found] == ["https://a.example/x?a=1&b=2", "http://b.example/"]
    assert html[found[0].start:found[0].end] == "https://a.example/x?a=1&amp;b=2"


def test_text_links_leave_punctuation_out():
    found = links.text_links("see https://x.org/a. (https://y.org/b) https://w.org/Foo_(bar), <https://z.org/q>")
    assert [link.url for link in found] == ["https://x.org/a", "https://y.org/b", "https://w.org/Foo_(bar)",
                                            "https://z.org/q"]


def message(html_cte: str = "quoted-printable") -> bytes:
    html = '<html><body><p>caf\u00e9 <a href="https://a.example/">a</a></p></body></html>'
    if html_cte == "base64":
        encoded = base64.encodebytes(html.encode()).replace(b"\n", b"\r\n")
    else:
        import binascii
        encoded = binascii.b2a_qp(html.encode(), istext=True).replace(b"\n", b"\r\n") + b"\r\n"
    return (b"From: a@x.test\r\nTo: r@x.test\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=\"B\"\r\n\r\npreamble\r\n--B\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n\r\nGo to https://a.example/ or https://b.example/\r\n--B\r\n"
            b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: " + html_cte.encode() +
            b"\r\n\r\n" + encoded + b"--B\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--B--\r\nepilogue\r\n")


@pytest.mark.parametrize("cte", ["quoted-printable", "base64"])
def test_render_keeps_structure_and_encodings(cte):
    body = message(cte)
    out = render.render(body, spec())
    msg = email.message_from_bytes(out, policy=email.policy.default)
    plain, html, pdf = [p for p in msg.walk() if not p.is_multipart()]
    assert html["Content-Transfer-Encoding"] == cte and pdf.get_content() == b"%PDF-"
    assert "https://a.example/" not in html.get_content() and "caf\u00e9" in html.get_content()
    assert html.get_content().count("https://t.example/c/") == 1 and "https://t.example/o/" in html.get_content()
    assert plain.get_content().count("https://t.example/c/") == 2
    assert out.startswith(body[:body.index(b"--B")]) and out.endswith(b"--B--\r\nepilogue\r\n")
    assert render.link_list(body) == ["https://a.example/", "https://b.example/"]
    assert render.render(body, spec()) == out  # deterministic: a retry sends the same URLs
    assert render.render(body, spec(recipient="other@x.test")) != out


def test_htmlonly_and_no_tracking():
    body = message()
    out = render.render(body, spec(clicks="htmlonly", opens=False))
    msg = email.message_from_bytes(out, policy=email.policy.default)
    plain, html = [p for p in msg.walk() if p.get_content_maintype() == "text"]
    assert "https://a.example/" in plain.get_content() and "/o/" not in html.get_content()
    assert "/c/" in html.get_content()
    assert render.render(body, spec(clicks="no", opens=False)) == body  # nothing to do: the same bytes


def test_system_variables_and_list_unsubscribe():
    body = b"From: a@x.test\r\nSubject: s\r\n\r\nLeave: %unsubscribe_url% %recipient% %nonsense% 50% off\r\n"
    assert render.needs_render(body)
    out = render.render(body, spec(clicks="no", opens=False))
    assert out.startswith(b"List-Unsubscribe: <https://t.example/u/")
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in out
    text = out.split(b"\r\n\r\n", 1)[1]
    assert text.startswith(b"Leave: https://t.example/u/") and b" r@x.test %nonsense% 50% off" in text
    assert not render.needs_render(b"Subject: s\r\n\r\n50% off\r\n")
    assert render.needs_render(b"Subject: s\r\n\r\n%unsubscri=\r\nbe_url%\r\n")  # a soft line break inside


def test_five_thousand_links_are_all_rewritten():
    html = "".join(f'<a href="https://many.example/{i}">{i}</a>' for i in range(5000))
    body = (b"From: a@x.test\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            + html.encode() + b"\r\n")
    out = render.render(body, spec(opens=False, tracking_key=os.urandom(32)))
    text = email.message_from_bytes(out, policy=email.policy.default).get_content()  # a long line: now QP
    assert text.count("https://t.example/c/") == 5000 and "many.example" not in text
    assert len(render.link_list(body)) == 5000
