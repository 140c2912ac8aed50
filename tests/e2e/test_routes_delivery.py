"""Delivery of route POSTs to the application, end to end: a 500 is retried on ``routing.retry_schedule`` and the
message then delivered exactly once, a 406 is not retried, an application that keeps failing gets the schedule
and then a permanent failure, each attempt leaves a ``delivered``/``failed`` event with the URL and HTTP status,
and forwards pending while the application is down survive a restart of mtad (SIGTERM or SIGKILL)."""

from __future__ import annotations

import time

import pytest

from tests.e2e.routes_support import (SIGNING_KEY, accepted, assert_clean_exit, forward_events, forward_rows, route,
    routing_config, simple, verify)
from tests.support.receiver import Receiver
from tests.support.wait import wait_until
from tests.support.daemon import Mtad, base_config


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, certs, app):
    tmp = tmp_path_factory.mktemp("routes-delivery")
    cfg = routing_config(base_config(tmp, certs), [
        route("match_recipient('retry@inbound.test')", f"forward('{app.url('fail-once/retry')}')", "stop()"),
        route("match_recipient('refuse@inbound.test')", f"forward('{app.url('refuse/it')}')", "stop()"),
        route("match_recipient('broken@inbound.test')", f"forward('{app.url('fail/always')}')", "stop()"),
    ])
    cfg["delivery"]["enabled"] = False
    d = Mtad(tmp, cfg).start()
    yield d
    problems = assert_clean_exit(d)
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def sent(daemon) -> dict[str, str]:
    """The three messages of the retry tests, sent at once so that their schedules run side by side."""
    return {rcpt: accepted(daemon, [f"{rcpt}@inbound.test"], simple(f"{rcpt} me", to=f"{rcpt}@inbound.test"))
            for rcpt in ("retry", "refuse", "broken")}


def wait_for_quiet(since: float) -> None:
    """Until 1.5 s (longer than a step of the schedule) after ``since``: a retry would have come by then."""
    time.sleep(max(0.0, since + 1.5 - time.time()))


def brief(event: dict) -> tuple:
    status = event["delivery-status"]
    return event["event"], event.get("severity", ""), status["code"], status["url"], status["attempt-no"]


def test_500_then_200_is_retried_and_delivered_exactly_once(daemon, app, sent):
    qid = sent["retry"]
    url = app.url("fail-once/retry")
    events = wait_until(lambda: len(forward_events(daemon, qid)) >= 2 and forward_events(daemon, qid),
                        what="the retried forward")
    assert [brief(e) for e in events] == [("failed", "temporary", 500, url, 1), ("delivered", "", 200, url, 2)]
    assert events[0]["delivery-status"]["retry-seconds"] in (0, 1)  # the schedule's first step: 1s
    assert events[0]["reason"] == "generic" and events[0]["route"]["id"] and events[0]["flags"]["is-routed"]
    wait_for_quiet(app.to("fail-once/retry")[-1].at)
    posts = app.to("fail-once/retry")
    assert [p.status for p in posts] == [500, 200]
    assert posts[1].at - posts[0].at >= 0.9  # waited for the schedule
    assert forward_rows(daemon, qid) == [(url, "done", 2, 200)]
    assert len(forward_events(daemon, qid)) == 2
    # the retry is the same message, signed afresh
    first, second = posts
    assert [f for f in first.fields if f[0] not in ("timestamp", "token", "signature")] == \
        [f for f in second.fields if f[0] not in ("timestamp", "token", "signature")]
    assert first.get("token") != second.get("token")
    assert all(verify(SIGNING_KEY, p.get("token"), p.get("timestamp"), p.get("signature")) for p in posts)


def test_406_is_not_retried(daemon, app, sent):
    qid = sent["refuse"]
    url = app.url("refuse/it")
    events = wait_until(lambda: forward_events(daemon, qid), what="the refused forward")
    wait_for_quiet(app.to("refuse/it")[0].at)
    assert [brief(e) for e in forward_events(daemon, qid)] == [("failed", "permanent", 406, url, 1)]
    assert events[0]["reason"] == "rejected"
    assert [p.status for p in app.to("refuse/it")] == [406]
    assert forward_rows(daemon, qid) == [(url, "failed", 1, 406)]


def test_an_application_that_keeps_failing_gets_the_schedule_then_a_permanent_failure(daemon, app, sent):
    qid = sent["broken"]
    url = app.url("fail/always")
    events = wait_until(lambda: any(e.get("severity") == "permanent" for e in forward_events(daemon, qid))
                        and forward_events(daemon, qid), timeout=15, what="the final failure")
    # retry_schedule [1s, 1s]: the first attempt and two retries
    assert [brief(e) for e in events] == [("failed", "temporary", 500, url, 1), ("failed", "temporary", 500, url, 2),
                                          ("failed", "permanent", 500, url, 3)]
    assert events[-1]["reason"] == "old"
    assert len(app.to("fail/always")) == 3
    assert forward_rows(daemon, qid) == [(url, "failed", 3, 500)]


def test_pending_forwards_survive_sigterm_and_sigkill(tmp_path, certs):
    app = Receiver(multipart_only=True)  # not started yet: the application is down
    cfg = routing_config(base_config(tmp_path, certs), [
        route("match_recipient('later-.*@inbound.test')", f"forward('{app.url('later')}')", "stop()")],
        retry_schedule=["1s"] * 10)
    cfg["delivery"]["enabled"] = False
    daemon = Mtad(tmp_path, cfg).start()
    try:
        def pending(rcpt: str) -> str:
            qid = accepted(daemon, [rcpt], simple(f"wait for me, {rcpt}", to=rcpt))
            # the application is down: the first attempt fails and the forward waits for its retry
            event = wait_until(lambda: forward_events(daemon, qid), what="the failed attempt")[0]
            assert brief(event) == ("failed", "temporary", 0, app.url("later"), 1)
            assert "Connect" in event["delivery-status"]["message"]  # why: the connection was refused
            return qid
        first = pending("later-1@inbound.test")
        assert daemon.stop() == 0  # SIGTERM
        assert forward_rows(daemon, first)[0][1] == "deferred"
        daemon.start()
        second = pending("later-2@inbound.test")
        daemon.kill()  # SIGKILL, perhaps in the middle of a retry
        app.start()  # the application comes back while mtad is down, then mtad comes back
        daemon.start()
        for qid, rcpt in ((first, "later-1@inbound.test"), (second, "later-2@inbound.test")):
            post = wait_until(lambda: app.for_recipient(rcpt), what=f"the POST for {rcpt} after the restart")[0]
            assert post.get("subject") == f"wait for me, {rcpt}" and post.path == "/later"
            assert verify(SIGNING_KEY, post.get("token"), post.get("timestamp"), post.get("signature"))
            wait_until(lambda: forward_rows(daemon, qid)[0][1] == "done", what=f"the forward for {rcpt} to be done")
            kinds = [brief(e)[:3] for e in forward_events(daemon, qid)]
            assert kinds[-1] == ("delivered", "", 200) and set(kinds[:-1]) == {("failed", "temporary", 0)}
        time.sleep(1.2)
        assert sorted(p.get("recipient") for p in app.to("later")) == ["later-1@inbound.test", "later-2@inbound.test"]
    finally:
        problems = assert_clean_exit(daemon)
        app.close()
    assert not problems, "\n".join(problems)
