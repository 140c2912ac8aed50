"""An InboxFirst campaign's dispatch survives kill -9 (issue 16): SIGKILL the daemon while a paced campaign to a
3,000-member list is sending, start it again, and every member has exactly one queued copy (one message, one
``if_dispatch`` row, one ``accepted`` event each); outbound delivery is off so the copies stay queued to be counted."""

from __future__ import annotations

import asyncio
import json
import time

from tests.support.api import api
from tests.support.wait import wait_until

MEMBERS = 3_000


async def test_a_killed_campaign_resumes_with_exactly_one_copy_per_member(daemon_factory):
    daemon = daemon_factory()  # delivery disabled: copies stay queued
    await api(daemon, "POST", "/v3/lists", data={"address": "crash@example.com"})
    chunks = [[f"m{i:05d}@members.test" for i in range(start, start + 1000)] for start in range(0, MEMBERS, 1000)]
    for chunk in chunks:
        await api(daemon, "POST", "/v3/lists/crash@example.com/members.json", data={"members": json.dumps(chunk)})
    made = await api(daemon, "POST", "/ga/api/v2/mailing_lists/crash@example.com/campaigns", json={"campaign": {
        "name": "crash", "segmentation_criteria_ad_hoc": [],
        "contents": [{"name": "A", "format": "text", "subject": "Hi %recipient%", "text": "Dear %recipient%"}],
        "dispatch_attributes": {"from_email": "news@example.com", "speed": 1_800_000,  # 500 per second
                                "begins_at": int(time.time())}}})
    cid = made["data"]["id"]

    def copies() -> int:
        return daemon.query("SELECT count(*) FROM if_dispatch")[0][0]
    started = wait_until(lambda: copies() > 0 and copies(), timeout=20, what="the dispatch to start", interval=0.005)
    daemon.kill()
    at_kill = copies()
    assert 0 < at_kill < MEMBERS, f"killed too late to test anything: {at_kill} of {MEMBERS} copies ({started})"

    daemon.start()
    deadline = time.monotonic() + 60
    while daemon.query("SELECT state FROM if_campaigns WHERE id = ?", (cid,))[0][0] != "finished":
        assert time.monotonic() < deadline, "the campaign did not finish after the restart"
        await asyncio.sleep(0.1)
    per_member = daemon.query("SELECT m.recipients, count(*) FROM messages m JOIN deliveries d ON d.message = m.id"
                              " WHERE m.recipients LIKE '%members.test%' GROUP BY m.recipients")
    counts = {json.loads(r)[0]: n for r, n in per_member}
    assert len(counts) == MEMBERS and set(counts.values()) == {1}
    accepted = daemon.query("SELECT recipient, count(*) FROM events WHERE event = 'accepted' AND recipient LIKE"
                            " '%members.test' GROUP BY recipient")
    assert len(accepted) == MEMBERS and {n for _, n in accepted} == {1}
    assert daemon.query("SELECT count(*), count(DISTINCT address) FROM if_dispatch")[0] == (MEMBERS, MEMBERS)
    got = await api(daemon, "GET", f"/ga/api/v2/campaigns/{cid}")
    assert got["data"]["stat_summary"]["total_messages"] == MEMBERS
    assert got["data"]["dispatch"]["state"] == "finished"
