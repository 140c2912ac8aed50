"""Event queries: Mailgun's filter expressions, time ranges and cursor paging, compiled to SQL.

Two front ends share this module: ``GET /v3/{domain}/events`` (query parameters, paging URLs) and
``POST /v1/analytics/logs`` (a JSON body with an ``AND`` of attribute/comparator/values, opaque
pagination tokens). Both become the store's ``EventQuery``: typed filters (``store.eventquery.Match``,
``Not``, ``AllOf``, ``AnyOf``, ``Metric``) plus a time range and a direction; the store runs it.

**Filter expressions** (events API): a value is a word or a quoted string; ``NOT``, ``AND``, ``OR``
and parentheses combine them (``event=failed OR delivered``, ``recipient=NOT a@b.test``,
``tags=(a OR b) AND NOT c``); words side by side mean AND. Fields: ``event``, ``severity``,
``recipient`` (address, case-insensitive), ``message-id`` (with or without <>), ``tags`` (any tag,
case-insensitive), ``from`` and ``subject`` (case-insensitive substring of the header), ``campaign`` (an id of
the event's campaigns, exactly; mtad's own filter, also an attribute of the logs API).

**Paging** is by cursor, never by offset: events are ordered by ``(timestamp, seq)`` (``seq`` is the
insertion order, which breaks ties), and a page token holds the query, an anchor ``(timestamp, seq)``
and a side (the items ``after`` or ``before`` the anchor in the query's order). Events written
meanwhile never shift a page; an ascending query without an end keeps returning new events from its
``next`` link (an empty page's ``next`` is itself, so it can be polled). As with Mailgun, an event
whose timestamp is earlier than a cursor already passed (written late by a slow transaction) is not
seen by that traversal; poll a little behind "now" if that matters.

**Size**: a page holds at most ``limit`` events and about ``MAX_PAGE_BYTES`` of event JSON: a page that would
be larger ends early, and its ``next`` link goes on from its last event (so a client following links sees every
event once, in smaller pages). Each event is at most ``store.eventform.MAX_EVENT_BYTES`` plus its user variables
(events written before that bound are shortened as they are read).

Pure except ``fetch``/``count``, which ask the store (``EventStore.query_events``).
"""

from __future__ import annotations

import base64
import email.utils
import json
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from mtad.store.eventquery import (METRIC_EVENTS, MAX_PAGE_BYTES, MAX_READ_EVENT_BYTES, AllOf, AnyOf,  # noqa: F401
                                   Cursor, EventQuery, EventRow, Filter, Match, Metric, Not)
from mtad.store import textsearch
from mtad.store.events import EventStore

MAX_LIMIT = 300
LOGS_MAX_LIMIT = 1000


class QueryError(ValueError):
    """A bad query; the message is for the client (400)."""


# --- times -----------------------------------------------------------------------------------------------------

MIN_TIME = 0.0  # 1970-01-01T00:00:00Z
MAX_TIME = 253402300799.0  # 9999-12-31T23:59:59Z: the last second a date can be written in


def parse_time(value: str, name: str) -> float:
    """RFC 2822 date or epoch seconds, from 1970 to the end of 9999 (NaN, infinities and later years are
    refused: no date could be written for them)."""
    text = str(value).strip()
    try:
        ts = float(text)
    except ValueError:
        try:
            dt = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            dt = None
        if dt is None:
            raise QueryError(f"{name}: expected an RFC 2822 date or epoch seconds, got '{text[:60]}'") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        try:
            ts = dt.timestamp()
        except (OverflowError, ValueError):
            ts = float("nan")
    if not MIN_TIME <= ts <= MAX_TIME:  # also false for NaN
        raise QueryError(f"{name}: expected a time from 1970 to 9999, got '{text[:60]}'")
    return ts


def rfc2822(ts: float) -> str:
    """Mailgun's date format: ``Mon, 02 Jan 2024 15:04:05 UTC``."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%a, %d %b %Y %H:%M:%S UTC")


def parse_duration(text: str, name: str = "duration") -> float:
    """``1d``, ``2h``, ``30m`` (minutes), ``1w``; seconds."""
    m = re.fullmatch(r"\s*(\d{1,9})\s*([smhdw])\s*", str(text), re.ASCII)
    if not m:
        raise QueryError(f"{name}: expected a duration like '1d' or '2h', got '{str(text)[:60]}'")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]


# --- expressions -------------------------------------------------------------------------------------------------

_TOKEN = re.compile(r'\s*(?:(\()|(\))|"((?:[^"\\]|\\.)*)"|\'((?:[^\'\\]|\\.)*)\'|([^\s()]+))')


def tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise QueryError(f"cannot parse expression at '{text[pos:pos + 20]}'")
        pos = m.end()
        if m.group(1):
            tokens.append(("(", "("))
        elif m.group(2):
            tokens.append((")", ")"))
        elif m.group(3) is not None or m.group(4) is not None:
            raw = m.group(3) if m.group(3) is not None else m.group(4)
            tokens.append(("value", re.sub(r"\\(.)", r"\1", raw)))
        elif m.group(5) in ("AND", "OR", "NOT"):
            tokens.append((m.group(5), m.group(5)))
        else:
            tokens.append(("value", m.group(5)))
    return tokens


Node = tuple  # ("value", str) | ("not", Node) | ("and", [Node]) | ("or", [Node])


MAX_NESTING = 32  # parentheses and NOTs inside each other: more is refused (400), never a RecursionError


def parse_expression(text: str) -> Node:
    """Mailgun's filter expression grammar: or := and (OR and)*; and := not (AND? not)*; not := NOT not | atom.
    Parentheses and NOTs nest at most ``MAX_NESTING`` deep."""
    tokens = tokenize(text)
    if not tokens:
        raise QueryError("empty filter expression")
    pos = 0
    depth = 0

    def nest() -> None:
        nonlocal depth
        depth += 1
        if depth > MAX_NESTING:
            raise QueryError(f"filter expression nested more than {MAX_NESTING} deep")

    def peek() -> str | None:
        return tokens[pos][0] if pos < len(tokens) else None

    def take() -> tuple[str, str]:
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def parse_or() -> Node:
        items = [parse_and()]
        while peek() == "OR":
            take()
            items.append(parse_and())
        return items[0] if len(items) == 1 else ("or", items)

    def parse_and() -> Node:
        items = [parse_not()]
        while peek() in ("AND", "NOT", "value", "("):
            if peek() == "AND":
                take()
            items.append(parse_not())
        return items[0] if len(items) == 1 else ("and", items)

    def parse_not() -> Node:
        nonlocal depth
        if peek() == "NOT":
            take()
            nest()
            node = ("not", parse_not())
            depth -= 1
            return node
        return parse_atom()

    def parse_atom() -> Node:
        nonlocal depth
        kind = peek()
        if kind == "(":
            take()
            nest()
            node = parse_or()
            if peek() != ")":
                raise QueryError("missing ')' in filter expression")
            take()
            depth -= 1
            return node
        if kind == "value":
            return ("value", take()[1])
        raise QueryError(f"unexpected '{tokens[pos][1] if pos < len(tokens) else 'end'}' in filter expression")

    node = parse_or()
    if pos != len(tokens):
        raise QueryError(f"unexpected '{tokens[pos][1]}' in filter expression")
    return node


FIELDS = ("event", "severity", "recipient", "message-id", "domain", "tags", "tag", "from", "subject",
          "recipient-domain", "reason", "method", "log-level", "campaign")


def field_condition(name: str, value: str, comparator: str = "=") -> Filter:
    """One field compared with one value; comparators ``=`` and ``contains``."""
    if name not in FIELDS:
        raise QueryError(f"unknown filter field '{name}'")
    return Match(name, value, comparator == "contains")


def compile_node(name: str, node: Node) -> Filter:
    """An expression over one field (``parse_expression``) as the store's filter."""
    kind = node[0]
    if kind == "value":
        return field_condition(name, node[1])
    if kind == "not":
        return Not(compile_node(name, node[1]))
    parts = tuple(compile_node(name, n) for n in node[1])
    return AllOf(parts) if kind == "and" else AnyOf(parts)


TEXT_FIELDS = ("from", "subject")  # a substring of a header (store.textsearch: indexed from MIN_TEXT characters)
MIN_TEXT = textsearch.MIN_CHARS


def indexed_text(expression: str) -> bool:
    """Whether a from/subject filter expression can be answered by the text index: it requires (ANDed, not
    under OR or NOT) a term of at least ``MIN_TEXT`` characters. Else it is a scan of the period searched.
    QueryError if it does not parse."""
    def required(node: Node) -> list[str]:
        if node[0] == "value":
            return [node[1]]
        return [t for n in node[1] for t in required(n)] if node[0] == "and" else []
    return any(len(t.strip()) >= MIN_TEXT for t in required(parse_expression(expression)))


EVENTS_FIELDS = ("event", "recipient", "from", "subject", "tags", "severity", "message-id", "campaign")
_ALIASES = {"tag": "tags"}


# --- the query ---------------------------------------------------------------------------------------------------

def _yes(value: str, name: str) -> bool:
    v = str(value).strip().lower()
    if v in ("yes", "true", "1"):
        return True
    if v in ("no", "false", "0"):
        return False
    raise QueryError(f"{name}: expected yes or no, got '{value}'")


def events_spec(params: Mapping[str, str], now: float) -> dict[str, Any]:
    """Normalise ``GET /events`` parameters into a spec (times resolved now, so paging is stable)."""
    spec: dict[str, Any] = {"filters": {}}
    for key, value in params.items():
        name = _ALIASES.get(key, key)
        if name in EVENTS_FIELDS and value.strip():
            spec["filters"][name] = value
    begin = parse_time(params["begin"], "begin") if params.get("begin") else None
    end = parse_time(params["end"], "end") if params.get("end") else None
    ascending = _yes(params["ascending"], "ascending") if params.get("ascending") else None
    if begin is not None and end is not None:
        inferred = begin <= end
        if ascending is not None and ascending != inferred:
            raise QueryError("ascending contradicts the order of begin and end")
        ascending = inferred
    elif ascending is None:
        ascending = begin is not None  # from a begin: forward (open-ended); otherwise newest first
    # begin is where the traversal starts, end where it stops (Mailgun's model)
    spec["lo"], spec["hi"] = (begin, end) if ascending else (end, begin)
    spec["ascending"] = ascending
    try:
        limit = int(params.get("limit", MAX_LIMIT))
    except ValueError:
        raise QueryError("limit: expected a number") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise QueryError(f"limit: must be between 1 and {MAX_LIMIT}")
    spec["limit"] = limit
    return spec


def events_query(domain: str, spec: Mapping[str, Any]) -> EventQuery:
    filters = []
    hints = set()
    for name, expr in spec["filters"].items():
        node = parse_expression(str(expr))
        if node[0] == "value" and name in HINTED:
            hints.add(name)
        filters.append(compile_node(name, node))
    lo, hi = spec.get("lo"), spec.get("hi")
    return EventQuery((domain.lower(),), tuple(filters), None if lo is None else float(lo),
                      None if hi is None else float(hi), bool(spec["ascending"]),
                      min(max(int(spec["limit"]), 1), MAX_LIMIT), spec, _best(hints))


# Equality filters an hour-bucketed index serves (see store.eventquery): the most selective first.

HINTED = ("message-id", "recipient")


def _best(hints: set[str]) -> str | None:
    return next((h for h in HINTED if h in hints), None)


# --- analytics logs (POST /v1/analytics/logs) --------------------------------------------------------------------

LOGS_EVENTS = ("accepted", "delivered", "failed", "opened", "unique_opened", "clicked", "unique_clicked",
               "unsubscribed", "complained", "rejected", "stored")
LOGS_ATTRIBUTES = ("domain", "recipient", "recipient-domain", "event", "severity", "reason", "subject", "from",
                   "message-id", "tags", "tag", "method", "log-level", "campaign")


_TEXT, _TIME, _LIST, _OBJECT, _BOOL, _INT = (str,), (str, int, float), (list,), (dict,), (bool,), (int,)
_LOGS_BODY = {"start": _TIME, "end": _TIME, "duration": _TEXT, "events": _LIST, "metric_events": _LIST,
              "filter": _OBJECT, "include_totals": _BOOL, "include_subaccounts": _BOOL, "pagination": _OBJECT}
_LOGS_PAGINATION = {"sort": _TEXT, "limit": _INT, "token": _TEXT}
_TYPE_NAMES = {_TEXT: "a string", _TIME: "a date string or epoch seconds", _LIST: "a list", _OBJECT: "an object",
               _BOOL: "true or false", _INT: "an integer"}


def _check_types(obj: Mapping[str, Any], expected: Mapping[str, tuple[type, ...]], where: str) -> None:
    for key, types in expected.items():
        value = obj.get(key)
        if value is None:
            continue
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise QueryError(f"{where}{key}: expected {_TYPE_NAMES[types]}")


def logs_query(body: Mapping[str, Any], allowed_domains: frozenset[str], now: float) -> tuple[EventQuery, dict]:
    """The logs API body -> (query, echo of start/end). ``allowed_domains`` empty: every domain. Every field is
    type-checked (a QueryError names the one at fault)."""
    if not isinstance(body, Mapping):
        raise QueryError("expected a JSON object")
    _check_types(body, _LOGS_BODY, "")
    _check_types(body.get("pagination") or {}, _LOGS_PAGINATION, "pagination.")
    for name in ("events", "metric_events"):
        if not all(isinstance(v, str) for v in body.get(name) or []):
            raise QueryError(f"{name}: expected a list of names")
    end = parse_time(body["end"], "end") if body.get("end") else now
    if body.get("duration"):
        start = max(MIN_TIME, end - parse_duration(body["duration"]))
    else:
        start = parse_time(body["start"], "start") if body.get("start") else end - 86400
    if start > end:
        raise QueryError("start must be before end")
    filters: list[Filter] = []
    hints: set[str] = set()
    kinds = body.get("events") or []
    metric = body.get("metric_events") or []
    if not isinstance(kinds, list) or not isinstance(metric, list):
        raise QueryError("events and metric_events must be lists")
    ors: list[Filter] = []
    for kind in kinds:
        if kind not in LOGS_EVENTS:
            raise QueryError(f"events: unknown event '{kind}'")
        ors.append(Metric(kind) if kind.startswith("unique_") else Match("event", kind))
    for name in metric:
        if name not in METRIC_EVENTS:
            raise QueryError(f"metric_events: unknown metric event '{name}'")
        ors.append(Metric(name))
    if ors:
        filters.append(AnyOf(tuple(ors)))
    domains: set[str] | None = None
    flt = body.get("filter") or {}
    if not isinstance(flt, Mapping) or set(flt) - {"AND"}:
        raise QueryError("filter: expected {\"AND\": [conditions]}")
    if not isinstance(flt.get("AND") or [], list):
        raise QueryError("filter.AND: expected a list of conditions")
    for i, cond in enumerate(flt.get("AND") or []):
        where = f"filter.AND[{i}]"
        if not isinstance(cond, Mapping):
            raise QueryError(f"{where}: expected an object")
        attribute, comparator = cond.get("attribute"), cond.get("comparator", "=")
        if not isinstance(cond.get("values"), list):
            raise QueryError(f"{where}.values: expected a list of {{\"value\": ...}}")
        if attribute not in LOGS_ATTRIBUTES:
            raise QueryError(f"{where}.attribute: unknown attribute '{attribute}'")
        if comparator not in ("=", "!=", "contains", "not contains"):
            raise QueryError(f"{where}.comparator: expected =, !=, contains or not contains")
        values = [v.get("value") if isinstance(v, Mapping) else v for v in cond.get("values") or []]
        if not values or not all(isinstance(v, str) for v in values):
            raise QueryError(f"{where}.values: expected a list of {{\"value\": ...}}")
        if attribute == "domain" and comparator == "=":
            chosen = {v.lower() for v in values}
            domains = chosen if domains is None else domains & chosen
            continue
        if attribute in HINTED and comparator == "=" and len(values) == 1:
            hints.add(attribute)
        base = "contains" if "contains" in comparator else "="
        either = AnyOf(tuple(field_condition(attribute, v, base) for v in values))
        filters.append(Not(either) if comparator in ("!=", "not contains") else either)
    if allowed_domains:
        domains = set(allowed_domains) if domains is None else domains & allowed_domains
    page = body.get("pagination") or {}
    sort = page.get("sort", "timestamp:desc")
    if sort not in ("timestamp:asc", "timestamp:desc"):
        raise QueryError("pagination.sort: expected timestamp:asc or timestamp:desc")
    limit = page.get("limit", 100)
    if not isinstance(limit, int) or not 1 <= limit <= LOGS_MAX_LIMIT:
        raise QueryError(f"pagination.limit: must be between 1 and {LOGS_MAX_LIMIT}")
    query = EventQuery(None if domains is None else tuple(sorted(domains)), tuple(filters),
                       start, end, sort == "timestamp:asc", limit, hint=_best(hints))
    return query, {"start": rfc2822(start), "end": rfc2822(end)}


# --- cursors and pages -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Page(Cursor):
    """A cursor (``store.eventquery.Cursor``) that travels in a page token."""

    def encode(self, spec: Mapping[str, Any] | None = None) -> str:
        data: dict[str, Any] = {"a": list(self.anchor) if self.anchor else None, "s": self.side}
        if self.inclusive:
            data["i"] = 1
        if spec is not None:
            data["q"] = spec
        raw = json.dumps(data, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @staticmethod
    def decode(token: str) -> tuple["Page", dict[str, Any] | None]:
        try:
            data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            anchor = tuple(data["a"]) if data.get("a") else None
            if anchor is not None:
                anchor = (float(anchor[0]), int(anchor[1]))
            side = data.get("s", "after")
            if side not in ("after", "before"):
                raise ValueError(side)
            return Page(anchor, side, bool(data.get("i"))), data.get("q")
        except (ValueError, KeyError, TypeError, IndexError, AttributeError, OverflowError, RecursionError):
            raise QueryError("invalid page token") from None


@dataclass(frozen=True)
class Result:
    rows: tuple[EventRow, ...]  # in the query's order
    first: Page
    last: Page
    next: Page
    previous: Page


def result(page: Page, rows: tuple[EventRow, ...]) -> Result:
    """The page of ``rows`` found at ``page``, with the links around it."""
    if rows:
        nxt = Page((rows[-1].timestamp, rows[-1].seq), "after")
        prev = Page((rows[0].timestamp, rows[0].seq), "before")
    elif page.side == "after":  # an empty page: its next is itself, so it can be polled; its previous
        nxt = page                 # is what lies on the other side of the same point
        prev = Page(page.anchor, "before", not page.inclusive)
    else:
        nxt = Page(page.anchor, "after", not page.inclusive)
        prev = page
    return Result(rows, Page(None, "after"), Page(None, "before"), nxt, prev)


async def fetch(store: EventStore, query: EventQuery, page: Page) -> Result:
    """One page of ``query`` at ``page``; rows in the query's order whichever side was asked."""
    return result(page, (await store.query_events(query, page)).rows)


async def fetch_with_count(store: EventStore, query: EventQuery, page: Page) -> tuple[Result, int]:
    """``fetch`` and the number of events matching ``query``, from one snapshot."""
    found, total = await store.query_events_with_count(query, page)
    return result(page, found.rows), total


def items_json(rows: Iterable[EventRow]) -> str:
    """The stored event texts as a JSON array, without decoding them."""
    return "[" + ",".join(r.data for r in rows) + "]"


def logs_item(row: EventRow) -> dict[str, Any]:
    event = json.loads(row.data)
    event["@timestamp"] = datetime.fromtimestamp(row.timestamp, timezone.utc).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")
    event["domain"] = {"name": row.domain}
    return event


def now() -> float:
    return time.time()
