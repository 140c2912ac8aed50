"""Mailing lists: the lists, their members, and the durable expansion of a message sent to a list.

Tables (schema step "mailing lists"): ``mailing_lists`` (one row per list, its address lower-cased and unique, an
integer id that survives a rename), ``list_members`` (one row per (list, member address), the address lower-cased;
``vars`` a JSON object; ``subscribed`` 0/1) and ``list_expansions`` (one row per (message, list) to expand: the
message's queue id, the list's id, a ``cursor`` = the last member address whose copy was made, ``copies`` made so
far; a leased work row like the queue's, ``store.leases``).

The expansion contract (what makes a kill -9 safe): a message to a list is committed with its expansion row
(``Enqueue.lists``, in ``queue.enqueue``). The worker that holds the row reads the subscribed members after the
cursor in address order, a page at a time, and commits each page's copies (new messages, one recipient each, with
their ``accepted`` events) together with the cursor's advance in ONE transaction (``expand_batch``), which first
checks that the row is still claimed by that worker at that cursor: a second worker (a lease taken over while the
first still ran) writes nothing. So after any crash every member has exactly one copy: the pages committed are
never made again, the page in flight is made once by whoever resumes from the committed cursor.

``ListStore`` is the contract, ``ListMethods`` its implementation over both engines.
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Container, Literal, Mapping, Protocol, Sequence

import orjson

from mtad.base.types import Envelope, HeaderSummary, SendOptions
from mtad.store.changes import changed
from mtad.store.dialect import dialect_of
from mtad.store.batch import execute_rows
from mtad.store.events import NewEvent, record_all
from mtad.store.queue import CLAIMABLE, DEFAULT_LEASE, UNLOCK, Enqueue, enqueue

ACCESS_LEVELS = ("readonly", "members", "everyone")
REPLY_PREFERENCES = ("list", "sender")
AddMode = Literal["strict", "ignore", "upsert"]  # a member already there: an error, left as is, updated


class MemberExists(ValueError):
    """``add_members(mode="strict")`` found a member already on the list: nothing was written."""


class ListExists(ValueError):
    """A list with that address exists already: nothing was written."""


@dataclass(frozen=True)
class MailingList:
    """One list. ``address`` lower-cased; ``members_count`` is filled by the reads that say so (0 otherwise)."""

    id: int
    address: str
    name: str = ""
    description: str = ""
    access_level: str = "readonly"
    reply_preference: str = "list"
    created_at: float = 0.0
    members_count: int = 0


@dataclass(frozen=True)
class ListMember:
    address: str  # lower-cased
    name: str = ""
    vars: Mapping[str, Any] = field(default_factory=dict)
    subscribed: bool = True


@dataclass(frozen=True)
class ListChange:
    """What a list update changes (None: left as is)."""

    address: str | None = None
    name: str | None = None
    description: str | None = None
    access_level: str | None = None
    reply_preference: str | None = None


@dataclass(frozen=True)
class MemberChange:
    """What a member update changes (None: left as is)."""

    address: str | None = None
    name: str | None = None
    vars: Mapping[str, Any] | None = None
    subscribed: bool | None = None


@dataclass(frozen=True)
class ExpansionJob:
    """A claimed expansion: the message to copy, the list's id, the cursor (last member done) and copies made."""

    id: int
    queue_id: str
    list_id: int
    cursor: str
    copies: int


# --- lists ---------------------------------------------------------------------------------------------------

_LIST_COLUMNS = "l.id, l.address, l.name, l.description, l.access_level, l.reply_preference, l.created_at"
_COUNT = "(SELECT count(*) FROM list_members m WHERE m.list_id = l.id)"


def _list(r: Sequence[Any], count: int = 0) -> MailingList:
    return MailingList(r[0], r[1], r[2], r[3], r[4], r[5], r[6], count)


def load_lists(conn: sqlite3.Connection) -> tuple[MailingList, ...]:
    return tuple(_list(r) for r in conn.execute(f"SELECT {_LIST_COLUMNS} FROM mailing_lists l ORDER BY l.address"))


def get_list(conn: sqlite3.Connection, address: str, *, by_id: int | None = None) -> MailingList | None:
    where, arg = ("l.id = ?", by_id) if by_id is not None else ("l.address = ?", address.lower())
    r = conn.execute(f"SELECT {_LIST_COLUMNS}, {_COUNT} FROM mailing_lists l WHERE {where}", (arg,)).fetchone()
    return None if r is None else _list(r, r[7])


def create_list(conn: sqlite3.Connection, lst: MailingList) -> MailingList:
    address = lst.address.lower()
    if conn.execute("SELECT 1 FROM mailing_lists WHERE address = ?", (address,)).fetchone():
        raise ListExists(address)
    conn.execute("INSERT INTO mailing_lists (address, name, description, access_level, reply_preference, created_at)"
                 " VALUES (?, ?, ?, ?, ?, ?)",
                 (address, lst.name, lst.description, lst.access_level, lst.reply_preference, lst.created_at))
    changed(conn, "lists")
    found = get_list(conn, address)
    assert found is not None
    return found


def update_list(conn: sqlite3.Connection, address: str, change: ListChange) -> MailingList | None:
    old = get_list(conn, address)
    if old is None:
        return None
    new_address = (change.address or old.address).lower()
    if new_address != old.address and conn.execute("SELECT 1 FROM mailing_lists WHERE address = ?",
                                                   (new_address,)).fetchone():
        raise ListExists(new_address)
    new = replace(old, address=new_address, **{k: v for k, v in (
        ("name", change.name), ("description", change.description), ("access_level", change.access_level),
        ("reply_preference", change.reply_preference)) if v is not None})
    conn.execute("UPDATE mailing_lists SET address = ?, name = ?, description = ?, access_level = ?,"
                 " reply_preference = ? WHERE id = ?",
                 (new.address, new.name, new.description, new.access_level, new.reply_preference, old.id))
    changed(conn, "lists")
    return new


def delete_list(conn: sqlite3.Connection, address: str) -> bool:
    if conn.execute("DELETE FROM mailing_lists WHERE address = ?", (address.lower(),)).rowcount == 0:
        return False
    changed(conn, "lists")
    return True


def _page_where(which: str, pivot: str | None) -> tuple[str, str, tuple]:
    """(condition, order, args) of a page by address: first | last | next (after pivot) | previous (before)."""
    if which == "next" and pivot is not None:
        return " AND {col} > ?", "ASC", (pivot.lower(),)
    if which in ("previous", "prev") and pivot is not None:
        return " AND {col} < ?", "DESC", (pivot.lower(),)
    if which == "last":
        return "", "DESC", ()
    return "", "ASC", ()


def lists_page(conn: sqlite3.Connection, limit: int, which: str = "first",
               pivot: str | None = None) -> list[MailingList]:
    cond, order, args = _page_where(which, pivot)
    rows = conn.execute(f"SELECT {_LIST_COLUMNS}, {_COUNT} FROM mailing_lists l WHERE 1 = 1"
                        f"{cond.format(col='l.address')} ORDER BY l.address {order} LIMIT ?", (*args, limit)).fetchall()
    found = [_list(r, r[7]) for r in rows]
    return found if order == "ASC" else found[::-1]


def lists_skip(conn: sqlite3.Connection, skip: int, limit: int, address: str | None = None
               ) -> tuple[int, list[MailingList]]:
    where, args = ("WHERE l.address = ?", (address.lower(),)) if address else ("", ())
    total = conn.execute(f"SELECT count(*) FROM mailing_lists l {where}", args).fetchone()[0]
    rows = conn.execute(f"SELECT {_LIST_COLUMNS}, {_COUNT} FROM mailing_lists l {where} ORDER BY l.address"
                        " LIMIT ? OFFSET ?", (*args, limit, skip)).fetchall()
    return total, [_list(r, r[7]) for r in rows]


# --- members -------------------------------------------------------------------------------------------------

def _member(r: Sequence[Any]) -> ListMember:
    return ListMember(r[0], r[1], _vars(r[2]), bool(r[3]))


_LONG_NUMBER = re.compile(r"\d{19}")


def _vars(text: str) -> Any:
    """A member's stored vars: orjson (an expansion reads them by the hundred thousand); the stdlib for what
    orjson refuses (NaN, a lone surrogate) or reads otherwise (an integer over 64 bits becomes a float)."""
    if _LONG_NUMBER.search(text) is None:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


def _list_id(conn: sqlite3.Connection, address: str) -> int | None:
    r = conn.execute("SELECT id FROM mailing_lists WHERE address = ?", (address.lower(),)).fetchone()
    return None if r is None else r[0]


def add_members(conn: sqlite3.Connection, list_address: str, members: Sequence[ListMember], mode: AddMode,
                now: float) -> MailingList | None:
    """Add ``members`` (the last of equal addresses wins); None if there is no such list. ``strict`` raises
    ``MemberExists`` (nothing written) when one is there already."""
    list_id = _list_id(conn, list_address)
    if list_id is None:
        return None
    unique = list({m.address.lower(): m for m in members}.items())
    if mode == "strict":
        for chunk in _chunks([a for a, _ in unique]):
            hit = conn.execute(f"SELECT address FROM list_members WHERE list_id = ? AND address IN"
                               f" ({','.join('?' * len(chunk))}) LIMIT 1", (list_id, *chunk)).fetchone()
            if hit:
                raise MemberExists(hit[0])
    tail = " ON CONFLICT (list_id, address) DO " + (
        "UPDATE SET name = excluded.name, vars = excluded.vars, subscribed = excluded.subscribed"
        if mode == "upsert" else "NOTHING")
    conn.executemany("INSERT INTO list_members (list_id, address, name, vars, subscribed, created_at)"
                     " VALUES (?, ?, ?, ?, ?, ?)" + tail,
                     [(list_id, address, m.name, json.dumps(dict(m.vars)), int(m.subscribed), now)
                      for address, m in unique])
    return get_list(conn, "", by_id=list_id)


def _chunks(items: list[str], size: int = 500) -> list[list[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def get_member(conn: sqlite3.Connection, list_address: str, address: str) -> ListMember | None:
    r = conn.execute("SELECT m.address, m.name, m.vars, m.subscribed FROM list_members m JOIN mailing_lists l"
                     " ON l.id = m.list_id WHERE l.address = ? AND m.address = ?",
                     (list_address.lower(), address.lower())).fetchone()
    return None if r is None else _member(r)


def update_member(conn: sqlite3.Connection, list_address: str, address: str, change: MemberChange
                  ) -> ListMember | None:
    list_id = _list_id(conn, list_address)
    old = get_member(conn, list_address, address) if list_id is not None else None
    if old is None:
        return None
    new_address = (change.address or old.address).lower()
    if new_address != old.address and get_member(conn, list_address, new_address) is not None:
        raise MemberExists(new_address)
    new = ListMember(new_address, old.name if change.name is None else change.name,
                     old.vars if change.vars is None else dict(change.vars),
                     old.subscribed if change.subscribed is None else change.subscribed)
    conn.execute("UPDATE list_members SET address = ?, name = ?, vars = ?, subscribed = ? WHERE list_id = ?"
                 " AND address = ?", (new.address, new.name, json.dumps(dict(new.vars)), int(new.subscribed),
                                      list_id, old.address))
    return new


def delete_member(conn: sqlite3.Connection, list_address: str, address: str) -> bool:
    list_id = _list_id(conn, list_address)
    return list_id is not None and conn.execute(
        "DELETE FROM list_members WHERE list_id = ? AND address = ?", (list_id, address.lower())).rowcount > 0


def _subscribed(subscribed: bool | None) -> tuple[str, tuple]:
    return ("", ()) if subscribed is None else (" AND subscribed = ?", (int(subscribed),))


def members_page(conn: sqlite3.Connection, list_id: int, limit: int, which: str = "first",
                 pivot: str | None = None, subscribed: bool | None = None) -> list[ListMember]:
    cond, order, args = _page_where(which, pivot)
    sub, sub_args = _subscribed(subscribed)
    rows = conn.execute("SELECT address, name, vars, subscribed FROM list_members WHERE list_id = ?"
                        f"{cond.format(col='address')}{sub} ORDER BY address {order} LIMIT ?",
                        (list_id, *args, *sub_args, limit)).fetchall()
    found = [_member(r) for r in rows]
    return found if order == "ASC" else found[::-1]


def members_skip(conn: sqlite3.Connection, list_id: int, skip: int, limit: int, subscribed: bool | None = None,
                 address: str | None = None) -> tuple[int, list[ListMember]]:
    sub, sub_args = _subscribed(subscribed)
    if address:
        sub, sub_args = sub + " AND address = ?", (*sub_args, address.lower())
    total = conn.execute(f"SELECT count(*) FROM list_members WHERE list_id = ?{sub}", (list_id, *sub_args)).fetchone()[0]
    rows = conn.execute(f"SELECT address, name, vars, subscribed FROM list_members WHERE list_id = ?{sub}"
                        " ORDER BY address LIMIT ? OFFSET ?", (list_id, *sub_args, limit, skip)).fetchall()
    return total, [_member(r) for r in rows]


def unsubscribe_member(conn: sqlite3.Connection, list_id: int, address: str, events: Sequence[NewEvent]
                       ) -> ListMember | None:
    """Set the member unsubscribed and record ``events`` (its ``unsubscribed``), in one transaction; None (nothing
    written) if it is not on the list."""
    r = conn.execute("SELECT address, name, vars, subscribed FROM list_members WHERE list_id = ? AND address = ?",
                     (list_id, address.lower())).fetchone()
    if r is None:
        return None
    conn.execute("UPDATE list_members SET subscribed = 0 WHERE list_id = ? AND address = ?", (list_id, r[0]))
    record_all(conn, events)
    return replace(_member(r), subscribed=False)


# --- expansions ------------------------------------------------------------------------------------------------

def claim_expansions(conn: sqlite3.Connection, worker: str, now: float, limit: int, lease_until: float | None = None,
                     skip: Container[int] = ()) -> list[ExpansionJob]:
    ids = [r[0] for r in conn.execute(
        f"SELECT id FROM list_expansions WHERE state = 'queued' AND next_attempt_at <= ? AND {CLAIMABLE}"
        f" ORDER BY id LIMIT ?{dialect_of(conn).lock_rows}", (now, now, limit)) if r[0] not in skip]
    if not ids:
        return []
    marks = ",".join("?" * len(ids))
    conn.execute(f"UPDATE list_expansions SET locked_by = ?, locked_at = ?, lease_until = ? WHERE id IN ({marks})",
                 (worker, now, now + DEFAULT_LEASE if lease_until is None else lease_until, *ids))
    rows = conn.execute(f"SELECT id, message, list_id, cursor, copies FROM list_expansions WHERE id IN ({marks})"
                        " ORDER BY id", ids).fetchall()
    return [ExpansionJob(*r) for r in rows]


def expansion_members(conn: sqlite3.Connection, list_id: int, after: str, limit: int) -> list[ListMember]:
    """The subscribed members after ``after`` in address order (one page of an expansion)."""
    rows = conn.execute("SELECT address, name, vars, subscribed FROM list_members WHERE list_id = ? AND address > ?"
                        " AND subscribed = 1 ORDER BY address LIMIT ?", (list_id, after, limit)).fetchall()
    return [_member(r) for r in rows]


def expand_batch(conn: sqlite3.Connection, job_id: int, worker: str, after: str, cursor: str,
                 copies: Sequence[Enqueue] | CopyPage, done: bool, now: float) -> bool:
    """Commit one page of an expansion (see the module doc): the copies (``Enqueue`` items, or a ``CopyPage``
    made by ``CopyTemplate``) and the cursor's move from ``after`` to ``cursor`` (``done``: the expansion ends,
    unlocked), only if ``worker`` still holds the row at ``after``; False (nothing written) otherwise."""
    row = conn.execute(f"SELECT cursor, locked_by, state FROM list_expansions WHERE id = ?{dialect_of(conn).lock_rows}",
                       (job_id,)).fetchone()
    if row is None or row[0] != after or row[1] != worker or row[2] != "queued":
        return False
    if isinstance(copies, CopyPage):
        _insert_page(conn, copies)
    else:
        _enqueue_copies(conn, copies, now)
    conn.execute(f"UPDATE list_expansions SET cursor = ?, copies = copies + ?, state = ?, updated_at = ?"
                 f"{', ' + UNLOCK if done else ''} WHERE id = ?",
                 (cursor, len(copies), "done" if done else "queued", now, job_id))
    return True


_ENVELOPE = ("client_ip", "client_helo", "auth_user", "tls", "transport", "listener")
_json_string = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined] - json.dumps of one str


def _enqueue_copies(conn: sqlite3.Connection, copies: Sequence[Enqueue], now: float) -> None:
    """``queue.enqueue`` of each copy, in a few multi-row statements (a copy is an outbound message with one
    delivery row and its events; anything else goes through ``queue.enqueue``)."""
    simple = [c for c in copies if not c.forwards and not c.lists and c.deliver_to is None
              and c.message.direction == "outbound" and len(c.message.envelope.recipients) == 1]
    if len(simple) < len(copies):
        chosen = {id(c) for c in simple}
        for item in copies:
            if id(item) not in chosen:
                enqueue(conn, item, now)
    messages, deliveries = [], []
    # The copies of one page share their options, attachments, envelope fields and mostly their header summary:
    # each distinct value is JSON-encoded once per page (the same text json.dumps gives each copy), and the dict
    # that is encoded is made only then.
    encoded: dict[Any, str] = {}

    def once(key: Any, make: Callable[[], Any]) -> str:
        text = encoded.get(key)
        if text is None:
            text = encoded[key] = json.dumps(make())
        return text
    for item in simple:
        msg, env = item.message, item.message.envelope
        options, attachments, headers = msg.options, msg.attachments, msg.headers
        rcpt = env.recipients[0]
        rcpts = f"[{_json_string(rcpt)}]"  # == json.dumps([rcpt])
        envelope = (env.client_ip, env.client_helo, env.auth_user, env.tls, env.transport, env.listener)
        messages.append((item.queue_id, now, msg.direction, msg.domain, env.sender, rcpts,
                         headers.message_id, once(("h", headers), headers.to_json),
                         once(("o", id(options)), options.to_json),
                         once(("e",) + envelope, lambda: dict(zip(_ENVELOPE, envelope))), len(msg.body), msg.body,
                         once(("a", id(attachments)), lambda: list(attachments))))
        deliveries.append((item.queue_id, rcpt.rpartition("@")[2].lower(), rcpts, "queued",
                           max(now, options.deliver_by or 0.0), now, now))
    execute_rows(conn, "INSERT INTO messages (id, created_at, direction, domain, sender, recipients, message_id,"
                 " headers, options, envelope, size, body, attachments)", 13, messages)
    execute_rows(conn, "INSERT INTO deliveries (message, domain, recipients, state, next_attempt_at, created_at,"
                 " updated_at)", 7, deliveries)
    record_all(conn, [e for item in simple for e in item.events])


_MESSAGES_HEAD = ("INSERT INTO messages (id, created_at, direction, domain, sender, recipients, message_id,"
                  " headers, options, envelope, size, body, attachments)")
_DELIVERIES_HEAD = ("INSERT INTO deliveries (message, domain, recipients, state, next_attempt_at, created_at,"
                    " updated_at)")


class CopyTemplate:
    """What the rows of every copy of one message to one list share, encoded once per expansion, so that a page
    of copies (``page``/``CopyPage.add``) is made in their rows' shape where the copies are made (off the store's
    writer thread) and ``expand_batch`` only executes it. Each copy is an outbound message from ``sender`` in
    ``domain`` with one recipient, the headers of ``headers`` but its own subject, and one delivery row: the rows
    ``expand_batch`` writes for the same copies as ``Enqueue`` items (``queue.enqueue``), byte for byte."""

    def __init__(self, envelope: Envelope, domain: str, headers: HeaderSummary, options: SendOptions,
                 attachments: tuple):
        self.sender, self.domain, self.message_id = envelope.sender, domain, headers.message_id
        self.options, self.deliver_by = json.dumps(options.to_json()), options.deliver_by or 0.0
        self.envelope = json.dumps(dict(zip(_ENVELOPE, (envelope.client_ip, envelope.client_helo, envelope.auth_user,
                                                        envelope.tls, envelope.transport, envelope.listener))))
        self.attachments = json.dumps(list(attachments))
        whole = json.dumps(replace(headers, subject="").to_json())  # ... "subject": ""} (the subject is last)
        assert whole.endswith('""}')
        self.headers_head, self.subject = whole[:-3], headers.subject
        self.headers = json.dumps(headers.to_json())

    def page(self, now: float) -> CopyPage:
        return CopyPage(self, now)


class CopyPage:
    """A page of copies as rows (``CopyTemplate``): ``add`` one copy at a time, then ``expand_batch`` it."""

    __slots__ = ("template", "now", "due", "messages", "deliveries", "events")

    def __init__(self, template: CopyTemplate, now: float):
        self.template, self.now, self.due = template, now, max(now, template.deliver_by)
        self.messages: list[tuple] = []
        self.deliveries: list[tuple] = []
        self.events: list[NewEvent] = []

    def __len__(self) -> int:
        return len(self.messages)

    def add(self, queue_id: str, recipient: str, subject: str, body: bytes, events: Sequence[NewEvent]) -> None:
        t, now = self.template, self.now
        rcpts = f"[{_json_string(recipient)}]"  # == json.dumps([recipient])
        headers = t.headers if subject == t.subject else f"{t.headers_head}{_json_string(subject)}}}"
        self.messages.append((queue_id, now, "outbound", t.domain, t.sender, rcpts, t.message_id, headers, t.options,
                              t.envelope, len(body), body, t.attachments))
        self.deliveries.append((queue_id, recipient.rpartition("@")[2].lower(), rcpts, "queued", self.due, now, now))
        self.events.extend(events)


def _insert_page(conn: sqlite3.Connection, page: CopyPage) -> None:
    execute_rows(conn, _MESSAGES_HEAD, 13, page.messages)
    execute_rows(conn, _DELIVERIES_HEAD, 7, page.deliveries)
    record_all(conn, page.events)


# --- the typed methods -----------------------------------------------------------------------------------------

class ListStore(Protocol):
    """Mailing lists, members and expansions.

    Contract:
    - Lists are keyed by address (any case; kept lower-cased), members by (list, address). Every write is one
      transaction; ``create_list``/``update_list`` raise ``ListExists`` for an address in use,
      ``add_members(mode="strict")``/``update_member`` raise ``MemberExists``; nothing is written then. Changes of
      lists (not members) tell every node (``store.changes``, kind ``lists``).
    - Pages are in address order; ``members_count`` counts every member (subscribed or not).
    - Expansions (see the module doc): ``claim_expansions`` leases due rows to a worker (``skip``: the rows it holds);
      ``expand_batch`` commits a page of copies (``Enqueue`` items, or a ``CopyPage``: the same rows) with the
      cursor's move only while the worker holds the row at the cursor it read; after any crash, resuming from the
      committed cursor makes every member's copy exactly once.
    - ``unsubscribe_member`` sets ``subscribed`` false and records its events in one transaction.
    """

    async def load_lists(self) -> tuple[MailingList, ...]: ...
    async def get_list(self, address: str) -> MailingList | None: ...
    async def get_list_by_id(self, list_id: int) -> MailingList | None: ...
    async def create_list(self, lst: MailingList) -> MailingList: ...
    async def update_list(self, address: str, change: ListChange) -> MailingList | None: ...
    async def delete_list(self, address: str) -> bool: ...
    async def lists_page(self, limit: int, which: str = "first", pivot: str | None = None) -> list[MailingList]: ...
    async def lists_skip(self, skip: int, limit: int, address: str | None = None
                         ) -> tuple[int, list[MailingList]]: ...
    async def add_members(self, list_address: str, members: Sequence[ListMember], mode: AddMode,
                          now: float) -> MailingList | None: ...
    async def get_member(self, list_address: str, address: str) -> ListMember | None: ...
    async def update_member(self, list_address: str, address: str, change: MemberChange) -> ListMember | None: ...
    async def delete_member(self, list_address: str, address: str) -> bool: ...
    async def members_page(self, list_id: int, limit: int, which: str = "first", pivot: str | None = None,
                           subscribed: bool | None = None) -> list[ListMember]: ...
    async def members_skip(self, list_id: int, skip: int, limit: int, subscribed: bool | None = None,
                           address: str | None = None) -> tuple[int, list[ListMember]]: ...
    async def unsubscribe_member(self, list_id: int, address: str, events: Sequence[NewEvent]
                                 ) -> ListMember | None: ...
    async def claim_expansions(self, worker: str, now: float, limit: int, *, lease_until: float | None = None,
                               skip: Container[int] = ()) -> list[ExpansionJob]: ...
    async def expansion_members(self, list_id: int, after: str, limit: int) -> list[ListMember]: ...
    async def expand_batch(self, job_id: int, worker: str, after: str, cursor: str,
                           copies: Sequence[Enqueue] | CopyPage, done: bool, now: float) -> bool: ...


class ListMethods:
    """``ListStore`` over either engine (a mixin of the stores)."""

    async def load_lists(self) -> tuple[MailingList, ...]:
        return await self.read(load_lists)  # type: ignore[attr-defined]

    async def get_list(self, address: str) -> MailingList | None:
        return await self.read(lambda c: get_list(c, address))  # type: ignore[attr-defined]

    async def get_list_by_id(self, list_id: int) -> MailingList | None:
        return await self.read(lambda c: get_list(c, "", by_id=list_id))  # type: ignore[attr-defined]

    async def create_list(self, lst: MailingList) -> MailingList:
        found = await self.write(lambda c: create_list(c, lst))  # type: ignore[attr-defined]
        self._changed("lists")  # type: ignore[attr-defined]
        return found

    async def update_list(self, address: str, change: ListChange) -> MailingList | None:
        found = await self.write(lambda c: update_list(c, address, change))  # type: ignore[attr-defined]
        self._changed("lists")  # type: ignore[attr-defined]
        return found

    async def delete_list(self, address: str) -> bool:
        found = await self.write(lambda c: delete_list(c, address))  # type: ignore[attr-defined]
        self._changed("lists")  # type: ignore[attr-defined]
        return found

    async def lists_page(self, limit: int, which: str = "first", pivot: str | None = None) -> list[MailingList]:
        return await self.read(lambda c: lists_page(c, limit, which, pivot))  # type: ignore[attr-defined]

    async def lists_skip(self, skip: int, limit: int, address: str | None = None) -> tuple[int, list[MailingList]]:
        return await self.read(lambda c: lists_skip(c, skip, limit, address))  # type: ignore[attr-defined]

    async def add_members(self, list_address: str, members: Sequence[ListMember], mode: AddMode,
                          now: float) -> MailingList | None:
        return await self.write(lambda c: add_members(c, list_address, members, mode, now))  # type: ignore[attr-defined]

    async def get_member(self, list_address: str, address: str) -> ListMember | None:
        return await self.read(lambda c: get_member(c, list_address, address))  # type: ignore[attr-defined]

    async def update_member(self, list_address: str, address: str, change: MemberChange) -> ListMember | None:
        return await self.write(lambda c: update_member(c, list_address, address, change))  # type: ignore[attr-defined]

    async def delete_member(self, list_address: str, address: str) -> bool:
        return await self.write(lambda c: delete_member(c, list_address, address))  # type: ignore[attr-defined]

    async def members_page(self, list_id: int, limit: int, which: str = "first", pivot: str | None = None,
                           subscribed: bool | None = None) -> list[ListMember]:
        return await self.read(  # type: ignore[attr-defined]
            lambda c: members_page(c, list_id, limit, which, pivot, subscribed))

    async def members_skip(self, list_id: int, skip: int, limit: int, subscribed: bool | None = None,
                           address: str | None = None) -> tuple[int, list[ListMember]]:
        return await self.read(  # type: ignore[attr-defined]
            lambda c: members_skip(c, list_id, skip, limit, subscribed, address))

    async def unsubscribe_member(self, list_id: int, address: str, events: Sequence[NewEvent]) -> ListMember | None:
        return await self.write(lambda c: unsubscribe_member(c, list_id, address, events))  # type: ignore[attr-defined]

    async def claim_expansions(self, worker: str, now: float, limit: int, *, lease_until: float | None = None,
                               skip: Container[int] = ()) -> list[ExpansionJob]:
        return await self.write(  # type: ignore[attr-defined]
            lambda c: claim_expansions(c, worker, now, limit, lease_until, skip))

    async def expansion_members(self, list_id: int, after: str, limit: int) -> list[ListMember]:
        return await self.read(lambda c: expansion_members(c, list_id, after, limit))  # type: ignore[attr-defined]

    async def expand_batch(self, job_id: int, worker: str, after: str, cursor: str,
                           copies: Sequence[Enqueue] | CopyPage, done: bool, now: float) -> bool:
        return await self.write(  # type: ignore[attr-defined]
            lambda c: expand_batch(c, job_id, worker, after, cursor, copies, done, now))
