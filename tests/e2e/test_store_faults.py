"""A running mtad whose disk fills up and then frees again, with no restart.

The fault is real: the daemon's file-size limit (RLIMIT_FSIZE) is lowered to 0 from outside with prlimit(2), as
util-linux's ``prlimit --pid`` does, so every write SQLite makes fails with EFBIG (Python ignores SIGXFSZ), exactly
where a full disk fails it; raising the limit again is the space coming back. While the store refuses writes, a
message sent to an MX and a route forward POSTed to an application both got their answer, so their outcomes could
not be recorded: once space returns they must be recorded within seconds, by the same process, and neither the
message nor the POST may be repeated.
"""

from __future__ import annotations

import resource
import threading
import time

import pytest

from tests.e2e.outbound_support import deliveries, outcomes, serve_domain, submit, wait_final
from tests.support.wait import wait_until
from tests.e2e.routes_support import accepted, forward_events, forward_rows, route, routing_config, simple


def _file_size_limit(pid: int, soft: int) -> None:
    """prlimit(2) on the running daemon: its soft RLIMIT_FSIZE (the hard one is left alone, so it can be raised)."""
    _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))


def test_outcomes_the_full_disk_refused_are_recorded_once_space_returns_and_nothing_is_sent_twice(
        outbound_mtad, loopback_dns, mx_farm, app, certs):
    mx = serve_domain(loopback_dns, mx_farm, "full-disk.test")
    mx.data_gate = threading.Event()
    app.gate.clear()
    url = app.url("held/full-disk")
    daemon = outbound_mtad(start=False)
    routing_config(daemon.cfg, [route("match_recipient('hook@inbound.test')", f"forward('{url}')", "stop()")])
    daemon.start()
    pid = daemon.proc.pid
    assert resource.prlimit(pid, resource.RLIMIT_FSIZE)[0] == resource.RLIM_INFINITY

    forward_qid = accepted(daemon, ["hook@inbound.test"], simple("disk full"))
    sent = submit(daemon, certs, ["user@full-disk.test"])
    # Both are in flight: the MX has the message and waits to answer DATA, the application has the POST.
    wait_until(lambda: mx.data_attempts and app.to("/held/full-disk"), 10, "the DATA and the POST")

    _file_size_limit(pid, 0)  # the disk is full
    try:
        mx.data_gate.set()  # 250 to DATA, 200 to the POST: outcomes the store cannot take
        app.gate.set()
        time.sleep(2.0)
        [row] = deliveries(daemon, sent.queue_id)
        assert (row["state"], row["attempts"]) == ("queued", 0) and row["locked_by"], row
        assert [r[1:3] for r in forward_rows(daemon, forward_qid)] == [("queued", 0)]
        assert outcomes(daemon, sent.queue_id) == [] and forward_events(daemon, forward_qid) == []
    finally:
        _file_size_limit(pid, resource.RLIM_INFINITY)  # space is back
    started = time.monotonic()

    final = wait_final(daemon, sent, timeout=10)["user@full-disk.test"]
    assert final["event"] == "delivered" and final["delivery-status"]["attempt-no"] == 1
    wait_until(lambda: forward_rows(daemon, forward_qid)[0][1] == "done", 10, "the forward's outcome")
    recorded_after = time.monotonic() - started
    print(f"outcomes recorded {recorded_after:.1f}s after space returned")
    assert recorded_after < 8, recorded_after

    time.sleep(2.5)  # longer than the retry schedule and many poll intervals: nothing is sent again
    assert len(mx.by_message_id(sent.message_id)) == 1 and len(mx.data_attempts) == 1
    assert len(app.to("/held/full-disk")) == 1
    [row] = deliveries(daemon, sent.queue_id)
    assert (row["state"], row["attempts"], row["locked_by"]) == ("done", 1, None)
    assert forward_rows(daemon, forward_qid) == [(url, "done", 1, 200)]
    assert [e["event"] for e in outcomes(daemon, sent.queue_id)] == ["delivered"]
    assert [e["event"] for e in forward_events(daemon, forward_qid)] == ["delivered"]
    assert "written after" in daemon.log()  # the lines of the fault itself were lost with the space
    # and the daemon goes on as before
    again = submit(daemon, certs, ["second@full-disk.test"])
    assert wait_final(daemon, again)["second@full-disk.test"]["event"] == "delivered"
