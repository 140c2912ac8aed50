"""mtad.store: the durable state, and the only package that speaks SQL.

Job: ``engine`` (SQLite in WAL mode, one writer thread, group commit, staged rows) with ``batch`` (staging a
row into the group commit, multi-row INSERTs), ``migrations`` (numbered schema steps run at open), ``queue``
(messages, deliveries, forwards, pauses, operator actions), ``events`` (event rows, counters, webhook rows, the
``EventBus``) with ``eventquery`` and ``counters`` (reads), ``suppressions``,
``accounts`` (API domains and credentials), ``routes`` (API routes as data), ``webhooks`` (webhook URLs),
``work`` (HTTP work rows), ``stored`` (messages kept by ``store()``), ``leases`` (claims as renewed leases,
outcome writes retried), ``workloop`` (the claim loop of HTTP work rows); ``methods`` lists the typed-method
mixins, which ``sqlite`` composes into ``SqliteStore`` and ``postgres`` into ``PostgresStore`` (the same SQL; the
fragments that differ in ``dialect``); ``new_store`` picks one from the configuration; ``protocol`` declares
``StoreProtocol``; ``shaping`` declares ``ShapingStore`` (provider shaping shared by the nodes of one store),
which only ``PostgresStore`` implements (``postgres.shaping``). Operator actions on a whole store: ``upgrade``
(``mtad store migrate``), ``copy`` (``mtad store copy``: a stopped node's SQLite store into PostgreSQL).
May import: ``mtad.base``, ``mtad.mail``, ``mtad.net``, ``mtad.config``; no module outside it imports sqlite3 or psycopg
(import-linter contract "Only the store speaks SQL") or holds SQL text (tests/unit/test_layout.py).
Contract: every read and write of durable state is a typed async method taking and returning frozen dataclasses,
declared per kind of state as a ``typing.Protocol`` (``StoreProtocol``: all of them), which both backends
implement and test in tests/contract. A caller's write returns only after it is durably
committed, a failing write rolls back alone, a claim is a lease (see ``engine`` and ``leases``). ``write(fn)`` and
``read(fn)`` of the engine are internal to this package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def new_store(store: Any, path: Path, node_id: str, *, bus: Any = None, read_only: bool = False) -> Any:
    """The store the configuration names (``store: StoreConfig``), not yet opened: ``SqliteStore`` over the file
    ``path`` (``backend: sqlite``), or ``PostgresStore`` over ``store.dsn`` (``backend: postgresql``; its
    connections named after ``node_id``). ``read_only``: for a command that only reads (SQLite: the file is not
    ``open()``ed; PostgreSQL: ``open()`` starts no writer and migrates nothing). The backend's modules are
    imported only when chosen (psycopg is not loaded by a SQLite node)."""
    if store.backend == "postgresql":
        from mtad.store.postgres.probe import connect, explain, where
        from mtad.store.postgres.store import PostgresStore
        dsn = store.dsn.reveal()
        return PostgresStore(lambda: connect(store, node_id), where(dsn), max_group=store.max_group,
                             lease=store.claim_lease.seconds, pool_size=store.pool_size, bus=bus, node_id=node_id,
                             explain=lambda exc: explain(exc, dsn), read_only=read_only)
    from mtad.store.sqlite import SqliteStore
    return SqliteStore(path, max_group=store.max_group, lease=store.claim_lease.seconds, bus=bus,
                       read_only=read_only)
