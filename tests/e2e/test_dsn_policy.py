"""Who gets a bounce message (RFC 3464 DSN) when mail fails, per sending domain's ``dsn`` policy.

By default (``smtp``) only mail submitted over SMTP gets one (its client, e.g. a smarthost, expects bounces);
an HTTP API send's failure is reported by events and webhooks only, as Mailgun does; a recipient dropped
because it is suppressed (605) never gets one. The DSNs mtad makes are not the user's mail: they do not count
in the domain's stats, and one that fails never puts the user's own address on the domain's bounce list.

Judged by what the sender's MX (``sender_mailbox``, example.com) receives and, since a DSN is enqueued in the
same transaction as the failure it reports, by the store holding no DSN once the failure is recorded.
"""

from __future__ import annotations

import json
import uuid

import pytest

from tests.e2e.helpers import send, submission
from tests.e2e.outbound_support import SENDER, Submitter, events, make_message, serve_domain, submit, wait_final
from tests.support.api import api_sync
from tests.support.wait import wait_until
from tests.support.daemon import Mtad


@pytest.fixture(scope="module")
def daemon(outbound_mtad) -> Mtad:
    return outbound_mtad()


def dsns_reporting(daemon: Mtad, text: str) -> list[bytes]:
    """DSNs in the store (null-sender messages mtad made) whose report mentions ``text``."""
    return [bytes(body) for body, envelope in daemon.query("SELECT body, envelope FROM messages WHERE sender = ''")
            if json.loads(envelope).get("transport") == "dsn" and text.encode() in bytes(body)]


def received_dsns(mailbox, text: str) -> list:
    return [m for m in list(mailbox.messages) if m.mail_from == "<>" and text.encode() in m.data]


def api_send(daemon: Mtad, to: str, sender: str = SENDER, domain: str = "example.com") -> str:
    """Send through the HTTP API; the queue id, from the message's ``accepted`` event."""
    api_sync(daemon, "POST", f"/v3/{domain}/messages",
             data={"from": sender, "to": to, "subject": "API send", "text": "Hello from the API."})
    [accepted] = wait_until(lambda: events(daemon, recipient=to, kind="accepted"), 10, "the accepted event")
    return accepted["storage"]["key"]


def final_failure(daemon: Mtad, queue_id: str, rcpt: str) -> dict:
    def permanent():
        return [e for e in events(daemon, queue_id, rcpt, "failed") if e.get("severity") == "permanent"]
    [event] = wait_until(permanent, 15, f"the permanent failure of {rcpt}")
    return event


def test_api_send_failure_is_an_event_not_a_dsn(daemon, loopback_dns, mx_farm, certs, sender_mailbox):
    mx = serve_domain(loopback_dns, mx_farm, "api.dsnp.test")
    mx.reject = {"nobody@api.dsnp.test", "nobody2@api.dsnp.test"}
    queue_id = api_send(daemon, "nobody@api.dsnp.test")
    event = final_failure(daemon, queue_id, "nobody@api.dsnp.test")
    assert (event["reason"], event["delivery-status"]["code"]) == ("bounce", 550)
    assert dsns_reporting(daemon, "nobody@api.dsnp.test") == []  # none was enqueued with the failure

    # The same failure submitted over SMTP is reported to its sender; by the time that DSN arrives, one for the
    # API send (enqueued earlier) would have arrived too.
    sent = submit(daemon, certs, ["nobody2@api.dsnp.test"])
    wait_final(daemon, sent)
    wait_until(lambda: received_dsns(sender_mailbox, "nobody2@api.dsnp.test"), 10, "the SMTP submission's DSN")
    assert received_dsns(sender_mailbox, "nobody@api.dsnp.test") == []


def test_smtp_submission_failure_gets_a_dsn(daemon, loopback_dns, mx_farm, certs, sender_mailbox):
    mx = serve_domain(loopback_dns, mx_farm, "smtp.dsnp.test")
    mx.reject = {"nobody@smtp.dsnp.test"}
    sent = submit(daemon, certs, ["nobody@smtp.dsnp.test"])
    wait_final(daemon, sent)
    [bounce] = wait_until(lambda: received_dsns(sender_mailbox, f"X-Mtad-Queue-ID: {sent.queue_id}"), 10, "the DSN")
    assert bounce.rcpt_tos == [SENDER]
    assert b"Final-Recipient: rfc822; nobody@smtp.dsnp.test\r\nAction: failed\r\nStatus: 5.1.1" in bounce.data


def test_suppressed_recipients_get_no_dsn(daemon, loopback_dns, mx_farm, certs, sender_mailbox):
    mx = serve_domain(loopback_dns, mx_farm, "supp.dsnp.test")
    mx.reject = {"gone@supp.dsnp.test"}
    for address in ("old@supp.dsnp.test", "old2@supp.dsnp.test"):
        api_sync(daemon, "POST", "/v3/example.com/bounces", data={"address": address})

    # A message whose only recipient is suppressed: dropped (605), and no DSN.
    alone = submit(daemon, certs, ["old2@supp.dsnp.test"])
    event = wait_final(daemon, alone)["old2@supp.dsnp.test"]
    assert (event["reason"], event["delivery-status"]["code"]) == ("suppress-bounce", 605)
    assert dsns_reporting(daemon, alone.queue_id) == []

    # A suppressed recipient beside one that bounces: the DSN reports the bounce only.
    sent = submit(daemon, certs, ["old@supp.dsnp.test", "gone@supp.dsnp.test"])
    final = wait_final(daemon, sent)
    assert (final["old@supp.dsnp.test"]["reason"], final["gone@supp.dsnp.test"]["reason"]) == (
        "suppress-bounce", "bounce")
    [bounce] = wait_until(lambda: received_dsns(sender_mailbox, f"X-Mtad-Queue-ID: {sent.queue_id}"), 10, "the DSN")
    assert b"Final-Recipient: rfc822; gone@supp.dsnp.test" in bounce.data
    assert b"old@supp.dsnp.test" not in bounce.data.split(b"text/rfc822-headers")[0]
    assert len(dsns_reporting(daemon, sent.queue_id)) == 1
    assert received_dsns(sender_mailbox, f"X-Mtad-Queue-ID: {alone.queue_id}") == []


def test_a_dsn_that_fails_does_not_suppress_the_users_address(daemon, loopback_dns, mx_farm, certs, sender_mailbox):
    mx = serve_domain(loopback_dns, mx_farm, "loop.dsnp.test")
    mx.reject = {"nobody@loop.dsnp.test"}
    ghost = f"ghost-{uuid.uuid4().hex[:8]}@example.com"  # a sender of example.com whose mailbox refuses mail
    sender_mailbox.reject.add(ghost)
    try:
        s = Submitter(daemon, certs)
        try:
            sent = s.send(["nobody@loop.dsnp.test"], sender=ghost)
        finally:
            s.close()
        wait_final(daemon, sent)
        [dsn_queue_id] = wait_until(lambda: [e["storage"]["key"] for e in events(daemon, recipient=ghost,
                                                                                 kind="accepted")], 10, "the DSN")
        event = final_failure(daemon, dsn_queue_id, ghost)  # the DSN bounced at example.com's MX
        assert (event["reason"], event["delivery-status"]["code"]) == ("bounce", 550)
    finally:
        sender_mailbox.reject.discard(ghost)
    api_sync(daemon, "GET", f"/v3/example.com/bounces/{ghost}", expect=404)  # the user's own address is not on its bounce list
    assert not daemon.query("SELECT 1 FROM suppressions WHERE address = ?", (ghost,))
    assert dsns_reporting(daemon, dsn_queue_id) == []  # and the failed DSN was not bounced in turn


def test_stats_and_webhooks_do_not_count_the_dsn(outbound_mtad, loopback_dns, mx_farm, certs, sender_mailbox):
    daemon = outbound_mtad(start=False)  # its own store: the stats hold this test's mail only
    daemon.cfg["routing"] = {"allowed_networks": ["127.0.0.0/8"]}  # webhook URLs on loopback may be made
    daemon.start()
    for hook in ("accepted", "delivered"):  # port 9 refuses: what is queued is the point
        api_sync(daemon, "POST", "/v3/domains/example.com/webhooks", data={"id": hook, "url": f"http://127.0.0.1:9/{hook}"})
    mx = serve_domain(loopback_dns, mx_farm, "stats.dsnp.test")
    mx.reject = {"nobody@stats.dsnp.test"}
    sent = submit(daemon, certs, ["nobody@stats.dsnp.test"])
    wait_final(daemon, sent)
    wait_until(lambda: received_dsns(sender_mailbox, f"X-Mtad-Queue-ID: {sent.queue_id}"), 10, "the DSN")
    # The DSN's events are kept for tracing, marked as such.
    [delivered] = wait_until(lambda: events(daemon, recipient=SENDER, kind="delivered"), 10, "the DSN's delivery")
    [accepted] = events(daemon, recipient=SENDER, kind="accepted")
    assert (accepted["envelope"]["transport"], accepted["envelope"]["sender"]) == ("dsn", "")

    hooked = {event_id for (event_id,) in daemon.query("SELECT event_id FROM webhook_deliveries")}
    [user_accepted] = events(daemon, sent.queue_id, kind="accepted")
    assert user_accepted["id"] in hooked  # the user's own message is posted to the webhook
    assert not {accepted["id"], delivered["id"]} & hooked  # its DSN is not

    answer = api_sync(daemon, "GET", "/v3/example.com/stats/total?event=accepted&event=delivered&event=failed"
                                     "&duration=1d&resolution=day")
    totals = {"accepted": 0, "delivered": 0, "permanent": 0}
    for bucket in answer["stats"]:
        totals["accepted"] += bucket["accepted"]["total"]
        totals["delivered"] += bucket["delivered"]["total"]
        totals["permanent"] += bucket["failed"]["permanent"]["total"]
    assert totals == {"accepted": 1, "delivered": 0, "permanent": 1}  # the user's one message, not its DSN


def test_policy_per_sending_domain(outbound_mtad, loopback_dns, mx_farm, certs, sender_mailbox):
    daemon = outbound_mtad(start=False)
    daemon.cfg["sending_domains"]["example.com"]["dsn"] = "always"
    daemon.cfg["sending_domains"]["other.org"]["dsn"] = "never"
    daemon.start()
    mx = serve_domain(loopback_dns, mx_farm, "policy.dsnp.test")
    mx.reject = {"api@policy.dsnp.test", "smtp@policy.dsnp.test"}

    # always: the API send's failure is reported to its sender too.
    queue_id = api_send(daemon, "api@policy.dsnp.test")
    final_failure(daemon, queue_id, "api@policy.dsnp.test")
    [bounce] = wait_until(lambda: received_dsns(sender_mailbox, f"X-Mtad-Queue-ID: {queue_id}"), 10, "the DSN")
    assert bounce.rcpt_tos == [SENDER]

    # never: not even for an SMTP submission.
    session = submission(daemon, certs.client_context(), login="app@other.org")
    try:
        _, data = make_message(["smtp@policy.dsnp.test"])
        code, text = send(session, "app@other.org", ["smtp@policy.dsnp.test"], data)
        assert code == 250, text
    finally:
        session.quit()
    [accepted] = wait_until(lambda: events(daemon, recipient="smtp@policy.dsnp.test", kind="accepted"), 10,
                            "the accepted event")
    final_failure(daemon, accepted["storage"]["key"], "smtp@policy.dsnp.test")
    assert dsns_reporting(daemon, accepted["storage"]["key"]) == []


def test_unknown_dsn_policy_is_a_config_error(tmp_path, certs):
    import subprocess
    import sys

    import yaml

    from tests.support.daemon import base_config
    cfg = base_config(tmp_path, certs)
    cfg["sending_domains"]["example.com"]["dsn"] = "sometimes"
    path = tmp_path / "mtad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = subprocess.run([sys.executable, "-m", "mtad", "check-config", str(path)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode != 0
    assert "sending_domains.example.com.dsn" in result.stdout + result.stderr
