"""Suppression lists: bounces, unsubscribes, complaints and whitelists (the allowlist), per sending domain.

All four live in the ``suppressions`` table, one row per (domain, kind, address); a whitelist row may name a
whole domain instead of an address. The outbound scheduler asks ``suppressed`` before each attempt, so a
change applies to the very next delivery.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Iterable


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


def suppressed(conn: sqlite3.Connection, domain: str, recipients: Iterable[str],
               tags: Iterable[str] = ()) -> dict[str, str]:
    """recipient -> reason (suppress-bounce | suppress-unsubscribe | suppress-complaint), allowlist honoured.

    An address or its domain on the allowlist (``whitelists``) is never suppressed; otherwise bounces win over
    complaints over unsubscribes, and an unsubscribe applies only to its tags (``*``: every message).
    """
    addresses = {rcpt: rcpt.lower() for rcpt in recipients}
    keys = sorted(set(addresses.values()) | {_domain_of(a) for a in addresses.values()})
    entries: dict[tuple[str, str], str] = {}
    for start in range(0, len(keys), 500):  # one query per 500 addresses, whatever the recipient count
        chunk = keys[start:start + 500]
        marks = ",".join("?" * len(chunk))
        entries.update(((kind, address), data) for kind, address, data in conn.execute(
            f"SELECT kind, address, data FROM suppressions WHERE domain = ? AND address IN ({marks})", (domain, *chunk)))
    if not entries:
        return {}
    tags = set(tags)
    result: dict[str, str] = {}
    for rcpt, address in addresses.items():
        if ("whitelists", address) in entries or ("whitelists", _domain_of(address)) in entries:
            continue
        for kind, reason in (("bounces", "suppress-bounce"), ("complaints", "suppress-complaint"),
                             ("unsubscribes", "suppress-unsubscribe")):
            data = entries.get((kind, address))
            if data is None:
                continue
            if kind == "unsubscribes":
                unsub_tags = set(json.loads(data).get("tags") or ["*"])
                if "*" not in unsub_tags and not unsub_tags & tags:
                    continue
            result[rcpt] = reason
            break
    return result


def add_suppression(conn: sqlite3.Connection, domain: str, kind: str, address: str, now: float,
                    data: dict[str, Any]) -> None:
    conn.execute("INSERT INTO suppressions (domain, kind, address, created_at, data) VALUES (?, ?, ?, ?, ?)"
                 " ON CONFLICT (domain, kind, address) DO UPDATE SET data = excluded.data,"
                 " created_at = excluded.created_at", (domain, kind, address.lower(), now, json.dumps(data)))
