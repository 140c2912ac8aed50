"""Small settings kept in the store's ``kv`` table: the operator's queue pauses (``mtad queue pause``).

A pause is one key ``pause:<kind>:<value>`` (kind: domain | provider | tag, value in lower case) whose value is
``{"since": <unix time>}``. The scheduler reads them with each claim (``pauses`` in its transaction);
``SettingsStore`` is the contract, ``SettingsMethods`` its SQLite implementation.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Protocol

PAUSE_KINDS = ("domain", "provider", "tag")


def pauses(conn: sqlite3.Connection) -> dict[str, frozenset[str]]:
    """kind -> the values paused; every kind of ``PAUSE_KINDS`` is present (maybe empty)."""
    found: dict[str, set[str]] = {kind: set() for kind in PAUSE_KINDS}
    for (key,) in conn.execute("SELECT key FROM kv WHERE key LIKE 'pause:%' ORDER BY key"):
        _, kind, value = key.split(":", 2)
        found.setdefault(kind, set()).add(value)
    return {kind: frozenset(values) for kind, values in found.items()}


def set_pause(conn: sqlite3.Connection, kind: str, value: str, paused: bool, now: float) -> None:
    key = f"pause:{kind}:{value.lower()}"
    if paused:
        conn.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, json.dumps({"since": now})))
    else:
        conn.execute("DELETE FROM kv WHERE key = ?", (key,))


class SettingsStore(Protocol):
    """Small operator settings (queue pauses)."""

    async def get_pauses(self) -> dict[str, frozenset[str]]:
        """kind (domain | provider | tag) -> the values paused, each kind present."""
        ...

    async def set_pause(self, kind: str, value: str, paused: bool, now: float) -> None:
        """Pause (``paused``) or resume deliveries of one domain, provider or tag; idempotent. Resuming does not
        touch held deliveries (the queue side puts them back)."""
        ...


class SettingsMethods:
    """``SettingsStore`` over the SQLite engine (a mixin of ``SqliteStore``)."""

    async def get_pauses(self) -> dict[str, frozenset[str]]:
        return await self.read(pauses)

    async def set_pause(self, kind: str, value: str, paused: bool, now: float) -> None:
        await self.write(lambda c: set_pause(c, kind, value, paused, now))
