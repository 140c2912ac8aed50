"""What the events / webhooks / suppressions / stats / metrics e2e tests share.

``World`` is one running arrangement, all on loopback: a DNS zone (MX of ``dest.test`` and ``yahoo.test`` ->
``sink``, a ``tests/support/sink.py`` MX whose ``bad*`` recipients get 550 5.1.1, ``soft*`` 451 4.2.1, the rest
250), a ``tests/support/receiver.py`` receiver for route forwards and webhooks (per-path modes: ``ok``,
``fail-once``, ``fail``, ``refuse`` = 406, ``hang``), and mtad started from a config file whose resolver asks
only that DNS server. Tests send real mail with smtplib and read back through the HTTP API
(``tests/support/api.py``, with the ``World`` as target).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import smtplib
from pathlib import Path
from typing import Any, Callable

from tests.support.api import api
from tests.support.daemon import PASSWORD, Mtad, base_config
from tests.support.dns_server import DnsServer
from tests.support.receiver import Receiver
from tests.support.sink import MxFarm, by_local_part, point

SIGNING_KEY = "key-webhook-signing-0123456789"


def seed_verify(api_key: str, token: str, timestamp: str, signature: str) -> bool:
    """The seed manual's verify(), with the str -> bytes that Python 3's hmac needs."""
    return signature == hmac.new(key=api_key.encode(), msg='{}{}'.format(timestamp, token).encode(),
                                 digestmod=hashlib.sha256).hexdigest()


# --- the whole arrangement ------------------------------------------------------------------------------------

class World:
    def __init__(self, tmp: Path, certs: Any, tweak: Callable[[dict, "World"], None] | None = None):
        self.certs = certs
        self.dns = DnsServer(ttl=300).start()
        self.farm = MxFarm().start()
        self.sink = point(self.dns, self.farm.add("mx.sink.test"), "dest.test", "yahoo.test")
        self.sink.rcpt_reply = by_local_part
        self.receiver = Receiver().start()
        cfg = base_config(tmp, certs)
        cfg["delivery"].update({"port": self.sink.port, "dns_port": self.dns.port, "dsn": False,
                                "retry": {"schedule": ["1h"]}, "poll_interval": "100ms",
                                "shaping_file": str(self._shaping(tmp))})
        cfg["signing_key"] = SIGNING_KEY
        cfg["routing"] = {"allowed_networks": ["127.0.0.0/8"], "retry_schedule": ["1s"],
                          "routes": [{"expression": 'match_recipient(".*@inbound.test")',
                                      "actions": [f'forward("{self.receiver.url("route")}")'], "priority": 1}]}
        cfg["webhooks"] = {"retry_schedule": ["1s", "1s"], "timeout": "2s", "max_per_url": 2}
        cfg["log"] = {"level": "info"}
        if tweak:
            tweak(cfg, self)
        self.mtad = Mtad(tmp, cfg)
        try:
            self.mtad.start()
        except BaseException:
            self.close()
            raise
        self.api_url = self.mtad.api_url

    @staticmethod
    def _shaping(tmp: Path) -> Path:
        path = tmp / "shaping.yaml"
        path.write_text("default:\n  max_connections: 10\n  connect_timeout: 5s\n  command_timeout: 10s\n"
                        "  data_timeout: 10s\nproviders:\n  yahoo:\n    match_domain_suffix: [yahoo.test]\n")
        return path

    def close(self) -> list[str]:
        problems = []
        code = self.mtad.stop()
        if code != 0:
            problems.append(f"mtad exited with {code}")
        if "Traceback" in self.mtad.log():
            problems.append("traceback in the daemon log:\n" + self.mtad.log()[-4000:])
        self.receiver.close()
        self.farm.stop()
        self.dns.stop()
        return problems

    # --- sending ----------------------------------------------------------------------------------------------
    def send(self, rcpts: list[str], subject: str = "Hello", *, sender: str = "postmaster@example.com",
             login: str = "postmaster@example.com", tags: tuple[str, ...] = (), variables: dict | None = None,
             extra: str = "") -> str:
        """An authenticated submission (outbound); returns the queue id."""
        head = f"From: Sender <{sender}>\r\nTo: {', '.join(rcpts)}\r\nSubject: {subject}\r\n"
        for tag in tags:
            head += f"X-Mailgun-Tag: {tag}\r\n"
        if variables:
            head += f"X-Mailgun-Variables: {json.dumps(variables)}\r\n"
        body = (head + extra + "\r\nHello from the events tests.\r\n").encode()
        with smtplib.SMTP("127.0.0.1", self.mtad.submission, local_hostname="client.test", timeout=10) as s:
            s.starttls(context=self.certs.client_context())
            s.ehlo()
            s.login(login, PASSWORD)
            s.mail(sender)
            for r in rcpts:
                code, text = s.rcpt(r)
                assert code == 250, (r, code, text)
            code, text = s.data(body)
        assert code == 250, text
        return text.decode().rsplit(" ", 1)[-1]

    def receive(self, rcpt: str, subject: str = "Inbound") -> str:
        """Unauthenticated mail to a receiving domain on the MX listener (inbound, routed)."""
        body = f"From: Outside <someone@outside.test>\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\nHi.\r\n".encode()
        with smtplib.SMTP("127.0.0.1", self.mtad.mx, local_hostname="outside.test", timeout=10) as s:
            s.ehlo()
            s.mail("someone@outside.test")
            code, text = s.rcpt(rcpt)
            assert code == 250, text
            code, text = s.data(body)
        assert code == 250, text
        return text.decode().rsplit(" ", 1)[-1]


# --- reading back ---------------------------------------------------------------------------------------------

async def events(world: World, domain: str, **params: Any) -> list[dict]:
    """Every event of one query, following ``next`` links."""
    items: list[dict] = []
    page = await api(world, "GET", f"/v3/{domain}/events", params=params)
    while page["items"]:
        items += page["items"]
        page = await api(world, "GET", page["paging"]["next"])
    return items


@contextlib.contextmanager
def running_world(tmp_path_factory, certs, name: str, *configure):
    """A World for one test module; fails the module if the daemon exited badly or logged a traceback."""
    w = World(tmp_path_factory.mktemp(name), certs, *configure)
    problems: list[str] = []
    try:
        yield w
    finally:
        problems = w.close()
    assert not problems, "\n".join(problems)
