"""A single API call to 1,000 recipients with recipient-variables (issue 14, item 5), over real sockets: every
copy is committed, each personalised, before the 200; a copy that cannot be built (a recipient variable that
would put a line break in a header) fails the whole request with a 400 and commits nothing. The copies are
written one by one into one transaction (tests/contract/test_enqueue_stream.py checks they are not all held;
bench/batch_bench.py measures the daemon's peak RSS)."""

from __future__ import annotations

import json
import time
from email.utils import formatdate

import aiohttp
import pytest

from tests.e2e.helpers import message_count
from tests.support.api import api

N = 1000


@pytest.fixture(scope="module")
def daemon(daemon_factory):
    return daemon_factory()


def batch(variables: dict[str, dict]) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for name, value in [("from", "Sender <postmaster@example.com>"), ("subject", "Hi %recipient.name%"),
                        ("text", "Dear %recipient_fname%, your code is %recipient.code%.\n" + "pad\n" * 2000),
                        ("o:deliverytime", formatdate(time.time() + 86400, usegmt=True))]:
        form.add_field(name, value)
    for i in range(N):
        form.add_field("to", f"User{i} Last <u{i}@dest{i % 7}.test>")
    form.add_field("recipient-variables", json.dumps(variables))
    return form


async def test_a_thousand_recipient_batch_commits_every_personalised_copy(daemon):
    before = message_count(daemon)
    variables = {f"u{i}@dest{i % 7}.test": {"name": f"N{i}", "code": i} for i in range(N)}
    body = await api(daemon, "POST", "/v3/example.com/messages", data=batch(variables))
    mid = body["id"].strip("<>")
    assert message_count(daemon) == before + N
    rows = daemon.query("SELECT recipients, body FROM messages WHERE message_id = ?", (mid,))
    assert len(rows) == N
    seen = set()
    for recipients, raw in rows:
        (rcpt,) = json.loads(recipients)
        i = int(rcpt.split("@")[0][1:])
        raw = bytes(raw)
        assert f"Subject: Hi N{i}\r\n".encode() in raw and f"Dear User{i}, your code is {i}.".encode() in raw
        seen.add(i)
    assert seen == set(range(N))


async def test_a_copy_that_cannot_be_built_fails_the_whole_batch(daemon):
    before = message_count(daemon)
    variables = {f"u{i}@dest{i % 7}.test": {"name": f"N{i}", "code": i} for i in range(N)}
    variables["u700@dest0.test"] = {"name": "evil\r\nBcc: victim@x.test"}  # copy 701: a header injection
    body = await api(daemon, "POST", "/v3/example.com/messages", data=batch(variables), expect=400)
    assert body["message"].startswith("'recipient-variables'") and "line break" in body["message"], body
    assert message_count(daemon) == before  # all or none: the 700 copies written before it are gone too
