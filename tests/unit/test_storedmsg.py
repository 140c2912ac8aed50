"""store() action: the store's functions (store.stored): what is kept, for whom, and what expiry deletes."""

from __future__ import annotations

import sqlite3

import pytest

from mtad.events import shape
from mtad.store import queue as spool
from mtad.inbound import store_action as storedmsg
from mtad.store import stored
from mtad.store.work import messages_by_id
from mtad.store.migrations.sqlite import migrate
from mtad.base.types import Envelope, HeaderSummary, NewMessage


@pytest.fixture
def conn(tmp_path):
    c = sqlite3.connect(tmp_path / "s.sqlite3", isolation_level=None)
    migrate(c, "test")
    yield c
    c.close()


def inbound(conn, qid: str, now: float, forwards=()) -> None:
    msg = NewMessage(Envelope("a@sender.test", ("box@inbound.test",)), b"Subject: s\r\n\r\nbody\r\n", "inbound",
                     "inbound.test", HeaderSummary("m@x", "a@sender.test", "box@inbound.test", "s"))
    spool.enqueue(conn, spool.Enqueue(qid, msg, shape.accepted(msg, qid, now), tuple(forwards)), now)


def test_a_message_is_served_only_while_stored_and_only_for_its_domain(conn):
    inbound(conn, "Q1", 100.0)
    assert stored.stored_message(conn, "Q1", "inbound.test", 100.0) is None  # not stored yet
    stored.mark_stored(conn, "Q1", 500.0)
    stored.mark_stored(conn, "Q1", 300.0)  # never shortens
    assert stored.stored_message(conn, "Q1", "INBOUND.test", 499.0).id == "Q1"
    assert stored.stored_message(conn, "Q1", "other.test", 499.0) is None
    assert stored.stored_message(conn, "Q1", "inbound.test", 501.0) is None


def test_expiry_deletes_messages_kept_only_for_storage(conn):
    inbound(conn, "DONE", 100.0)
    inbound(conn, "BUSY", 100.0, [spool.ForwardRow("box@inbound.test", "r1", "http", "http://app.test/")])
    for qid in ("DONE", "BUSY"):
        stored.mark_stored(conn, qid, 200.0)
    assert stored.expire(conn, 150.0) == 0
    assert stored.expire(conn, 250.0) == 2
    ids = [r[0] for r in conn.execute("SELECT id FROM messages")]
    assert ids == ["BUSY"]  # a forward is still pending: the message stays, no longer stored
    assert conn.execute("SELECT stored_until FROM messages").fetchone()[0] is None


def test_shapes_point_at_the_message_url(conn):
    inbound(conn, "Q2", 100.0)
    message = messages_by_id(conn, ["Q2"])["Q2"]
    url = storedmsg.message_url("http://api.test/", "inbound.test", "Q2")
    assert url == "http://api.test/v3/domains/inbound.test/messages/Q2"
    raw = storedmsg.raw(message, url)
    assert raw["body-mime"] == "Subject: s\r\n\r\nbody\r\n" and raw["message-url"] == url
    parsed = storedmsg.parsed(message, url)
    assert parsed["subject"] == "s" and parsed["body-plain"].strip() == "body" and parsed["attachments"] == []
