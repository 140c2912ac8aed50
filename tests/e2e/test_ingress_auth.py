"""SMTP ingress, authentication and relay policy: what each listener advertises and who may send what.

One daemon for the module (mx + submission/STARTTLS + submission/implicit TLS); clients are smtplib,
aiosmtplib and a raw socket where a library would hide the bytes (pipelining before STARTTLS).
"""

from __future__ import annotations

import base64
import smtplib
import ssl

import aiosmtplib
import pytest

from tests.e2e.helpers import LOGIN, MESSAGE, assert_still_serving, message_count, queue_id, send, stored, \
    submission
from tests.support.daemon import PASSWORD
from tests.support.rawsmtp import RawSMTP

BASE_EXTENSIONS = {"SIZE", "8BITMIME", "SMTPUTF8", "PIPELINING", "ENHANCEDSTATUSCODES"}


@pytest.fixture(scope="module")
def server(daemon_factory):
    return daemon_factory(limits={"max_auth_failures": 3})


@pytest.fixture
def tls(certs) -> ssl.SSLContext:
    """A client context that trusts only the trustme CA and checks the host name."""
    ctx = certs.client_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    return ctx


def extensions(ehlo_text: bytes | str) -> dict[str, str]:
    """EHLO keywords and their parameters: ``{"SIZE": "25000000", "AUTH": "PLAIN LOGIN", ...}``."""
    text = ehlo_text.decode() if isinstance(ehlo_text, bytes) else ehlo_text
    return {kw.upper(): params for kw, _, params in (line.partition(" ") for line in text.splitlines()[1:])}


# --- TLS and AUTH ------------------------------------------------------------------------------------

def test_starttls_then_auth_then_send_on_submission(server, tls):
    with smtplib.SMTP("127.0.0.1", server.submission, local_hostname="client.test", timeout=10) as s:
        s.starttls(context=tls)
        cert = s.sock.getpeercert()
        assert ("DNS", "mtad.test") in cert["subjectAltName"]
        s.ehlo()
        s.login(LOGIN, PASSWORD)
        code, text = send(s, "postmaster@example.com", ["someone@gmail.com"], MESSAGE)
    assert code == 250, text
    msg = stored(server, queue_id(text))
    assert msg["direction"] == "outbound"
    assert msg["envelope"]["auth_user"] == LOGIN
    assert msg["envelope"]["tls"] is True
    assert msg["envelope"]["listener"] == "submission"
    assert msg["recipients"] == ["someone@gmail.com"]
    assert b"Hello there." in msg["body"]


async def test_starttls_auth_send_with_aiosmtplib(server, tls):
    errors, reply = await aiosmtplib.send(
        MESSAGE, sender="postmaster@example.com", recipients=["other@gmail.com"], hostname="127.0.0.1",
        port=server.submission, start_tls=True, tls_context=tls, username=LOGIN, password=PASSWORD,
        local_hostname="client.test", timeout=10)
    assert errors == {}
    msg = stored(server, queue_id(reply))
    assert msg["envelope"]["auth_user"] == LOGIN
    assert msg["recipients"] == ["other@gmail.com"]


def test_implicit_tls_listener(server, tls):
    with smtplib.SMTP_SSL("127.0.0.1", server.submissions, local_hostname="client.test", context=tls,
                          timeout=10) as s:
        code, text = s.ehlo()
        assert code == 250
        assert "AUTH" in extensions(text) and "STARTTLS" not in extensions(text)
        s.login(LOGIN, PASSWORD)
        code, text = send(s, "postmaster@example.com", ["implicit@gmail.com"], MESSAGE)
    assert code == 250, text
    msg = stored(server, queue_id(text))
    assert msg["envelope"]["listener"] == "submissions"
    assert msg["envelope"]["tls"] is True


async def test_implicit_tls_with_aiosmtplib(server, tls):
    errors, reply = await aiosmtplib.send(
        MESSAGE, sender="postmaster@example.com", recipients=["implicit2@gmail.com"], hostname="127.0.0.1",
        port=server.submissions, use_tls=True, tls_context=tls, username=LOGIN, password=PASSWORD, timeout=10)
    assert errors == {}
    assert stored(server, queue_id(reply))["envelope"]["listener"] == "submissions"


def test_implicit_tls_listener_refuses_plaintext(server):
    import socket
    with socket.create_connection(("127.0.0.1", server.submissions), timeout=5) as sock:
        sock.sendall(b"EHLO client.test\r\n")
        sock.settimeout(5)
        try:
            data = sock.recv(100)
        except (ConnectionResetError, TimeoutError):
            data = b""
    assert not data.startswith(b"220") and not data.startswith(b"250")


@pytest.mark.parametrize("listener", ["submission", "mx"])
def test_ehlo_advertises_starttls_before_tls_and_auth_after(server, tls, listener):
    with smtplib.SMTP("127.0.0.1", server.port(listener), local_hostname="client.test", timeout=10) as s:
        code, text = s.ehlo()
        before = extensions(text)
        s.starttls(context=tls)
        code, text = s.ehlo()
        after = extensions(text)
    assert BASE_EXTENSIONS | {"STARTTLS"} <= before.keys()
    assert "AUTH" not in before
    assert BASE_EXTENSIONS | {"AUTH"} <= after.keys()
    assert set(after["AUTH"].split()) == {"PLAIN", "LOGIN"}
    assert "STARTTLS" not in after
    assert before["SIZE"] == after["SIZE"] == "25000000"


def test_auth_refused_before_tls(server):
    blob = base64.b64encode(f"\0{LOGIN}\0{PASSWORD}".encode()).decode()
    with smtplib.SMTP("127.0.0.1", server.submission, local_hostname="client.test", timeout=10) as s:
        s.ehlo()
        assert not s.has_extn("auth")
        code, text = s.docmd("AUTH", f"PLAIN {blob}")
        assert code == 538, text
        assert text.startswith(b"5.7.11")
        code, text = s.docmd("AUTH", "LOGIN")
        assert code == 538
        code, text = s.docmd("MAIL", "FROM:<postmaster@example.com>")
        assert code == 530, "the refused AUTH must not have authenticated the session"


def test_auth_plain_and_login_both_work(server, tls):
    for mechanism, initial in (("PLAIN", True), ("LOGIN", False), ("LOGIN", True)):
        with smtplib.SMTP("127.0.0.1", server.submission, local_hostname="client.test", timeout=10) as s:
            s.starttls(context=tls)
            s.ehlo()
            s.user, s.password = LOGIN, PASSWORD
            authobject = s.auth_plain if mechanism == "PLAIN" else s.auth_login
            code, text = s.auth(mechanism, authobject, initial_response_ok=initial)
            assert code == 235, (mechanism, initial, text)
            code, text = s.docmd("MAIL", "FROM:<postmaster@example.com>")
            assert code == 250, (mechanism, text)


def auth_plain(s: smtplib.SMTP, login: str, password: str) -> tuple[int, bytes]:
    """One AUTH PLAIN attempt (smtplib's login() retries with every mechanism, counting twice)."""
    blob = base64.b64encode(f"\0{login}\0{password}".encode()).decode()
    return s.docmd("AUTH", f"PLAIN {blob}")


def test_unknown_user_and_wrong_password_get_535_then_421(server, tls):
    with smtplib.SMTP("127.0.0.1", server.submission, local_hostname="client.test", timeout=10) as s:
        s.starttls(context=tls)
        s.ehlo()
        code, text = auth_plain(s, LOGIN, "wrong password")
        assert code == 535 and text.startswith(b"5.7.8"), text
        code, text = auth_plain(s, "nobody@example.com", PASSWORD)
        assert code == 535, text
        code, text = auth_plain(s, LOGIN, "still wrong")
        assert code == 421, text  # max_auth_failures: 3
        with pytest.raises(smtplib.SMTPServerDisconnected):
            s.noop()
    # The right password on a new connection still works.
    with submission(server, tls) as s:
        assert s.noop()[0] == 250


def test_submission_without_auth_refused(server, tls):
    with smtplib.SMTP("127.0.0.1", server.submission, local_hostname="client.test", timeout=10) as s:
        s.ehlo()
        code, text = s.mail("postmaster@example.com")
        assert code == 530, text
        s.starttls(context=tls)
        s.ehlo()
        code, text = s.mail("postmaster@example.com")
        assert code == 530, text
        code, text = s.rcpt("x@inbound.test")
        assert code == 503  # no transaction was opened


def test_relay_denied_without_auth_on_mx_but_receiving_domain_accepted(server):
    before = message_count(server)
    with smtplib.SMTP("127.0.0.1", server.mx, local_hostname="client.test", timeout=10) as s:
        s.ehlo()
        assert s.mail("stranger@example.net")[0] == 250
        code, text = s.rcpt("victim@gmail.com")
        assert code == 554 and text.startswith(b"5.7.1"), text
        assert b"Relay access denied" in text
        code, text = s.rcpt("user@inbound.test")
        assert code == 250, text
        code, text = s.data(b"Subject: inbound\r\n\r\nfor a receiving domain\r\n")
    assert code == 250, text
    msg = stored(server, queue_id(text))
    assert msg["direction"] == "inbound"
    assert msg["recipients"] == ["user@inbound.test"], "the denied relay recipient must not be kept"
    assert msg["envelope"]["auth_user"] is None
    assert message_count(server) == before + 1
    assert server.query("SELECT count(*) FROM deliveries WHERE message = ?", (msg["id"],))[0][0] == 0


def test_relay_denied_on_mx_even_after_starttls_without_auth(server, tls):
    with smtplib.SMTP("127.0.0.1", server.mx, local_hostname="client.test", timeout=10) as s:
        s.starttls(context=tls)
        s.ehlo()
        s.mail("postmaster@example.com")
        code, text = s.rcpt("victim@gmail.com")
    assert code == 554, text


def test_authenticated_relay_on_mx_after_starttls(server, tls):
    with smtplib.SMTP("127.0.0.1", server.mx, local_hostname="client.test", timeout=10) as s:
        s.starttls(context=tls)
        s.ehlo()
        s.login(LOGIN, PASSWORD)
        code, text = send(s, "postmaster@example.com", ["friend@gmail.com"], MESSAGE)
    assert code == 250, text
    msg = stored(server, queue_id(text))
    assert msg["direction"] == "outbound"
    assert msg["envelope"]["listener"] == "mx"
    assert msg["envelope"]["auth_user"] == LOGIN
    assert server.query("SELECT domain FROM deliveries WHERE message = ?", (msg["id"],)) == [("gmail.com",)]


@pytest.mark.parametrize("login, sender, allowed", [
    (LOGIN, "news@news.example.com", True),
    (LOGIN, "someone@other.org", False),
    (LOGIN, "someone@sub.example.com", False),
    ("app@other.org", "noreply@other.org", True),
    ("app@other.org", "postmaster@example.com", False),
])
def test_user_may_send_only_as_its_domains(server, tls, login, sender, allowed):
    with submission(server, tls, login=login) as s:
        code, text = s.mail(sender)
    if allowed:
        assert code == 250, text
    else:
        assert code == 550 and text.startswith(b"5.7.1"), text


def test_pipelined_command_before_starttls_is_discarded(server, tls):
    with RawSMTP(server.submission) as c:
        assert c.ehlo()[0] == 250
        # An attacker's NOOP (think: a MAIL FROM) injected behind STARTTLS in the same packet.
        c.send(b"STARTTLS\r\nNOOP\r\n")
        code, _ = c.reply()
        assert code == 220
        assert c.pending(0.3) == b"", "no answer to the injected command may come in plaintext"
        c.sock = tls.wrap_socket(c.sock, server_hostname="mtad.test")
        assert c.pending(0.5) == b"", "the injected command must not be answered inside TLS"
        code, text = c.ehlo()
        assert code == 250 and "AUTH PLAIN LOGIN" in text
        code, text = c.cmd("NOOP")
        assert (code, text) == (250, "2.0.0 OK")


def test_starttls_twice_and_plaintext_auth_do_not_break_the_daemon(server, tls):
    with smtplib.SMTP("127.0.0.1", server.submission, local_hostname="client.test", timeout=10) as s:
        s.starttls(context=tls)
        s.ehlo()
        code, _ = s.docmd("STARTTLS")
        assert code == 503
        code, _ = s.docmd("AUTH", "PLAIN !!!notbase64")
        assert code == 501
        code, _ = s.docmd("AUTH", "CRAM-MD5")
        assert code == 504
    assert_still_serving(server)
