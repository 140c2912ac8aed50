"""The events' text index (``store.textsearch``) on every backend (SQLite FTS5 trigram, PostgreSQL pg_trgm): the
``subject`` and ``from`` filters find through it exactly the events a scan of every event finds, one index row
per message, filled for the events a store held before the index existed, pruned with the events."""

from __future__ import annotations

import dataclasses
import time

from mtad.events import query as q
from mtad.events import shape
from mtad.store import eventquery, textsearch
from mtad.store.events import NewEvent
from tests.support.stores import backend_store  # noqa: F401 (fixture)

NOW = time.time()
MESSAGES = [  # (domain, Message-ID, Subject, From)
    ("a.test", "m1@a.test", "Your order 12345 has shipped", "Shop <news@a.test>"),
    ("a.test", "m2@a.test", "Quarterly REPORT for Q3", "Finance <fin@a.test>"),
    ("a.test", "m3@a.test", '100% "quoted" under_score', "Odd <odd@a.test>"),
    ("a.test", "m4@a.test", "Ünïcode subject: Grüße", "Grüße <g@a.test>"),
    ("a.test", "m1@a.test", "Another subject, same Message-ID", "Reuser <re@a.test>"),  # a reused Message-ID
    ("a.test", "", "No message id at all: order 999", "Nobody <no@a.test>"),
    ("b.test", "m5@b.test", "Your order 12399 is late", "Shop <news@b.test>"),
]


def events_of(n: int, domain: str, mid: str, subject: str, sender: str, start: float) -> list[NewEvent]:
    out = []
    for k, kind in enumerate(("accepted", "delivered", "opened")):  # three events a message
        headers = {"from": sender, "to": f"r{n}@dest.test", "subject": subject}
        if mid:
            headers["message-id"] = mid
        data = shape.base_event(kind, timestamp=start + n * 600 + k * 7200, recipient=f"r{n}@dest.test",
                                queue_id=f"Q{n}", message=shape.message_part(headers, 100), options={},
                                envelope={"sender": "s@a.test", "targets": f"r{n}@dest.test", "transport": "smtp"},
                                flags={})
        out.append(NewEvent(domain, data))
    return out


def all_events(start: float) -> list[NewEvent]:
    return [e for n, m in enumerate(MESSAGES) for e in events_of(n, *m, start)]


def expected(evs: list[NewEvent], field: str, texts: list[str], domains, lo=None, hi=None) -> list[str]:
    """The scan's answer, computed here: events whose header contains every text (ASCII case folded, as
    SQLite's LIKE; non-ASCII texts below are given in their stored case)."""
    out = []
    for e in evs:
        value = e.data["message"]["headers"][field]
        if domains is not None and e.domain not in domains:
            continue
        if lo is not None and not lo <= e.data["timestamp"] <= hi:
            continue
        if all(t.lower() in value.lower() for t in texts):
            out.append(e.data["id"])
    return sorted(out, key=lambda i: next(-x.data["timestamp"] for x in evs if x.data["id"] == i))


def query(field: str, expression: str, domains=None, lo=None, hi=None, limit=300) -> eventquery.EventQuery:
    spec = q.events_spec({field: expression}, NOW)
    spec.update(ascending=False, lo=lo, hi=hi, limit=limit)
    return dataclasses.replace(q.events_query("-", spec), domains=domains)


async def ids(store, qy: eventquery.EventQuery) -> list[str]:
    import json
    page = await store.query_events(qy, eventquery.Cursor())
    return [json.loads(r.data)["id"] for r in page.rows]


async def test_text_filters_find_through_the_index_what_a_scan_finds(backend_store):
    store = backend_store()
    start = NOW - 86400
    evs = all_events(start)
    await store.record_events(evs)
    conn = backend_store.direct()
    # one row per message (and per other Subject/From of a reused Message-ID), not per event
    assert conn.execute("SELECT count(*) FROM message_text").fetchone()[0] == len(MESSAGES)
    cases = [
        ("subject", "order", ["order"], None),
        ("subject", "ORDER 123", ["order", "123"], None),  # words side by side: AND
        ("subject", '"order 12345"', ["order 12345"], None),
        ("subject", "report", ["report"], None),
        ("subject", "order", ["order"], ("b.test",)),
        ("subject", '"100% \\"quoted\\""', ['100% "quoted"'], None),
        ("subject", "under_score", ["under_score"], None),
        ("subject", "der_sc", ["der_sc"], None),
        ("subject", "Ünïcode", ["Ünïcode"], None),
        ("subject", "Same Message-ID", ["same message-id"], None),
        ("subject", "no such text", ["no such text"], None),
        ("from", "news@", ["news@"], None),
        ("from", "Grüße", ["Grüße"], None),
    ]
    for field, expression, texts, domains in cases:
        qy = query(field, expression, domains)
        assert await store.read(lambda c, qy=qy: eventquery.text_index(c, qy)) is not None, expression
        want = expected(evs, field, texts, domains)
        assert await ids(store, qy) == want, expression
        assert await store.count_events(qy) == len(want), expression
    # a period: only the events inside it, though their messages began before it
    lo, hi = start + 7200, start + 7200 + 1800
    assert await ids(store, query("subject", "order", None, lo, hi)) == expected(evs, "subject", ["order"], None, lo, hi)
    # texts the index cannot find are scanned, with the same answer: short, or only under OR / NOT
    for expression, check in (("12", lambda v: "12" in v), ("shipped OR late", lambda v: "shipped" in v or "late" in v),
                              ("NOT order", lambda v: "order" not in v.lower())):
        qy = query("subject", expression)
        assert await store.read(lambda c, qy=qy: eventquery.text_index(c, qy)) is None, expression
        want = [e.data["id"] for e in sorted(evs, key=lambda e: -e.data["timestamp"])
                if check(e.data["message"]["headers"]["subject"])]
        assert await ids(store, qy) == want, expression


async def test_pages_of_an_indexed_text_filter_follow_each_other(backend_store):
    store = backend_store()
    evs = all_events(NOW - 86400)
    await store.record_events(evs)
    qy = query("subject", "order", limit=4)
    want = expected(evs, "subject", ["order"], None)
    got: list[str] = []
    cursor = eventquery.Cursor()
    while True:
        import json
        page = await store.query_events(qy, cursor)
        if not page.rows:
            break
        got += [json.loads(r.data)["id"] for r in page.rows]
        last = page.rows[-1]
        cursor = eventquery.Cursor((last.timestamp, last.seq), "after")
    assert got == want and len(got) == 9


async def test_the_index_is_filled_for_events_stored_before_it(backend_store):
    from mtad.store.migrations import postgresql, sqlite
    store = backend_store()
    evs = all_events(NOW - 86400)
    await store.record_events(evs)
    store.close()
    conn = backend_store.direct()
    steps = postgresql.STEPS if backend_store.backend == "postgresql" else sqlite.STEPS
    step = next(s.version for s in steps if "message_text" in s.description)
    conn.execute("DELETE FROM message_text")  # a store of the version before the index: no rows in it
    if backend_store.backend == "postgresql":
        conn.execute("DELETE FROM mtad_schema WHERE version >= ?", (step,))
    else:
        conn.execute(f"PRAGMA user_version={step - 1}")
    conn.close()
    store = backend_store()  # migrates: the step fills the index from the events
    assert (await store.read(lambda c: c.execute("SELECT count(*) FROM message_text").fetchone()))[0] == len(MESSAGES)
    qy = query("subject", "order")
    assert await store.read(lambda c: eventquery.text_index(c, qy)) is not None
    assert await ids(store, qy) == expected(evs, "subject", ["order"], None)


async def test_index_rows_are_pruned_with_their_last_event(backend_store):
    store = backend_store()
    old = all_events(NOW - 40 * 86400)[:3]  # one message, 40 days ago
    await store.record_events(old + all_events(NOW - 3600)[3:6])
    while await store.prune_events(NOW - 30 * 86400, 1000):
        pass
    rows = await store.read(lambda c: c.execute("SELECT message_id, subject FROM message_text").fetchall())
    assert [tuple(r) for r in rows] == [(MESSAGES[1][1], MESSAGES[1][2])]
    assert await ids(store, query("subject", "order 12345")) == []


async def test_a_message_row_spans_the_hours_of_its_events_written_one_commit_at_a_time(backend_store):
    """Each event in a commit of its own, in any order: the message's row moves its first or last hour only when
    an event widens them (on PostgreSQL the events inside its hours are not even upserted), and stays one row."""
    store = backend_store()
    hour = float(int(NOW // 3600) * 3600)

    def event(at: float) -> NewEvent:
        headers = {"from": "Shop <s@a.test>", "to": "r@dest.test", "subject": "Widening hours", "message-id": "w@a.test"}
        return NewEvent("a.test", shape.base_event("delivered", timestamp=at, recipient="r@dest.test", queue_id="QW",
                                                   message=shape.message_part(headers, 100), options={},
                                                   envelope={"sender": "s@a.test", "targets": "r@dest.test",
                                                             "transport": "smtp"}, flags={}))

    async def span() -> list[tuple[float, float]]:
        rows = await store.read(lambda c: c.execute("SELECT first_at, last_at FROM message_text").fetchall())
        return [(float(a), float(b)) for a, b in rows]
    end = textsearch.HOUR_END
    steps = [(hour + 10, (hour, hour + end)), (hour + 3000, (hour, hour + end)),  # the same hour: unchanged
             (hour + 7300, (hour, hour + 7200 + end)),  # a later hour: last moves
             (hour - 3500, (hour - 3600, hour + 7200 + end)),  # an earlier hour: first moves
             (hour + 3700, (hour - 3600, hour + 7200 + end))]  # inside: unchanged
    for at, want in steps:
        await store.record_events([event(at)])
        assert await span() == [want]
    assert len(await ids(store, query("subject", "widening hours", lo=hour - 7200, hi=hour + 4 * 3600))) == 5
