"""Which routes a message takes, end to end: the priority waterfall with stop() and catch_all(), each recipient
of one message on its own, captures filling forward URLs (``\\1``, ``\\g<name>``, URL-encoded, never the host),
match_header on any value of a header, ``and``, several destinations (a comma list and several forward()
actions), and at RCPT time: acceptance when a catch_all() exists."""

from __future__ import annotations

import time
from urllib.parse import unquote

import pytest

from tests.e2e.routes_support import (accepted, assert_clean_exit, forward_events, inbound, route, routing_config,
    simple)
from tests.support.receiver import Receiver
from tests.support.wait import wait_until
from tests.support.daemon import Mtad, base_config


def routes(app: Receiver) -> list[dict]:
    base = f"http://127.0.0.1:{app.port}"
    return [  # deliberately not in priority order: priority decides, not the order of the file
        route("catch_all()", f"forward('{app.url('catch-all')}')", priority=30, id="catch-all"),
        route("match_recipient('.*')", f"forward('{app.url('after-catch-all')}')", priority=40, id="after-catch-all"),
        route("match_recipient('wf-stop@inbound.test')", f"forward('{app.url('wf/2')}')", "stop()",
              priority=20, id="wf-2"),
        route("match_recipient('wf-.*@inbound.test')", f"forward('{app.url('wf/1')}')", priority=10, id="wf-1"),
        route("match_recipient('.*@INBOUND.TEST') and match_recipient('wf-')", f"forward('{app.url('wf/3')}')",
              priority=25, id="wf-3"),
        # captures
        route(r'match_recipient("cap-(.*)@inbound.test")', f'forward("{base}/cap/\\1?mailbox=\\1")', "stop()",
              priority=-10, id="cap"),
        route(r"match_recipient(r'(?P<user>named-[^@]*)@(?P<domain>inbound\.test)')",
              f"forward(r'{base}/named/\\g<domain>/\\g<user>')", "stop()", priority=-10, id="named"),
        # headers
        route("match_recipient('and@inbound.test') and match_header('Subject', 'urgent')",
              f"forward('{app.url('and')}')", "stop()", priority=-5, id="and"),
        route("match_header('x-ticket', '^T-[0-9]+$')", f"forward('{app.url('ticket')}')", "stop()",
              priority=-5, id="ticket"),
        # several destinations
        route("match_recipient('multi@inbound.test')", f"forward('{app.url('multi/a')}, {app.url('multi/b')}')",
              f'forward("{app.url("multi/c")}")', "stop()", priority=-3, id="multi"),
    ]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, certs, app):
    tmp = tmp_path_factory.mktemp("routes-matching")
    cfg = routing_config(base_config(tmp, certs), routes(app))
    cfg["delivery"]["enabled"] = False
    d = Mtad(tmp, cfg).start()
    yield d
    problems = assert_clean_exit(d)
    assert not problems, "\n".join(problems)


def destinations(daemon: Mtad, queue_id: str) -> dict[str, list[str]]:
    """recipient -> forward URLs in the order routing created them."""
    found: dict[str, list[str]] = {}
    for rcpt, dest in daemon.query("SELECT recipient, destination FROM forwards WHERE message = ? ORDER BY id",
                                   (queue_id,)):
        found.setdefault(rcpt, []).append(dest)
    return found


def settled(daemon: Mtad, queue_id: str, count: int) -> list[dict]:
    """Wait for ``count`` forward events of the message, then a little longer: nothing more may come."""
    wait_until(lambda: len(forward_events(daemon, queue_id)) >= count, what=f"{count} forward events")
    time.sleep(0.3)
    found = forward_events(daemon, queue_id)
    assert len(found) == count, found
    return found


def paths_for(app: Receiver, recipient: str) -> list[str]:
    return sorted(p.path for p in app.for_recipient(recipient))


def test_priority_waterfall_with_stop_and_catch_all_per_recipient(daemon, app):
    rcpts = ["wf-go@inbound.test", "wf-stop@inbound.test", "nobody@inbound.test"]
    qid = accepted(daemon, rcpts, simple("waterfall", to=", ".join(rcpts)))
    settled(daemon, qid, 7)
    url = app.url
    assert destinations(daemon, qid) == {
        # every matching route runs, in priority order; catch_all() is skipped: an earlier route matched
        "wf-go@inbound.test": [url("wf/1"), url("wf/3"), url("after-catch-all")],
        # stop() ends the waterfall
        "wf-stop@inbound.test": [url("wf/1"), url("wf/2")],
        # nothing earlier matched: catch_all(), which does not stop what comes after it
        "nobody@inbound.test": [url("catch-all"), url("after-catch-all")],
    }
    assert paths_for(app, "wf-go@inbound.test") == ["/after-catch-all", "/wf/1", "/wf/3"]
    assert paths_for(app, "wf-stop@inbound.test") == ["/wf/1", "/wf/2"]
    assert paths_for(app, "nobody@inbound.test") == ["/after-catch-all", "/catch-all"]
    routes_used = {(e["recipient"], e["route"]["id"]) for e in forward_events(daemon, qid)}
    assert ("wf-stop@inbound.test", "wf-2") in routes_used and ("nobody@inbound.test", "catch-all") in routes_used


def test_captures_fill_the_url_encoded_and_cannot_change_its_host(daemon, app):
    odd = "a/b?c=d&e%f#g+h"  # URL delimiters that an address's local part may hold
    rcpts = ["cap-sales@inbound.test", f"cap-{odd}@inbound.test", "cap-..%2F..%2Fadmin@inbound.test",
             "named-Joe.Smith@inbound.test"]
    qid = accepted(daemon, rcpts, simple("captures"))
    settled(daemon, qid, 4)
    sales = app.for_recipient("cap-sales@inbound.test")[0]
    assert (sales.path, sales.query) == ("/cap/sales", {"mailbox": ["sales"]})
    encoded = app.for_recipient(f"cap-{odd}@inbound.test")[0]
    # one path segment and one query value, which decode to exactly the captured text (the HTTP client may
    # write "=" and "&" of a path segment literally: the same path to any server)
    assert encoded.path.split("/")[:2] == ["", "cap"] and [unquote(x) for x in encoded.path.split("/")[2:]] == [odd]
    assert encoded.query == {"mailbox": [odd]}
    traversal = app.for_recipient("cap-..%2F..%2Fadmin@inbound.test")[0]
    assert traversal.path == "/cap/..%252F..%252Fadmin"  # stays one path segment on the same host
    named = app.for_recipient("named-Joe.Smith@inbound.test")[0]
    assert named.path == "/named/inbound.test/named-Joe.Smith"
    # every one of them went to the route's own host and port (they reached this app)
    assert {e["delivery-status"]["url"].split("/")[2] for e in forward_events(daemon, qid)} == {f"127.0.0.1:{app.port}"}


def test_match_header_on_any_value_and_and_needs_every_filter(daemon, app):
    urgent = accepted(daemon, ["and@inbound.test"], simple("Re: URGENT: disk full", to="and@inbound.test"))
    calm = accepted(daemon, ["and@inbound.test"], simple("all calm", to="and@inbound.test"))
    # match_header alone: any value of the header (here the second of two) and any recipient
    ticket = accepted(daemon, ["help@inbound.test"],
                      simple("question", to="help@inbound.test", extra="X-Ticket: none\r\nX-Ticket: T-42\r\n"))
    no_ticket = accepted(daemon, ["help2@inbound.test"],
                         simple("question", to="help2@inbound.test", extra="X-Ticket: T-42b\r\n"))
    for qid, n in ((urgent, 1), (calm, 2), (ticket, 1), (no_ticket, 2)):
        settled(daemon, qid, n)
    assert destinations(daemon, urgent) == {"and@inbound.test": [app.url("and")]}
    assert destinations(daemon, calm) == {"and@inbound.test": [app.url("catch-all"), app.url("after-catch-all")]}
    assert destinations(daemon, ticket) == {"help@inbound.test": [app.url("ticket")]}
    assert destinations(daemon, no_ticket) == {"help2@inbound.test": [app.url("catch-all"), app.url("after-catch-all")]}
    assert [p.get("subject") for p in app.to("and")] == ["Re: URGENT: disk full"]
    assert [p.all("X-Ticket") for p in app.to("ticket")] == [["none", "T-42"]]


def test_several_destinations_each_get_one_post(daemon, app):
    qid = accepted(daemon, ["multi@inbound.test"], simple("to many", to="multi@inbound.test"))
    events = settled(daemon, qid, 3)
    assert paths_for(app, "multi@inbound.test") == ["/multi/a", "/multi/b", "/multi/c"]
    assert sorted(e["delivery-status"]["url"] for e in events) == [app.url(f"multi/{x}") for x in "abc"]
    assert {e["event"] for e in events} == {"delivered"}


def test_a_catch_all_route_accepts_any_recipient_of_the_receiving_domain(daemon):
    code, text = inbound(daemon, ["zz-never-heard-of@inbound.test"], simple("anyone"))
    assert code == 250, text
    # a domain mtad does not receive for is still relay-denied, whatever the routes
    code, text = inbound(daemon, ["someone@elsewhere.test"], simple("relay"))
    assert code == 554 and "5.7.1" in text
