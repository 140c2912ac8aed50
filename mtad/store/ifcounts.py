"""InboxFirst campaigns' counters (seed 004): what ``stat_summary`` and ``link_stats`` read, kept as events arrive.

Tables (schema step "if_campaign_counts, if_campaign_seen, if_link_counts"):

- ``if_campaign_counts`` (campaign, content, event, severity) -> total, unique: the events of the campaign's copies
  (not those of seed-list copies) per kind and severity, ``unique`` counting each recipient once. Two kinds are
  written by ``dispatch_batch`` with the copies rather than by events: ``sent`` (severity = the copy's format; copies
  to the segment) and ``sent-seed`` (copies to seed lists); ``accepted`` is counted there too, one per segment copy,
  as its event is recorded in the same transaction as the copy.
- ``if_campaign_seen`` (campaign, address, what): what a recipient did already (``event/severity``, ``L`` + url for
  a clicked link), so a unique count is raised exactly once per recipient.
- ``if_link_counts`` (campaign, content, url) -> clicks total, unique (the subscriber's first click in the whole
  campaign, so the links' unique clicks add up to the campaign's), unique by link (each subscriber once per link).
  URLs are kept to ``MAX_URL`` characters.

``record`` (``store.events``) stages every event that has a queue id (``storage.key``), names an ``inboxfirst-``
campaign (the ``o:campaign`` of every dispatched copy), is not ``accepted`` and is not a system one;
``write_items`` runs with the group commit: the copies are found through ``if_dispatch(queue_id)`` (one indexed
lookup per distinct queue id, in a few statements); the events of other messages cost nothing.
The counters are therefore exactly as durable as the events, and, like the stats counters, outlive the events the
retention prunes. Reports read a campaign's rows by primary key: no scan, no join with ``events``, whatever the
campaign's size. A store from before this step gets its counters recounted from its events by the migration.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from typing import Any, Mapping, Sequence

from mtad.store.batch import execute_rows, stage as stage_row

CAMPAIGN_PREFIX = "inboxfirst-"  # the o:campaign of a dispatched copy: inboxfirst-<campaign id> (outbound.dispatch)
MACHINE = "machine"  # the severity of a machine's open or click (= store.events.MACHINE)
MAX_URL = 600  # characters of a clicked URL kept as a link key (PostgreSQL bounds B-tree entries: 2,704 bytes)
_STAGED = "ifcounts"
_CHUNK = 300


def _item(event: Mapping[str, Any], severity: str) -> tuple[str, str, str, str] | None:
    """(queue id, kind, severity, url) of an event that may be about a campaign's copy, or None; ``severity`` is
    the event's column (``store.events.severity_of``: ``machine`` for a machine's open or click)."""
    kind = event.get("event")
    storage = event.get("storage")
    # type() first: the Mapping ABC's isinstance costs microseconds per event, and events are dicts
    qid = storage.get("key") if type(storage) is dict or isinstance(storage, Mapping) else None
    if not qid or not isinstance(kind, str) or kind == "accepted":
        return None
    campaigns = event.get("campaigns")
    if not isinstance(campaigns, list) or not any(  # a copy's campaign is its o:campaign (outbound.dispatch):
            (type(c) is dict or isinstance(c, Mapping)) and str(c.get("id", "")).startswith(CAMPAIGN_PREFIX)
            for c in campaigns):
        return None  # any other message's events cost no look-up (a read breaks a PostgreSQL batch's pipeline)
    url = event.get("url") if kind == "clicked" else ""
    return (str(qid), kind, severity, url[:MAX_URL] if isinstance(url, str) else "")


def stage(conn: sqlite3.Connection, event: Mapping[str, Any], severity: str) -> None:
    """Count ``event`` for the campaign copy it is about (if any), in the caller's transaction: staged with the group
    commit inside ``Store.write``, written at once on any other connection."""
    item = _item(event, severity)
    if item is None:
        return
    stage_row(conn, _STAGED, write_items, item)


item_of = _item  # what ``stage`` stages of an event, made ahead (``store.events.prepare``): None counts for nothing


def stage_item(conn: sqlite3.Connection, item: tuple[str, str, str, str]) -> None:
    """``stage`` for an item made ahead (``item_of``)."""
    stage_row(conn, _STAGED, write_items, item)


def _copies(conn: sqlite3.Connection, qids: Sequence[str]) -> dict[str, tuple[int, int, str]]:
    """queue id -> (campaign, content, address) of the segment copies among ``qids``."""
    found: dict[str, tuple[int, int, str]] = {}
    for i in range(0, len(qids), _CHUNK):
        chunk = qids[i:i + _CHUNK]
        for qid, cid, content, address in conn.execute(
                f"SELECT queue_id, campaign_id, content_id, address FROM if_dispatch WHERE queue_id IN"
                f" ({','.join('?' * len(chunk))}) AND seed = 0", chunk):
            found[qid] = (int(cid), int(content), address)
    return found


def _first_seen(conn: sqlite3.Connection, keys: Sequence[tuple[int, str, str]]) -> set[tuple[int, str, str]]:
    """Record ``keys`` (campaign, address, what) as seen; the ones not seen before."""
    new: set[tuple[int, str, str]] = set()
    for i in range(0, len(keys), _CHUNK):
        chunk = keys[i:i + _CHUNK]
        rows = conn.execute("INSERT INTO if_campaign_seen (campaign_id, address, what) VALUES "
                            + ", ".join(["(?, ?, ?)"] * len(chunk))
                            + " ON CONFLICT DO NOTHING RETURNING campaign_id, address, what",
                            [v for k in chunk for v in k]).fetchall()
        new.update((int(r[0]), r[1], r[2]) for r in rows)
    return new


def write_items(conn: sqlite3.Connection, items: list[tuple[str, str, str, str]]) -> None:
    """Count staged events (``_item``) in their order: their copies looked up once per batch, then one multi-row
    INSERT of what each recipient did first and one UPSERT per counter table, in key order."""
    copies = _copies(conn, sorted({i[0] for i in items}))
    if not copies:
        return
    mine = [(copies[qid], kind, severity, url) for qid, kind, severity, url in items if qid in copies]
    keys: dict[tuple[int, str, str], None] = {}
    for (cid, _, address), kind, severity, url in mine:
        if severity == MACHINE:  # a machine's open or click: in the totals only, never what a person did first
            continue
        keys[(cid, address, f"{kind}/{severity}")] = None
        if kind == "clicked":
            keys[(cid, address, "L" + url)] = None
    new = _first_seen(conn, sorted(keys))
    counts: Counter = Counter()
    uniques: Counter = Counter()
    links: dict[tuple[int, int, str], list[int]] = {}
    for (cid, content, address), kind, severity, url in mine:
        counts[(cid, content, kind, severity)] += 1
        if severity == MACHINE:
            if kind == "clicked":
                links.setdefault((cid, content, url), [0, 0, 0])[0] += 1
            continue
        first = (cid, address, f"{kind}/{severity}")
        is_first = first in new
        if is_first:
            new.discard(first)
            uniques[(cid, content, kind, severity)] += 1
        if kind == "clicked":
            link = links.setdefault((cid, content, url), [0, 0, 0])
            link[0] += 1
            link[1] += int(is_first)
            by_link = (cid, address, "L" + url)
            if by_link in new:
                new.discard(by_link)
                link[2] += 1
    execute_rows(conn, "INSERT INTO if_campaign_counts (campaign_id, content_id, event, severity, total, uniq)", 6,
                 [(*key, n, uniques[key]) for key, n in sorted(counts.items())],
                 " ON CONFLICT (campaign_id, content_id, event, severity) DO UPDATE SET total ="
                 " if_campaign_counts.total + excluded.total, uniq = if_campaign_counts.uniq + excluded.uniq")
    execute_rows(conn, "INSERT INTO if_link_counts (campaign_id, content_id, url, total, uniq, uniq_by_link)", 6,
                 [(*key, *n) for key, n in sorted(links.items())],
                 " ON CONFLICT (campaign_id, content_id, url) DO UPDATE SET total = if_link_counts.total +"
                 " excluded.total, uniq = if_link_counts.uniq + excluded.uniq, uniq_by_link ="
                 " if_link_counts.uniq_by_link + excluded.uniq_by_link")


def count_copies(conn: sqlite3.Connection, campaign_id: int, rows: Sequence[tuple[int, str, bool]]) -> None:
    """Count copies made ((content, format, seed) each): ``sent``/``sent-seed`` per format, and the ``accepted``
    event of each segment copy (recorded in the same transaction, before its ``if_dispatch`` row exists)."""
    counts: Counter = Counter()
    for content, fmt, seed in rows:
        counts[(campaign_id, content, "sent-seed" if seed else "sent", fmt)] += 1
        if not seed:
            counts[(campaign_id, content, "accepted", "")] += 1
    execute_rows(conn, "INSERT INTO if_campaign_counts (campaign_id, content_id, event, severity, total, uniq)", 6,
                 [(*key, n, n) for key, n in sorted(counts.items())],
                 " ON CONFLICT (campaign_id, content_id, event, severity) DO UPDATE SET total ="
                 " if_campaign_counts.total + excluded.total, uniq = if_campaign_counts.uniq + excluded.uniq")


def counts(conn: sqlite3.Connection, campaign_id: int) -> list[tuple[int, str, str, int, int]]:
    """(content, event, severity, total, unique) of a campaign, in key order."""
    return [(int(r[0]), r[1], r[2], int(r[3]), int(r[4])) for r in conn.execute(
        "SELECT content_id, event, severity, total, uniq FROM if_campaign_counts WHERE campaign_id = ?"
        " ORDER BY content_id, event, severity", (campaign_id,))]


def link_counts(conn: sqlite3.Connection, campaign_id: int) -> list[tuple[int, str, int, int, int]]:
    """(content, url, clicks total, unique, unique by link) of a campaign's clicked URLs, in key order."""
    return [(int(r[0]), r[1], int(r[2]), int(r[3]), int(r[4])) for r in conn.execute(
        "SELECT content_id, url, total, uniq, uniq_by_link FROM if_link_counts WHERE campaign_id = ?"
        " ORDER BY content_id, url",
        (campaign_id,))]
