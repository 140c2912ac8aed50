"""A group commit's events and counters on every backend: what a burst of ``record_events`` writes reads back
exactly (each event's JSON as the API shows it, user variables inline and stored once), and the counters equal
the events, per tag, per hour and per provider. On PostgreSQL the burst's events go in one statement whose
columns are array parameters (``store.events._EVENTS_PG``) and each counter table's UPSERT likewise: the texts
below hold what an array's text form must escape (quotes, backslashes, braces, commas, ``NULL``, unicode)."""

from __future__ import annotations

import asyncio
import json
import time

from mtad.events import shape
from mtad.store import eventquery
from mtad.store.counters import CounterQuery
from mtad.store.events import INLINE_VARIABLES, NewEvent
from tests.support.stores import backend_store  # noqa: F401 (fixture)

NOW = float(int(time.time()) // 3600 * 3600) + 600.25  # within an hour: the hourly counters are one row per key
ODD = ['plain', '', 'NULL', 'a "quoted" word', 'back\\slash\\', '{braces},commas', 'Grüße ✓', '\\"', 'tab\tnl\n']


def burst(n: int) -> list[NewEvent]:
    out = []
    for i in range(n):
        odd = ODD[i % len(ODD)]
        kind = ("delivered", "failed", "accepted")[i % 3]
        headers = {"from": f"{odd} <s@a.test>", "to": f"r{i}@dest{i % 2}.test", "subject": odd,
                   "message-id": f"m{i}@a.test"}
        data = shape.base_event(kind, timestamp=NOW + i * 0.001, recipient=f"r{i}@dest{i % 2}.test",
                                queue_id=f"Q{i}", message=shape.message_part(headers, 100),
                                options={}, envelope={"sender": "s@a.test", "targets": f"r{i}@dest.test",
                                                      "transport": "smtp"}, flags={})
        data["tags"] = [odd or "empty", "all"]
        data["recipient-domain"] = f"dest{i % 2}.test"
        if kind == "failed":
            data["severity"] = "permanent"
        if i % 4 == 0:  # inline user variables; every 8th so large that they are stored once
            data["user-variables"] = {"k": odd, "big": "x" * (INLINE_VARIABLES if i % 8 == 0 else 3)}
        out.append(NewEvent("a.test", data))
    return out


async def test_a_burst_of_events_reads_back_exactly_with_its_counters(backend_store):
    store = backend_store()
    events = burst(45)
    # several writers at once: their events share group commits (a burst of several sizes per statement)
    await asyncio.gather(*(store.record_events(events[i:i + k]) for i, k in ((0, 1), (1, 7), (8, 13), (21, 24))))
    page = await store.query_events(eventquery.EventQuery(("a.test",), limit=300, ascending=True),
                                    eventquery.Cursor())
    got = {json.loads(row.data)["id"]: json.loads(row.data) for row in page.rows}
    assert got == {e.data["id"]: json.loads(json.dumps(e.data)) for e in events}
    assert [row.timestamp for row in page.rows] == sorted(e.data["timestamp"] for e in events)

    def counts(q: CounterQuery) -> dict[tuple[str, int], int]:
        return {(r.key, r.n): r.count for r in q}
    hour = int(NOW // 3600)
    total, tagged, by_dim = await store.counter_rows(
        CounterQuery(("delivered", "failed", "accepted"), 0, 4e9, "hour", domains=("a.test",)),
        CounterQuery(("delivered",), 0, 4e9, "day", domains=("a.test",), tag="a \"quoted\" word", by_time=False),
        CounterQuery(("delivered",), 0, 4e9, "day", domains=("a.test",), dim=("provider", None), group="value",
                     by_time=False))
    delivered = [e for e in events if e.data["event"] == "delivered"]
    assert counts(total) == {("delivered:smtp", hour): 15, ("failed:permanent:bounce", hour): 15,
                             ("accepted:outgoing", hour): 15}
    assert sum(r.count for r in tagged if r.key == "delivered:smtp") == \
        sum(1 for e in delivered if "a \"quoted\" word" in e.data["tags"])
    assert {r.group: r.count for r in by_dim if r.key == "delivered:smtp"} == {
        d: sum(1 for e in delivered if e.data["recipient-domain"] == d) for d in ("dest0.test", "dest1.test")}
