"""What the ingress e2e tests check in replies and in mtad's store."""

from __future__ import annotations

import json
import re
import smtplib
import ssl

from tests.support.daemon import PASSWORD, Mtad

LOGIN = "postmaster@example.com"
MESSAGE = b"From: <postmaster@example.com>\r\nTo: <someone@gmail.com>\r\nSubject: hello\r\n\r\nHello there.\r\n"
_QUEUED = re.compile(r"queued as ([0-9A-F]+)")


def queue_id(reply: str | bytes) -> str:
    """The queue id of a ``250 2.0.0 Ok: queued as ID`` reply (fails the test if there is none)."""
    text = reply.decode() if isinstance(reply, bytes) else reply
    m = _QUEUED.search(text)
    assert m, f"not a queued reply: {text!r}"
    return m.group(1)


def stored(daemon: Mtad, qid: str) -> dict:
    """The stored message ``qid`` as a dict (JSON columns decoded)."""
    rows = daemon.query("SELECT id, direction, domain, sender, recipients, options, envelope, body"
                        " FROM messages WHERE id = ?", (qid,))
    assert rows, f"message {qid} is not in the store"
    id_, direction, domain, sender, recipients, options, envelope, body = rows[0]
    return {"id": id_, "direction": direction, "domain": domain, "sender": sender,
            "recipients": json.loads(recipients), "options": json.loads(options),
            "envelope": json.loads(envelope), "body": bytes(body)}


def message_count(daemon: Mtad) -> int:
    return daemon.query("SELECT count(*) FROM messages")[0][0]


def submission(daemon: Mtad, context: ssl.SSLContext, login: str = LOGIN,
               password: str = PASSWORD) -> smtplib.SMTP:
    """An smtplib session on the submission listener: EHLO, STARTTLS (verified), EHLO, AUTH PLAIN."""
    s = smtplib.SMTP("127.0.0.1", daemon.submission, local_hostname="client.test", timeout=10)
    try:
        s.starttls(context=context)
        s.ehlo()
        s.login(login, password)
    except BaseException:
        s.close()
        raise
    return s


def send(s: smtplib.SMTP, sender: str, recipients: list[str], body: bytes) -> tuple[int, str]:
    """MAIL, RCPT..., DATA without smtplib's SIZE= parameter; the final (code, text) of DATA."""
    s.ehlo_or_helo_if_needed()
    code, text = s.mail(sender)
    assert code == 250, (code, text)
    for rcpt in recipients:
        code, text = s.rcpt(rcpt)
        assert code == 250, (rcpt, code, text)
    code, text = s.data(body)
    return code, text.decode(errors="replace")


def assert_still_serving(daemon: Mtad) -> str:
    """A fresh session on the MX listener still gets a message accepted; returns its queue id."""
    with smtplib.SMTP("127.0.0.1", daemon.mx, local_hostname="client.test", timeout=10) as s:
        code, text = send(s, "sender@example.net", ["alive@inbound.test"],
                          b"Subject: still serving\r\n\r\nyes\r\n")
    assert code == 250, text
    qid = queue_id(text)
    assert stored(daemon, qid)["recipients"] == ["alive@inbound.test"]
    return qid
