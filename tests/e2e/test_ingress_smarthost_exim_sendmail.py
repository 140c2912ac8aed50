"""Exim and Sendmail relaying through mtad as their smarthost, configured as in the seed manual's smarthost
section: mtad's submission listener on 127.0.0.1, STARTTLS with the certificate verified, SMTP AUTH
(PLAIN and LOGIN). Postfix is tested in test_ingress_clients.py.

Exim (exim4-daemon-light) and Sendmail (sendmail-bin, sendmail-cf) are Debian's binaries, unpacked beside
the installed Postfix by tests/support/install_test_mtas.sh (tests/run.sh runs it as root); each test runs
a private instance with its own config file (``-C``), spool and logs: see tests/support/mta_clients.py.
The tests skip, saying why, when not root or when the binaries are not there.

The message goes all the way: the MTA hands it to mtad (authenticated, over TLS), mtad stores it with its
sending options and delivers it to a loopback sink MX, which must get it without the X-Mailgun-* headers.
"""

from __future__ import annotations

import uuid

import pytest

from tests.e2e.helpers import LOGIN, stored
from tests.e2e.outbound_support import Sent, serve_domain, wait_final
from tests.support.wait import wait_until
from tests.support import mta_clients
from tests.support.daemon import PASSWORD, Mtad

DOMAIN = "smarthost-clients.test"


@pytest.fixture(scope="module")
def daemon(outbound_mtad) -> Mtad:
    return outbound_mtad()


@pytest.fixture(scope="module")
def sink(loopback_dns, mx_farm):
    """The recipients' MX, where mtad delivers what the MTAs relayed."""
    return serve_domain(loopback_dns, mx_farm, DOMAIN)


def message(client: str, recipient: str) -> tuple[str, bytes]:
    message_id = f"<{uuid.uuid4().hex}@example.com>"
    return message_id, (f"From: Postmaster <{LOGIN}>\nTo: <{recipient}>\nSubject: relayed by {client}\n"
                        f"Message-ID: {message_id}\nX-Mailgun-Tag: from-{client}\n\nHello from {client}.\n").encode()


def assert_relayed(daemon: Mtad, sink, qid: str | None, message_id: str, recipient: str, client: str,
                   diagnostics: str) -> None:
    """mtad took the message from an authenticated TLS session on submission and delivered it to the sink."""
    assert qid, f"{client} did not relay the message (no 'queued as' reply from mtad):\n{diagnostics[-4000:]}"
    msg = stored(daemon, qid)
    assert msg["sender"] == LOGIN
    assert msg["recipients"] == [recipient]
    assert msg["envelope"]["auth_user"] == LOGIN
    assert msg["envelope"]["tls"] is True
    assert msg["envelope"]["listener"] == "submission"
    assert msg["options"]["tags"] == [f"from-{client}"]
    final = wait_final(daemon, Sent(qid, message_id, [recipient]), timeout=15)
    assert final[recipient]["event"] == "delivered", final
    [got] = wait_until(lambda: sink.by_message_id(message_id), 5, "the sink to hold the message")
    assert got.rcpt_tos == [recipient]
    assert got.mail_from.startswith(f"bounce+{qid.lower()}") and got.mail_from.endswith("@example.com")  # return path
    assert f"Hello from {client}.".encode() in got.data
    assert b"X-Mailgun-" not in got.data


# --- Exim -----------------------------------------------------------------------------------------------

# The factories come first in the tests' arguments: a test that skips starts no mtad.

def client_factory(root, name: str, build):
    """Skip (saying why) unless the MTA is unpacked; else yield ``make(...)`` -> a client, closed at teardown."""
    reason = mta_clients.unavailable(root, name)
    if reason:
        pytest.skip(reason)
    made = []

    def make(*args, **kwargs):
        made.append(build(*args, **kwargs))
        return made[-1]
    yield make
    for client in made:
        client.close()


@pytest.fixture
def exim_factory(certs):
    yield from client_factory(mta_clients.EXIM, "Exim", lambda daemon, *mechanisms: mta_clients.EximClient(
        daemon.submission, LOGIN, PASSWORD, certs.ca.cert_pem.bytes(), mechanisms))


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_exim_relays_through_mtad_with_verified_starttls_and_auth(exim_factory, daemon, sink, mechanism):
    exim = exim_factory(daemon, mechanism)
    recipient = f"exim-{mechanism.lower()}@{DOMAIN}"
    message_id, data = message("exim", recipient)

    run = exim.send(LOGIN, recipient, data)

    diagnostics = f"exim exit {run.returncode}\n{run.output}\n{run.log}"
    assert run.returncode == 0, diagnostics
    assert_relayed(daemon, sink, run.queue_id(), message_id, recipient, "exim", diagnostics)
    # Exim's own delivery line: over TLS, certificate verified (CV=yes), authenticated with the mechanism.
    [delivered] = [line for line in run.log.splitlines() if f"=> {recipient}" in line]
    assert " X=TLS" in delivered and " CV=yes" in delivered, delivered
    assert f" A={mechanism.lower()}" in delivered, delivered
    # The SMTP dialogue (-v): AUTH only after STARTTLS.
    assert run.output.index("SMTP>> STARTTLS") < run.output.index(f"SMTP>> AUTH {mechanism}"), run.output


# --- Sendmail -------------------------------------------------------------------------------------------

@pytest.fixture
def sendmail_factory(certs):
    yield from client_factory(mta_clients.SENDMAIL, "Sendmail", lambda daemon, mechanism, ca_pem=None:
                              mta_clients.SendmailClient(daemon.submission, LOGIN, PASSWORD,
                                                         ca_pem or certs.ca.cert_pem.bytes(), mechanism))


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_sendmail_relays_through_mtad_with_verified_starttls_and_auth(sendmail_factory, daemon, sink, mechanism):
    sendmail = sendmail_factory(daemon, mechanism)
    recipient = f"sendmail-{mechanism.lower()}@{DOMAIN}"
    message_id, data = message("sendmail", recipient)

    run = sendmail.send(LOGIN, recipient, data)

    diagnostics = f"sendmail exit {run.returncode}\n{run.output}"
    assert run.returncode == 0, diagnostics
    assert f"{recipient}... Sent (Ok: queued as" in run.output, diagnostics
    assert_relayed(daemon, sink, run.queue_id(), message_id, recipient, "sendmail", diagnostics)
    assert not sendmail.queued(), diagnostics
    # The SMTP dialogue (-v): AUTH with the mechanism, only after STARTTLS, and accepted.
    out = run.output
    assert out.index(">>> STARTTLS") < out.index(f">>> AUTH {mechanism}") < out.index("235 2.7.0"), out


def test_sendmail_sends_nothing_when_the_certificate_is_not_verified(sendmail_factory, daemon):
    """The negative control for the test above: with a CA that did not sign mtad's certificate, Sendmail's
    TLS_Srv VERIFY policy stops it after STARTTLS, before AUTH, and the message stays in its queue. So a
    Sendmail delivery that went through did verify mtad's certificate."""
    import trustme
    sendmail = sendmail_factory(daemon, "PLAIN", ca_pem=trustme.CA().cert_pem.bytes())
    recipient = f"sendmail-unverified@{DOMAIN}"
    run = sendmail.send(LOGIN, recipient, message("sendmail", recipient)[1])
    assert ">>> STARTTLS" in run.output, run.output
    assert ">>> AUTH" not in run.output, run.output
    assert f"{recipient}... Deferred" in run.output, run.output
    assert sendmail.queued(), run.output
    assert not daemon.query("SELECT id FROM messages WHERE recipients LIKE ?", (f'%"{recipient}"%',))
