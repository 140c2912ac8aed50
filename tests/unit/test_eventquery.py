"""Event queries: filter expressions, time ranges, cursor paging over a real store of each backend."""

import json

import pytest

from mtad.events import query as eventquery
from mtad.store import textsearch
from mtad.events.query import Page, QueryError, events_query, events_spec, parse_expression
from tests.support.stores import backend_store  # noqa: F401 (fixture)


def test_expression_grammar():
    assert parse_expression("failed") == ("value", "failed")
    assert parse_expression("failed OR delivered") == ("or", [("value", "failed"), ("value", "delivered")])
    assert parse_expression("NOT accepted") == ("not", ("value", "accepted"))
    assert parse_expression("(a OR b) AND NOT c") == (
        "and", [("or", [("value", "a"), ("value", "b")]), ("not", ("value", "c"))])
    assert parse_expression('"hello world" x') == ("and", [("value", "hello world"), ("value", "x")])
    assert parse_expression("a OR b c") == ("or", [("value", "a"), ("and", [("value", "b"), ("value", "c")])])


@pytest.mark.parametrize("bad", ["", "(a", "a)", "OR", "a OR", "NOT"])
def test_bad_expressions_are_query_errors(bad):
    with pytest.raises(QueryError):
        parse_expression(bad)


def test_times_accept_rfc2822_and_epoch():
    assert eventquery.parse_time("1700000000", "begin") == 1700000000.0
    assert eventquery.parse_time("Tue, 14 Nov 2023 22:13:20 +0000", "begin") == 1700000000.0
    assert eventquery.rfc2822(1700000000) == "Tue, 14 Nov 2023 22:13:20 UTC"
    with pytest.raises(QueryError):
        eventquery.parse_time("yesterday", "begin")


def test_direction_follows_begin_and_end():
    assert events_spec({"begin": "100", "end": "200"}, 0)["ascending"] is True
    desc = events_spec({"begin": "200", "end": "100"}, 0)
    assert (desc["ascending"], desc["lo"], desc["hi"]) == (False, 100.0, 200.0)
    assert events_spec({}, 0)["ascending"] is False
    assert events_spec({"begin": "100"}, 0)["ascending"] is True
    with pytest.raises(QueryError):
        events_spec({"begin": "100", "end": "200", "ascending": "no"}, 0)
    with pytest.raises(QueryError):
        events_spec({"limit": "301"}, 0)


@pytest.fixture
def store(backend_store):
    return backend_store()


@pytest.fixture
def conn(store, backend_store):
    c = backend_store.direct()
    rows = []
    for i in range(40):
        kind = ("accepted", "delivered", "failed", "delivered")[i % 4]
        event = {"id": f"e{i}", "event": kind, "timestamp": 1000.0 + i // 2, "recipient": f"R{i % 5}@x.test",
                 "tags": ["even" if i % 2 == 0 else "odd"], "severity": "permanent" if kind == "failed" else "",
                 "message": {"headers": {"message-id": f"m{i % 3}@x", "from": "Alice <alice@example.com>",
                                         "subject": f"Hello number {i}"}}}
        rows.append((event["id"], event["timestamp"], "example.com", kind, event["recipient"],
                     f"m{i % 3}@x", "", event["severity"], json.dumps(event)))
    c.executemany("INSERT INTO events (id, timestamp, domain, event, recipient, message_id, queue_id, severity, data)"
                  " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    c.execute("INSERT INTO events (id, timestamp, domain, event, data) VALUES ('other', 1005, 'other.org', 'accepted', '{}')")
    textsearch.backfill(c)  # rows written with SQL, not by the store: their subjects indexed as the migration does
    return c


async def ids(store, params, page=Page()):
    spec = events_spec(params, 0)
    return [json.loads(r.data)["id"] for r in (await eventquery.fetch(store, events_query("example.com", spec), page)).rows]


async def test_filters(conn, store):
    assert len(await ids(store, {"event": "failed"})) == 10
    assert len(await ids(store, {"event": "failed OR delivered"})) == 30
    assert len(await ids(store, {"event": "NOT accepted"})) == 30
    assert await ids(store, {"recipient": "r1@X.test", "ascending": "yes"}) == ["e1", "e6", "e11", "e16", "e21", "e26",
                                                                        "e31", "e36"]
    assert len(await ids(store, {"tags": "EVEN"})) == 20
    assert len(await ids(store, {"tags": "NOT even"})) == 20
    assert len(await ids(store, {"message-id": "<m0@x>"})) == 14
    assert await ids(store, {"subject": "number 17"}) == ["e17"]
    assert len(await ids(store, {"from": "alice@example"})) == 40
    assert len(await ids(store, {"severity": "permanent"})) == 10
    assert len(await ids(store, {"event": "failed", "tags": "even"})) == 10
    assert await ids(store, {"recipient": "r1@x.test", "event": "NOT accepted"}) == ["e31", "e26", "e21", "e11", "e6", "e1"]
    assert await ids(store, {"recipient": "r1@x.test", "begin": "1005", "end": "1012"}) == ["e11", "e16", "e21"]
    assert await ids(store, {"message-id": "m0@x", "tags": "odd", "limit": "2"}) == ["e39", "e33"]
    assert (await eventquery.fetch(store, events_query("nobody.test", events_spec({"recipient": "a@b"}, 0)),
                                   Page())).rows == ()
    assert await ids(store, {"begin": "1003", "end": "1004"}) == ["e6", "e7", "e8", "e9"]
    assert await ids(store, {"begin": "1004", "end": "1003"}) == ["e9", "e8", "e7", "e6"]


async def test_paging_both_ways_with_new_events_arriving(conn, store):
    spec = events_spec({"ascending": "yes", "limit": "7"}, 0)
    query = events_query("example.com", spec)
    seen, page = [], Page()
    while True:
        result = await eventquery.fetch(store, query, page)
        if not result.rows:
            break
        seen += [r.seq for r in result.rows]
        page = result.next
        if len(seen) == 14:  # new events arrive mid-traversal, some with an equal timestamp
            conn.execute("INSERT INTO events (id, timestamp, domain, event, data) VALUES"
                         " ('late1', 1019, 'example.com', 'accepted', '{}'), ('late2', 1030, 'example.com', 'accepted', '{}')")
    assert len(seen) == 42 and len(set(seen)) == 42 and seen == sorted(seen)
    # an empty page's next is itself: polling finds the next new event
    conn.execute("INSERT INTO events (id, timestamp, domain, event, data) VALUES ('late3', 1031, 'example.com', 'accepted', '{}')")
    again = await eventquery.fetch(store, query, page)
    assert [r.seq for r in again.rows] == [max(seen) + 1]
    # and back again with previous
    back, page = [], again.previous
    while True:
        result = await eventquery.fetch(store, query, page)
        if not result.rows:
            break
        assert [r.seq for r in result.rows] == sorted(r.seq for r in result.rows)  # pages keep the query's order
        back = [r.seq for r in result.rows] + back
        page = result.previous
    assert back == seen
    last = await eventquery.fetch(store, query, Page(None, "before"))
    assert [r.seq for r in last.rows] == (seen + [max(seen) + 1])[-7:]


def test_tokens_round_trip_and_refuse_garbage():
    page = Page((1000.5, 7), "before")
    token = page.encode({"filters": {}, "ascending": True, "limit": 5})
    assert Page.decode(token) == (page, {"filters": {}, "ascending": True, "limit": 5})
    with pytest.raises(QueryError):
        Page.decode("not-a-token!")


async def test_logs_query_filters(conn, store):
    body = {"start": "1000", "end": "1030", "events": ["failed", "delivered"],
            "filter": {"AND": [{"attribute": "domain", "comparator": "=", "values": [{"label": "x", "value": "example.com"}]},
                               {"attribute": "recipient", "comparator": "!=", "values": [{"value": "r0@x.test"}]}]},
            "pagination": {"sort": "timestamp:asc", "limit": 50}}
    query, echo = eventquery.logs_query(body, frozenset(), 2000)
    rows = (await eventquery.fetch(store, query, Page())).rows
    assert echo["start"] == eventquery.rfc2822(1000)
    assert len(rows) == await store.count_events(query) == 24
    assert all(json.loads(r.data)["recipient"] != "R0@x.test" for r in rows)
    restricted, _ = eventquery.logs_query({"start": "1000", "end": "1030"}, frozenset({"other.org"}), 2000)
    assert [r.domain for r in (await eventquery.fetch(store, restricted, Page())).rows] == ["other.org"]
    with pytest.raises(QueryError):
        eventquery.logs_query({"filter": {"AND": [{"attribute": "nope", "values": ["x"]}]}}, frozenset(), 0)


@pytest.mark.parametrize("bad", ["NaN", "nan", "inf", "-inf", "1e400", "253402300800", "-1",
                                 "Fri, 01 Jan 10000 00:00:00 +0000", "Sat, 01 Jan 1000 00:00:00 +0000"])
def test_times_that_cannot_be_written_are_query_errors(bad):
    with pytest.raises(QueryError):
        eventquery.parse_time(bad, "begin")
    assert eventquery.rfc2822(eventquery.parse_time("253402300799", "end")) == "Fri, 31 Dec 9999 23:59:59 UTC"


@pytest.mark.parametrize("deep", ["(" * 33 + "a" + ")" * 33, "NOT " * 33 + "a", "(" * 5000 + "a" + ")" * 5000,
                                  "NOT " * 5000 + "a"])
def test_expressions_nested_too_deep_are_query_errors_not_recursion(deep):
    with pytest.raises(QueryError, match="nested"):
        parse_expression(deep)
    assert parse_expression("(" * 32 + "a" + ")" * 32) == ("value", "a")


@pytest.mark.parametrize("body", [{"pagination": "x"}, {"metric_events": [[]]}, {"events": [{}]}, {"end": "NaN"},
                                  {"filter": {"AND": 5}}, {"filter": {"AND": [{"attribute": "tags", "values": "x"}]}},
                                  {"pagination": {"limit": True}}, {"include_totals": 1}, {"duration": "9" * 50 + "d"}])
def test_logs_bodies_of_the_wrong_types_are_query_errors(body):
    with pytest.raises(QueryError):
        eventquery.logs_query(body, frozenset(), 1_700_000_000)


def test_a_page_token_nested_too_deep_is_invalid():
    import base64
    with pytest.raises(QueryError, match="page token"):
        Page.decode(base64.urlsafe_b64encode(b"[" * 5000 + b"]" * 5000).decode())
