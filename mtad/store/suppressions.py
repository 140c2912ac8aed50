"""Suppression lists: bounces, unsubscribes, complaints and whitelists (the allowlist), per sending domain.

All four live in the ``suppressions`` table, one row per (domain, kind, address); a whitelist row may name a
whole domain instead of an address. The outbound scheduler asks ``suppressed`` before each attempt (in its
claim's transaction), so a change applies to the very next delivery.

Entries cross the boundary as frozen ``Suppression`` records; ``SuppressionStore`` is the contract, and
``SuppressionMethods`` its SQLite implementation (composed by ``store.sqlite.SqliteStore``).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Protocol, Sequence

from mtad.base.types import domain_of
from mtad.store.dialect import dialect_of, pg_array

KINDS = ("bounces", "unsubscribes", "complaints", "whitelists")
Page = Literal["first", "last", "next", "previous", "prev"]


@dataclass(frozen=True)
class Suppression:
    """One entry of a domain's list ``kind``; the fields a kind does not use keep their defaults."""

    kind: str  # bounces | unsubscribes | complaints | whitelists
    address: str  # lower case; a whitelists entry may name a domain (``type`` "domain")
    created_at: float
    code: str = "550"  # bounces: the SMTP reply code
    error: str = ""  # bounces: the reply text
    tags: tuple[str, ...] = ("*",)  # unsubscribes: the tags unsubscribed from; "*": every message
    type: str = "address"  # whitelists: address | domain
    reason: str = ""  # whitelists

    def data(self) -> dict[str, Any]:
        """The kind's own fields, as the ``data`` column keeps them."""
        if self.kind == "bounces":
            return {"code": self.code, "error": self.error}
        if self.kind == "unsubscribes":
            return {"tags": list(self.tags)}
        if self.kind == "whitelists":
            return {"type": self.type, "reason": self.reason}
        return {}


def _suppression(kind: str, address: str, created_at: float, data: str) -> Suppression:
    d = json.loads(data)
    return Suppression(kind, address, created_at, code=str(d.get("code", "550")), error=str(d.get("error", "")),
                       tags=tuple(d.get("tags") or ["*"]), type=str(d.get("type", "address")),
                       reason=str(d.get("reason", "")))


def suppressed(conn: sqlite3.Connection, domain: str, recipients: Iterable[str],
               tags: Iterable[str] = ()) -> dict[str, str]:
    """recipient -> reason (suppress-bounce | suppress-unsubscribe | suppress-complaint), allowlist honoured.

    An address or its domain on the allowlist (``whitelists``) is never suppressed; otherwise bounces win over
    complaints over unsubscribes, and an unsubscribe applies only to its tags (``*``: every message).
    """
    return suppressed_many(conn, [(domain, recipients, tags)])[0]


def suppressed_many(conn: sqlite3.Connection,
                    asks: Sequence[tuple[str, Iterable[str], Iterable[str]]]) -> list[dict[str, str]]:
    """``suppressed`` for many (domain, recipients, tags) at once, in order: one query per sending domain and 500
    addresses, however many asks (a claimed batch of deliveries: one round trip on PostgreSQL, not one per job)."""
    asks = [(domain, {rcpt: rcpt.lower() for rcpt in recipients}, tags) for domain, recipients, tags in asks]
    keys: dict[str, set[str]] = {}
    for domain, addresses, _ in asks:
        keys.setdefault(domain, set()).update(*((a, domain_of(a)) for a in addresses.values()))
    entries: dict[tuple[str, str, str], str] = {}  # (domain, kind, address) -> data
    as_array = dialect_of(conn).is_postgresql  # the addresses as one array parameter: one statement text
    for domain, wanted in keys.items():
        ordered = sorted(wanted)
        for start in range(0, len(ordered), 500):  # one query per 500 addresses, whatever the recipient count
            chunk = ordered[start:start + 500]
            among, args = ("= ANY(?::text[])", (pg_array(chunk),)) if as_array else (
                f"IN ({','.join('?' * len(chunk))})", tuple(chunk))
            entries.update(((domain, kind, address), data) for kind, address, data in conn.execute(
                f"SELECT kind, address, data FROM suppressions WHERE domain = ? AND address {among}",
                (domain, *args)))
    if not entries:
        return [{} for _ in asks]
    return [_reasons(domain, addresses, set(tags), entries) for domain, addresses, tags in asks]


def _reasons(domain: str, addresses: dict[str, str], tags: set[str],
             entries: dict[tuple[str, str, str], str]) -> dict[str, str]:
    result: dict[str, str] = {}
    for rcpt, address in addresses.items():
        if (domain, "whitelists", address) in entries or (domain, "whitelists", domain_of(address)) in entries:
            continue
        for kind, reason in (("bounces", "suppress-bounce"), ("complaints", "suppress-complaint"),
                             ("unsubscribes", "suppress-unsubscribe")):
            data = entries.get((domain, kind, address))
            if data is None:
                continue
            if kind == "unsubscribes":
                unsub_tags = set(json.loads(data).get("tags") or ["*"])
                if "*" not in unsub_tags and not unsub_tags & tags:
                    continue
            result[rcpt] = reason
            break
    return result


def allowlisted(conn: sqlite3.Connection, domain: str, address: str) -> bool:
    """True if ``address`` or its domain is on ``domain``'s allowlist (``whitelists``): never put on a list."""
    return conn.execute("SELECT 1 FROM suppressions WHERE domain = ? AND kind = 'whitelists' AND address IN (?, ?)",
                        (domain, address.lower(), domain_of(address))).fetchone() is not None


def add_suppression(conn: sqlite3.Connection, domain: str, kind: str, address: str, now: float,
                    data: dict[str, Any]) -> None:
    conn.execute("INSERT INTO suppressions (domain, kind, address, created_at, data) VALUES (?, ?, ?, ?, ?)"
                 " ON CONFLICT (domain, kind, address) DO UPDATE SET data = excluded.data,"
                 " created_at = excluded.created_at", (domain, kind, address.lower(), now, json.dumps(data)))


# --- the API's lists ----------------------------------------------------------------------------------------

def add_entries(conn: sqlite3.Connection, domain: str, entries: Iterable[Suppression]) -> int:
    """Add or replace entries; an unsubscribe's tags accumulate with those already listed (``*`` covers all)."""
    n = 0
    for entry in entries:
        data = entry.data()
        if entry.kind == "unsubscribes":
            row = conn.execute("SELECT data FROM suppressions WHERE domain = ? AND kind = ? AND address = ?",
                               (domain, entry.kind, entry.address)).fetchone()
            if row is not None:
                tags = list(dict.fromkeys(json.loads(row[0]).get("tags", ["*"]) + data["tags"]))
                data = {"tags": ["*"] if "*" in tags else tags}
        add_suppression(conn, domain, entry.kind, entry.address, entry.created_at, data)
        n += 1
    return n


def page(conn: sqlite3.Connection, domain: str, kind: str, limit: int, which: Page,
         pivot: str | None) -> list[Suppression]:
    """One page of a list in address order: ``first``/``last``, or ``next``/``previous`` of ``pivot``."""
    where, params, order = "domain = ? AND kind = ?", [domain, kind], "ASC"
    if which == "next" and pivot is not None:
        where += " AND address > ?"
        params.append(pivot)
    elif which in ("previous", "prev") and pivot is not None:
        where += " AND address < ?"
        params.append(pivot)
        order = "DESC"
    elif which == "last":
        order = "DESC"
    rows = conn.execute(f"SELECT address, created_at, data FROM suppressions WHERE {where} ORDER BY address {order}"
                        " LIMIT ?", (*params, limit)).fetchall()
    entries = [_suppression(kind, r[0], r[1], r[2]) for r in rows]
    if order == "DESC":
        entries.reverse()
    return entries


def get(conn: sqlite3.Connection, domain: str, kind: str, address: str) -> Suppression | None:
    row = conn.execute("SELECT address, created_at, data FROM suppressions WHERE domain = ? AND kind = ?"
                       " AND address = ?", (domain, kind, address)).fetchone()
    return None if row is None else _suppression(kind, row[0], row[1], row[2])


def remove(conn: sqlite3.Connection, domain: str, kind: str, address: str, tag: str | None = None) -> bool:
    """Delete an entry (an unsubscribe with ``tag``: only that tag, the entry if no other is left)."""
    row = conn.execute("SELECT data FROM suppressions WHERE domain = ? AND kind = ? AND address = ?",
                       (domain, kind, address)).fetchone()
    if row is None:
        return False
    tags = json.loads(row[0]).get("tags") or ["*"]
    if kind == "unsubscribes" and tag and [t for t in tags if t != tag]:
        conn.execute("UPDATE suppressions SET data = ? WHERE domain = ? AND kind = ? AND address = ?",
                     (json.dumps({"tags": [t for t in tags if t != tag]}), domain, kind, address))
        return True
    conn.execute("DELETE FROM suppressions WHERE domain = ? AND kind = ? AND address = ?", (domain, kind, address))
    return True


def clear(conn: sqlite3.Connection, domain: str, kind: str) -> int:
    return conn.execute("DELETE FROM suppressions WHERE domain = ? AND kind = ?", (domain, kind)).rowcount


# --- the interface --------------------------------------------------------------------------------------------

class SuppressionStore(Protocol):
    """The suppression lists of each sending domain. Addresses are compared in lower case; every change is
    committed before the method returns and applies to the next delivery attempt."""

    async def suppressed(self, domain: str, recipients: Sequence[str], tags: Sequence[str] = ()) -> dict[str, str]:
        """recipient -> reason (``suppress-bounce`` | ``suppress-complaint`` | ``suppress-unsubscribe``) for the
        recipients ``domain`` must not send to; an allowlisted address or domain is never suppressed, a bounce
        wins over a complaint over an unsubscribe, and an unsubscribe counts only for its tags (``*``: all)."""
        ...

    async def add_suppressions(self, domain: str, entries: Sequence[Suppression]) -> int:
        """Add ``entries`` in one transaction (all or none), replacing an entry of the same (kind, address):
        idempotent, except that an unsubscribe's tags add to those already listed. Returns ``len(entries)``."""
        ...

    async def suppression_page(self, domain: str, kind: str, limit: int, which: Page,
                               pivot: str | None = None) -> tuple[Suppression, ...]:
        """At most ``limit`` entries in address order: the ``first`` or ``last`` ones, or those after (``next``)
        or before (``previous``) the address ``pivot``."""
        ...

    async def get_suppression(self, domain: str, kind: str, address: str) -> Suppression | None:
        ...

    async def delete_suppression(self, domain: str, kind: str, address: str, tag: str | None = None) -> bool:
        """Remove an entry; for an unsubscribe with ``tag``, only that tag (the entry goes with its last tag).
        False if there was no such entry."""
        ...

    async def clear_suppressions(self, domain: str, kind: str) -> int:
        """Remove every entry of one list; the number removed."""
        ...


class SuppressionMethods:
    """``SuppressionStore`` over the SQLite engine (a mixin of ``SqliteStore``)."""

    async def suppressed(self, domain: str, recipients: Sequence[str], tags: Sequence[str] = ()) -> dict[str, str]:
        rcpts, wanted = list(recipients), list(tags)
        return await self.read(lambda c: suppressed(c, domain, rcpts, wanted))

    async def add_suppressions(self, domain: str, entries: Sequence[Suppression]) -> int:
        entries = tuple(entries)
        return await self.write(lambda c: add_entries(c, domain, entries))

    async def suppression_page(self, domain: str, kind: str, limit: int, which: Page,
                               pivot: str | None = None) -> tuple[Suppression, ...]:
        return tuple(await self.read(lambda c: page(c, domain, kind, limit, which, pivot)))

    async def get_suppression(self, domain: str, kind: str, address: str) -> Suppression | None:
        return await self.read(lambda c: get(c, domain, kind, address))

    async def delete_suppression(self, domain: str, kind: str, address: str, tag: str | None = None) -> bool:
        return await self.write(lambda c: remove(c, domain, kind, address, tag))

    async def clear_suppressions(self, domain: str, kind: str) -> int:
        return await self.write(lambda c: clear(c, domain, kind))
