"""SMTP smuggling and DATA framing, with raw bytes on the wire.

Only CRLF.CRLF ends DATA. Bare LF, bare CR and NUL are normalised to CRLF / removed by default
(``limits.bare_newline: normalize``) or refused with 550 5.6.0 (``reject``). Whatever the variant,
the text smuggled after a fake terminator never becomes a second message, and no stray CR, LF or
NUL is ever stored. Bytes pipelined after the real terminator are still processed as commands.
"""

from __future__ import annotations

import re
import socket
import time

import pytest

from tests.e2e.helpers import LOGIN, assert_still_serving, message_count, queue_id, stored
from tests.support.daemon import PASSWORD
from tests.support.rawsmtp import Closed, RawSMTP

# (id, bytes a smuggler puts between the real message and its injected commands)
VARIANTS = [
    ("lf-dot-lf", b"\n.\n"),
    ("crlf-dot-lf", b"\r\n.\n"),
    ("lf-dot-crlf", b"\n.\r\n"),
    ("cr-dot-cr", b"\r.\r"),
    ("crlf-dot-cr", b"\r\n.\r"),
    ("cr-dot-crlf", b"\r.\r\n"),
    ("nul-in-dot-line", b"\r\n.\0\r\n"),
    ("nul-before-dot", b"\r\n\0.\r\n"),
]
STRAY = re.compile(rb"(?<!\r)\n|\r(?!\n)|\x00")


def smuggling_payload(sep: bytes, marker: str) -> bytes:
    return (b"Subject: " + marker.encode() + b"\r\n\r\nfirst part" + sep
            + b"MAIL FROM:<evil@example.net>\r\nRCPT TO:<victim@inbound.test>\r\nDATA\r\n"
            + b"Subject: smuggled\r\n\r\nsmuggled body\r\n.\r\n")


@pytest.fixture(scope="module")
def normalizing(daemon_factory):
    return daemon_factory()  # the default: bare_newline normalize


@pytest.fixture(scope="module")
def rejecting(daemon_factory):
    return daemon_factory(limits={"bare_newline": "reject"})


def open_transaction(c: RawSMTP, rcpt: str) -> None:
    c.ehlo()
    c.send(f"MAIL FROM:<sender@example.net>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode())
    assert [code for code, _ in c.replies(3)] == [250, 250, 354]


def everything_until_close(c: RawSMTP) -> list[tuple[int, str]]:
    """Send QUIT and collect every reply until the server closes."""
    c.send(b"QUIT\r\n")
    replies = []
    while True:
        try:
            replies.append(c.reply(timeout=5))
        except (Closed, ConnectionError):
            return replies


def assert_clean(body: bytes) -> None:
    stray = STRAY.search(body)
    assert stray is None, f"stray {stray.group()!r} at {stray.start()} in {body!r}"


@pytest.mark.parametrize("sep", [v for _, v in VARIANTS], ids=[k for k, _ in VARIANTS])
def test_smuggling_normalized_yields_exactly_one_clean_message(normalizing, sep):
    before = message_count(normalizing)
    marker = f"smuggle-{sep.hex()}"
    with RawSMTP(normalizing.mx) as c:
        open_transaction(c, "target@inbound.test")
        c.send(smuggling_payload(sep, marker))
        replies = everything_until_close(c)
    codes = [code for code, _ in replies]
    assert codes == [250, 221], f"one message accepted, then QUIT; the smuggled commands got no reply: {replies}"
    assert message_count(normalizing) == before + 1
    msg = stored(normalizing, queue_id(replies[0][1]))
    assert msg["sender"] == "sender@example.net"
    assert msg["recipients"] == ["target@inbound.test"]
    assert_clean(msg["body"])
    assert marker.encode() in msg["body"]
    # The would-be second message is inert text inside the first one.
    assert b"MAIL FROM:<evil@example.net>" in msg["body"]
    assert not normalizing.query("SELECT id FROM messages WHERE sender = 'evil@example.net'"
                                 " OR recipients LIKE '%victim%'")


@pytest.mark.parametrize("sep", [v for _, v in VARIANTS], ids=[k for k, _ in VARIANTS])
def test_smuggling_rejected_with_550_and_nothing_stored(rejecting, sep):
    before = message_count(rejecting)
    with RawSMTP(rejecting.mx) as c:
        open_transaction(c, "target@inbound.test")
        c.send(smuggling_payload(sep, "rejected"))
        code, text = c.reply()
        assert code == 550 and text.startswith("5.6.0"), text
        # The session is usable afterwards.
        assert c.cmd("RSET")[0] == 250
        assert c.cmd("NOOP")[0] == 250
    assert message_count(rejecting) == before
    assert not rejecting.query("SELECT id FROM messages WHERE sender = 'evil@example.net'")
    assert_still_serving(rejecting)


@pytest.mark.parametrize("body, expected", [
    (b"Subject: lf\n\nline one\nline two\r\n", b"Subject: lf\r\n\r\nline one\r\nline two\r\n"),
    (b"Subject: cr\r\n\r\nline one\rline two\r\n", b"Subject: cr\r\n\r\nline one\r\nline two\r\n"),
    (b"Subject: nul\r\n\r\nab\0cd\r\n", b"Subject: nul\r\n\r\nabcd\r\n"),
])
def test_bare_newlines_and_nul_normalized_in_an_ordinary_message(normalizing, body, expected):
    with RawSMTP(normalizing.mx) as c:
        open_transaction(c, "plain@inbound.test")
        code, text = c.cmd(body + b".")
        assert code == 250, text
    stored_body = stored(normalizing, queue_id(text))["body"]
    assert_clean(stored_body)
    assert stored_body.endswith(expected)


def test_bare_lf_message_refused_when_rejecting(rejecting):
    with RawSMTP(rejecting.mx) as c:
        open_transaction(c, "plain@inbound.test")
        code, text = c.cmd(b"Subject: lf\n\nunix line endings\n\r\n.")
        assert code == 550 and text.startswith("5.6.0"), text


def test_clean_message_accepted_when_rejecting(rejecting):
    with RawSMTP(rejecting.mx) as c:
        open_transaction(c, "plain@inbound.test")
        code, text = c.cmd(b"Subject: fine\r\n\r\nall CRLF\r\n.")
        assert code == 250, text


def test_smuggling_over_authenticated_submission(normalizing, certs):
    """The outbound path (the one smuggling attacks relay through) is protected the same way."""
    with RawSMTP(normalizing.submissions, tls_context=certs.client_context()) as c:
        c.ehlo()
        assert c.auth_plain(LOGIN, PASSWORD)[0] == 235
        c.send(b"MAIL FROM:<postmaster@example.com>\r\nRCPT TO:<friend@gmail.com>\r\nDATA\r\n")
        assert [code for code, _ in c.replies(3)] == [250, 250, 354]
        c.send(b"Subject: out\r\n\r\nhello\n.\nMAIL FROM:<postmaster@example.com>\r\n"
               b"RCPT TO:<victim@yahoo.com>\r\nDATA\r\nSubject: spoofed\r\n\r\nx\r\n.\r\n")
        replies = everything_until_close(c)
    assert [code for code, _ in replies] == [250, 221], replies
    msg = stored(normalizing, queue_id(replies[0][1]))
    assert msg["recipients"] == ["friend@gmail.com"]
    assert_clean(msg["body"])
    assert normalizing.query("SELECT domain FROM deliveries WHERE message = ?", (msg["id"],)) == [("gmail.com",)]
    assert not normalizing.query("SELECT id FROM deliveries WHERE domain = 'yahoo.com'")


# --- framing ------------------------------------------------------------------------------------------------

def test_commands_pipelined_after_the_final_dot_are_processed(normalizing):
    before = message_count(normalizing)
    with RawSMTP(normalizing.mx) as c:
        open_transaction(c, "first@inbound.test")
        c.send(b"Subject: one\r\n\r\nfirst\r\n.\r\n"
               b"MAIL FROM:<second@example.net>\r\nRCPT TO:<second@inbound.test>\r\nDATA\r\n")
        replies = c.replies(4)
        assert [code for code, _ in replies] == [250, 250, 250, 354], replies
        code, text = c.cmd(b"Subject: two\r\n\r\nsecond\r\n.")
        assert code == 250, text
    assert message_count(normalizing) == before + 2
    assert stored(normalizing, queue_id(replies[0][1]))["recipients"] == ["first@inbound.test"]
    assert stored(normalizing, queue_id(text))["sender"] == "second@example.net"


def test_whole_transaction_in_one_write_then_half_close(normalizing):
    """A client may pipeline everything, close its sending side, and still read every reply."""
    with RawSMTP(normalizing.mx) as c:
        c.send(b"EHLO client.test\r\nMAIL FROM:<batch@example.net>\r\nRCPT TO:<batch@inbound.test>\r\nDATA\r\n")
        assert [code for code, _ in c.replies(4)] == [250, 250, 250, 354]
        c.send(b"Subject: batch\r\n\r\nall at once\r\n.\r\nQUIT\r\n")
        c.sock.shutdown(socket.SHUT_WR)
        code, text = c.reply()
        assert code == 250, text
        assert c.reply()[0] == 221
    assert stored(normalizing, queue_id(text))["recipients"] == ["batch@inbound.test"]


@pytest.mark.parametrize("split", [1, 2, 3, 4])
def test_terminator_split_across_writes_is_found(normalizing, split):
    end = b"\r\n.\r\n"
    with RawSMTP(normalizing.mx) as c:
        open_transaction(c, "split@inbound.test")
        c.send(b"Subject: split\r\n\r\nbody" + end[:split])
        assert c.pending(0.15) == b"", "no reply before the terminator is complete"
        c.send(end[split:])
        code, text = c.reply()
        assert code == 250, text
    body = stored(normalizing, queue_id(text))["body"]
    assert body.endswith(b"\r\n\r\nbody\r\n")


def test_terminator_split_after_a_large_chunk(normalizing):
    """The reader scans chunks: a terminator straddling a chunk boundary deep in a message still counts."""
    payload = b"Subject: big\r\n\r\n" + (b"z" * 78 + b"\r\n") * 3000
    with RawSMTP(normalizing.mx) as c:
        open_transaction(c, "bigsplit@inbound.test")
        c.send(payload + b".")
        time.sleep(0.1)
        c.send(b"\r\n")
        code, text = c.reply()
        assert code == 250, text
    assert stored(normalizing, queue_id(text))["body"].endswith(payload)


def test_dot_stuffing_is_undone(normalizing):
    with RawSMTP(normalizing.mx) as c:
        open_transaction(c, "dots@inbound.test")
        code, text = c.cmd(b"Subject: dots\r\n\r\n..leading dot\r\n..\r\n...\r\nend\r\n.")
        assert code == 250, text
    assert stored(normalizing, queue_id(text))["body"].endswith(b"\r\n\r\n.leading dot\r\n.\r\n..\r\nend\r\n")


def test_empty_and_tiny_messages(normalizing):
    with RawSMTP(normalizing.mx) as c:
        open_transaction(c, "empty@inbound.test")
        c.send(b".\r\n")
        code, text = c.reply()
        assert code == 250, text
    assert_clean(stored(normalizing, queue_id(text))["body"])


def test_binary_8bit_content_survives(normalizing):
    body = "Subject: =?utf-8?q?caf=C3=A9?=\r\n\r\nCafé, naïve, 日本語\r\n".encode()
    with RawSMTP(normalizing.mx) as c:
        c.ehlo()
        c.send(b"MAIL FROM:<utf8@example.net> BODY=8BITMIME\r\nRCPT TO:<x@inbound.test>\r\nDATA\r\n")
        assert [code for code, _ in c.replies(3)] == [250, 250, 354]
        code, text = c.cmd(body + b".")
        assert code == 250, text
    assert stored(normalizing, queue_id(text))["body"].endswith(body)


def test_smtputf8_address(normalizing):
    with RawSMTP(normalizing.mx) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<josé@example.net>")[0] in (501, 553), "non-ASCII needs SMTPUTF8"
        assert c.cmd("MAIL FROM:<josé@example.net> SMTPUTF8")[0] == 250
        assert c.cmd("RCPT TO:<usuário@inbound.test>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        code, text = c.cmd(b"Subject: utf8\r\n\r\nhi\r\n.")
        assert code == 250, text
    assert stored(normalizing, queue_id(text))["sender"] == "josé@example.net"

