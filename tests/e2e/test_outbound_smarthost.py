"""Smarthost mode: every message goes to one relay, over verified STARTTLS and with AUTH, whatever the
recipients' domains; no MX lookup is made for them. The relay has its own shaping (``delivery.smarthost``
``max_connections``, default 20, and ``max_message_rate``, default none), not the provider shaping's.
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.outbound_support import SENDER, Submitter, mtad_cli, submit, wait_final
from tests.support.sink import Authenticator, server_tls
from tests.support.wait import wait_until
from tests.support.daemon import Mtad

RELAY = "relay.smarthost.test"


@pytest.fixture(scope="module")
def relay(certs, loopback_dns, mx_farm):
    mx = mx_farm.add(RELAY, tls=server_tls(certs, RELAY), auth=Authenticator("mtad-relay", "relay-secret"))
    loopback_dns.add_a(RELAY, mx.ip)
    return mx


@pytest.fixture(scope="module")
def daemon(outbound_mtad, relay, mx_farm) -> Mtad:
    return outbound_mtad(delivery={"smarthost": {"host": RELAY, "port": mx_farm.port, "tls": "starttls",
                                                 "verify": True, "username": "mtad-relay",
                                                 "password": "relay-secret"}})


def test_everything_goes_through_the_smarthost_with_auth(daemon, relay, certs, loopback_dns):
    recipients = ["victor@nowhere-one.test", "wendy@nowhere-two.test"]
    sent = submit(daemon, certs, recipients)

    final = wait_final(daemon, sent)
    for rcpt in recipients:
        status = final[rcpt]["delivery-status"]
        assert final[rcpt]["event"] == "delivered"
        assert (status["mx-host"], status["tls"], status["certificate-verified"]) == (RELAY, True, True)
    got = relay.by_message_id(sent.message_id)
    assert sorted(r for m in got for r in m.rcpt_tos) == recipients  # one transaction per destination domain
    assert all(m.auth_user == "mtad-relay" and m.tls for m in got)
    # return_path auto: through a smarthost the message's own sender (the relay may insist on it), and the header
    # that names the message for feedback reports
    assert all(m.mail_from == SENDER and b"\r\nX-Mtad-Sid: " in m.data for m in got)
    # The recipients' domains were never looked up: they do not even exist in DNS.
    assert not loopback_dns.queries_for("nowhere-one.test") and not loopback_dns.queries_for("nowhere-two.test")


# --- shaping: the smarthost is one destination with its own limits, not the provider shaping's -----------------

BURST = 300
# The default provider shaping of these daemons: the shipped file's default connections, and a message rate
# low enough (the shipped default is 100/s) that its cap would be unmistakable on a loaded test machine.
CAPPED_DEFAULT = {"default": {"max_connections": 10, "max_message_rate": "25/s", "max_deliveries_per_connection": 100,
                              "connect_timeout": "5s", "command_timeout": "10s", "data_timeout": "10s"}}


def burst_through(daemon: Mtad, sink, certs, domain: str, count: int, pause: tuple[str, str] | None = None) -> float:
    """Queue ``count`` messages to one domain while delivery is paused (``pause``: the ``mtad queue pause``
    option, default the domain), then release them at once; the seconds from the release to the last message's
    arrival at ``sink``."""
    pause = pause or ("--domain", domain)
    before = len(sink.messages)
    mtad_cli(daemon, "queue", "pause", *pause)
    s = Submitter(daemon, certs)
    try:
        sent = [s.send([f"user{i}@{domain}"]) for i in range(count)]
    finally:
        s.close()
    if pause[0] == "--provider":  # held when claimed: wait until all are, so that none slips out before
        wait_until(lambda: daemon.query("SELECT count(*) FROM deliveries WHERE state = 'held'")[0][0] >= count, 30,
                   "the paused deliveries")
    assert len(sink.messages) == before, "sent while paused"
    started = time.time()
    mtad_cli(daemon, "queue", "resume", *pause)
    wait_until(lambda: len(sink.messages) - before >= count, 120, f"{count} messages at the smarthost")
    assert {m.message_id for m in sink.messages[before:]} == {x.message_id for x in sent}
    return max(m.at for m in sink.messages[before:]) - started


@pytest.fixture
def sink(mx_farm, loopback_dns, request):
    """A smarthost of the test's own (its connection counts are the test's only)."""
    name = f"{request.node.name.replace('_', '-')[:40]}.sink.test"
    mx = mx_farm.add(name)
    loopback_dns.add_a(name, mx.ip)
    return mx


def test_smarthost_is_not_held_to_the_provider_shaping(outbound_mtad, sink, mx_farm, certs):
    daemon = outbound_mtad(shaping=CAPPED_DEFAULT, delivery={"smarthost": {
        "host": sink.name, "port": mx_farm.port, "tls": "none"}})
    seconds = burst_through(daemon, sink, certs, "burst.test", BURST)
    # The default shaping's 25/s would need over 11 s (a burst of 25, then 25 a second); its 10 connections are
    # exceeded too: the smarthost's own default is 20 connections and no rate limit.
    assert seconds < 9, f"{BURST} messages took {seconds:.1f}s"  # held to 25/s it would take over 11 s
    assert 10 < sink.gauge.peak <= 20, sink.gauge.peak
    print(f"smarthost burst: {BURST} messages in {seconds:.2f}s ({BURST / seconds:.0f}/s), "
          f"peak {sink.gauge.peak} connections")


def test_smarthost_limits_come_from_its_config(outbound_mtad, sink, mx_farm, certs):
    daemon = outbound_mtad(delivery={"smarthost": {"host": sink.name, "port": mx_farm.port, "tls": "none",
                                                   "max_connections": 2, "max_message_rate": "10/s"}})
    seconds = burst_through(daemon, sink, certs, "limited.test", 30, pause=("--provider", "smarthost"))
    assert sink.gauge.peak <= 2, sink.gauge.peak
    assert seconds >= 1.5, f"30 messages at 10/s took only {seconds:.2f}s"  # 10 at once, then 10 a second
