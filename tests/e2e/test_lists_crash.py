"""A mailing-list expansion survives kill -9 (issue 14): SIGKILL the daemon in the middle of expanding a
15,000-member list, start it again, and every member has exactly one queued copy (one message, one delivery
row, one ``accepted`` event each); outbound delivery is off so the copies stay in the queue to be counted."""

from __future__ import annotations

import asyncio
import json
import time

from tests.support.api import api
from tests.support.wait import wait_until

MEMBERS = 15_000


async def test_a_killed_expansion_resumes_with_exactly_one_copy_per_member(daemon_factory):
    daemon = daemon_factory()  # delivery disabled: copies stay queued
    await api(daemon, "POST", "/v3/lists", data={"address": "huge@example.com"})
    chunks = [[f"m{i:05d}@members.test" for i in range(start, start + 1000)] for start in range(0, MEMBERS, 1000)]
    await asyncio.gather(*(api(daemon, "POST", "/v3/lists/huge@example.com/members.json",
                               data={"members": json.dumps(chunk)}) for chunk in chunks))
    assert (await api(daemon, "GET", "/v3/lists/huge@example.com"))["list"]["members_count"] == MEMBERS
    await api(daemon, "POST", "/v3/example.com/messages", data={
        "from": "news@example.com", "to": "huge@example.com", "subject": "Hi %recipient%", "text": "%recipient%"})

    def copies() -> int:
        rows = daemon.query("SELECT copies FROM list_expansions")
        return rows[0][0] if rows else 0
    started = wait_until(lambda: copies() > 0 and copies(), timeout=20, what="the expansion to start", interval=0.005)
    daemon.kill()
    at_kill = copies()
    assert 0 < at_kill < MEMBERS, f"killed too late to test anything: {at_kill} of {MEMBERS} copies ({started})"

    daemon.start()
    deadline = time.monotonic() + 60
    while daemon.query("SELECT state FROM list_expansions")[0][0] != "done":
        assert time.monotonic() < deadline, "the expansion did not finish after the restart"
        time.sleep(0.1)
    per_member = daemon.query("SELECT m.recipients, count(*) FROM messages m JOIN deliveries d ON d.message = m.id"
                              " WHERE m.recipients LIKE '%members.test%' GROUP BY m.recipients")
    counts = {json.loads(r)[0]: n for r, n in per_member}
    assert len(counts) == MEMBERS and set(counts.values()) == {1}
    accepted = daemon.query("SELECT recipient, count(*) FROM events WHERE event = 'accepted' AND recipient LIKE"
                            " '%members.test' GROUP BY recipient")
    assert len(accepted) == MEMBERS and {n for _, n in accepted} == {1}
    assert daemon.query("SELECT copies FROM list_expansions")[0][0] == MEMBERS
