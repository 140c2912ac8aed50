"""SMTP ingress limits: size, recipients, line length, headers, timeouts, session lifetime, connections,
malformed input. After each abuse the daemon must still serve another session.

Two module daemons: ``limited`` (small size/recipient/line/header limits, ordinary timeouts) and
``timed`` (sub-second timeouts). Connection-count limits get their own daemon per test, since
other tests' connections would count against them.
"""

from __future__ import annotations

import smtplib
import socket
import time

import pytest

from tests.e2e.helpers import assert_still_serving, message_count, queue_id, send, stored
from tests.support.rawsmtp import RawSMTP

MAX_SIZE = 20_000


@pytest.fixture(scope="module")
def limited(daemon_factory):
    return daemon_factory(limits={"max_message_size": MAX_SIZE, "max_recipients": 3, "max_line_length": 200,
                                  "max_header_count": 20, "max_header_size": 4000, "max_mime_depth": 3,
                                  "max_command_length": 1024, "max_errors": 6})


@pytest.fixture(scope="module")
def timed(daemon_factory):
    return daemon_factory(limits={"command_timeout": "600ms", "data_timeout": "1s", "session_lifetime": "2s"})


def mx(daemon) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", daemon.mx, local_hostname="client.test", timeout=10)
    s.ehlo()
    return s


# --- size ----------------------------------------------------------------------------------------------

def test_ehlo_announces_the_configured_size(limited):
    with mx(limited) as s:
        assert s.esmtp_features["size"] == str(MAX_SIZE)


def test_declared_size_over_limit_refused_at_mail(limited):
    with mx(limited) as s:
        code, text = s.mail("big@example.net", [f"SIZE={MAX_SIZE + 1}"])
        assert code == 552 and text.startswith(b"5.3.4"), text
        code, text = s.mail("big@example.net", [f"SIZE={MAX_SIZE}"])
        assert code == 250, "a declared size at the limit is fine"
    assert_still_serving(limited)


@pytest.mark.parametrize("times", [1.05, 100], ids=["just-over", "hundredfold"])
def test_actual_size_over_limit_refused_after_data(limited, times):
    before = message_count(limited)
    big = b"Subject: big\r\n\r\n" + (b"x" * 99 + b"\r\n") * int(MAX_SIZE * times / 100)
    with mx(limited) as s:
        code, text = send(s, "big@example.net", ["user@inbound.test"], big)  # no SIZE= given
        assert code == 552 and text.startswith("5.3.4"), text
        # The session goes on: the next message on the same connection is accepted.
        code, text = send(s, "small@example.net", ["user@inbound.test"], b"Subject: small\r\n\r\nok\r\n")
        assert code == 250, text
    assert message_count(limited) == before + 1
    assert stored(limited, queue_id(text))["sender"] == "small@example.net"


# --- recipients, lines, headers --------------------------------------------------------------------------

def test_too_many_recipients_get_452_and_the_first_ones_are_kept(limited):
    with mx(limited) as s:
        s.mail("many@example.net")
        for i in range(3):
            assert s.rcpt(f"r{i}@inbound.test")[0] == 250
        code, text = s.rcpt("r3@inbound.test")
        assert code == 452 and text.startswith(b"4.5.3"), text
        code, text = s.data(b"Subject: many\r\n\r\nhi\r\n")
    assert code == 250
    assert stored(limited, queue_id(text.decode()))["recipients"] == ["r0@inbound.test", "r1@inbound.test",
                                                                       "r2@inbound.test"]


def test_data_line_over_limit_refused(limited):
    before = message_count(limited)
    with mx(limited) as s:
        code, text = send(s, "long@example.net", ["user@inbound.test"],
                          b"Subject: long\r\n\r\n" + b"y" * 300 + b"\r\n")
    assert code // 100 == 5 and "line" in text, text
    assert message_count(limited) == before
    assert_still_serving(limited)


def test_command_line_over_limit_refused_and_session_continues(limited):
    with RawSMTP(limited.mx) as c:
        c.ehlo()
        code, text = c.cmd(b"MAIL FROM:<" + b"a" * 3000 + b"@example.net>")
        assert code == 500 and "too long" in text.lower(), text
        assert c.cmd("NOOP")[0] == 250
    assert_still_serving(limited)


def test_too_many_headers_refused(limited):
    before = message_count(limited)
    head = b"".join(b"X-Header-%d: v\r\n" % i for i in range(30))
    with mx(limited) as s:
        code, text = send(s, "headers@example.net", ["user@inbound.test"], head + b"\r\nbody\r\n")
    assert code // 100 == 5 and "header" in text, text
    assert message_count(limited) == before
    assert_still_serving(limited)


def test_header_block_over_size_limit_refused(limited):
    before = message_count(limited)
    folded = b"X-Long: start\r\n" + b"".join(b"\tcontinuation line %03d of a very long folded header\r\n" % i
                                             for i in range(100))
    with mx(limited) as s:
        code, text = send(s, "headers@example.net", ["user@inbound.test"], b"Subject: x\r\n" + folded + b"\r\nbody\r\n")
    assert code // 100 == 5 and "header" in text, text
    assert message_count(limited) == before


def nested_multipart(depth: int) -> bytes:
    head = b"Subject: nested\r\nMIME-Version: 1.0\r\n"
    def part(level: int) -> bytes:
        if level == depth:
            return b"Content-Type: text/plain\r\n\r\nleaf\r\n"
        b = b"b%d" % level
        return (b'Content-Type: multipart/mixed; boundary="' + b + b'"\r\n\r\n--' + b + b"\r\n"
                + part(level + 1) + b"--" + b + b"--\r\n")
    return head + part(0)


def test_mime_nesting_over_limit_refused(limited):
    before = message_count(limited)
    with mx(limited) as s:
        code, text = send(s, "mime@example.net", ["user@inbound.test"], nested_multipart(3))
        assert code == 250, text
        code, text = send(s, "mime@example.net", ["user@inbound.test"], nested_multipart(6))
        assert code // 100 == 5 and "MIME" in text, text
    assert message_count(limited) == before + 1


# --- malformed and unknown commands ----------------------------------------------------------------------

@pytest.mark.parametrize("command", [
    "MAIL FROM:<a b@example.net>",
    "MAIL FROM:<no-at-sign>",
    "MAIL FROM:<user@>",
    "MAIL FROM:<a@b.example",
    "MAIL FROM:<\"unterminated@example.net>",
    "MAIL FROM:<user@exa mple.net>",
    "MAIL FROM:<user@example.net> BOGUS",
    "MAIL TO:<user@example.net>",
])
def test_malformed_sender_refused(limited, command):
    with RawSMTP(limited.mx) as c:
        c.ehlo()
        code, text = c.cmd(command)
        assert code in (501, 553, 555), (command, code, text)
        assert c.cmd("MAIL FROM:<ok@example.net>")[0] == 250, "no transaction was opened by the bad MAIL"


@pytest.mark.parametrize("command", [
    "RCPT TO:<>",
    "RCPT TO:<@inbound.test>",
    "RCPT TO:<user@@inbound.test>",
    "RCPT TO:<user@inbound.test",
    "RCPT TO:user@in bound.test",
    "RCPT TO:<us\x01er@inbound.test>",
])
def test_malformed_recipient_refused(limited, command):
    with RawSMTP(limited.mx) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<ok@example.net>")[0] == 250
        code, text = c.cmd(command)
        assert code in (501, 553), (command, code, text)
        assert c.cmd("DATA")[0] == 554, "no recipient was added"


def test_unknown_and_unimplemented_commands(limited):
    with RawSMTP(limited.mx) as c:
        _, ehlo = c.ehlo()
        assert c.cmd("FOO bar")[0] == 500
        assert c.cmd("VRFY postmaster")[0] == 502
        if c.cmd("HELP")[0] == 502:
            assert "HELP" not in ehlo.splitlines(), "EHLO must not advertise a command it refuses"
        assert c.cmd(b"\xff\xfe NOOP")[0] == 500
        assert c.cmd("")[0] == 500
        code, text = c.cmd("NOOP")
        assert code == 250


def test_too_many_errors_close_the_session(limited):
    with RawSMTP(limited.mx) as c:
        codes = [c.cmd(f"BAD{i}")[0] for i in range(5)]
        assert codes == [500] * 5
        code, text = c.cmd("BAD5")  # max_errors: 6
        assert code == 421, text
        assert c.closed()
    assert_still_serving(limited)


def test_mail_before_ehlo_and_rcpt_before_mail(limited):
    with RawSMTP(limited.mx) as c:
        assert c.cmd("MAIL FROM:<a@example.net>")[0] == 503
        c.ehlo()
        assert c.cmd("RCPT TO:<user@inbound.test>")[0] == 503
        assert c.cmd("DATA")[0] == 503


def test_abrupt_disconnects_mid_command_and_mid_data(limited):
    before = message_count(limited)
    with RawSMTP(limited.mx) as c:
        c.send(b"EHLO half-a-comm")
    with RawSMTP(limited.mx) as c:
        c.ehlo()
        c.send(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<user@inbound.test>\r\nDATA\r\n")
        assert [code for code, _ in c.replies(3)] == [250, 250, 354]
        c.send(b"Subject: cut\r\n\r\nhalf a mess")
    assert_still_serving(limited)
    assert message_count(limited) == before + 1


# --- timeouts and lifetime ---------------------------------------------------------------------------------

def test_idle_command_timeout_answers_421(timed):
    with RawSMTP(timed.mx) as c:
        c.ehlo()
        started = time.monotonic()
        code, text = c.reply(timeout=5)
        waited = time.monotonic() - started
        assert code == 421 and text.startswith("4.4.2"), text
        assert 0.4 < waited < 3
        assert c.closed()
    assert_still_serving(timed)


def test_data_timeout_answers_421_and_stores_nothing(timed):
    before = message_count(timed)
    with RawSMTP(timed.mx) as c:
        c.ehlo()
        c.send(b"MAIL FROM:<slow@example.net>\r\nRCPT TO:<user@inbound.test>\r\nDATA\r\n")
        assert [code for code, _ in c.replies(3)] == [250, 250, 354]
        c.send(b"Subject: slow\r\n\r\nstalled here")
        code, text = c.reply(timeout=5)
        assert code == 421, text
        assert c.closed()
    assert message_count(timed) == before
    assert_still_serving(timed)


def test_session_lifetime_is_bounded_even_for_a_busy_client(timed):
    with RawSMTP(timed.mx) as c:
        c.ehlo()
        started = time.monotonic()
        code, text = 250, ""
        while code == 250 and time.monotonic() - started < 6:
            time.sleep(0.2)  # well inside command_timeout: NOOP keeps the idle timer from firing
            code, text = c.cmd("NOOP")
        elapsed = time.monotonic() - started
        assert code == 421 and "4.4.2" in text, text
        assert 1.5 < elapsed < 4, elapsed
        assert c.closed()
    assert_still_serving(timed)


# --- connections ---------------------------------------------------------------------------------------------

def test_connections_per_ip_limited(mtad_factory, ingress_config):
    ingress_config["limits"]["max_connections_per_ip"] = 2
    daemon = mtad_factory().start()
    first, second = RawSMTP(daemon.mx), RawSMTP(daemon.submission)
    try:
        assert first.banner[0] == 220 and second.banner[0] == 220
        with RawSMTP(daemon.mx) as third:
            assert third.banner[0] == 421 and "4.7.0" in third.banner[1]
            assert third.closed()
        assert first.cmd("NOOP")[0] == 250, "the refused connection must not disturb the others"
    finally:
        first.close()
        second.close()
    deadline = time.monotonic() + 5
    while True:  # the server notices the closes asynchronously
        with RawSMTP(daemon.mx) as again:
            if again.banner[0] == 220 or time.monotonic() > deadline:
                break
        time.sleep(0.05)
    assert again.banner[0] == 220
    assert_still_serving(daemon)


def test_total_connections_limited(mtad_factory, ingress_config):
    ingress_config["limits"]["max_connections"] = 3
    daemon = mtad_factory().start()
    held = [RawSMTP(daemon.mx) for _ in range(3)]
    try:
        with RawSMTP(daemon.submission) as extra:
            assert extra.banner[0] == 421
    finally:
        for c in held:
            c.close()


def test_idle_connections_do_not_block_others(limited):
    socks = [socket.create_connection(("127.0.0.1", limited.mx)) for _ in range(20)]
    try:
        assert_still_serving(limited)
    finally:
        for s in socks:
            s.close()
