"""The outbound e2e harness: receiving MX servers, a loopback DNS zone, and mtad configured to use both.

Everything stays on 127.0.0.0/8:
- the receiving servers are ``tests/support/sink.py``'s ``MxFarm`` (session fixture ``mx_farm``); ``serve_domain``
  gives a test domain its own accepting ``Mx`` on a fresh loopback address.
- ``loopback_dns`` is one ``DnsServer`` for the session; each test adds its own, uniquely named domains.
- ``outbound_mtad(...)`` starts an mtad whose resolver asks only that DNS server (``delivery.dns_nameservers``
  is always ``[127.0.0.1]``), whose delivery port is the farm's, and whose retry schedule and poll interval
  are short. At teardown the daemon must exit 0 with no traceback in its log.
"""

from __future__ import annotations

import email.utils
import json
import smtplib
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tests.e2e.helpers import queue_id, send, submission
from tests.support.daemon import Mtad, base_config
from tests.support.dns_server import DnsServer
from tests.support.sink import Mx, MxFarm, point
from tests.support.wait import wait_until

SENDER = "postmaster@example.com"

# Short enough that the suite stays fast; the tests read the real gaps from the store.
RETRY_SCHEDULE = ["1s", "1s", "2s"]
POLL_INTERVAL = "200ms"

# Test shaping: KumoMTA-like defaults, short timeouts so that a broken test fails fast instead of hanging.
DEFAULT_SHAPING: dict[str, Any] = {
    "default": {"max_connections": 10, "max_message_rate": None, "max_deliveries_per_connection": 100,
                "connect_timeout": "5s", "command_timeout": "10s", "data_timeout": "10s"},
}


# --- DNS and receiving servers (tests/support/sink.py) -------------------------------------------------------

@pytest.fixture(scope="session")
def loopback_dns() -> Iterator[DnsServer]:
    with DnsServer(ttl=300) as server:
        yield server


@pytest.fixture(scope="session")
def sender_mailbox(loopback_dns: DnsServer, mx_farm: MxFarm) -> Mx:
    """example.com's MX, where DSNs to the sending user (postmaster@example.com) arrive."""
    return serve_domain(loopback_dns, mx_farm, "example.com")


def serve_domain(dns: DnsServer, farm: MxFarm, domain: str, mx_names: list[str] | None = None,
                 **mx_options: Any) -> Mx:
    """An accepting MX for ``domain``: DNS MX 10 -> ``mx.DOMAIN`` (or the given name) -> a fresh address."""
    return point(dns, farm.add((mx_names or [f"mx.{domain}"])[0], **mx_options), domain)


# --- mtad -----------------------------------------------------------------------------------------------------

def write_ca(certs: Any, folder: Path) -> Path:
    path = folder / "ca.pem"
    if not path.exists():
        certs.ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="module")
def outbound_mtad(tmp_path_factory: pytest.TempPathFactory, certs: Any, loopback_dns: DnsServer,
                  mx_farm: MxFarm, sender_mailbox: Mx, daemons_store: None):
    """``make(delivery={...}, shaping={...}, dkim=[...], start=True)`` -> an mtad delivering on loopback only.

    example.com (the sender's domain) has an MX from the start, so DSNs always have somewhere to go.
    ``delivery`` keys override the test defaults (loopback DNS, the farm's port, short retry schedule);
    ``shaping`` replaces the test shaping file; ``dkim`` is example.com's key list. At teardown every daemon
    must exit 0 and leave no traceback in its log.
    """
    started: list[Mtad] = []

    def make(*, delivery: dict | None = None, shaping: dict | None = None, dkim: list | None = None,
             start: bool = True) -> Mtad:
        tmp = tmp_path_factory.mktemp("mtad-out")
        shaping_file = tmp / "shaping.yaml"
        shaping_file.write_text(yaml.safe_dump(shaping or DEFAULT_SHAPING))
        cfg = base_config(tmp, certs)
        cfg["delivery"] = {
            "dns_nameservers": ["127.0.0.1"], "dns_port": loopback_dns.port, "dns_timeout": "2s",
            "port": mx_farm.port, "tls_ca_file": str(write_ca(certs, tmp)),
            "retry": {"schedule": RETRY_SCHEDULE}, "poll_interval": POLL_INTERVAL,
            "shaping_file": str(shaping_file), **(delivery or {}),
        }
        # Never let a test config reach a real resolver, whatever it overrides.
        assert cfg["delivery"]["dns_nameservers"] == ["127.0.0.1"]
        if dkim:
            cfg["sending_domains"]["example.com"]["dkim"] = dkim
        daemon = Mtad(tmp, cfg)
        started.append(daemon)
        return daemon.start() if start else daemon

    yield make
    problems = []
    for daemon in started:
        code = daemon.stop()
        if code not in (0, None):
            problems.append(f"mtad exited with {code}")
        if "Traceback" in daemon.log():
            problems.append(f"traceback in the daemon log:\n{daemon.log()[-6000:]}")
    assert not problems, "\n".join(problems)


def mtad_cli(daemon: Mtad, *args: str) -> str:
    """Run ``mtad ARGS --config <the daemon's config>`` as an operator would; its standard output."""
    result = subprocess.run([sys.executable, "-m", "mtad", *args, "--config", str(daemon.config_path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


# --- submitting and reading the store -------------------------------------------------------------------------

def make_message(recipients: list[str], headers: str = "", subject: str = "outbound test",
                 body: str = "Hello from mtad.\r\n") -> tuple[str, bytes]:
    """A message from example.com with a unique Message-ID: ``(message_id, bytes)``."""
    message_id = f"<{uuid.uuid4().hex}@example.com>"
    text = (f"From: Postmaster <{SENDER}>\r\nTo: {', '.join(recipients)}\r\nSubject: {subject}\r\n"
            f"Date: {email.utils.formatdate()}\r\nMessage-ID: {message_id}\r\n{headers}\r\n{body}")
    return message_id, text.encode()


@dataclass
class Sent:
    queue_id: str
    message_id: str
    recipients: list[str] = field(default_factory=list)


class Submitter:
    """One authenticated submission session (STARTTLS, AUTH) to mtad, for several messages."""

    def __init__(self, daemon: Mtad, certs: Any):
        self.daemon = daemon
        self.certs = certs
        self.session: smtplib.SMTP | None = None

    def send(self, recipients: list[str], headers: str = "", body: str = "Hello from mtad.\r\n",
             sender: str = SENDER) -> Sent:
        if self.session is None:
            self.session = submission(self.daemon, self.certs.client_context())
        message_id, data = make_message(recipients, headers, body=body)
        code, text = send(self.session, sender, recipients, data)
        assert code == 250, text
        return Sent(queue_id(text), message_id, list(recipients))

    def close(self) -> None:
        if self.session is not None:
            try:
                self.session.quit()
            except smtplib.SMTPException:
                pass
            self.session = None


def submit(daemon: Mtad, certs: Any, recipients: list[str], headers: str = "",
           body: str = "Hello from mtad.\r\n") -> Sent:
    s = Submitter(daemon, certs)
    try:
        return s.send(recipients, headers, body)
    finally:
        s.close()


def events(daemon: Mtad, queue_id: str | None = None, recipient: str | None = None,
           kind: str | None = None) -> list[dict[str, Any]]:
    """Stored events (decoded JSON), oldest first, filtered by queue id, recipient and event name."""
    sql, args = "SELECT data FROM events WHERE 1=1", []
    for column, value in (("queue_id", queue_id), ("recipient", recipient), ("event", kind)):
        if value is not None:
            sql += f" AND {column} = ?"
            args.append(value)
    return [json.loads(r[0]) for r in daemon.query(sql + " ORDER BY seq", tuple(args))]


def outcomes(daemon: Mtad, queue_id: str, recipient: str | None = None) -> list[dict[str, Any]]:
    """The delivery attempts' events (``delivered`` / ``failed``), oldest first."""
    return [e for e in events(daemon, queue_id, recipient) if e["event"] in ("delivered", "failed")]


def is_final(event: dict[str, Any]) -> bool:
    return event["event"] == "delivered" or event.get("severity") == "permanent"


def wait_final(daemon: Mtad, sent: Sent, timeout: float = 10.0) -> dict[str, dict[str, Any]]:
    """Wait until every recipient of ``sent`` has a final event; recipient -> that event."""
    def finals() -> dict[str, dict[str, Any]] | None:
        found = {e["recipient"]: e for e in outcomes(daemon, sent.queue_id) if is_final(e)}
        return found if len(found) == len(sent.recipients) else None
    return wait_until(finals, timeout, f"final events for {sent.queue_id} {sent.recipients}")


def deliveries(daemon: Mtad, queue_id: str) -> list[dict[str, Any]]:
    rows = daemon.query("SELECT domain, recipients, state, attempts, next_attempt_at, locked_by, last_reply"
                        " FROM deliveries WHERE message = ? ORDER BY id", (queue_id,))
    keys = ("domain", "recipients", "state", "attempts", "next_attempt_at", "locked_by", "last_reply")
    return [dict(zip(keys, r)) | {"recipients": json.loads(r[1])} for r in rows]
