"""store.events.bounded: an event's stored JSON has a known size whatever the message held."""

import json

from mtad.events import shape
from mtad.store import events


def _event(**extra):
    event = shape.base_event("accepted", timestamp=1.0, recipient="a@b.test", queue_id="Q1",
                             message=shape.message_part({"message-id": "m@b.test", "subject": "s"}, 10),
                             options={"variables": {"k": "v"}}, envelope={}, flags={})
    event.update(extra)
    return event


def test_a_small_event_is_kept_as_it_is():
    event = _event()
    assert json.loads(events.bounded(event)) == event


def test_long_strings_are_shortened_first():
    event = _event()
    event["message"]["headers"]["subject"] = "word " * 20_000
    out = json.loads(events.bounded(event, 8192))
    assert out["message"]["headers"]["subject"] == ("word " * 20_000)[:1024] + "…"
    assert out["id"] == event["id"] and out["user-variables"] == {"k": "v"}


def test_at_worst_the_identifying_fields_are_kept():
    event = _event(**{"delivery-status": {f"k{i}": "x" * 120 for i in range(20)}})
    event["user-variables"] = {f"k{i}": "x" * 120 for i in range(20)}
    text = events.bounded(event, 2048)
    out = json.loads(text)
    assert len(text.encode()) <= 2048
    assert (out["id"], out["event"], out["recipient"], out["storage"]) == (event["id"], "accepted", "a@b.test",
                                                                           {"key": "Q1"})
    assert out["message"]["headers"]["message-id"] == "m@b.test"


def test_the_limit_counts_utf8_bytes():
    event = _event()
    event["message"]["headers"]["subject"] = "é" * 3000  # 3,000 characters, 6,000 bytes
    assert len(events.bounded(event, 4096).encode()) <= 4096
