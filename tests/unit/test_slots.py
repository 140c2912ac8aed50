"""mimeedit.Slots (the precompiled per-recipient render of a list copy): byte for byte what the substitution
path (``Personaliser.render_slowly``: ``mimeedit.Prepared.render`` with ``variables.substitute``) gives, for every
transfer encoding and charset, or None (the caller then takes that path)."""

from __future__ import annotations

import pytest

from mtad.mail import listcopy, mimeedit
from mtad.mail import variables as V

HEAD = (b"From: News <news@example.com>\r\nTo: list@example.com\r\nSubject: Hi %recipient_fname% %recipient.city%\r\n"
        b"Message-ID: <x@example.com>\r\nMIME-Version: 1.0\r\n")
TEXT = "Dear %recipient_fname% %recipient_lname% (%recipient%) of %recipient.city%,\r\n50% off\r\n" \
       "Keep %unsubscribe_url% for later; leave: %mailing_list_unsubscribe_url%\r\n"


def _single(cte: str, charset: str, text: str = TEXT) -> bytes:
    data = text.encode(charset)
    if cte == "quoted-printable":
        data = mimeedit._encode(data, "quoted-printable")
    elif cte == "base64":
        data = mimeedit._encode(data, "base64")
    return (HEAD + f"Content-Type: text/plain; charset={charset}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n"
            .encode() + data)


def _multipart(cte: str, charset: str) -> bytes:
    def part(subtype: str, text: str) -> bytes:
        data = text.encode(charset)
        if cte in ("quoted-printable", "base64"):
            data = mimeedit._encode(data, cte)
        return (f"--B\r\nContent-Type: text/{subtype}; charset={charset}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n"
                .encode() + data + b"\r\n")
    return (HEAD + b"Content-Type: multipart/alternative; boundary=B\r\n\r\n" + part("plain", TEXT)
            + part("html", "<p>" + TEXT + " caf\u00e9</p>") + b"--B--\r\n")


CONTEXTS = [
    V.RecipientContext("ann@example.net", "Ann Lee", {"city": "Paris"}, {"mailing_list_unsubscribe_url": "https://u/1"}),
    V.RecipientContext("bo@example.net", "", {}, {"mailing_list_unsubscribe_url": "https://u/2"}),
    V.RecipientContext("cy@example.net", "Cy \u00c9mile Z\u00fcrn", {"city": "Z\u00fcrich \u65e5\u672c"},
                       {"mailing_list_unsubscribe_url": "https://u/3"}),
    V.RecipientContext("dee@example.net", "Dee", {"city": {"n": [1, 2]}}, {}),  # a JSON value, a system name unfilled
    V.RecipientContext("e@example.net", "E, \"Q\" Smith", {"city": "x" * 1200}, {}),  # long line; specials in name
]
BODIES = [pytest.param(_single(cte, cs), id=f"single-{cte}-{cs}")
          for cte in ("7bit", "8bit", "quoted-printable", "base64") for cs in ("us-ascii", "utf-8", "iso-8859-1")
          if not (cte == "7bit" and cs != "us-ascii")] + \
         [pytest.param(_multipart(cte, cs), id=f"multipart-{cte}-{cs}")
          for cte in ("8bit", "quoted-printable", "base64") for cs in ("utf-8", "iso-8859-1")]


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("ctx", CONTEXTS, ids=["ascii", "empty-name", "non-ascii", "json", "long-specials"])
def test_slots_give_the_same_bytes_as_substitution(body, ctx):
    p = listcopy.Personaliser(body)
    assert p.render(ctx) == p.render_slowly(ctx) == listcopy.personalise(body, ctx)


def test_a_multipart_copy_is_made_by_the_slots_not_the_fallback():
    p = listcopy.Personaliser(_multipart("quoted-printable", "utf-8"))
    ctx = CONTEXTS[2]
    fast = p.slots.render(V.values(p.slots.tokens, ctx))
    assert fast is not None and fast == p.render_slowly(ctx)
    assert b"Subject: =?utf-8?" in fast  # the subject's non-ASCII value is encoded (RFC 2047)


@pytest.mark.parametrize("value", ["a\r\nBcc: x@example.com", "a\nb", "a\rb", "nul\x00"])
def test_a_value_with_a_line_break_or_nul_is_left_to_the_slow_path(value):
    body = _multipart("8bit", "utf-8")
    p = listcopy.Personaliser(body)
    ctx = V.RecipientContext("ann@example.net", "Ann", {"city": value}, {})
    assert p.slots.render(V.values(p.slots.tokens, ctx)) is None
    out = p.render(ctx)
    assert out == p.render_slowly(ctx)
    assert b"\r\nBcc:" not in out.split(b"\r\n\r\n")[0]  # never a new header field


def test_a_value_the_charset_cannot_hold_falls_back_and_the_part_becomes_utf8():
    body = _multipart("quoted-printable", "iso-8859-1")
    p = listcopy.Personaliser(body)
    ctx = V.RecipientContext("ann@example.net", "Ann", {"city": "\u65e5\u672c"}, {})
    assert p.slots.render(V.values(p.slots.tokens, ctx)) is None
    out = p.render(ctx)
    assert out == p.render_slowly(ctx) and b"charset=\"utf-8\"" in out


def test_a_top_level_part_whose_encoding_must_change_falls_back():
    body = _single("7bit", "us-ascii")
    p = listcopy.Personaliser(body)
    ctx = CONTEXTS[2]  # non-ASCII into a 7bit part: it becomes quoted-printable, its (the message's) head changes
    assert p.slots.render(V.values(p.slots.tokens, ctx)) is None
    out = p.render(ctx)
    assert out == p.render_slowly(ctx) and b"Content-Transfer-Encoding: quoted-printable" in out


def test_line_ends_cut_by_a_slot_are_not_precompiled():
    # "\r" before a variable and "\n" after it: CRLF normalisation of the whole text differs from the pieces'
    body = HEAD + b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\na\r%recipient.x%\nb"
    p = listcopy.Personaliser(body)
    assert not p.slots.usable
    for x in ("", "y"):
        ctx = V.RecipientContext("ann@example.net", "Ann", {"x": x}, {})
        assert p.render(ctx) == p.render_slowly(ctx)


def test_a_value_equal_to_what_it_replaces_leaves_the_part_alone():
    body = _single("quoted-printable", "utf-8")
    p = listcopy.Personaliser(body)
    ctx = V.RecipientContext("a@example.net", "%recipient_fname%", {"city": "%recipient.city%"},
                             {"mailing_list_unsubscribe_url": "%mailing_list_unsubscribe_url%"})
    assert p.render(ctx) == p.render_slowly(ctx)


def test_slots_of_a_body_without_variables_render_it_unchanged():
    body = _single("8bit", "utf-8", "no variables here, 50% off\r\n")
    slots = mimeedit.Slots(mimeedit.Prepared(body), V.split, ["Subject"])
    assert slots.render({}) == body
    assert slots.render({"%recipient%": "x"}) == body  # a value for no slot of it


@pytest.mark.parametrize("cte", ["8bit", "quoted-printable", "base64"])
@pytest.mark.parametrize("charset", ["utf-8", "iso-8859-1"])
def test_the_slots_make_multipart_copies_in_every_encoding(cte, charset):
    p = listcopy.Personaliser(_multipart(cte, charset))
    for ctx in (CONTEXTS[0], CONTEXTS[1], CONTEXTS[3], CONTEXTS[4]):
        fast = p.slots.render(V.values(p.slots.tokens, ctx))
        assert fast is not None and fast == p.render_slowly(ctx)


@pytest.mark.parametrize("text", ["", "plain", "50% off", "%recipient%", "a %recipient.k% b %recipient_fname%%x%",
                                  "%unsubscribe_url% %recipient.a b% %recipient_lname%", "%%recipient%%"])
def test_split_join_is_substitute(text):
    ctx = V.RecipientContext("a@example.net", "Ann Lee", {"k": 5}, {"unsubscribe_url": "U"})
    pieces = V.split(text)
    assert "".join(pieces) == text and len(pieces) % 2 == 1
    assert V.join(pieces, V.values(pieces[1::2], ctx)) == V.substitute(text, ctx)
    assert V.join(pieces, V.values(pieces[1::2], ctx, final=True)) == V.substitute(text, ctx, final=True)


@pytest.mark.parametrize("cte", ["7bit", "8bit"])
@pytest.mark.parametrize("length", range(930, 960, 3))
def test_a_line_at_the_length_limit_is_encoded_as_substitution_does(cte, length):
    # a copy's line at 998 octets stays as it is; at 999 the part becomes quoted-printable (the slow path's
    # own check); the fast path skips looking for long lines only when no line can be that long
    body = _single(cte, "us-ascii")
    p = listcopy.Personaliser(body)
    for extra in ("", "x" * 20):
        ctx = V.RecipientContext("ann@example.net", "Ann Lee", {"city": "c" * length + extra},
                                 {"mailing_list_unsubscribe_url": "https://u/1"})
        assert p.render(ctx) == p.render_slowly(ctx)
    lines = [len(line) for line in p.render(V.RecipientContext("a@example.net", "A B", {"city": "c" * 960}, {}))
             .split(b"\r\n")]
    assert max(lines) <= mimeedit.MAX_LINE
