"""What the inbound routing e2e tests (tests/e2e/test_routes_*.py) share, all on 127.0.0.1.

- ``app``: the application a route forwards to, for one test module: ``tests/support/receiver.py``'s
  ``Receiver`` with ``multipart_only`` (Mailgun's route POSTs are always multipart/form-data).
- ``routing_config``: a test config (see tests/support/daemon.py) with routes, the signing key,
  a short route retry schedule and loopback allowed for forward URLs.
- ``inbound``: one message to mtad's MX listener with smtplib, like a remote MTA.
- ``verify``: the seed manual's ``verify()``, copied, with Python 3's str -> bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import smtplib
import time
from typing import Any

import pytest

from tests.support.daemon import Mtad
from tests.support.receiver import Receiver

SIGNING_KEY = "key-routes-e2e-3f9c2a7b5d1e"
RETRY_SCHEDULE = ["1s", "1s"]


def verify(api_key, token, timestamp, signature):
    """The seed manual's Python sample ("Securing Webhooks"); only the two .encode() calls are added."""
    return signature == hmac.new(
        key=api_key.encode(),
        msg='{}{}'.format(timestamp, token).encode(),
        digestmod=hashlib.sha256).hexdigest()


# --- mtad -----------------------------------------------------------------------------------------------------

def route(expression: str, *actions: str, priority: int = 0, id: str = "") -> dict[str, Any]:
    r: dict[str, Any] = {"expression": expression, "actions": list(actions), "priority": priority,
                         "description": f"e2e: {expression}"[:200]}
    if id:
        r["id"] = id
    return r


def routing_config(cfg: dict[str, Any], routes: list[dict[str, Any]], **routing: Any) -> dict[str, Any]:
    """``cfg`` (base_config) with these routes, the suite's signing key, a short retry schedule and
    127.0.0.0/8 allowed for forward URLs (override any ``routing`` key by keyword)."""
    cfg["signing_key"] = SIGNING_KEY
    cfg["routing"] = {"routes": routes, "retry_schedule": RETRY_SCHEDULE, "timeout": "5s",
                      "allowed_networks": ["127.0.0.0/8"], **routing}
    return cfg


def inbound(daemon: Mtad, recipients: list[str], message: bytes, sender: str = "alice@sender.test"
            ) -> tuple[int, str]:
    """One message on the MX listener, as a remote MTA sends it; (code, text) of the first refused RCPT,
    else of DATA."""
    with smtplib.SMTP("127.0.0.1", daemon.mx, local_hostname="mta.sender.test", timeout=15) as s:
        s.ehlo()
        code, text = s.mail(sender)
        assert code == 250, (code, text)
        for rcpt in recipients:
            code, text = s.rcpt(rcpt)
            if code != 250:
                return code, text.decode()
        code, text = s.data(message)
        return code, text.decode()


def accepted(daemon: Mtad, recipients: list[str], message: bytes, sender: str = "alice@sender.test") -> str:
    """``inbound`` that must be accepted; the queue id."""
    code, text = inbound(daemon, recipients, message, sender)
    assert code == 250, (code, text)
    return text.rsplit(" ", 1)[-1]


def simple(subject: str = "routed", to: str = "someone@inbound.test", extra: str = "", body: str = "Hi.\r\n") -> bytes:
    return (f"From: Alice <alice@sender.test>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{time.time_ns()}@sender.test>\r\n{extra}\r\n{body}").encode()


def forward_events(daemon: Mtad, queue_id: str) -> list[dict[str, Any]]:
    """The ``delivered``/``failed`` events of the message's forwards, oldest first."""
    rows = daemon.query("SELECT data FROM events WHERE queue_id = ? AND event IN ('delivered', 'failed')"
                        " ORDER BY seq", (queue_id,))
    return [json.loads(r[0]) for r in rows]


def forward_rows(daemon: Mtad, queue_id: str) -> list[tuple]:
    """(destination, state, attempts, last_status) of the message's forwards rows."""
    return daemon.query("SELECT destination, state, attempts, last_status FROM forwards WHERE message = ?"
                        " ORDER BY id", (queue_id,))


def assert_clean_exit(daemon: Mtad) -> list[str]:
    """Stop the daemon; the problems (non-zero exit, traceback in the log)."""
    problems = []
    code = daemon.stop()
    if code not in (0, None):
        problems.append(f"mtad exited with {code}")
    if "Traceback" in daemon.log():
        problems.append(f"traceback in the daemon log:\n{daemon.log()[-6000:]}")
    return problems


@pytest.fixture(scope="module")
def app(daemons_store):
    """The loopback application receiving route POSTs, for one test module (and one store backend of it)."""
    a = Receiver(multipart_only=True).start()
    yield a
    a.close()
