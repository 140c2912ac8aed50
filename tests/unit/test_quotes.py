"""Quote and signature stripping on the shapes real mail clients produce, and HTML to text."""

from __future__ import annotations

import time

import pytest

from mtad.inbound.form.quotes import html_to_text, strip_html, strip_text


@pytest.mark.parametrize("body", [
    # Gmail
    "Sounds good.\n\nOn Tue, Jan 2, 2024 at 10:00 AM John Doe <john@example.com> wrote:\n\n> Can we meet?\n> J",
    # the attribution wrapped over two lines
    "Sounds good.\n\nOn Tue, Jan 2, 2024 at 10:00 AM John Doe <\njohn@example.com> wrote:\n> Can we meet?",
    # Apple Mail, no comma
    "Sounds good.\n\n> On 2 Jan 2024, at 10:00, John Doe <john@example.com> wrote:\n> \n> Can we meet?",
    # Outlook, plain separator
    "Sounds good.\n\n-----Original Message-----\nFrom: John Doe\nSent: Tuesday\nSubject: meet\n\nCan we meet?",
    # Outlook, header block after a rule
    "Sounds good.\n\n________________________________\nFrom: John Doe <john@example.com>\n"
    "Sent: Tuesday, January 2, 2024 10:00 AM\nTo: Me\nSubject: meet\n\nCan we meet?",
    # Outlook, bare header block
    "Sounds good.\n\nFrom: John Doe <john@example.com>\nDate: Tue, 2 Jan 2024\nSubject: meet\n\nCan we meet?",
    # French client
    "Sounds good.\n\nLe mar. 2 janv. 2024 à 10:00, John Doe <john@example.com> a écrit :\n> Can we meet?",
    # a block of > lines at the end, no attribution
    "Sounds good.\n\n> Can we meet?\n> Tomorrow?\n",
])
def test_reply_quotes_are_cut(body):
    assert strip_text(body) == ("Sounds good.", "")


def test_quote_block_above_a_bottom_posted_reply_is_cut():
    assert strip_text("> Can we meet?\n> Tomorrow?\n\nYes, at ten.") == ("Yes, at ten.", "")


def test_inline_replies_and_single_quoted_lines_are_kept():
    inline = "> Can we meet?\n> Today?\nNo.\n> Tomorrow?\n> At ten?\nYes."
    assert strip_text(inline) == (inline, "")
    one = "As you said:\n> this is fine\nI agree."
    assert strip_text(one) == (one, "")


def test_a_forwarded_message_is_content():
    body = "FYI\n\n---------- Forwarded message ---------\nFrom: Bob <bob@example.com>\nDate: Mon\n\nHello"
    assert strip_text(body) == (body, "")


def test_a_plain_sentence_starting_with_on_is_not_a_splitter():
    body = "On Monday we ship.\nOn Tuesday we rest."
    assert strip_text(body) == (body, "")


@pytest.mark.parametrize("body, text, signature", [
    ("Wow. Awesome!\n--\nBob Smith", "Wow. Awesome!", "--\nBob Smith"),
    ("See attached.\n\n-- \nBob Smith\nACME Corp\n+1 555 0100\n", "See attached.", "-- \nBob Smith\nACME Corp\n+1 555 0100"),
    ("On my way.\n\nSent from my iPhone", "On my way.", "Sent from my iPhone"),
    ("Done, merged.\n\nThanks,\nBob", "Done, merged.", "Thanks,\nBob"),
    ("Done.\n\nBest regards\nBob Smith\n-- \nACME", "Done.", "Best regards\nBob Smith\n-- \nACME"),
    ("Thanks!", "Thanks!", ""),  # a sign-off with nothing before it is the message
])
def test_signatures(body, text, signature):
    assert strip_text(body) == (text, signature)


def test_signature_is_taken_after_the_quote_is_cut():
    body = "Yes.\n\nCheers,\nAnn\n\nOn Mon, Jan 1, 2024 at 9:00 AM Bob <b@x.example> wrote:\n> ok?\n> \n> -- \n> Bob"
    assert strip_text(body) == ("Yes.", "Cheers,\nAnn")


def test_a_signature_far_from_the_end_is_text():
    body = "Intro\n--\n" + "\n".join(f"line {i}" for i in range(12))
    assert strip_text(body) == (body, "")


def test_crlf_bodies():
    assert strip_text("Yes.\r\n\r\nOn Mon, Jan 1, 2024, Bob <b@x> wrote:\r\n> ok?\r\n") == ("Yes.", "")


# ---------------------------------------------------------------- HTML


def test_gmail_quote_is_dropped():
    html = ('<div dir="ltr">Thanks!</div><br><div class="gmail_quote"><div class="gmail_attr">On Mon, Bob wrote:'
            '<br></div><blockquote class="gmail_quote" style="margin:0">old text</blockquote></div>')
    assert strip_html(html) == '<div dir="ltr">Thanks!</div><br>'


def test_apple_and_thunderbird_quotes_are_dropped():
    html = ('<body>Reply<div class="moz-cite-prefix">On Mon, Bob wrote:<br></div>'
            '<blockquote type="cite" cite="mid:x">old <b>text</b></blockquote><p>after</p></body>')
    assert strip_html(html) == "<body>Reply<p>after</p></body>"


def test_outlook_reply_block_and_everything_after_it_in_its_parent_are_dropped():
    html = ('<html><body><div>Answer</div><div id="divRplyFwdMsg" dir="ltr"><b>From:</b> Bob</div>'
            '<div>old text</div></body></html>')
    assert strip_html(html) == "<html><body><div>Answer</div></body></html>"


def test_unclosed_elements_inside_a_quote_close_with_it():
    html = '<div>Reply<p>one<blockquote type="cite">q<p>x</blockquote>after</div>'
    assert strip_html(html) == "<div>Reply<p>oneafter</div>"


def test_attributes_with_angle_brackets_and_entities_survive():
    html = '<p title="a>b">x &amp; y&#33;</p><blockquote type=cite>q</blockquote>'
    assert strip_html(html) == '<p title="a>b">x &amp; y&#33;</p>'


def test_html_that_is_only_a_quote_is_kept():
    html = '<blockquote type="cite">only quoted text</blockquote>'
    assert strip_html(html) == html


def test_html_to_text():
    html = ("<html><head><title>T</title><style>p { color: red }</style></head><body>"
            "<p>Hello&nbsp;<b>World</b> &amp;\n  co</p><div>Line<br>two</div>"
            "<script>if (a < b) { x() }</script><pre>  a\n  b</pre>"
            "<table><tr><td>1</td><td>2</td></tr></table></body></html>")
    assert html_to_text(html) == "Hello World & co\n\nLine\ntwo\n\na\nb\n\n1 2"


@pytest.mark.parametrize("unit", ["<a ", "<", "<!--", '<a title="', "</", "<script>", "<p>x"])
def test_hostile_html_costs_linear_time(unit):
    hostile = unit * (100_000 // len(unit))
    start = time.perf_counter()
    strip_html(hostile)
    html_to_text(hostile)
    assert time.perf_counter() - start < 20  # html.parser needs over a minute (~1 s here, idle) for "<a " * 33,000


def test_hostile_text_costs_linear_time():
    start = time.perf_counter()
    for body in [" " * 100_000 + "x", "On " + "a " * 50_000, "From: " + "x" * 100_000, "> " * 50_000]:
        strip_text(body)
    assert time.perf_counter() - start < 1
