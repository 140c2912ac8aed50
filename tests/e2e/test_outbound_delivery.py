"""Outbound delivery to MX servers on loopback: per-recipient outcomes, retries on the schedule, permanent
failures with the bounce list, suppression and allowlist, DSNs to the sender, at-least-once after a lost
reply, MX fallback, implicit MX, null MX, NXDOMAIN and SERVFAIL.

One mtad for the module; each test has its own destination domains (``*.dlv.test``) and MX servers, and
judges by what the receiving servers got and what mtad's store holds.

Runs on both store backends (``store_backend``: SQLite and PostgreSQL).
"""

from __future__ import annotations

import re
import time
import urllib.request

import pytest

from tests.e2e.outbound_support import (DEFAULT_SHAPING, RETRY_SCHEDULE, SENDER, Submitter, deliveries, events,
    mtad_cli, outcomes, serve_domain, submit, wait_final)
from tests.support.api import api_sync
from tests.support.wait import wait_until
from tests.support.daemon import Mtad
from tests.support.stores import both_backends as store_backend  # noqa: F401,E402 (fixture: on both backends)


@pytest.fixture(scope="module")
def daemon(outbound_mtad) -> Mtad:
    return outbound_mtad()


@pytest.fixture
def dns(loopback_dns):
    return loopback_dns


def seconds(duration: str) -> float:
    assert duration.endswith("s")
    return float(duration[:-1])


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-command-at-a-time"])
def test_per_recipient_outcomes_in_one_transaction(daemon, certs, dns, mx_farm, pipelining):
    domain = f"mixed{'' if pipelining else '-nopipe'}.dlv.test"
    mx = serve_domain(dns, mx_farm, domain)
    mx.pipelining = pipelining
    mx.reject = {f"nobody@{domain}"}
    sent = submit(daemon, certs, [f"alice@{domain}", f"nobody@{domain}", f"bob@{domain}"])

    final = wait_final(daemon, sent)
    # One transaction carried both accepted recipients; the rejected one was refused at RCPT. Its envelope sender
    # is the message's return path on the sending domain (mail.returnpath), so a late bounce comes back to mtad.
    assert [(m.rcpt_tos, m.message_id) for m in mx.messages] == [
        ([f"alice@{domain}", f"bob@{domain}"], sent.message_id)]
    assert re.fullmatch(rf"bounce\+{sent.queue_id.lower()}-[a-z2-7]{{10}}@example\.com", mx.messages[0].mail_from)
    assert len(mx.connections) == 1
    for rcpt in (f"alice@{domain}", f"bob@{domain}"):
        status = final[rcpt]["delivery-status"]
        assert final[rcpt]["event"] == "delivered"
        assert (status["code"], status["attempt-no"], status["mx-host"]) == (250, 1, f"mx.{domain}")
        assert status["message"].startswith("2.0.0 OK")
    failed = final[f"nobody@{domain}"]
    assert (failed["event"], failed["severity"], failed["reason"]) == ("failed", "permanent", "bounce")
    assert (failed["delivery-status"]["code"], failed["delivery-status"]["enhanced-code"]) == (550, "5.1.1")
    assert "User unknown" in failed["delivery-status"]["message"]
    # Nothing left to do: the row is done and no temporary failure was recorded.
    [row] = deliveries(daemon, sent.queue_id)
    assert (row["state"], row["attempts"], row["recipients"], row["locked_by"]) == ("done", 1, [], None)
    assert not [e for e in outcomes(daemon, sent.queue_id) if e.get("severity") == "temporary"]


def test_hard_bounce_lists_address_and_later_mail_is_suppressed_unless_allowlisted(daemon, certs, dns, mx_farm):
    mx = serve_domain(dns, mx_farm, "bounce.dlv.test")
    gone = "gone@bounce.dlv.test"
    mx.reject = {gone}

    first = submit(daemon, certs, [gone])
    assert wait_final(daemon, first)[gone]["reason"] == "bounce"
    [(data,)] = daemon.query("SELECT data FROM suppressions WHERE domain = 'example.com' AND kind = 'bounces'"
                             " AND address = ?", (gone,))
    assert '"code": "550"' in data and "User unknown" in data
    entry = api_sync(daemon, "GET", f"/v3/example.com/bounces/{gone}")  # as the operator sees it
    assert entry["address"] == gone and entry["code"] == "550", entry
    assert mx.rcpt_attempts == [gone]

    # The next message to the address is not sent at all.
    second = submit(daemon, certs, [gone])
    event = wait_final(daemon, second)[gone]
    assert (event["event"], event["severity"], event["reason"]) == ("failed", "permanent", "suppress-bounce")
    assert mx.rcpt_attempts == [gone] and len(mx.connections) == 1
    assert deliveries(daemon, second.queue_id)[0]["state"] == "done"

    # Allowlisted through the API, the address is tried again; the mailbox exists again meanwhile, so this
    # time it is delivered (though still on the bounce list).
    api_sync(daemon, "POST", "/v3/example.com/whitelists", data={"address": gone})
    mx.reject = set()
    third = submit(daemon, certs, [gone])
    assert wait_final(daemon, third)[gone]["event"] == "delivered"
    assert mx.by_message_id(third.message_id)[0].rcpt_tos == [gone]
    assert not mx.by_message_id(second.message_id)


def test_suppressed_recipient_is_dropped_from_a_message_the_others_still_get(daemon, certs, dns, mx_farm):
    mx = serve_domain(dns, mx_farm, "partial.dlv.test")
    api_sync(daemon, "POST", "/v3/example.com/bounces", data={"address": "old@partial.dlv.test"})  # on the list already
    sent = submit(daemon, certs, ["old@partial.dlv.test", "new@partial.dlv.test"])

    final = wait_final(daemon, sent)
    assert (final["old@partial.dlv.test"]["reason"], final["new@partial.dlv.test"]["event"]) == (
        "suppress-bounce", "delivered")
    assert [(m.rcpt_tos, m.message_id) for m in mx.messages] == [(["new@partial.dlv.test"], sent.message_id)]
    assert mx.rcpt_attempts == ["new@partial.dlv.test"]
    [row] = deliveries(daemon, sent.queue_id)
    assert (row["state"], row["attempts"], row["recipients"]) == ("done", 1, [])
    # The suppressed recipient is reported by its failed event, not by a DSN (none is enqueued with the outcome).
    assert not [body for (body,) in daemon.query("SELECT body FROM messages WHERE sender = ''")
                if f"X-Mtad-Queue-ID: {sent.queue_id}".encode() in bytes(body)]


def test_permanent_failure_sends_a_dsn_to_the_smtp_sender(daemon, certs, dns, mx_farm, sender_mailbox):
    mx = serve_domain(dns, mx_farm, "dsn.dlv.test")
    mx.reject = {"nobody@dsn.dlv.test"}
    sent = submit(daemon, certs, ["nobody@dsn.dlv.test", "somebody@dsn.dlv.test"])
    wait_final(daemon, sent)

    def dsn():
        return [m for m in sender_mailbox.messages
                if b"nobody@dsn.dlv.test" in m.data and sent.queue_id.encode() in m.data]
    [bounce] = wait_until(dsn, 10, "the DSN at example.com's MX")
    assert bounce.mail_from == "<>" and bounce.rcpt_tos == [SENDER]  # MAIL FROM:<> (aiosmtpd keeps the brackets)
    msg = bounce.message
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["Auto-Submitted"] == "auto-replied"
    report = bounce.data.decode()
    assert "Reporting-MTA: dns; mtad.test" in report
    assert "Final-Recipient: rfc822; nobody@dsn.dlv.test\r\nAction: failed\r\nStatus: 5.1.1" in report
    assert "Remote-MTA: dns; mx.dsn.dlv.test" in report
    assert "Diagnostic-Code: smtp; 550 5.1.1" in report
    assert "Final-Recipient: rfc822; somebody@dsn.dlv.test" not in report  # delivered: not reported
    assert f"X-Mtad-Queue-ID: {sent.queue_id}" in report
    # The returned headers let the sender match the bounce to its message.
    [returned] = [p for p in msg.walk() if p.get_content_type() == "text/rfc822-headers"]
    assert f"Message-ID: {sent.message_id}" in returned.get_content()
    # The DSN itself is an outbound message of example.com, recorded like any other.
    dsn_id = bounce.message_id.strip("<>")
    [(direction, domain)] = daemon.query("SELECT direction, domain FROM messages WHERE message_id = ?", (dsn_id,))
    assert (direction, domain) == ("outbound", "example.com")


def test_temporary_failures_are_retried_on_the_schedule(daemon, certs, dns, mx_farm):
    mx = serve_domain(dns, mx_farm, "flaky.dlv.test")
    mx.data_replies.extend(["451 4.3.0 Try again later"] * 3)
    rcpt = "carol@flaky.dlv.test"
    sent = submit(daemon, certs, [rcpt])

    assert wait_final(daemon, sent, timeout=15)[rcpt]["event"] == "delivered"
    attempts = outcomes(daemon, sent.queue_id, rcpt)
    assert [(e["event"], e.get("severity"), e["delivery-status"]["attempt-no"]) for e in attempts] == [
        ("failed", "temporary", 1), ("failed", "temporary", 2), ("failed", "temporary", 3), ("delivered", None, 4)]
    schedule = [seconds(s) for s in RETRY_SCHEDULE]  # 1s, 1s, 2s
    assert [e["delivery-status"].get("retry-seconds") for e in attempts[:3]] == [int(s) for s in schedule]
    assert all(e["delivery-status"]["code"] == 451 for e in attempts[:3])
    # The MX saw each attempt when the schedule said: never early; late by a poll interval and a little more.
    times = [a.at for a in mx.data_attempts]
    assert len(times) == 4
    for gap, planned in zip([b - a for a, b in zip(times, times[1:])], schedule):
        assert planned <= gap <= planned + 1.0, (gap, planned)
    assert [m.message_id for m in mx.messages] == [sent.message_id]
    [row] = deliveries(daemon, sent.queue_id)
    assert (row["state"], row["attempts"]) == ("done", 4)


def test_reply_lost_after_the_final_dot_is_retried_at_least_once(daemon, certs, dns, mx_farm):
    mx = serve_domain(dns, mx_farm, "dropper.dlv.test")
    mx.drop_after_dot = 1
    rcpt = "dave@dropper.dlv.test"
    sent = submit(daemon, certs, [rcpt])

    assert wait_final(daemon, sent)[rcpt]["event"] == "delivered"
    first, second = outcomes(daemon, sent.queue_id, rcpt)
    assert (first["event"], first["severity"], first["delivery-status"]["code"]) == ("failed", "temporary", 421)
    assert "connection lost" in first["delivery-status"]["message"].lower()
    assert second["delivery-status"]["attempt-no"] == 2
    # The MX had the message both times: delivery is at-least-once, never at-most-once.
    assert len(mx.by_message_id(sent.message_id)) == 2
    assert len(mx.connections) == 2


def test_falls_back_to_the_next_mx_when_the_first_is_down(daemon, certs, dns, mx_farm):
    backup = mx_farm.add("backup.fallback.dlv.test")
    dns.set_records("fallback.dlv.test", "MX", [(10, "primary.fallback.dlv.test"), (20, "backup.fallback.dlv.test")])
    dns.set_records("primary.fallback.dlv.test", "A", [mx_farm.address()])  # nothing listens there
    dns.set_records("backup.fallback.dlv.test", "A", [backup.ip])
    rcpt = "erin@fallback.dlv.test"
    sent = submit(daemon, certs, [rcpt])

    event = wait_final(daemon, sent)[rcpt]
    assert (event["event"], event["delivery-status"]["mx-host"]) == ("delivered", "backup.fallback.dlv.test")
    assert event["delivery-status"]["attempt-no"] == 1
    assert backup.message_ids() == [sent.message_id]


def test_domain_without_mx_is_delivered_to_its_a_record(daemon, certs, dns, mx_farm):
    mx = mx_farm.add("implicit.dlv.test")
    dns.set_records("implicit.dlv.test", "A", [mx.ip])  # no MX record at all (RFC 5321 5.1)
    rcpt = "frank@implicit.dlv.test"
    sent = submit(daemon, certs, [rcpt])

    event = wait_final(daemon, sent)[rcpt]
    assert (event["event"], event["delivery-status"]["mx-host"]) == ("delivered", "implicit.dlv.test")
    assert mx.message_ids() == [sent.message_id]
    assert dns.queries_for("implicit.dlv.test", "MX")


def test_null_mx_and_nxdomain_fail_permanently_servfail_is_temporary(daemon, certs, dns):
    dns.add_mx("nullmx.dlv.test", [(0, ".")])  # RFC 7505: this domain accepts no mail
    dns.servfail("servfail.dlv.test")
    null = submit(daemon, certs, ["grace@nullmx.dlv.test"])
    missing = submit(daemon, certs, ["heidi@nxdomain.dlv.test"])
    broken = submit(daemon, certs, ["ivan@servfail.dlv.test"])

    event = wait_final(daemon, null)["grace@nullmx.dlv.test"]
    assert (event["severity"], event["reason"]) == ("permanent", "bounce")
    assert "null MX" in event["delivery-status"]["message"]
    event = wait_final(daemon, missing)["heidi@nxdomain.dlv.test"]
    assert (event["severity"], event["reason"]) == ("permanent", "bounce")
    assert "NXDOMAIN" in event["delivery-status"]["message"]
    assert event["delivery-status"]["code"] >= 500

    def deferred():
        return [e for e in outcomes(daemon, broken.queue_id) if e.get("severity") == "temporary"]
    event = wait_until(deferred, 10, "a temporary failure for the SERVFAIL domain")[0]
    assert event["delivery-status"]["code"] == 421 and "MX lookup failed" in event["delivery-status"]["message"]
    row = deliveries(daemon, broken.queue_id)[0]
    assert row["state"] == "deferred" and row["recipients"] == ["ivan@servfail.dlv.test"]
    assert not [e for e in events(daemon, broken.queue_id) if e["event"] == "delivered"]


def store_commits(daemon: Mtad) -> float:
    """The daemon's ``mtad_store_commits_total`` (``/metrics``)."""
    with urllib.request.urlopen(daemon.api_url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    [value] = [float(line.split()[-1]) for line in text.splitlines() if line.startswith("mtad_store_commits_total ")]
    return value


def test_outcomes_of_a_steady_drain_share_transactions(outbound_mtad, certs, dns, mx_farm):
    """One connection, a message every ~10 ms: the outcomes that come within ``OUTCOME_EVERY`` of a write's start
    are written together, in a few transactions rather than one each; every one is recorded."""
    daemon = outbound_mtad(shaping={"default": {**DEFAULT_SHAPING["default"], "max_connections": 1}})
    mx = serve_domain(dns, mx_farm, "steady.dlv.test")
    mx.data_delay = 0.01
    mtad_cli(daemon, "queue", "pause", "--domain", "steady.dlv.test")
    submitter = Submitter(daemon, certs)
    try:
        sent = [submitter.send([f"r{i}@steady.dlv.test"]) for i in range(40)]
    finally:
        submitter.close()
    before, started = store_commits(daemon), time.monotonic()
    mtad_cli(daemon, "queue", "resume", "--domain", "steady.dlv.test")
    for s in sent:
        assert wait_final(daemon, s, timeout=30)[s.recipients[0]]["event"] == "delivered"
    during, took = store_commits(daemon) - before, time.monotonic() - started
    assert len(mx.messages) == 40
    time.sleep(took)  # as long again with nothing to deliver: the commits of the daemon's other loops (polls)
    background = store_commits(daemon) - before - during
    # 40 outcomes ~10 ms apart over >= 400 ms: ~9 writes of outcomes, and a claim or two; one each would be 40+
    assert during - background <= 20, (during, background)
