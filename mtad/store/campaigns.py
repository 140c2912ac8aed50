"""Campaigns (Mailgun's campaigns API, seed 000): the campaigns of each domain, their counters and an index of
their events, kept as events are written, so that every report is a read of counters or of one campaign's index
range, never a scan of the event log.

Tables (migration step 7):
- ``campaigns(cid, domain, id, name, created_at)``: ``cid`` is the store's own number of a campaign (never reused:
  AUTOINCREMENT / an identity); everything else points at it, so renaming a campaign's ``id`` (``PUT``) rewrites
  one row. ``(domain, id)`` is unique. The number is also what a later InboxFirst-style campaign (seed 004, a
  dispatch to a mailing list) can hang its own tables on: a campaign is this row whoever sends it.
- ``campaign_aliases(domain, id, cid)``: the former ids of renamed campaigns, so that the events of messages sent
  before a rename (opens, clicks, late bounces arrive days later) still count for their campaign. A new send with
  a former id is refused like any unknown id (``missing``); creating a campaign with that id takes it over.
- ``campaign_counts(cid, event, count)``: the counters of the campaigns list (``submitted``, ``delivered``,
  ``bounced``, ``dropped``, ``opened``, ``clicked``, ``unsubscribed``, ``complained``).
- ``campaign_events(cid, event, timestamp, event_id, minute, month, recipient, recipient_domain, link, country,
  region, city)``: one row per event of a campaign (every kind above but ``submitted``), with what the reports
  group by; ``event_id`` names the event log's row (its JSON, for ``/events``; the log may have pruned it, the
  index keeps the campaign's reports whole). Its key is ``(cid, event, timestamp, event_id)``, and on SQLite the
  table is stored in that order (``WITHOUT ROWID``): the rows a report reads, one kind of one campaign, lie
  together on disk however the campaigns' events were interleaved in time, so a report reads a few pages in a
  row instead of one page per event. ``(cid, timestamp)`` is indexed for the newest-first events page.
  ``machine`` (step 17) is 1 for an open or click flagged as a machine's (``flags.is-machine``): counted in every
  total, never in the distinct (unique) counts.

How an event counts (``campaign_event``): ``accepted`` (outgoing) -> ``submitted``; ``delivered``; ``failed``
permanent with reason ``bounce`` or ``delayed-bounce`` (the recipient's server said no) -> ``bounced``, any other
permanent failure (suppressed, expired, ...) -> ``dropped``; ``opened``, ``clicked``, ``unsubscribed``,
``complained`` as they are. Temporary failures, rejections and stored events do not count.

Writing: ``store.events.record`` hands every non-system event that names campaigns to ``stage``: inside
``Store.write`` it is staged and applied with the group commit (``write_items``: the campaign ids resolved once per
batch, then one multi-row INSERT and one UPSERT), in the same transaction as the event itself. An id that names
no campaign (deleted, never made) is skipped. Nothing here raises on an event's content.

``CampaignMethods`` are the typed methods; ``CampaignStore`` is their contract.
"""

from __future__ import annotations

import datetime
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

from mtad.store.dialect import dialect_of
from mtad.store.batch import execute_rows, stage as stage_row
from mtad.store.eventform import EVENT_DATA

MAX_ID = 64  # characters of an id and of a name (Mailgun's limit)
MAX_LINK = 2048  # characters of a clicked URL kept for the reports
UNKNOWN = "Unknown"  # a place the event does not tell (the tracking events' own word for it)
KINDS = ("submitted", "delivered", "bounced", "dropped", "opened", "clicked", "unsubscribed", "complained")
EVENT_KINDS = KINDS[1:]  # the kinds with rows in campaign_events
_BOUNCES = ("bounce", "delayed-bounce")
_STAGED = "campaigns"  # see store.Staged


class CampaignExists(ValueError):
    """The id is taken by another campaign of the domain."""


@dataclass(frozen=True)
class Campaign:
    """One campaign and its counters (``KINDS``, zero when absent)."""

    domain: str
    id: str
    name: str
    created_at: float
    counts: Mapping[str, int] = field(default_factory=dict)

    def count(self, kind: str) -> int:
        return int(self.counts.get(kind, 0))


@dataclass(frozen=True)
class CampaignEventQuery:
    """Events of a campaign, newest first: any of ``events`` (none: every kind), the equalities given (recipient
    and places without case), ``limit`` after the first ``offset``."""

    events: tuple[str, ...] = ()
    recipient: str | None = None
    country: str | None = None
    region: str | None = None
    city: str | None = None
    limit: int = 100
    offset: int = 0


@dataclass(frozen=True)
class CampaignEventRow:
    """One indexed event; ``data`` its JSON as the events API shows it, None when the event log pruned it."""

    event: str
    timestamp: float
    recipient: str
    link: str
    country: str
    region: str
    city: str
    data: str | None


GROUPS = ("link", "recipient", "domain", "country", "region", "city", "month", "day", "hour", "minute",
          "daily_hour")
_GROUP_SQL = {"link": "link", "recipient": "recipient", "domain": "recipient_domain", "country": "country",
              "region": "region", "city": "city", "month": "month", "day": "minute / 1440", "hour": "minute / 60",
              "minute": "minute", "daily_hour": "(minute / 60) % 24"}
UNIQUES = ("link", "recipient")


@dataclass(frozen=True)
class ReportQuery:
    """Events of one kind of a campaign grouped by ``groupby`` (``GROUPS``; none: one row for all), with their
    number and the number of distinct ``uniques`` (``UNIQUES``) per group, ordered by that number (most first,
    then by group), ``limit`` after the first ``offset``; filtered by the places given (without case)."""

    event: str
    groupby: tuple[str, ...] = ()
    uniques: tuple[str, ...] = ()
    country: str | None = None
    region: str | None = None
    city: str | None = None
    limit: int = 100
    offset: int = 0


@dataclass(frozen=True)
class ReportRow:
    """A group's values (in ``groupby`` order: text, or whole numbers for ``month`` (year * 12 + month - 1),
    ``day``, ``hour``, ``minute`` (days, hours, minutes since 1970) and ``daily_hour`` (0-23, UTC)), its total and
    its distinct counts (in ``uniques`` order)."""

    groups: tuple[Any, ...]
    total: int
    uniques: tuple[int, ...]


STATS_GROUPS = ("domain", "daily_hour", "city", "region")


@dataclass(frozen=True)
class StatsRow:
    """A campaign's figures (of one group of ``STATS_GROUPS``; ``group`` None for the whole campaign): ``total``
    per kind (``KINDS``; ``submitted`` only for the whole campaign), and distinct recipients who opened, who
    clicked and distinct links clicked."""

    group: Any
    total: Mapping[str, int]
    opened_recipients: int
    clicked_recipients: int
    clicked_links: int


# --- how an event counts ---------------------------------------------------------------------------------------

def campaign_event(event: Mapping[str, Any]) -> str | None:
    """The campaign kind an event counts as (``KINDS``), or None (see the module doc)."""
    kind = event.get("event")
    if kind in ("delivered", "opened", "clicked", "unsubscribed", "complained"):
        return kind
    if kind == "failed":
        if event.get("severity", "permanent") != "permanent":
            return None
        return "bounced" if (event.get("reason") or "bounce") in _BOUNCES else "dropped"
    if kind == "accepted" and event.get("direction") != "incoming":
        return "submitted"
    return None


def _text(value: Any, limit: int = 256) -> str:
    return value[:limit] if isinstance(value, str) and value else UNKNOWN


def month_of(ts: float) -> int:
    """Months since 1970 (year * 12 + month - 1) of a time, UTC."""
    when = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
    return when.year * 12 + when.month - 1


def _item(domain: str, event: Mapping[str, Any]) -> tuple | None:
    """What ``write_items`` needs of an event, or None if it counts for no campaign."""
    kind = campaign_event(event)
    if kind is None:
        return None
    ids = tuple(dict.fromkeys(str(c.get("id")) for c in event.get("campaigns") or ()
                              if isinstance(c, Mapping) and c.get("id")))
    if not ids:
        return None
    ts = float(event.get("timestamp") or 0.0)
    recipient = str(event.get("recipient") or "").lower()
    geo = event.get("geolocation") if isinstance(event.get("geolocation"), Mapping) else {}
    url = event.get("url") if kind == "clicked" else ""
    machine = int(kind in ("opened", "clicked") and bool((event.get("flags") or {}).get("is-machine")))
    return (domain, ids, kind, ts, str(event.get("id") or ""), int(ts // 60), month_of(ts), recipient,
            recipient.rpartition("@")[2], url[:MAX_LINK] if isinstance(url, str) else "",
            _text(geo.get("country"), 8), _text(geo.get("region")), _text(geo.get("city")), machine)


def stage(conn: sqlite3.Connection, domain: str, event: Mapping[str, Any]) -> None:
    """Count ``event`` for the campaigns it names, in the caller's transaction: staged with the group commit inside
    ``Store.write``, written at once on any other connection."""
    item = _item(domain, event)
    if item is None:
        return
    stage_row(conn, _STAGED, write_items, item)


item_of = _item  # what ``stage`` stages of an event, made ahead (``store.events.prepare``): None counts for nothing


def stage_item(conn: sqlite3.Connection, item: tuple) -> None:
    """``stage`` for an item made ahead (``item_of``)."""
    stage_row(conn, _STAGED, write_items, item)


def _resolve(conn: sqlite3.Connection, domain: str, campaign_id: str) -> int | None:
    """The number of the campaign ``campaign_id`` of ``domain`` is now, or was before a rename; None if none."""
    row = conn.execute("SELECT cid FROM campaigns WHERE domain = ? AND id = ?", (domain, campaign_id)).fetchone()
    if row is None:
        row = conn.execute("SELECT cid FROM campaign_aliases WHERE domain = ? AND id = ?",
                           (domain, campaign_id)).fetchone()
    return None if row is None else int(row[0])


def write_items(conn: sqlite3.Connection, items: list[tuple]) -> None:
    """Index and count staged events (``_item``): each campaign id looked up once per batch, then one multi-row
    INSERT of index rows and one UPSERT of counters."""
    cids: dict[tuple[str, str], int | None] = {}
    rows: list[tuple] = []
    counts: Counter = Counter()
    for domain, ids, kind, *rest in items:
        counted: set[int] = set()  # an event naming a campaign by its id and by a former one counts once
        for campaign_id in ids:
            key = (domain, campaign_id)
            if key not in cids:
                cids[key] = _resolve(conn, domain, campaign_id)
            cid = cids[key]
            if cid is None or cid in counted:
                continue
            counted.add(cid)
            counts[(cid, kind)] += 1
            if kind != "submitted":
                rows.append((cid, kind, *rest))
    rows.sort()  # in key order: neighbouring rows share B-tree pages
    execute_rows(conn, "INSERT INTO campaign_events (cid, event, timestamp, event_id, minute, month, recipient,"
                       " recipient_domain, link, country, region, city, machine)", 13, rows)
    execute_rows(conn, "INSERT INTO campaign_counts (cid, event, count)", 3,
                 [(*key, n) for key, n in sorted(counts.items())],
                 " ON CONFLICT (cid, event) DO UPDATE SET count = campaign_counts.count + excluded.count")


# --- campaigns ---------------------------------------------------------------------------------------------------

_COLUMNS = "cid, domain, id, name, created_at"


def _counts(conn: sqlite3.Connection, cids: Sequence[int]) -> dict[int, dict[str, int]]:
    found: dict[int, dict[str, int]] = {cid: {} for cid in cids}
    if cids:
        for cid, kind, n in conn.execute(f"SELECT cid, event, count FROM campaign_counts WHERE cid IN"
                                          f" ({','.join('?' * len(cids))})", tuple(cids)):
            found[int(cid)][kind] = int(n)
    return found


def _campaigns(conn: sqlite3.Connection, rows: list[tuple]) -> list[Campaign]:
    counts = _counts(conn, [int(r[0]) for r in rows])
    return [Campaign(r[1], r[2], r[3], float(r[4]), counts[int(r[0])]) for r in rows]


def _row(conn: sqlite3.Connection, domain: str, campaign_id: str) -> tuple | None:
    return conn.execute(f"SELECT {_COLUMNS} FROM campaigns WHERE domain = ? AND id = ?",
                        (domain, campaign_id)).fetchone()


def get(conn: sqlite3.Connection, domain: str, campaign_id: str) -> Campaign | None:
    row = _row(conn, domain, campaign_id)
    return None if row is None else _campaigns(conn, [row])[0]


def list_page(conn: sqlite3.Connection, domain: str | None, limit: int,
              skip: int) -> tuple[int, tuple[Campaign, ...]]:
    where, params = ("WHERE domain = ?", (domain,)) if domain is not None else ("", ())
    total = conn.execute(f"SELECT count(*) FROM campaigns {where}", params).fetchone()[0]
    rows = conn.execute(f"SELECT {_COLUMNS} FROM campaigns {where} ORDER BY created_at, cid LIMIT ? OFFSET ?",
                        (*params, limit, skip)).fetchall()
    return int(total), tuple(_campaigns(conn, rows))


def create(conn: sqlite3.Connection, domain: str, campaign_id: str, name: str, now: float,
           limit: int | None) -> Campaign | None:
    """A new campaign; raises ``CampaignExists``; None when ``domain`` has ``limit`` campaigns already."""
    if _row(conn, domain, campaign_id) is not None:
        raise CampaignExists(campaign_id)
    if limit is not None and conn.execute("SELECT count(*) FROM campaigns WHERE domain = ?",
                                          (domain,)).fetchone()[0] >= limit:
        return None
    conn.execute("DELETE FROM campaign_aliases WHERE domain = ? AND id = ?", (domain, campaign_id))
    conn.execute("INSERT INTO campaigns (domain, id, name, created_at) VALUES (?, ?, ?, ?)",
                 (domain, campaign_id, name, now))
    return Campaign(domain, campaign_id, name, now, {})


def update(conn: sqlite3.Connection, domain: str, campaign_id: str, name: str | None,
           new_id: str | None) -> Campaign | None:
    """Rename a campaign (its name, its id or both); None if there is none; raises ``CampaignExists``."""
    row = _row(conn, domain, campaign_id)
    if row is None:
        return None
    cid = int(row[0])
    if new_id is not None and new_id != campaign_id:
        if _row(conn, domain, new_id) is not None:
            raise CampaignExists(new_id)
        conn.execute("DELETE FROM campaign_aliases WHERE domain = ? AND id IN (?, ?)", (domain, new_id, campaign_id))
        conn.execute("INSERT INTO campaign_aliases (domain, id, cid) VALUES (?, ?, ?)", (domain, campaign_id, cid))
        conn.execute("UPDATE campaigns SET id = ? WHERE cid = ?", (new_id, cid))
    if name is not None:
        conn.execute("UPDATE campaigns SET name = ? WHERE cid = ?", (name, cid))
    return get(conn, domain, new_id or campaign_id)


def delete(conn: sqlite3.Connection, domain: str, campaign_id: str) -> bool:
    """Delete a campaign with all its data (counters, index rows, former ids); the event log keeps its events."""
    row = _row(conn, domain, campaign_id)
    if row is None:
        return False
    cid = int(row[0])
    for table in ("campaign_events", "campaign_counts", "campaign_aliases", "campaigns"):
        conn.execute(f"DELETE FROM {table} WHERE cid = ?", (cid,))
    return True


def missing(conn: sqlite3.Connection, domain: str, ids: Sequence[str]) -> tuple[str, ...]:
    """Those of ``ids`` that are no campaign of ``domain`` (a former id of a renamed one is none either)."""
    if not ids:
        return ()
    found = {r[0] for r in conn.execute(f"SELECT id FROM campaigns WHERE domain = ? AND id IN"
                                        f" ({','.join('?' * len(ids))})", (domain, *ids))}
    return tuple(i for i in ids if i not in found)


# --- reports -----------------------------------------------------------------------------------------------------

def _cid(conn: sqlite3.Connection, domain: str, campaign_id: str) -> int | None:
    row = conn.execute("SELECT cid FROM campaigns WHERE domain = ? AND id = ?", (domain, campaign_id)).fetchone()
    return None if row is None else int(row[0])


def _places(conn: sqlite3.Connection, q: Any) -> tuple[list[str], list[Any]]:
    where, params = [], []
    for column in ("country", "region", "city"):
        value = getattr(q, column)
        if value is not None:
            where.append(dialect_of(conn).nocase(column))
            params.append(value)
    return where, params


def _event_where(conn: sqlite3.Connection, cid: int, q: CampaignEventQuery) -> tuple[str, list[Any]]:
    where, params = ["campaign_events.cid = ?"], [cid]
    if q.events:
        where.append(f"campaign_events.event IN ({','.join('?' * len(q.events))})")
        params += q.events
    if q.recipient is not None:
        where.append("campaign_events.recipient = ?")
        params.append(q.recipient.strip().lower())
    places, values = _places(conn, q)
    return " AND ".join(where + places), params + values


def events_page(conn: sqlite3.Connection, domain: str, campaign_id: str,
                q: CampaignEventQuery) -> tuple[CampaignEventRow, ...] | None:
    cid = _cid(conn, domain, campaign_id)
    if cid is None:
        return None
    where, params = _event_where(conn, cid, q)
    # The page's index rows first (newest first, in the order of the index rows: a range read of the time index,
    # or of the key for one event kind, with no sort), then the event data of those rows only: an OFFSET skips
    # index rows, not joined and decoded events.
    rows = conn.execute(
        "SELECT ce.event, ce.timestamp, ce.recipient, ce.link, ce.country, ce.region, ce.city,"
        f" CASE WHEN events.id IS NULL THEN NULL ELSE {EVENT_DATA} END FROM (SELECT campaign_events.event,"
        " campaign_events.timestamp, campaign_events.event_id, campaign_events.recipient, link, country, region,"
        f" city FROM campaign_events WHERE {where} ORDER BY campaign_events.timestamp DESC, campaign_events.event"
        " DESC, campaign_events.event_id DESC LIMIT ? OFFSET ?) AS ce LEFT JOIN events ON events.id = ce.event_id"
        " ORDER BY ce.timestamp DESC, ce.event DESC, ce.event_id DESC",
        (*params, q.limit, q.offset)).fetchall()
    return tuple(CampaignEventRow(*r) for r in rows)


def events_count(conn: sqlite3.Connection, domain: str, campaign_id: str, q: CampaignEventQuery) -> int | None:
    cid = _cid(conn, domain, campaign_id)
    if cid is None:
        return None
    where, params = _event_where(conn, cid, q)
    return int(conn.execute(f"SELECT count(*) FROM campaign_events WHERE {where}", params).fetchone()[0])


def _report_sql(conn: sqlite3.Connection, cid: int, q: ReportQuery) -> tuple[str, str, list[Any]]:
    """(SELECT list, rest of the statement from FROM, parameters) of a report."""
    groups = [f"{_GROUP_SQL[g]} AS g{i}" for i, g in enumerate(q.groupby)]
    uniques = [f"count(DISTINCT CASE WHEN machine = 0 THEN {u} END)" for u in q.uniques]
    places, values = _places(conn, q)
    where = " AND ".join(["cid = ?", "event = ?", *places])
    group_by = f" GROUP BY {', '.join(f'g{i}' for i in range(len(q.groupby)))}" if q.groupby else ""
    return ", ".join([*groups, "count(*) AS total", *uniques]), f"FROM campaign_events WHERE {where}{group_by}", \
        [cid, q.event, *values]


def report(conn: sqlite3.Connection, domain: str, campaign_id: str, q: ReportQuery) -> tuple[ReportRow, ...] | None:
    cid = _cid(conn, domain, campaign_id)
    if cid is None:
        return None
    select, rest, params = _report_sql(conn, cid, q)
    order = ", ".join(["total DESC", *(f"g{i}" for i in range(len(q.groupby)))])
    n = len(q.groupby)
    rows = conn.execute(f"SELECT {select} {rest} ORDER BY {order} LIMIT ? OFFSET ?",
                        (*params, q.limit, q.offset)).fetchall()
    return tuple(ReportRow(tuple(r[:n]), int(r[n]), tuple(int(x) for x in r[n + 1:])) for r in rows
                 if r[n])  # without groupby and without events: no row


def report_count(conn: sqlite3.Connection, domain: str, campaign_id: str, q: ReportQuery) -> int | None:
    cid = _cid(conn, domain, campaign_id)
    if cid is None:
        return None
    select, rest, params = _report_sql(conn, cid, q)
    if not q.groupby:
        return int(conn.execute(f"SELECT count(*) {rest}", params).fetchone()[0] > 0)
    return int(conn.execute(f"SELECT count(*) FROM (SELECT {select} {rest}) AS grouped", params).fetchone()[0])


def _uniques(conn: sqlite3.Connection, cid: int) -> tuple[int, int, int]:
    opened = conn.execute("SELECT count(DISTINCT recipient) FROM campaign_events WHERE cid = ? AND event = 'opened'"
                          " AND machine = 0", (cid,)).fetchone()[0]
    clicked = conn.execute("SELECT count(DISTINCT recipient), count(DISTINCT link) FROM campaign_events"
                           " WHERE cid = ? AND event = 'clicked' AND machine = 0", (cid,)).fetchone()
    return int(opened), int(clicked[0]), int(clicked[1])


def stats(conn: sqlite3.Connection, domain: str, campaign_id: str, groupby: str | None, limit: int,
          offset: int) -> tuple[StatsRow, ...] | None:
    """The whole campaign's figures (one row; totals from the counters) or those of each group (by group value,
    ``limit`` after the first ``offset``)."""
    cid = _cid(conn, domain, campaign_id)
    if cid is None:
        return None
    if groupby is None:
        counts = _counts(conn, [cid])[cid]
        return (StatsRow(None, {k: counts.get(k, 0) for k in KINDS}, *_uniques(conn, cid)),)
    sums = [f"sum(CASE WHEN event = '{k}' THEN 1 ELSE 0 END)" for k in EVENT_KINDS]
    rows = conn.execute(
        f"SELECT {_GROUP_SQL[groupby]} AS g, {', '.join(sums)},"
        " count(DISTINCT CASE WHEN event = 'opened' AND machine = 0 THEN recipient END),"
        " count(DISTINCT CASE WHEN event = 'clicked' AND machine = 0 THEN recipient END),"
        " count(DISTINCT CASE WHEN event = 'clicked' AND machine = 0 THEN link END)"
        " FROM campaign_events WHERE cid = ? GROUP BY g ORDER BY g LIMIT ? OFFSET ?", (cid, limit, offset)).fetchall()
    n = len(EVENT_KINDS)
    return tuple(StatsRow(r[0], dict(zip(EVENT_KINDS, (int(x) for x in r[1:1 + n]))), int(r[n + 1]), int(r[n + 2]),
                          int(r[n + 3])) for r in rows)


# --- the typed methods -------------------------------------------------------------------------------------------

class CampaignStore(Protocol):
    """Campaigns and their reports.

    Contract:
    - ``create_campaign`` commits a new campaign (``CampaignExists`` if its id is taken; None, nothing written,
      when the domain has ``limit`` campaigns); ``update_campaign`` renames (name, id or both; the counters and
      events stay with it, and events of messages sent under the former id still count); ``delete_campaign``
      deletes it with its counters and index rows, in one transaction. Ids are unique per domain.
    - Events are counted by ``EventStore.record_events`` and every method that records events, in the same
      transaction (``stage``): when an event is durable, so are its campaign counters and index row. Counters
      equal the index rows of each kind (``submitted`` has counters only).
    - The reading methods answer from one snapshot; they return None when the campaign does not exist.
    """

    async def create_campaign(self, domain: str, campaign_id: str, name: str, now: float,
                              limit: int | None = None) -> Campaign | None: ...

    async def get_campaign(self, domain: str, campaign_id: str) -> Campaign | None: ...

    async def list_campaigns(self, domain: str | None, limit: int,
                             skip: int) -> tuple[int, tuple[Campaign, ...]]:
        """(how many the domain has, ``limit`` of them after the first ``skip``, oldest first); ``domain`` None:
        those of every domain."""
        ...

    async def update_campaign(self, domain: str, campaign_id: str, *, name: str | None = None,
                              new_id: str | None = None) -> Campaign | None: ...

    async def delete_campaign(self, domain: str, campaign_id: str) -> bool: ...

    async def missing_campaigns(self, domain: str, ids: Sequence[str]) -> tuple[str, ...]:
        """Those of ``ids`` that name no campaign of ``domain`` now."""
        ...

    async def campaign_events(self, domain: str, campaign_id: str, query: CampaignEventQuery,
                              count: bool = False) -> tuple[CampaignEventRow, ...] | int | None:
        """A page of the campaign's events, or their number (``count``)."""
        ...

    async def campaign_report(self, domain: str, campaign_id: str, query: ReportQuery,
                              count: bool = False) -> tuple[ReportRow, ...] | int | None:
        """A page of a grouped report, or its number of groups (``count``)."""
        ...

    async def campaign_stats(self, domain: str, campaign_id: str, groupby: str | None = None, limit: int = 100,
                             offset: int = 0) -> tuple[StatsRow, ...] | None: ...


class CampaignMethods:
    """``CampaignStore`` over an engine (``self.write``/``self.read``)."""

    async def create_campaign(self, domain: str, campaign_id: str, name: str, now: float,
                              limit: int | None = None) -> Campaign | None:
        return await self.write(  # type: ignore[attr-defined]
            lambda c: create(c, domain, campaign_id, name, now, limit))

    async def get_campaign(self, domain: str, campaign_id: str) -> Campaign | None:
        return await self.read(lambda c: get(c, domain, campaign_id))  # type: ignore[attr-defined]

    async def list_campaigns(self, domain: str | None, limit: int,
                             skip: int) -> tuple[int, tuple[Campaign, ...]]:
        return await self.read(lambda c: list_page(c, domain, limit, skip))  # type: ignore[attr-defined]

    async def update_campaign(self, domain: str, campaign_id: str, *, name: str | None = None,
                              new_id: str | None = None) -> Campaign | None:
        return await self.write(  # type: ignore[attr-defined]
            lambda c: update(c, domain, campaign_id, name, new_id))

    async def delete_campaign(self, domain: str, campaign_id: str) -> bool:
        return await self.write(lambda c: delete(c, domain, campaign_id))  # type: ignore[attr-defined]

    async def missing_campaigns(self, domain: str, ids: Sequence[str]) -> tuple[str, ...]:
        ids = tuple(ids)
        return await self.read(lambda c: missing(c, domain, ids))  # type: ignore[attr-defined]

    async def campaign_events(self, domain: str, campaign_id: str, query: CampaignEventQuery,
                              count: bool = False) -> tuple[CampaignEventRow, ...] | int | None:
        fn = events_count if count else events_page
        return await self.read(lambda c: fn(c, domain, campaign_id, query))  # type: ignore[attr-defined]

    async def campaign_report(self, domain: str, campaign_id: str, query: ReportQuery,
                              count: bool = False) -> tuple[ReportRow, ...] | int | None:
        fn = report_count if count else report
        return await self.read(lambda c: fn(c, domain, campaign_id, query))  # type: ignore[attr-defined]

    async def campaign_stats(self, domain: str, campaign_id: str, groupby: str | None = None, limit: int = 100,
                             offset: int = 0) -> tuple[StatsRow, ...] | None:
        return await self.read(  # type: ignore[attr-defined]
            lambda c: stats(c, domain, campaign_id, groupby, limit, offset))
