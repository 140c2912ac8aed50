"""Provider shaping as the receiving servers see it: one connection budget across all of a provider's MX hosts
and domains, deliveries per connection (connection reuse), a message rate, and an automation rule that
suspends a provider after a matching reply.

The shaping file of this module's mtad defines the providers by MX suffix (``*.shp.test`` MX names); each test
fills the queue while its provider is paused (``mtad queue pause --provider``), so that many messages wait at
once when it resumes.
"""

from __future__ import annotations

import pytest

from tests.e2e.outbound_support import DEFAULT_SHAPING, Submitter, deliveries, mtad_cli, outcomes, wait_final
from tests.support.sink import Gauge
from tests.support.wait import wait_until
from tests.support.daemon import Mtad

SHAPING = {
    **DEFAULT_SHAPING,
    "providers": {
        "limited": {"match_mx_suffix": [".limited.shp.test"], "max_connections": 2},
        "percon": {"match_mx_suffix": [".percon.shp.test"], "max_connections": 1,
                   "max_deliveries_per_connection": 3},
        "rated": {"match_mx_suffix": [".rated.shp.test"], "max_message_rate": "5/s"},
        "auto": {"match_mx_suffix": [".auto.shp.test"]},
        "lingering": {"match_mx_suffix": [".linger.shp.test"], "idle_timeout": "1500ms"},
    },
    "automation": {
        "auto-tss04": {"providers": ["auto"], "regex": r"\[TSS04\]", "action": "suspend", "duration": "3s"},
    },
}


@pytest.fixture(scope="module")
def daemon(outbound_mtad) -> Mtad:
    return outbound_mtad(shaping=SHAPING)


def fill_paused(daemon: Mtad, certs, provider: str, recipients: list[str]) -> list:
    """Submit one message per recipient while ``provider`` is paused (held at dispatch), then resume it."""
    mtad_cli(daemon, "queue", "pause", "--provider", provider)
    submitter = Submitter(daemon, certs)
    try:
        sent = [submitter.send([rcpt]) for rcpt in recipients]
    finally:
        submitter.close()
    wait_until(lambda: all(deliveries(daemon, s.queue_id)[0]["state"] == "held" for s in sent), 10,
               "every message held by the provider pause")
    assert "held deliveries back in the queue" in mtad_cli(daemon, "queue", "resume", "--provider", provider)
    return sent


def test_provider_connection_limit_holds_across_its_mx_hosts_and_domains(daemon, certs, loopback_dns, mx_farm):
    provider = Gauge()  # concurrent connections to any of the provider's servers
    mx1 = mx_farm.add("mx1.limited.shp.test", groups=(provider,))
    mx2 = mx_farm.add("mx2.limited.shp.test", groups=(provider,))
    for mx in (mx1, mx2):
        mx.data_delay = 0.15  # a slow provider: connections stay busy, messages pile up
        loopback_dns.add_a(mx.name, mx.ip)
    loopback_dns.add_mx("one.cust.shp.test", [(10, mx1.name)])
    loopback_dns.add_mx("two.cust.shp.test", [(10, mx2.name)])
    loopback_dns.add_mx("three.cust.shp.test", [(10, mx1.name), (10, mx2.name)])
    recipients = [f"user{i}@{d}.cust.shp.test" for i in range(4) for d in ("one", "two", "three")]

    sent = fill_paused(daemon, certs, "limited", recipients)
    for s in sent:
        wait_final(daemon, s, timeout=20)

    assert sorted(m.message_id for mx in (mx1, mx2) for m in mx.messages) == sorted(s.message_id for s in sent)
    assert provider.peak == 2  # the budget was used, and never exceeded
    # Without the provider budget each domain (default: 10 connections) would have had its own connections.
    assert provider.total < len(sent)  # and the connections were reused for several messages


def test_connections_are_reused_up_to_the_providers_deliveries_per_connection(daemon, certs, loopback_dns,
                                                                               mx_farm):
    mx = mx_farm.add("mx.percon.shp.test")
    loopback_dns.add_a(mx.name, mx.ip)
    loopback_dns.add_mx("reuse.shp.test", [(10, mx.name)])
    sent = fill_paused(daemon, certs, "percon", [f"u{i}@reuse.shp.test" for i in range(7)])
    for s in sent:
        wait_final(daemon, s, timeout=20)

    per_connection = sorted(mx.per_connection().values(), reverse=True)
    assert sum(per_connection) == 7
    assert per_connection == [3, 3, 1]  # 7 messages over 3 connections, at most 3 each
    assert mx.gauge.peak == 1 and mx.gauge.total == 3


def test_an_emptied_connection_waits_idle_timeout_for_the_next_message_then_closes(daemon, certs, loopback_dns,
                                                                                    mx_farm):
    import time
    mx = mx_farm.add("mx.linger.shp.test")
    loopback_dns.add_a(mx.name, mx.ip)
    loopback_dns.add_mx("idle.shp.test", [(10, mx.name)])
    submitter = Submitter(daemon, certs)
    try:
        first = submitter.send(["a@idle.shp.test"])
        wait_final(daemon, first)
        second = submitter.send(["b@idle.shp.test"])  # well within the provider's 1.5 s idle_timeout
        wait_final(daemon, second)
    finally:
        submitter.close()
    # Postfix's connection cache: the second message went over the connection the first one opened.
    assert mx.gauge.total == 1 and list(mx.per_connection().values()) == [2]
    assert mx.gauge.current == 1  # still open, waiting for more
    idle_since = time.monotonic()
    wait_until(lambda: mx.gauge.current == 0, 10, "the idle connection closed")
    assert time.monotonic() - idle_since < 5


def test_provider_message_rate_is_respected(daemon, certs, loopback_dns, mx_farm):
    mx = mx_farm.add("mx.rated.shp.test")
    loopback_dns.add_a(mx.name, mx.ip)
    loopback_dns.add_mx("rate.shp.test", [(10, mx.name)])
    n = 15
    sent = fill_paused(daemon, certs, "rated", [f"r{i}@rate.shp.test" for i in range(n)])
    for s in sent:
        wait_final(daemon, s, timeout=20)

    arrivals = sorted(m.at for m in mx.messages)
    assert len(arrivals) == n
    # 5/s with a burst of at most one second's worth (5): any k arrivals span at least (k - 5) / 5 seconds.
    slack = 0.2  # the limiter paces sends; a send delayed on a busy machine bunches arrivals a little
    for k in range(6, n + 1):
        for i in range(n - k + 1):
            assert arrivals[i + k - 1] - arrivals[i] >= (k - 5) / 5 - slack, (k, i, arrivals)
    # ... and it is a pace, not a stall: the whole batch took about (15 - 5) / 5 = 2 s.
    assert arrivals[-1] - arrivals[0] < 2 + 1.0


def test_automation_rule_suspends_the_provider_after_a_matching_reply(daemon, certs, loopback_dns, mx_farm):
    mx = mx_farm.add("mx.auto.shp.test")
    loopback_dns.add_a(mx.name, mx.ip)
    loopback_dns.add_mx("auto.shp.test", [(10, mx.name)])
    mx.data_replies.append("421 4.7.0 [TSS04] Messages from 127.0.0.1 temporarily deferred due to unexpected"
                           " volume or user complaints")
    first = Submitter(daemon, certs)
    try:
        a = first.send(["alpha@auto.shp.test"])
        fired = wait_until(lambda: outcomes(daemon, a.queue_id), 10, "the first attempt")[0]
        assert (fired["severity"], fired["delivery-status"]["code"]) == ("temporary", 421)
        b = first.send(["bravo@auto.shp.test"])  # queued while the provider is suspended
    finally:
        first.close()
    suspended_at = fired["timestamp"]

    def held_back():
        row = deliveries(daemon, b.queue_id)[0]
        return row if row["last_reply"] == "provider auto suspended" else None
    row = wait_until(held_back, 5, "the second message held back by the suspension")
    assert row["attempts"] == 0 and row["state"] == "queued"  # given back, not counted as an attempt
    assert row["next_attempt_at"] >= suspended_at + 3 - 0.5

    final_a, final_b = wait_final(daemon, a, 15), wait_final(daemon, b, 15)
    # Nothing reached the provider while it was suspended: one connection before, the rest after 3 s.
    later = [opened for _, opened in mx.connections[1:]]
    assert later and min(later) >= suspended_at + 3 - 0.3, (suspended_at, mx.connections)
    assert len(mx.data_attempts) == 3  # alpha (421), then alpha and bravo after the suspension
    assert final_a["alpha@auto.shp.test"]["delivery-status"]["attempt-no"] == 2  # the held retry did not count
    assert final_b["bravo@auto.shp.test"]["delivery-status"]["attempt-no"] == 1
