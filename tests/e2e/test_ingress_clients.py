"""Real MTAs and tools as clients: Postfix relaying through mtad as its smarthost (STARTTLS required,
certificate verified, SASL), and swaks on both submission listeners.

Needs the Debian packages postfix (with libsasl2-modules) and swaks, which the test bootstrap installs;
each test skips with the reason when its tool is missing. The Postfix instance is private: its own
config and queue folders, its own smtpd on a free loopback port; the system's Postfix is not touched.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.e2e.helpers import LOGIN, queue_id, stored
from tests.support import tools
from tests.support.api import api_sync
from tests.support.daemon import PASSWORD, free_port
from tests.support.postfix import SENDMAIL, maillog, private_postfix, unavailable as postfix_unavailable


@pytest.fixture(scope="module")
def server(daemon_factory):
    daemon = daemon_factory()
    # a send naming an unknown campaign is refused
    api_sync(daemon, "POST", "/v3/example.com/campaigns", data={"name": "swaks", "id": "swaks"})
    return daemon


def wait_for_message(daemon, recipient: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = daemon.query("SELECT id FROM messages WHERE recipients LIKE ?", (f'%"{recipient}"%',))
        if rows:
            return rows[0][0]
        time.sleep(0.1)
    raise AssertionError(f"no message for {recipient} arrived within {timeout}s")


# --- Postfix ----------------------------------------------------------------------------------------------

# The seed manual's smarthost section, pointed at mtad's submission listener; the policy map makes
# Postfix verify the certificate and its name ("secure"), not merely encrypt.
MAIN_CF = """\
myhostname = postfix-client.test
mydomain = postfix-client.test
myorigin = example.com
relay_domains =
relayhost = [127.0.0.1]:{relay_port}
smtp_sasl_auth_enable = yes
smtp_sasl_password_maps = static:{login}:{password}
smtp_sasl_security_options = noanonymous
smtp_tls_security_level = encrypt
smtp_tls_CAfile = {dir}/etc/ca.pem
smtp_tls_policy_maps = inline:{{ {{ [127.0.0.1]:{relay_port} = secure match=mtad.test }} }}
smtp_tls_loglevel = 1
"""


@pytest.fixture
def postfix(server, certs):
    reason = postfix_unavailable(sendmail=True)
    if reason:
        pytest.skip(reason)
    with private_postfix("mtad-postfix-", f"127.0.0.1:{free_port()}", MAIN_CF, {"ca.pem": certs.ca.cert_pem.bytes()},
                         relay_port=server.submission, login=LOGIN, password=PASSWORD) as folder:
        yield folder


def test_postfix_relays_through_mtad_with_starttls_and_sasl(server, postfix):
    message = (b"From: Postmaster <postmaster@example.com>\r\nTo: <via-postfix@gmail.com>\r\n"
               b"Subject: relayed by postfix\r\nX-Mailgun-Tag: from-postfix\r\n\r\nHello from Postfix.\r\n")
    result = subprocess.run([str(SENDMAIL), "-C", str(postfix / "etc"), "-f", "postmaster@example.com",
                             "via-postfix@gmail.com"], input=message, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    try:
        qid = wait_for_message(server, "via-postfix@gmail.com")
    except AssertionError:
        raise AssertionError(f"Postfix did not relay the message; its log:\n{maillog(postfix, 3000)}") from None
    msg = stored(server, qid)
    assert msg["sender"] == "postmaster@example.com"
    assert msg["envelope"]["auth_user"] == LOGIN
    assert msg["envelope"]["tls"] is True
    assert msg["envelope"]["listener"] == "submission"
    assert msg["options"]["tags"] == ["from-postfix"]
    assert b"Hello from Postfix." in msg["body"]
    assert b"X-Mailgun-" not in msg["body"]
    # Postfix itself says the delivery went over a verified TLS connection and was accepted.
    deadline = time.monotonic() + 10
    while True:
        log = (postfix / "maillog").read_text(errors="replace")
        if "status=sent" in log or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert "Verified TLS connection established to 127.0.0.1" in log, log[-3000:]
    assert f"queued as {qid}" in log, log[-3000:]


# --- swaks ------------------------------------------------------------------------------------------------

def run_swaks(*args: str) -> subprocess.CompletedProcess:
    swaks = tools.swaks(tls=any(a in ("--tls", "--tls-on-connect") for a in args))
    return subprocess.run([swaks, "--server", "127.0.0.1", "--helo", "swaks.test", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_starttls_auth_on_submission(server, certs, tmp_path, mechanism):
    ca = tmp_path / "ca.pem"
    certs.ca.cert_pem.write_to_path(str(ca))
    rcpt = f"swaks-{mechanism.lower()}@gmail.com"
    result = run_swaks("--port", str(server.submission), "--tls", "--tls-verify", "--tls-ca-path", str(ca),
                       "--auth", mechanism, "--auth-user", LOGIN, "--auth-password", PASSWORD,
                       "--from", "postmaster@example.com", "--to", rcpt,
                       "--header", "Subject: from swaks", "--header", "X-Mailgun-Campaign-Id: swaks")
    assert result.returncode == 0, result.stdout + result.stderr
    msg = stored(server, queue_id(result.stdout))
    assert msg["recipients"] == [rcpt]
    assert msg["envelope"]["auth_user"] == LOGIN
    assert msg["options"]["campaigns"] == ["swaks"]


def test_swaks_implicit_tls(server, certs, tmp_path):
    ca = tmp_path / "ca.pem"
    certs.ca.cert_pem.write_to_path(str(ca))
    result = run_swaks("--port", str(server.submissions), "--tls-on-connect", "--tls-verify", "--tls-ca-path",
                       str(ca), "--auth", "PLAIN", "--auth-user", LOGIN, "--auth-password", PASSWORD,
                       "--from", "postmaster@example.com", "--to", "swaks-465@gmail.com")
    assert result.returncode == 0, result.stdout + result.stderr
    assert stored(server, queue_id(result.stdout))["envelope"]["listener"] == "submissions"


def test_swaks_wrong_password_refused(server, certs):
    result = run_swaks("--port", str(server.submission), "--tls", "--auth", "PLAIN", "--auth-user", LOGIN,
                       "--auth-password", "not the password", "--from", "postmaster@example.com",
                       "--to", "never@gmail.com")
    assert result.returncode != 0
    assert "535" in result.stdout
    assert not server.query("SELECT id FROM messages WHERE recipients LIKE '%never@gmail.com%'")


def test_swaks_pipelining_to_the_mx(server):
    result = run_swaks("--port", str(server.mx), "--pipeline", "--from", "outside@example.net",
                       "--to", "pipelined@inbound.test")
    assert result.returncode == 0, result.stdout + result.stderr
    assert stored(server, queue_id(result.stdout))["direction"] == "inbound"
