"""InboxFirst-style campaigns (seed 004): the campaigns, their contents, and their durable, paced dispatch.

Tables (schema step "InboxFirst campaigns"): ``if_campaigns`` (one row per campaign: its mailing list's id, name,
``segment`` a JSON array of ad hoc clauses or NULL when none was given, ``dispatch`` a JSON object of delivery
settings or NULL, the dispatch ``state`` idle | scheduled | sending | finished | failed | cancelled, ``paused``,
``begins_at``/``started_at``/``finished_at``, ``cursor`` = the last member address whose copy was made, ``copies``;
a leased work row like ``list_expansions``: ``store.leases``), ``if_campaign_contents`` (its contents, in id order),
``if_dispatch`` (one row per copy made: campaign, member address, content, format, queue id, whether the address
came from a seed list; primary key (campaign, address): nobody gets two copies) and ``if_campaign_links`` (the links
of each content, recorded when sending starts). A campaign's figures are counters kept as its copies are made and
their events recorded (``store.ifcounts``), read by key: never a join with, or a scan of, the events.

The dispatch contract (what makes a kill -9 safe), as for list expansions: the worker holding a campaign reads the
segment's members after the cursor in address order and commits each batch's copies, their ``if_dispatch`` rows
and the cursor's move in ONE transaction (``dispatch_batch``), written only if the worker still holds the row at
that cursor, the campaign is still ``sending`` and not paused. A pause therefore stops the next batch at the latest;
a resume continues from the committed cursor.

``DispatchStore`` is the contract, ``DispatchMethods`` its implementation over both engines.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any, Container, Literal, Mapping, Protocol, Sequence

from mtad.store.dialect import dialect_of
from mtad.store import ifcounts
from mtad.store.batch import execute_rows
from mtad.store.lists import ListMember, _enqueue_copies, _member
from mtad.store.queue import CLAIMABLE, DEFAULT_LEASE, UNLOCK, Enqueue

STATES = ("idle", "scheduled", "sending", "finished", "failed", "cancelled")
FORMATS = ("html", "text", "both")
BatchResult = Literal["written", "lost", "stopped"]


class CampaignStarted(ValueError):
    """An update meant for a campaign not yet sending found it sending or ended: nothing was written."""


@dataclass(frozen=True)
class Content:
    id: int
    name: str
    subject: str
    format: str
    html: str = ""
    text: str = ""


@dataclass(frozen=True)
class NewContent:
    name: str
    subject: str
    format: str
    html: str = ""
    text: str = ""


@dataclass(frozen=True)
class Campaign:
    """One campaign as stored. ``segment``: the ad hoc clauses (None: no segment given); ``dispatch``: the delivery
    settings (None: none given). Times are epoch seconds or None."""

    id: int
    list_id: int
    name: str
    segment: tuple[Mapping[str, Any], ...] | None
    dispatch: Mapping[str, Any] | None
    state: str
    paused: bool
    begins_at: float | None
    started_at: float | None
    finished_at: float | None
    note: str  # why it failed ('' otherwise)
    copies: int
    created_at: float
    updated_at: float
    contents: tuple[Content, ...] = ()
    # automatic winner selection: '' (not begun, not used) | split_testing | decision_delay | finished
    ab_state: str = ""
    ab_decide_at: float | None = None
    winner_id: int | None = None
    ab_snapshots: tuple[Mapping[str, Any], ...] = ()  # {"content_id": id, "snapshot": stat_summary} at the decision


@dataclass(frozen=True)
class CampaignChange:
    """What a create or an update sets (None: left as is / not given)."""

    name: str | None = None
    segment: Sequence[Mapping[str, Any]] | None = None
    dispatch: Mapping[str, Any] | None = None
    contents: Sequence[NewContent] | None = None
    state: str | None = None
    begins_at: float | None = None
    clear_begins_at: bool = False


@dataclass(frozen=True)
class DispatchJob:
    """A claimed campaign: its id and where its dispatch stands."""

    id: int
    cursor: str
    copies: int


@dataclass(frozen=True)
class DispatchRow:
    """The record of one copy made (``if_dispatch``)."""

    address: str
    queue_id: str
    content_id: int
    format: str
    seed: bool = False


@dataclass(frozen=True)
class Segment:
    """Who a campaign goes to: the subscribed members of ``list_id`` on every list of ``is_in`` and on none of
    ``is_not_in``, plus the subscribed members of the ``seeds`` lists."""

    list_id: int
    is_in: tuple[int, ...] = ()
    is_not_in: tuple[int, ...] = ()
    seeds: tuple[int, ...] = ()


@dataclass(frozen=True)
class EventCount:
    """Events of one kind (and severity) about a campaign's copies, per content: total and unique recipients."""

    content_id: int
    event: str
    severity: str
    total: int
    unique: int


@dataclass(frozen=True)
class SentCount:
    content_id: int
    format: str
    seed: bool
    count: int


@dataclass(frozen=True)
class CampaignFigures:
    """What a campaign's ``stat_summary`` is computed from: its counters (``store.ifcounts``)."""

    sent: tuple[SentCount, ...]
    events: tuple[EventCount, ...]
    in_queue: tuple[tuple[int, int], ...]  # (content id, copies still queued)
    unique_by_link: tuple[tuple[int, int], ...] = ()  # (content id, unique (recipient, url) clicks)


@dataclass(frozen=True)
class Link:
    id: int
    content_id: int
    url: str


@dataclass(frozen=True)
class LinkCount:
    """The clicks on one URL of one content of a campaign (``store.ifcounts``): total, unique (subscribers whose
    first click in the campaign it was) and unique by link (subscribers who clicked it). ``url``: at most
    ``ifcounts.MAX_URL`` characters."""

    content_id: int
    url: str
    total: int
    unique: int
    unique_by_link: int


# --- campaigns -------------------------------------------------------------------------------------------------

_COLUMNS = ("id, list_id, name, segment, dispatch, state, paused, begins_at, started_at, finished_at, note, copies,"
            " created_at, updated_at, ab_state, ab_decide_at, winner_id, ab_snapshots")


def _contents(conn: sqlite3.Connection, ids: Sequence[int]) -> dict[int, list[Content]]:
    found: dict[int, list[Content]] = {i: [] for i in ids}
    for chunk in [list(ids)[i:i + 500] for i in range(0, len(ids), 500)]:
        for r in conn.execute(f"SELECT campaign_id, id, name, subject, format, html, text FROM if_campaign_contents"
                              f" WHERE campaign_id IN ({','.join('?' * len(chunk))}) ORDER BY id", chunk):
            found[r[0]].append(Content(*r[1:]))
    return found


def _campaigns(conn: sqlite3.Connection, rows: Sequence[Sequence[Any]]) -> list[Campaign]:
    contents = _contents(conn, [r[0] for r in rows])
    return [Campaign(r[0], r[1], r[2], None if r[3] is None else tuple(json.loads(r[3])),
                     None if r[4] is None else json.loads(r[4]), r[5], bool(r[6]), r[7], r[8], r[9], r[10], r[11],
                     r[12], r[13], tuple(contents[r[0]]), r[14], r[15], r[16],
                     tuple(json.loads(r[17])) if r[17] else ()) for r in rows]


def get_campaign(conn: sqlite3.Connection, campaign_id: int) -> Campaign | None:
    rows = conn.execute(f"SELECT {_COLUMNS} FROM if_campaigns WHERE id = ?", (campaign_id,)).fetchall()
    found = _campaigns(conn, rows)
    return found[0] if found else None


def list_campaigns(conn: sqlite3.Connection, list_id: int, started_from: float | None = None,
                   started_to: float | None = None, limit: int = 1000) -> list[Campaign]:
    where, args = "list_id = ?", [list_id]
    if started_from is not None or started_to is not None:
        where += " AND state IN ('sending', 'finished', 'cancelled', 'failed') AND started_at IS NOT NULL"
        if started_from is not None:
            where, args = where + " AND started_at >= ?", [*args, started_from]
        if started_to is not None:
            where, args = where + " AND started_at <= ?", [*args, started_to]
    rows = conn.execute(f"SELECT {_COLUMNS} FROM if_campaigns WHERE {where} ORDER BY id LIMIT ?",
                        (*args, limit)).fetchall()
    return _campaigns(conn, rows)


def _write_contents(conn: sqlite3.Connection, campaign_id: int, contents: Sequence[NewContent]) -> None:
    conn.execute("DELETE FROM if_campaign_contents WHERE campaign_id = ?", (campaign_id,))
    for c in contents:
        conn.execute("INSERT INTO if_campaign_contents (campaign_id, name, subject, format, html, text)"
                     " VALUES (?, ?, ?, ?, ?, ?)", (campaign_id, c.name, c.subject, c.format, c.html, c.text))


def create_campaign(conn: sqlite3.Connection, list_id: int, change: CampaignChange, now: float) -> Campaign:
    row = conn.execute(
        "INSERT INTO if_campaigns (list_id, name, segment, dispatch, state, begins_at, next_attempt_at, created_at,"
        " updated_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?) RETURNING id",
        (list_id, change.name or "", None if change.segment is None else json.dumps(list(change.segment)),
         None if change.dispatch is None else json.dumps(dict(change.dispatch)), change.state or "idle",
         change.begins_at, now, now)).fetchone()
    _write_contents(conn, row[0], change.contents or ())
    found = get_campaign(conn, row[0])
    assert found is not None
    return found


def update_campaign(conn: sqlite3.Connection, campaign_id: int, change: CampaignChange, now: float
                    ) -> Campaign | None:
    """Apply ``change`` (its fields that are not None); the row is locked for the update. A change that sets the
    state idle or scheduled, or the contents, segment or delivery settings, raises ``CampaignStarted`` when the
    campaign began sending meanwhile."""
    row = conn.execute(f"SELECT state FROM if_campaigns WHERE id = ?{dialect_of(conn).lock_rows}",
                       (campaign_id,)).fetchone()
    if row is None:
        return None
    if row[0] not in ("idle", "scheduled") and (change.state in ("idle", "scheduled") or change.contents is not None
                                                or change.segment is not None or change.dispatch is not None):
        raise CampaignStarted(row[0])
    sets: list[str] = ["updated_at = ?"]
    args: list[Any] = [now]
    if change.name is not None:
        sets.append("name = ?"), args.append(change.name)
    if change.segment is not None:
        sets.append("segment = ?"), args.append(json.dumps(list(change.segment)))
    if change.dispatch is not None:
        sets.append("dispatch = ?"), args.append(json.dumps(dict(change.dispatch)))
    if change.state is not None:
        sets.append("state = ?"), args.append(change.state)
        if change.state in ("finished", "failed", "cancelled"):
            sets.append("finished_at = COALESCE(finished_at, ?)"), args.append(now)
            sets.append(UNLOCK)
    if change.begins_at is not None or change.clear_begins_at:
        sets.append("begins_at = ?"), args.append(change.begins_at)
    conn.execute(f"UPDATE if_campaigns SET {', '.join(sets)} WHERE id = ?", (*args, campaign_id))
    if change.contents is not None:
        _write_contents(conn, campaign_id, change.contents)
    return get_campaign(conn, campaign_id)


def set_paused(conn: sqlite3.Connection, campaign_id: int, paused: bool, now: float) -> Campaign | None:
    if conn.execute("UPDATE if_campaigns SET paused = ?, updated_at = ? WHERE id = ?",
                    (int(paused), now, campaign_id)).rowcount == 0:
        return None
    return get_campaign(conn, campaign_id)


# --- dispatch ----------------------------------------------------------------------------------------------------

def due_campaigns(conn: sqlite3.Connection, now: float, limit: int) -> list[int]:
    """The ids of campaigns a claim would take now (a read: the dispatcher claims, a write, only when there are)."""
    return [r[0] for r in conn.execute(
        "SELECT id FROM if_campaigns WHERE state IN ('scheduled', 'sending') AND paused = 0 AND begins_at <= ?"
        f" AND next_attempt_at <= ? AND {CLAIMABLE} ORDER BY id LIMIT ?", (now, now, now, limit))]


def claim_campaigns(conn: sqlite3.Connection, worker: str, now: float, limit: int, lease_until: float | None = None,
                    skip: Container[int] = ()) -> list[DispatchJob]:
    """Lease the campaigns due to send (scheduled and begun, or sending) that are not paused; a scheduled one
    becomes ``sending`` with its ``started_at``."""
    ids = [r[0] for r in conn.execute(
        "SELECT id FROM if_campaigns WHERE state IN ('scheduled', 'sending') AND paused = 0 AND begins_at <= ?"
        f" AND next_attempt_at <= ? AND {CLAIMABLE} ORDER BY id LIMIT ?{dialect_of(conn).lock_rows}",
        (now, now, now, limit)) if r[0] not in skip]
    if not ids:
        return []
    marks = ",".join("?" * len(ids))
    conn.execute(f"UPDATE if_campaigns SET locked_by = ?, locked_at = ?, lease_until = ? WHERE id IN ({marks})",
                 (worker, now, now + DEFAULT_LEASE if lease_until is None else lease_until, *ids))
    conn.execute(f"UPDATE if_campaigns SET state = 'sending', started_at = ?, updated_at = ? WHERE state = 'scheduled'"
                 f" AND id IN ({marks})", (now, now, *ids))
    rows = conn.execute(f"SELECT id, cursor, copies FROM if_campaigns WHERE id IN ({marks}) ORDER BY id",
                        ids).fetchall()
    return [DispatchJob(*r) for r in rows]


def _page(conn: sqlite3.Connection, list_ids: Sequence[int], after: str, limit: int, is_in: Sequence[int] = (),
          is_not_in: Sequence[int] = ()) -> list[ListMember]:
    """The subscribed members of the lists ``list_ids`` after ``after`` in address order (one row per address),
    on every list of ``is_in`` and none of ``is_not_in``."""
    if not list_ids:
        return []
    clauses, args = "", []
    for lid in is_in:
        clauses += " AND EXISTS (SELECT 1 FROM list_members o WHERE o.list_id = ? AND o.address = m.address)"
        args.append(lid)
    for lid in is_not_in:
        clauses += " AND NOT EXISTS (SELECT 1 FROM list_members o WHERE o.list_id = ? AND o.address = m.address)"
        args.append(lid)
    marks = ",".join("?" * len(list_ids))
    rows = conn.execute(f"SELECT m.address, m.name, m.vars, m.subscribed FROM list_members m WHERE m.list_id IN"
                        f" ({marks}) AND m.address > ? AND m.subscribed = 1{clauses} ORDER BY m.address, m.list_id"
                        f" LIMIT ?", (*list_ids, after, *args, limit * len(list_ids))).fetchall()
    seen: dict[str, ListMember] = {}
    for r in rows:
        if r[0] not in seen:
            seen[r[0]] = _member(r)
    return list(seen.values())[:limit]


def segment_members(conn: sqlite3.Connection, segment: Segment, after: str, limit: int
                    ) -> list[tuple[ListMember, bool]]:
    """The next ``limit`` recipients after ``after`` in address order: (member, whether only a seed list has it)."""
    main = _page(conn, [segment.list_id], after, limit, segment.is_in, segment.is_not_in)
    seeds = _page(conn, [s for s in segment.seeds if s != segment.list_id], after, limit)
    merged: dict[str, tuple[ListMember, bool]] = {m.address: (m, True) for m in seeds}
    merged.update({m.address: (m, False) for m in main})
    return [merged[a] for a in sorted(merged)][:limit]


def dispatch_batch(conn: sqlite3.Connection, campaign_id: int, worker: str, after: str, cursor: str,
                   copies: Sequence[Enqueue], rows: Sequence[DispatchRow], done: bool, now: float,
                   decide_at: float | None = None) -> BatchResult:
    """Commit one batch (see the module doc): ``lost`` if ``worker`` no longer holds the row at ``after``,
    ``stopped`` if the campaign is paused or no longer sending (nothing written then), else ``written``.
    ``done``: the walk ends: the campaign is finished, or, with ``decide_at`` (the split test's walk ended), in
    ``decision_delay`` until then, its cursor back at the start, given back."""
    row = conn.execute(f"SELECT cursor, locked_by, state, paused FROM if_campaigns WHERE id = ?"
                       f"{dialect_of(conn).lock_rows}", (campaign_id,)).fetchone()
    if row is None or row[0] != after or row[1] != worker:
        return "lost"
    if row[2] != "sending" or row[3]:
        return "stopped"
    _enqueue_copies(conn, copies, now)
    execute_rows(conn, "INSERT INTO if_dispatch (campaign_id, address, queue_id, content_id, format, seed,"
                 " created_at)", 7, [(campaign_id, r.address, r.queue_id, r.content_id, r.format, int(r.seed), now)
                                      for r in rows])
    ifcounts.count_copies(conn, campaign_id, [(r.content_id, r.format, r.seed) for r in rows])
    if done and decide_at is not None:
        conn.execute(f"UPDATE if_campaigns SET cursor = '', copies = copies + ?, updated_at = ?, ab_state ="
                     f" 'decision_delay', ab_decide_at = ?, next_attempt_at = ?, {UNLOCK} WHERE id = ?",
                     (len(rows), now, decide_at, decide_at, campaign_id))
        return "written"
    conn.execute(f"UPDATE if_campaigns SET cursor = ?, copies = copies + ?, updated_at = ?"
                 f"{', state = ?, finished_at = ?, ' + UNLOCK if done else ''} WHERE id = ?",
                 (cursor, len(rows), now, *(("finished", now) if done else ()), campaign_id))
    return "written"


def start_split(conn: sqlite3.Connection, campaign_id: int, worker: str) -> bool:
    """A held campaign's automatic winner selection begins: ``split_testing``."""
    return conn.execute("UPDATE if_campaigns SET ab_state = 'split_testing' WHERE id = ? AND locked_by = ?"
                        " AND ab_state = ''", (campaign_id, worker)).rowcount > 0


def decide_winner(conn: sqlite3.Connection, campaign_id: int, worker: str, winner_id: int,
                  snapshots: Sequence[Mapping[str, Any]], now: float) -> bool:
    """The split test of a held campaign in ``decision_delay`` is decided: ``finished`` with its winner and each
    content's figures then; the rest of the segment is sent the winner."""
    return conn.execute("UPDATE if_campaigns SET ab_state = 'finished', winner_id = ?, ab_snapshots = ?,"
                        " updated_at = ? WHERE id = ? AND locked_by = ? AND ab_state = 'decision_delay'",
                        (winner_id, json.dumps(list(snapshots)), now, campaign_id, worker)).rowcount > 0


def end_dispatch(conn: sqlite3.Connection, campaign_id: int, worker: str, state: str, note: str, now: float) -> bool:
    """End a held campaign's dispatch as ``state`` (failed: ``note`` says why), unlocked."""
    return conn.execute(f"UPDATE if_campaigns SET state = ?, note = ?, finished_at = ?, updated_at = ?, {UNLOCK}"
                        " WHERE id = ? AND locked_by = ?", (state, note, now, now, campaign_id, worker)).rowcount > 0


def release_campaign(conn: sqlite3.Connection, campaign_id: int, worker: str) -> bool:
    """Give a held campaign back at once (paused: a resume lets any worker claim it again)."""
    return conn.execute(f"UPDATE if_campaigns SET {UNLOCK} WHERE id = ? AND locked_by = ?",
                        (campaign_id, worker)).rowcount > 0


def campaign_state(conn: sqlite3.Connection, campaign_id: int) -> tuple[str, bool] | None:
    r = conn.execute("SELECT state, paused FROM if_campaigns WHERE id = ?", (campaign_id,)).fetchone()
    return None if r is None else (r[0], bool(r[1]))


# --- links and figures -----------------------------------------------------------------------------------------

def record_links(conn: sqlite3.Connection, campaign_id: int, links: Sequence[tuple[int, str]]) -> None:
    """Record the links of the campaign's contents ((content id, url)) once: a second call adds nothing."""
    have = {(r[0], r[1]) for r in conn.execute("SELECT content_id, url FROM if_campaign_links WHERE campaign_id = ?",
                                                (campaign_id,))}
    for content_id, url in dict.fromkeys(links):
        if (content_id, url) not in have:
            conn.execute("INSERT INTO if_campaign_links (campaign_id, content_id, url) VALUES (?, ?, ?)",
                         (campaign_id, content_id, url))


def campaign_links(conn: sqlite3.Connection, campaign_id: int) -> list[Link]:
    return [Link(*r) for r in conn.execute("SELECT id, content_id, url FROM if_campaign_links WHERE campaign_id = ?"
                                           " ORDER BY lower(url), id", (campaign_id,))]


def campaign_figures(conn: sqlite3.Connection, campaign_id: int) -> CampaignFigures:
    """The campaign's counters (``store.ifcounts``: read by key, never a join with the events) and its copies still
    queued (``if_dispatch`` then ``deliveries(message)``)."""
    sent, events = [], []
    for content, event, severity, total, unique in ifcounts.counts(conn, campaign_id):
        if event in ("sent", "sent-seed"):
            sent.append(SentCount(content, severity, event == "sent-seed", total))
        else:
            events.append(EventCount(content, event, severity, total, unique))
    by_link: dict[int, int] = {}
    for content, _, _, _, unique_by_link in ifcounts.link_counts(conn, campaign_id):
        by_link[content] = by_link.get(content, 0) + unique_by_link
    in_queue = tuple((r[0], r[1]) for r in conn.execute(
        "SELECT d.content_id, count(*) FROM if_dispatch d JOIN deliveries q ON q.message = d.queue_id"
        " WHERE d.campaign_id = ? AND q.state = 'queued' GROUP BY d.content_id", (campaign_id,)))
    return CampaignFigures(tuple(sent), tuple(events), in_queue, tuple(sorted(by_link.items())))


def campaign_link_counts(conn: sqlite3.Connection, campaign_id: int) -> list[LinkCount]:
    """The clicked URLs of the campaign's copies with their counts (``store.ifcounts``), by content then URL."""
    return [LinkCount(*r) for r in ifcounts.link_counts(conn, campaign_id)]


# --- the typed methods -----------------------------------------------------------------------------------------

class DispatchStore(Protocol):
    """InboxFirst campaigns and their dispatch.

    Contract:
    - Every write is one transaction. A campaign's contents are replaced as a whole when given.
    - ``claim_campaigns`` leases due, unpaused campaigns (``skip``: the rows the worker holds) and moves a
      scheduled one to ``sending``; ``dispatch_batch`` commits a batch's copies, their ``if_dispatch`` rows and the
      cursor's move only while the worker holds the row at that cursor and the campaign is sending and unpaused;
      after any crash, resuming from the committed cursor makes every recipient's copy exactly once.
    - ``segment_members`` pages the segment in address order; ``campaign_figures``/``campaign_link_counts`` read
      the campaign's counters (``store.ifcounts``, kept as its copies are made and their events recorded) by key.
    """

    async def create_dispatch_campaign(self, list_id: int, change: CampaignChange, now: float) -> Campaign: ...
    async def dispatch_campaign(self, campaign_id: int) -> Campaign | None: ...
    async def list_dispatch_campaigns(self, list_id: int, started_from: float | None = None,
                             started_to: float | None = None) -> list[Campaign]: ...
    async def update_dispatch_campaign(self, campaign_id: int, change: CampaignChange,
                                       now: float) -> Campaign | None: ...
    async def set_campaign_paused(self, campaign_id: int, paused: bool, now: float) -> Campaign | None: ...
    async def due_campaigns(self, now: float, limit: int) -> list[int]: ...
    async def claim_campaigns(self, worker: str, now: float, limit: int, *, lease_until: float | None = None,
                              skip: Container[int] = ()) -> list[DispatchJob]: ...
    async def segment_members(self, segment: Segment, after: str, limit: int) -> list[tuple[ListMember, bool]]: ...
    async def dispatch_batch(self, campaign_id: int, worker: str, after: str, cursor: str, copies: Sequence[Enqueue],
                             rows: Sequence[DispatchRow], done: bool, now: float,
                             decide_at: float | None = None) -> BatchResult: ...
    async def start_split(self, campaign_id: int, worker: str) -> bool: ...
    async def decide_winner(self, campaign_id: int, worker: str, winner_id: int,
                            snapshots: Sequence[Mapping[str, Any]], now: float) -> bool: ...
    async def end_dispatch(self, campaign_id: int, worker: str, state: str, note: str, now: float) -> bool: ...
    async def release_campaign(self, campaign_id: int, worker: str) -> bool: ...
    async def campaign_state(self, campaign_id: int) -> tuple[str, bool] | None: ...
    async def record_campaign_links(self, campaign_id: int, links: Sequence[tuple[int, str]]) -> None: ...
    async def campaign_links(self, campaign_id: int) -> list[Link]: ...
    async def campaign_figures(self, campaign_id: int) -> CampaignFigures: ...
    async def campaign_link_counts(self, campaign_id: int) -> list[LinkCount]: ...


class DispatchMethods:
    """``DispatchStore`` over either engine (a mixin of the stores)."""

    async def create_dispatch_campaign(self, list_id: int, change: CampaignChange, now: float) -> Campaign:
        return await self.write(lambda c: create_campaign(c, list_id, change, now))  # type: ignore[attr-defined]

    async def dispatch_campaign(self, campaign_id: int) -> Campaign | None:
        return await self.read(lambda c: get_campaign(c, campaign_id))  # type: ignore[attr-defined]

    async def list_dispatch_campaigns(self, list_id: int, started_from: float | None = None,
                             started_to: float | None = None) -> list[Campaign]:
        return await self.read(  # type: ignore[attr-defined]
            lambda c: list_campaigns(c, list_id, started_from, started_to))

    async def update_dispatch_campaign(self, campaign_id: int, change: CampaignChange,
                                       now: float) -> Campaign | None:
        return await self.write(lambda c: update_campaign(c, campaign_id, change, now))  # type: ignore[attr-defined]

    async def set_campaign_paused(self, campaign_id: int, paused: bool, now: float) -> Campaign | None:
        return await self.write(lambda c: set_paused(c, campaign_id, paused, now))  # type: ignore[attr-defined]

    async def due_campaigns(self, now: float, limit: int) -> list[int]:
        return await self.read(lambda c: due_campaigns(c, now, limit))  # type: ignore[attr-defined]

    async def claim_campaigns(self, worker: str, now: float, limit: int, *, lease_until: float | None = None,
                              skip: Container[int] = ()) -> list[DispatchJob]:
        return await self.write(  # type: ignore[attr-defined]
            lambda c: claim_campaigns(c, worker, now, limit, lease_until, skip))

    async def segment_members(self, segment: Segment, after: str, limit: int) -> list[tuple[ListMember, bool]]:
        return await self.read(lambda c: segment_members(c, segment, after, limit))  # type: ignore[attr-defined]

    async def dispatch_batch(self, campaign_id: int, worker: str, after: str, cursor: str, copies: Sequence[Enqueue],
                             rows: Sequence[DispatchRow], done: bool, now: float,
                             decide_at: float | None = None) -> BatchResult:
        return await self.write(  # type: ignore[attr-defined]
            lambda c: dispatch_batch(c, campaign_id, worker, after, cursor, copies, rows, done, now, decide_at))

    async def start_split(self, campaign_id: int, worker: str) -> bool:
        return await self.write(lambda c: start_split(c, campaign_id, worker))  # type: ignore[attr-defined]

    async def decide_winner(self, campaign_id: int, worker: str, winner_id: int,
                            snapshots: Sequence[Mapping[str, Any]], now: float) -> bool:
        return await self.write(  # type: ignore[attr-defined]
            lambda c: decide_winner(c, campaign_id, worker, winner_id, snapshots, now))

    async def end_dispatch(self, campaign_id: int, worker: str, state: str, note: str, now: float) -> bool:
        return await self.write(  # type: ignore[attr-defined]
            lambda c: end_dispatch(c, campaign_id, worker, state, note, now))

    async def release_campaign(self, campaign_id: int, worker: str) -> bool:
        return await self.write(lambda c: release_campaign(c, campaign_id, worker))  # type: ignore[attr-defined]

    async def campaign_state(self, campaign_id: int) -> tuple[str, bool] | None:
        return await self.read(lambda c: campaign_state(c, campaign_id))  # type: ignore[attr-defined]

    async def record_campaign_links(self, campaign_id: int, links: Sequence[tuple[int, str]]) -> None:
        await self.write(lambda c: record_links(c, campaign_id, links))  # type: ignore[attr-defined]

    async def campaign_links(self, campaign_id: int) -> list[Link]:
        return await self.read(lambda c: campaign_links(c, campaign_id))  # type: ignore[attr-defined]

    async def campaign_figures(self, campaign_id: int) -> CampaignFigures:
        return await self.read(lambda c: campaign_figures(c, campaign_id))  # type: ignore[attr-defined]

    async def campaign_link_counts(self, campaign_id: int) -> list[LinkCount]:
        return await self.read(lambda c: campaign_link_counts(c, campaign_id))  # type: ignore[attr-defined]
