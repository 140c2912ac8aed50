"""The stored form of an event: its JSON, bounded in size, and how readers put stored-once variables back.

Shared by the writer (``store.events``) and the readers (``store.eventquery``, webhook payloads).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import orjson

MAX_EVENT_BYTES = 32_768  # an event's JSON (without stored-once variables) at most; longer strings are shortened
# The event JSON as the API and webhooks show it: ``data`` with its stored-once variables put back (first).
EVENT_DATA = ("CASE WHEN events.variables IS NULL THEN events.data ELSE '{\"user-variables\":' ||"
              " coalesce((SELECT v.data FROM event_variables v WHERE v.key = events.variables), '{}') || ',' ||"
              " substr(events.data, 2) END")
_json_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode  # events are trees we built


def _encode(event: Mapping[str, Any]) -> str:
    """Compact JSON of an event: orjson (a tenth of the stdlib's cost per event); the stdlib for what orjson
    refuses (a lone surrogate from an undecodable header, an integer over 64 bits)."""
    try:
        return orjson.dumps(event).decode()
    except (orjson.JSONEncodeError, TypeError):
        return _json_encode(event)


def _shorten(value: Any, cut: int, items: int) -> Any:
    """``value`` with strings over ``cut`` characters cut (ending in "…") and lists and objects over ``items``
    entries cut to their first ``items``."""
    if isinstance(value, str):
        return value if len(value) <= cut else value[:cut] + "…"
    if isinstance(value, dict):
        return {k: _shorten(v, cut, items) for k, v in list(value.items())[:items]}
    if isinstance(value, list):
        return [_shorten(v, cut, items) for v in value[:items]]
    return value


_KEPT = ("id", "event", "timestamp", "log-level", "recipient", "recipient-domain", "severity", "reason", "method",
         "storage")


def _fits(text: str, limit: int) -> bool:
    """At most ``limit`` bytes of UTF-8 (events are ASCII but for header values and variables)."""
    return len(text) <= limit and (text.isascii() or len(text.encode("utf-8", "surrogatepass")) <= limit)


def bounded(event: Mapping[str, Any], limit: int = MAX_EVENT_BYTES) -> str:
    """The JSON of ``event``, at most ``limit`` bytes: as it is if it fits; else with long strings, lists and
    objects shortened (a 1,000-recipient To header, a huge subject); at worst its identifying fields only."""
    text = _encode(event)
    if _fits(text, limit):
        return text
    for cut, items in ((1024, 100), (128, 20)):
        text = _encode(_shorten(event, cut, items))
        if _fits(text, limit):
            return text
    headers = (event.get("message") or {}).get("headers") or {}
    kept = {k: event[k] for k in _KEPT if k in event}
    kept["message"] = {"headers": {"message-id": str(headers.get("message-id", ""))[:1024]}}
    return _encode(_shorten(kept, 1024, 20))


def bounded_text(text: str, limit: int = MAX_EVENT_BYTES) -> str:
    """``bounded`` for stored event JSON (events written before events were bounded)."""
    return text if _fits(text, limit) else bounded(json.loads(text), limit)
