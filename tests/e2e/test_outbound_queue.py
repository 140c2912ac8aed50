"""Operating the queue of a delivering mtad: ``mtad queue pause --domain`` / ``resume``, ``flush``, ``list``,
and a restart mid-queue (SIGKILL while messages wait on a slow MX answering 4xx, then start again) that
delivers every message exactly once.

This module's mtad retries after one minute, so nothing here is delivered by the schedule: only by a
resume, a flush or the restart.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.e2e.outbound_support import (Submitter, deliveries, events, mtad_cli, outcomes, serve_domain, submit,
    wait_final)
from tests.support.wait import wait_until
from tests.support.daemon import Mtad


@pytest.fixture(scope="module")
def daemon(outbound_mtad) -> Mtad:
    return outbound_mtad(delivery={"retry": {"schedule": ["1m"]}})


def test_paused_domain_waits_until_resumed(daemon, certs, loopback_dns, mx_farm):
    mx = serve_domain(loopback_dns, mx_farm, "paused.q.test")
    assert "paused domain paused.q.test" in mtad_cli(daemon, "queue", "pause", "--domain", "paused.q.test")
    serve = serve_domain(loopback_dns, mx_farm, "other.q.test")
    sent = submit(daemon, certs, ["sam@paused.q.test"])
    other = submit(daemon, certs, ["tom@other.q.test"])  # other domains keep flowing meanwhile
    wait_final(daemon, other)

    time.sleep(1.0)  # five poll intervals
    assert mx.gauge.total == 0 and serve.message_ids() == [other.message_id]
    [row] = deliveries(daemon, sent.queue_id)
    assert (row["state"], row["attempts"]) == ("queued", 0)
    listed = json.loads(mtad_cli(daemon, "queue", "list", "--json"))
    assert [r["recipients"] for r in listed if r["queue_id"] == sent.queue_id] == [["sam@paused.q.test"]]

    mtad_cli(daemon, "queue", "resume", "--domain", "paused.q.test")
    assert wait_final(daemon, sent)["sam@paused.q.test"]["event"] == "delivered"
    assert mx.message_ids() == [sent.message_id]


def test_a_delivery_in_progress_is_listed_as_active(daemon, certs, loopback_dns, mx_farm):
    mx = serve_domain(loopback_dns, mx_farm, "active.q.test")
    mx.data_delay = 8.0  # the delivery is in DATA, claimed by the scheduler, while the operator looks
    sent = submit(daemon, certs, ["ann@active.q.test"])
    wait_until(lambda: mx.data_attempts, 10, "the delivery's DATA")
    listed = [r for r in json.loads(mtad_cli(daemon, "queue", "list", "--json")) if r["queue_id"] == sent.queue_id]
    assert [(r["state"], r["recipients"]) for r in listed] == [("active", ["ann@active.q.test"])], listed
    assert listed[0]["locked_by"]
    line = next(line for line in mtad_cli(daemon, "queue", "list").splitlines() if line.startswith(sent.queue_id))
    assert line.split()[2] == "active", line
    assert wait_final(daemon, sent)["ann@active.q.test"]["event"] == "delivered"
    assert sent.queue_id not in mtad_cli(daemon, "queue", "list")


def test_flush_makes_deferred_mail_due_now(daemon, certs, loopback_dns, mx_farm):
    mx = serve_domain(loopback_dns, mx_farm, "flush.q.test")
    mx.data_replies.append("451 4.3.0 Busy")
    sent = submit(daemon, certs, ["uma@flush.q.test"])
    wait_until(lambda: outcomes(daemon, sent.queue_id), 10, "the first attempt")
    [row] = deliveries(daemon, sent.queue_id)
    assert row["state"] == "deferred" and row["next_attempt_at"] > time.time() + 50  # the 1-minute schedule

    flushed_at = time.time()
    assert "deliveries due now" in mtad_cli(daemon, "queue", "flush", "--domain", "flush.q.test")
    event = wait_final(daemon, sent, timeout=5)["uma@flush.q.test"]
    assert event["delivery-status"]["attempt-no"] == 2 and event["timestamp"] - flushed_at < 3
    assert mx.message_ids() == [sent.message_id]


def test_restart_mid_queue_delivers_every_message_exactly_once(daemon, certs, loopback_dns, mx_farm):
    mx = serve_domain(loopback_dns, mx_farm, "restart.q.test")
    mx.data_delay = 0.3  # slow, then 4xx: sessions are in flight or deferred when mtad dies
    mx.data_reply = "451 4.7.1 Greylisted, try again later"
    n = 20
    submitter = Submitter(daemon, certs)
    try:
        sent = [submitter.send([f"user{i}@restart.q.test"]) for i in range(n)]
    finally:
        submitter.close()

    def some_deferred():
        return len([e for e in events(daemon, kind="failed") if e["recipient"].endswith("@restart.q.test")]) >= 5
    wait_until(some_deferred, 15, "a few deferrals")
    daemon.kill()  # SIGKILL: no shutdown, locks and sessions left as they were
    states = {r["state"] for s in sent for r in deliveries(daemon, s.queue_id)}
    assert states <= {"queued", "deferred"}, states  # nothing was delivered before the kill
    assert mx.messages == []
    locked = sum(1 for s in sent for r in deliveries(daemon, s.queue_id) if r["locked_by"])

    time.sleep(mx.data_delay + 0.2)  # sessions of the killed process are gone at the MX, none half-answered
    mx.data_delay, mx.data_reply = 0.0, None  # the MX accepts from now on
    daemon.start()
    if locked:
        assert "stale work locks" in daemon.log()
    mtad_cli(daemon, "queue", "flush")  # the deferred ones would otherwise wait a minute
    for s in sent:
        wait_final(daemon, s, timeout=20)

    received = [m.message_id for m in mx.messages]
    assert sorted(received) == sorted(s.message_id for s in sent)  # every message, each exactly once
    for s in sent:
        assert len([e for e in events(daemon, s.queue_id) if e["event"] == "delivered"]) == 1
        assert deliveries(daemon, s.queue_id)[0]["state"] == "done"
