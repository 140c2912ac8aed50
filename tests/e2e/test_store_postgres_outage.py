"""A node whose PostgreSQL goes away stops acknowledging and recovers by itself when it returns.

The daemon runs on a private PostgreSQL server of this test (the session's server is shared by other tests), which
the test stops and starts again: while it is down SMTP answers ``451 4.3.0`` and the API ``503``, nothing answered
250 before is lost, and once the server is back the same daemon (no restart) accepts and delivers again.
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.helpers import MESSAGE, queue_id, send, submission
from tests.support.api import api_sync
from tests.support.postgres import PostgresServer, find_binaries


@pytest.fixture
def own_postgres():
    bin_dir = find_binaries()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found (tests/run.sh installs Debian's postgresql)")
    server = PostgresServer(bin_dir).start()
    yield server
    server.stop()


def test_a_database_outage_answers_451_and_503_and_the_node_recovers_by_itself(mtad_factory, ingress_config,
                                                                                   certs, own_postgres):
    _, dsn = own_postgres.create_database()
    ingress_config["store"] = {"backend": "postgresql", "dsn": dsn, "statement_timeout": "5s"}
    daemon = mtad_factory().start()
    ctx = certs.client_context()
    with submission(daemon, ctx) as s:
        code, text = send(s, "postmaster@example.com", ["before@gmail.com"], MESSAGE)
        assert code == 250, text
        before = queue_id(text)

        own_postgres.halt()
        code, text = send(s, "postmaster@example.com", ["during@gmail.com"], MESSAGE)
        assert (code, text[:5]) == (451, "4.3.0"), (code, text)
        answer = api_sync(daemon, "POST", "/v3/example.com/messages", expect=503,
                          data={"from": "postmaster@example.com", "to": "api-during@gmail.com", "subject": "s",
                                "text": "t"})
        assert "Not queued" in answer["message"]

        own_postgres.resume()
        deadline = time.monotonic() + 15
        while True:  # the same session, the same daemon: it connects again by itself
            code, text = send(s, "postmaster@example.com", ["after@gmail.com"], MESSAGE)
            if code == 250 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert code == 250, text
        after = queue_id(text)
    found = {row[0] for row in daemon.query("SELECT id FROM messages")}
    assert {before, after} <= found and len(found) == 2  # nothing refused was stored, nothing acknowledged lost
    assert not daemon.query("SELECT 1 FROM events WHERE recipient IN ('during@gmail.com', 'api-during@gmail.com')")
    assert "PostgreSQL" in daemon.log() and "not stored" in daemon.log()
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.log()
