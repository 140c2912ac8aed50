"""The text index of events' Subject and From headers: one row per message, written with its events.

The events API's and the panel's ``subject`` and ``from`` filters are a case-insensitive substring of the header
(``store.eventquery``). Without an index each is a scan of every event's JSON in the period searched. This module
keeps ``message_text``: one row per distinct (domain, Message-ID, Subject, From) of the recorded events, so one
per message however many events it has (a row per distinct header pair keeps a Message-ID reused with another
subject exact), with the hours of its first and last event (``first_at``: the start of the first event's hour,
``last_at``: the end of the last one's; events are bucketed by hour when read, and an hour's precision means a
message's later events rewrite its row at most once an hour, not at every event). SQLite indexes the two
headers in an FTS5 table with the ``trigram`` tokenizer (``message_text_fts``, external content, kept by
triggers); PostgreSQL in GIN indexes of ``pg_trgm``. Both answer "contains this text" for texts of at least
``MIN_CHARS`` characters.

Writing: ``record`` (``store.events``) stages one row per event with its event row, in the same group commit;
``write_rows`` folds a batch's rows per message and upserts them (a message seen before only moves its
``first_at``/``last_at`` when an event widens them; on PostgreSQL the rows its row already covers are not even
upserted). A header value is indexed up to ``MAX_TEXT`` characters.

Reading: ``condition`` turns the text terms a query requires (ANDed) into SQL that selects the events the
scan would check: the messages whose headers contain every term (one index lookup, at most ``MAX_MESSAGES``),
kept when their first..last event times meet the query's period, then their events (SQLite: the hour-bucketed
``events_message_hour`` index probed per message and hour, at most ``MAX_PROBES``; PostgreSQL:
``events_message``); the caller still applies the filters to each event's own JSON, so the answer is the scan's
exactly. A text shorter than ``MIN_CHARS``, or terms found in more messages than ``MAX_MESSAGES`` (then they are
common and a scan finds a page of them soon), or needing more probes, get None: the caller scans.

Pruning: ``prune_rows`` deletes rows whose last event is older than the retention cutoff (their events are
pruned too).
"""

from __future__ import annotations

import functools
import hashlib
import json
import sqlite3
from typing import Any, Mapping, Sequence

from mtad.store.dialect import dialect_of, pg_array
from mtad.store.batch import execute_rows, stage as stage_row

MIN_CHARS = 3  # trigrams: a shorter text is not in the index (the caller scans a bounded period)
MAX_TEXT = 4096  # characters of a header indexed (a text found only past them is not found by the index)
MAX_MESSAGES = 10_000  # messages matching a text read from the index; more: the text is common, the caller scans
MAX_PROBES = 50_000  # SQLite: (message, hour) probes of events_message_hour for one filter
FIELDS = {"subject": "subject", "from": "from_header"}  # filter name -> column
_STAGED = "events.text"
HOUR_END = 3600 - 0.001  # last_at: the end of the last event's hour (first_at: the start of the first's)

# (digest, domain, message_id, subject, from_header, first_at, last_at)
TextRow = tuple[str, str, str, str, str, float, float]


def _text(value: Any) -> str:
    """A header as indexed: at most ``MAX_TEXT`` characters, and valid UTF-8 (the undecodable bytes of a raw
    8-bit header, kept as surrogates in the event, become ``?``: neither database takes a lone surrogate)."""
    return str(value or "")[:MAX_TEXT].encode("utf-8", "replace").decode("utf-8")


def row_of(domain: str, event: Mapping[str, Any]) -> TextRow | None:
    """The index row of one event: its message's domain, Message-ID and headers (None without either header)."""
    headers = (event.get("message") or {}).get("headers") or {}
    subject, sender = headers.get("subject"), headers.get("from")
    if not subject and not sender:
        return None
    hour = float(int(float(event["timestamp"]) // 3600) * 3600)
    mid, subject, sender = str(headers.get("message-id") or ""), str(subject or ""), str(sender or "")
    key = _message_key if len(subject) + len(sender) + len(mid) <= 2048 else _message_key.__wrapped__
    return (*key(domain, mid, subject, sender), hour, hour + HOUR_END)


@functools.lru_cache(maxsize=4096)
def _message_key(domain: str, mid: str, subject: str, sender: str) -> tuple[str, str, str, str, str]:
    """(digest, domain, Message-ID, subject, From) of a message as indexed; remembered for headers of usual
    sizes (a message's events come in bursts: a campaign's opens and clicks)."""
    subject, sender = _text(subject), _text(sender)
    digest = hashlib.blake2b("\0".join((domain, mid, subject, sender)).encode("utf-8", "surrogatepass"),
                             digest_size=16).hexdigest()
    return digest, domain, mid, subject, sender


def stage(conn: sqlite3.Connection, domain: str, event: Mapping[str, Any]) -> None:
    """Index ``event``'s message with the write's other staged rows (``store.events.record``); written at once
    on a connection without a group commit."""
    row = row_of(domain, event)
    if row is None:
        return
    stage_row(conn, _STAGED, write_rows, row)


def stage_row_of(conn: sqlite3.Connection, row: TextRow) -> None:
    """``stage`` for a row made ahead (``row_of``: ``store.events.prepare``)."""
    stage_row(conn, _STAGED, write_rows, row)


_UPSERT = ("INSERT INTO message_text (digest, domain, message_id, subject, from_header, first_at, last_at)",
           " ON CONFLICT (digest) DO UPDATE SET"
           " first_at = CASE WHEN excluded.first_at < message_text.first_at THEN excluded.first_at"
           " ELSE message_text.first_at END,"
           " last_at = CASE WHEN excluded.last_at > message_text.last_at THEN excluded.last_at"
           " ELSE message_text.last_at END"
           " WHERE excluded.first_at < message_text.first_at OR excluded.last_at > message_text.last_at")


# PostgreSQL: the rows as arrays (one statement shape whatever the batch's size), and only those whose message's
# row does not already cover their hours: most events (a message's delivery, in the hour it was accepted) change
# nothing, and an upsert that changes nothing still locks the row it conflicts with (a WAL record, a dirtied page).
# The check is a scalar subquery, one probe of the digest's unique index per row (a NOT EXISTS would be planned
# as an anti join, which on a small table reads it whole).
_UPSERT_PG = ("INSERT INTO message_text (digest, domain, message_id, subject, from_header, first_at, last_at)"
              " SELECT v.digest, v.domain, v.message_id, v.subject, v.from_header, v.first_at, v.last_at"
              " FROM unnest(?::text[], ?::text[], ?::text[], ?::text[], ?::text[], ?::float8[], ?::float8[])"
              " AS v(digest, domain, message_id, subject, from_header, first_at, last_at)"
              " WHERE (SELECT m.first_at <= v.first_at AND m.last_at >= v.last_at FROM message_text m"
              " WHERE m.digest = v.digest) IS NOT TRUE" + _UPSERT[1])


def write_rows(conn: sqlite3.Connection, rows: list[TextRow]) -> None:
    """Upsert ``rows``, one per message after folding a batch's rows (earliest first, latest last event)."""
    folded: dict[str, TextRow] = {}
    for row in rows:
        seen = folded.get(row[0])
        if seen is None:
            folded[row[0]] = row
        elif row[5] < seen[5] or row[6] > seen[6]:
            folded[row[0]] = (*seen[:5], min(seen[5], row[5]), max(seen[6], row[6]))
    if dialect_of(conn).is_postgresql:
        conn.execute(_UPSERT_PG, [pg_array(column) for column in zip(*folded.values())])
    else:
        execute_rows(conn, _UPSERT[0], 7, list(folded.values()), _UPSERT[1])


def prune_rows(conn: sqlite3.Connection, cutoff: float, limit: int) -> int:
    """Delete up to ``limit`` rows whose last event is older than ``cutoff``."""
    return conn.execute("DELETE FROM message_text WHERE id IN (SELECT id FROM message_text WHERE first_at < ?"
                        " AND last_at < ? LIMIT ?)", (cutoff, cutoff, limit)).rowcount


# --- reading -------------------------------------------------------------------------------------------------

def _like(value: str) -> str:
    return "%" + value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def messages(conn: sqlite3.Connection, terms: Sequence[tuple[str, str]],
             limit: int = MAX_MESSAGES) -> list[tuple[str, str, float, float]] | None:
    """(domain, Message-ID, first_at, last_at) of the messages whose headers contain every (field, text) of
    ``terms`` (any case); None when a text is too short for the index or more than ``limit`` messages match."""
    if not terms or any(len(text) < MIN_CHARS for _, text in terms):
        return None
    if dialect_of(conn).is_postgresql:
        where = " AND ".join(f"{FIELDS[field]} ILIKE ? ESCAPE '\\'" for field, _ in terms)
        found = conn.execute(f"SELECT domain, message_id, first_at, last_at FROM message_text WHERE {where}"
                             " LIMIT ?", (*(_like(text) for _, text in terms), limit + 1)).fetchall()
        return None if len(found) > limit else found
    match = " AND ".join(f'{FIELDS[field]} : "' + text.replace('"', '""') + '"' for field, text in terms)
    many = conn.execute("SELECT count(*) FROM (SELECT rowid FROM message_text_fts WHERE message_text_fts MATCH ?"
                        " LIMIT ?)", (match, limit + 1)).fetchone()[0]
    if many > limit:
        return None
    return conn.execute("SELECT m.domain, m.message_id, m.first_at, m.last_at FROM message_text_fts f"
                        " JOIN message_text m ON m.id = f.rowid WHERE message_text_fts MATCH ?", (match,)).fetchall()


def condition(conn: sqlite3.Connection, terms: Sequence[tuple[str, str]], domains: Sequence[str] | None,
              lo: float | None, hi: float | None) -> tuple[str, list[Any]] | None:
    """SQL (and parameters) selecting the events (of ``domains``, None: any, between ``lo`` and ``hi``) of the
    messages whose headers contain every (field, text) of ``terms``; the caller still applies the filters
    themselves to each. None when the index cannot answer: the caller scans."""
    found = messages(conn, terms)
    if found is None:
        return None
    wanted = None if domains is None else set(domains)
    keys = [(d, m, first, last) for d, m, first, last in found
            if (wanted is None or d in wanted) and (lo is None or last >= lo) and (hi is None or first <= hi)]
    if not keys:
        return "1 = 0", []
    if dialect_of(conn).is_postgresql:
        pairs = sorted({(d, m) for d, m, _, _ in keys})
        return ("(domain, message_id) IN (SELECT k.d, k.m FROM unnest(?::text[], ?::text[]) AS k(d, m))",
                [pg_array([d for d, _ in pairs]), pg_array([m for _, m in pairs])])
    probes: set[tuple[str, int, str]] = set()
    for d, m, first, last in keys:
        first_h = int((first if lo is None else max(first, lo)) // 3600)
        last_h = int((last if hi is None else min(last, hi)) // 3600)
        if len(probes) + last_h - first_h + 1 > MAX_PROBES:
            return None
        probes.update((d, h, m) for h in range(first_h, last_h + 1))
    return ("seq IN (SELECT e.seq FROM json_each(?) k JOIN events e INDEXED BY events_message_hour"
            " ON e.domain = json_extract(k.value, '$[0]') AND CAST(e.timestamp / 3600 AS INTEGER) ="
            " json_extract(k.value, '$[1]') AND e.message_id = json_extract(k.value, '$[2]'))",
            [json.dumps(sorted(probes))])


def backfill(conn: sqlite3.Connection, batch: int = 5000) -> int:
    """Index the events already stored (the migration step that adds the index). Returns the events read."""
    last, n = -1, 0
    while True:
        rows = conn.execute("SELECT seq, domain, timestamp, data FROM events WHERE seq > ? ORDER BY seq"
                            " LIMIT ?", (last, batch)).fetchall()
        if not rows:
            return n
        out = []
        for seq, domain, ts, data in rows:
            try:
                event = json.loads(data)
            except ValueError:
                continue
            if isinstance(event, dict):
                event["timestamp"] = ts
                row = row_of(domain, event)
                if row is not None:
                    out.append(row)
        write_rows(conn, out)
        last, n = rows[-1][0], n + len(rows)
