"""SMTP AUTH failure limits across connections: per client address and per account (login).

Each connection makes one guess, so the per-connection brake (``max_auth_failures``) never fires; the
lockout must come from counting across connections. Clients connect from distinct loopback addresses
(127.0.0.x, bound as the source address) to the implicit-TLS submission listener.
"""

from __future__ import annotations

import re
import threading
import time

import pytest
import requests

from tests.e2e.helpers import LOGIN
from tests.support.daemon import PASSWORD
from tests.support.rawsmtp import RawSMTP

PER_CLIENT = 3
PER_ACCOUNT = 4
LOCKOUT = 2.0


@pytest.fixture(scope="module")
def daemon(daemon_factory):
    return daemon_factory(limits={"max_auth_failures_per_client": PER_CLIENT,
                                  "max_auth_failures_per_account": PER_ACCOUNT,
                                  "auth_failure_window": "1m", "auth_lockout": f"{LOCKOUT:g}s"})


def auth(daemon, certs, source: str, login: str, password: str) -> tuple[int, str]:
    """One connection from ``source``: one AUTH PLAIN; its reply."""
    with RawSMTP(daemon.submissions, tls_context=certs.client_context(), source=source, timeout=10) as c:
        c.ehlo()
        return c.auth_plain(login, password)


def lockout_lines(daemon, what: str) -> list[str]:
    return [line for line in daemon.log().splitlines() if "AUTH lockout:" in line and what in line]


def metrics(daemon) -> str:
    return requests.get(f"{daemon.api_url}/metrics", timeout=10).text


def metric(text: str, name: str, scope: str) -> float:
    m = re.search(rf'^{name}\{{scope="{scope}"\}} (\S+)$', text, re.M)
    assert m, f"{name}{{scope={scope}}} not in /metrics"
    return float(m.group(1))


def test_failures_from_one_address_across_connections_lock_that_address(daemon, certs):
    attacker = "127.0.0.2"
    for i in range(PER_CLIENT):  # different logins: only the address links the guesses
        code, text = auth(daemon, certs, attacker, f"guess{i}@example.com", "wrong")
        assert code == 535, text
    code, text = auth(daemon, certs, attacker, LOGIN, PASSWORD)  # the right password does not help
    assert (code, text[:5]) == (454, "4.7.0"), text
    code, text = auth(daemon, certs, "127.0.0.3", LOGIN, PASSWORD)  # another address is not locked
    assert code == 235, text
    assert len(lockout_lines(daemon, f"client {attacker} ")) == 1

    time.sleep(LOCKOUT + 0.3)  # the lockout expires
    code, text = auth(daemon, certs, attacker, LOGIN, PASSWORD)
    assert code == 235, text


def test_failures_for_one_account_from_many_addresses_lock_that_account(daemon, certs):
    for i in range(PER_ACCOUNT):  # one guess per address: no address reaches its own limit
        code, text = auth(daemon, certs, f"127.0.1.{10 + i}", "app@other.org", "wrong")
        assert code == 535, text
    code, text = auth(daemon, certs, "127.0.1.20", "app@other.org", PASSWORD)
    assert (code, text[:5]) == (454, "4.7.0"), text
    code, text = auth(daemon, certs, "127.0.1.20", LOGIN, PASSWORD)  # other accounts still log in
    assert code == 235, text
    assert len(lockout_lines(daemon, "account 'app@other.org'")) == 1

    time.sleep(LOCKOUT + 0.3)
    code, text = auth(daemon, certs, "127.0.1.21", "app@other.org", PASSWORD)
    assert code == 235, text


def test_parallel_guesses_from_one_address_cannot_overshoot_the_limit(daemon, certs):
    attacker = "127.0.2.5"
    replies: list[int] = []
    start = threading.Barrier(12, timeout=30)

    def guess(n: int) -> None:
        with RawSMTP(daemon.submissions, tls_context=certs.client_context(), source=attacker, timeout=20) as c:
            c.ehlo()
            start.wait()
            replies.append(c.auth_plain(f"parallel{n}@example.com", "wrong")[0])

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(replies) == 12 and set(replies) <= {535, 454}, replies
    assert replies.count(535) <= PER_CLIENT, replies  # wrong passwords actually checked


def test_retrying_while_locked_ends_the_connection(daemon, certs):
    attacker = "127.0.3.7"
    for i in range(PER_CLIENT):
        assert auth(daemon, certs, attacker, f"again{i}@example.com", "wrong")[0] == 535
    with RawSMTP(daemon.submissions, tls_context=certs.client_context(), source=attacker, timeout=10) as c:
        c.ehlo()
        assert c.auth_plain(LOGIN, PASSWORD)[0] == 454
        assert c.auth_plain(LOGIN, PASSWORD)[0] == 454
        assert c.auth_plain(LOGIN, PASSWORD)[0] == 421  # the connection's own brake: max_auth_failures (3)
        assert c.closed()


def test_lockouts_are_counted_in_metrics(daemon, certs):
    before = metrics(daemon)
    attacker = "127.0.4.9"
    for i in range(PER_CLIENT):
        auth(daemon, certs, attacker, f"metric{i}@example.com", "wrong")
    auth(daemon, certs, attacker, LOGIN, PASSWORD)
    after = metrics(daemon)
    assert metric(after, "mtad_smtp_auth_lockouts_total", "client") == \
        metric(before, "mtad_smtp_auth_lockouts_total", "client") + 1
    assert metric(after, "mtad_smtp_auth_refused_total", "client") == \
        metric(before, "mtad_smtp_auth_refused_total", "client") + 1
    metric(after, "mtad_smtp_auth_lockouts_total", "account")  # reported too
