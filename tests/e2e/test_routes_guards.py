"""What protects mtad and the networks behind it, end to end: ``550 5.1.1`` at RCPT time for a recipient of a
receiving domain that no route would handle; a hostile recipient against a catastrophically backtracking
pattern answered promptly (RE2; and the ``regex`` fallback of ``allow_backtracking_regex`` within its time
budget; a rebuild of 5,000 routes after an API change that never stalls the daemon); and the SSRF guard: without ``routing.allowed_networks`` a forward URL to 127.0.0.1 (as an address
or as a name) is never connected to, and its failure events say why."""

from __future__ import annotations

import json
import smtplib
import threading
import time
import urllib.parse
import urllib.request

import pytest

from mtad.store.engine import Store, connect
from tests.support.api import basic_auth
from tests.e2e.routes_support import (accepted, assert_clean_exit, forward_events, forward_rows, route,
    routing_config, simple)
from tests.support.wait import wait_until
from tests.support.daemon import API_KEY, Mtad, base_config

# The most hostile address that reaches routing: the MX listener refuses local parts over 64 characters and
# addresses over 254 (RFC 5321's limits) before any route sees them. "(a+)+$" would backtrack about 2**63 times.
HOSTILE = "a" * 63 + "!@inbound.test"


def start(tmp_path_factory, certs, routes: list[dict], **routing) -> Mtad:
    tmp = tmp_path_factory.mktemp("routes-guards")
    cfg = routing_config(base_config(tmp, certs), routes, **routing)
    cfg["delivery"]["enabled"] = False
    cfg["limits"] = {"max_command_length": 8192}  # room for a 5,000-character recipient
    return Mtad(tmp, cfg).start()


@pytest.fixture(scope="module")
def strict(tmp_path_factory, certs, app):
    """No catch_all(), no allowed_networks (the default), RE2 only (the default)."""
    d = start(tmp_path_factory, certs, [
        route('match_recipient("(a+)+$")', f"forward('{app.url('hostile')}')", id="hostile"),
        route("match_recipient('known@inbound.test')", f"forward('{app.url('known')}')", "stop()"),
        route("match_recipient('ssrf-ip@inbound.test')", f"forward('http://127.0.0.1:{app.port}/ssrf-ip')", "stop()"),
        route("match_recipient('ssrf-name@inbound.test')", f"forward('http://localhost:{app.port}/ssrf-name')",
              "stop()"),
    ], allowed_networks=[], retry_schedule=["1s"])
    yield d
    problems = assert_clean_exit(d)
    assert not problems, "\n".join(problems)


def session(daemon: Mtad) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", daemon.mx, local_hostname="mta.sender.test", timeout=15)
    s.ehlo()
    code, text = s.mail("alice@sender.test")
    assert code == 250, text
    return s


def test_a_recipient_no_route_handles_is_refused_at_rcpt(strict):
    with session(strict) as s:
        code, text = s.rcpt("nobody@inbound.test")
        assert (code, text[:5]) == (550, b"5.1.1"), text
        code, text = s.rcpt("known@inbound.test")  # the session goes on; a routed recipient is taken
        assert code == 250, text
        code, text = s.data(simple("half of it", to="nobody@inbound.test, known@inbound.test"))
        assert code == 250, text
    (recipients,) = strict.query("SELECT recipients FROM messages")[0]
    assert recipients == '["known@inbound.test"]'


def test_a_hostile_recipient_is_answered_promptly_on_re2(strict):
    with session(strict) as s:
        started = time.monotonic()
        for _ in range(20):
            code, text = s.rcpt(HOSTILE)  # "(a+)+$" backtracks for ages in a backtracking engine
            assert code == 550, text
        elapsed = time.monotonic() - started
        assert elapsed < 2.0, f"20 hostile RCPTs took {elapsed:.2f}s"
        code, text = s.rcpt("a" * 5000 + "!@inbound.test")  # longer: refused as syntax, before routing
        assert (code, text[:5]) == (501, b"5.1.3"), text
        code, text = s.rcpt("known@inbound.test")
        assert code == 250, text


def test_without_allowed_networks_a_loopback_url_is_never_reached(strict, app):
    ip = accepted(strict, ["ssrf-ip@inbound.test"], simple("to loopback", to="ssrf-ip@inbound.test"))
    name = accepted(strict, ["ssrf-name@inbound.test"], simple("to localhost", to="ssrf-name@inbound.test"))
    for qid, url in ((ip, f"http://127.0.0.1:{app.port}/ssrf-ip"), (name, f"http://localhost:{app.port}/ssrf-name")):
        events = wait_until(lambda: any(e.get("severity") == "permanent" for e in forward_events(strict, qid))
                            and forward_events(strict, qid), what=f"the final failure for {url}")
        assert [(e["event"], e["severity"], e["delivery-status"]["code"], e["delivery-status"]["url"])
                for e in events] == [("failed", "temporary", 0, url), ("failed", "permanent", 0, url)]
        for e in events:
            assert "address not allowed (see routing.allowed_networks)" in e["delivery-status"]["message"]
        assert forward_rows(strict, qid)[0][1] == "failed"
    assert app.under("ssrf") == []  # never connected to, though the application listens there


@pytest.fixture(scope="module")
def lenient(tmp_path_factory, certs, app):
    """``allow_backtracking_regex: true`` and a route that needs it (a backreference) and backtracks badly."""
    d = start(tmp_path_factory, certs, [
        route(r'match_recipient("(a|a)+\1?-x@inbound\.test$")', f"forward('{app.url('backtracking')}')", "stop()"),
    ], allow_backtracking_regex=True)
    yield d
    problems = assert_clean_exit(d)
    assert not problems, "\n".join(problems)


def test_a_backtracking_regex_runs_within_its_time_budget(lenient, app):
    with session(lenient) as s:
        started = time.monotonic()
        code, text = s.rcpt("a" * 40 + "!-x@inbound.test")  # 2**40 ways to fail without the budget
        elapsed = time.monotonic() - started
        assert (code, elapsed < 1.0) == (550, True), (code, text, elapsed)
        code, text = s.rcpt("aaaa-x@inbound.test")  # the route still works for everyone else
        assert code == 250, text
        code, text = s.data(simple("backtracking", to="aaaa-x@inbound.test"))
        assert code == 250, text
    post = wait_until(lambda: app.to("backtracking"), what="the POST")[0]
    assert post.get("recipient") == "aaaa-x@inbound.test"
    assert "ran out of its time budget" in lenient.log()


def test_rebuilding_a_large_route_table_does_not_stall_the_daemon(tmp_path, certs, app):
    """5,000 API routes take about half a second to compile; the rebuild after an API change runs in a thread."""
    cfg = routing_config(base_config(tmp_path, certs), [
        route("match_recipient('known@inbound.test')", f"forward('{app.url('known')}')", "stop()")])
    cfg["delivery"]["enabled"] = False
    daemon = Mtad(tmp_path, cfg)
    store = Store(daemon.db_path)
    store.open()
    store.close()
    conn = connect(daemon.db_path)
    conn.executemany("INSERT INTO routes (id, priority, description, expression, actions, created_at)"
                     " VALUES (?, ?, '', ?, ?, ?)",
                     [(f"{i:024x}", i % 100, f"match_recipient('user{i}-(.*)@inbound\\.test')",
                       json.dumps([f"forward('http://127.0.0.1:9/{i}/\\1')", "stop()"]), i) for i in range(5_000)])
    conn.close()
    daemon.start()
    try:
        with session(daemon) as s:
            assert s.rcpt("user4999-x@inbound.test")[0] == 250  # the stored routes are live
            assert s.rcpt("new-route@inbound.test")[0] == 550
            created: list[int] = []
            request = urllib.request.Request(
                f"{daemon.api_url}/v3/routes", headers=basic_auth("api", API_KEY), method="POST",
                data=urllib.parse.urlencode({"priority": "0", "expression": "match_recipient('new-route@inbound.test')",
                                             "action": "stop()"}).encode())
            poster = threading.Thread(target=lambda: created.append(urllib.request.urlopen(request, timeout=60).status))
            rebuild_started = time.monotonic()
            poster.start()
            latencies = []
            while poster.is_alive():  # RCPTs answered while the table is rebuilt
                started = time.monotonic()
                assert s.rcpt("known@inbound.test")[0] == 250
                latencies.append(time.monotonic() - started)
                time.sleep(0.02)
            poster.join()
            rebuild = time.monotonic() - rebuild_started
            assert created == [200]
            # a rebuild on the event loop would hold one RCPT for (nearly) the whole rebuild; relative, so a
            # loaded machine slows both sides alike
            assert max(latencies) < rebuild / 2, f"slowest RCPT {max(latencies):.3f}s of a {rebuild:.3f}s rebuild"
            assert len(latencies) >= 5, latencies  # the rebuild took a while, and the daemon answered meanwhile
            assert s.rcpt("new-route@inbound.test")[0] == 250  # the new table is live
    finally:
        problems = assert_clean_exit(daemon)
    assert not problems, "\n".join(problems)
