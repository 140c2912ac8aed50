"""Create or upgrade the configured store's schema and say from which version to which: ``mtad store migrate``.

Contract of ``migrate_store(store, path, node_id)``: the same steps ``mtad run`` takes at start
(``store.migrations``: the SQLite file's ``user_version``, PostgreSQL's ``mtad_schema`` under its advisory lock),
nothing else; returns a ``Migrated`` (where, version before, version after; before 0: created). A store newer
than this mtad is ``migrations.NewerSchema`` (nothing written); a server that cannot be reached or refuses the
login ``ConfigError("store.dsn", one line)``; any other failure ``StoreError`` with the store left as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtad.base.errors import ConfigError, StoreError


@dataclass(frozen=True)
class Migrated:
    where: str  # the file, or PostgreSQL's HOST:PORT/DATABASE
    backend: str
    before: int  # 0: there was no schema
    after: int


def migrate_store(store: Any, path: Path, node_id: str) -> Migrated:
    """Bring the store of ``store`` (a ``StoreConfig``; ``path``: the SQLite file) to this mtad's schema."""
    if store.backend == "postgresql":
        return _postgresql(store, node_id)
    return _sqlite(path)


def _sqlite(path: Path) -> Migrated:
    import sqlite3
    from mtad.store import engine
    from mtad.store.migrations import sqlite as migrations
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = engine.connect(path)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {path}: {exc}") from None
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]  # as Store.open: the daemon's mode
        if mode.lower() != "wal":
            raise StoreError(f"cannot put {path} in WAL mode (got {mode})")
        before, after = migrations.migrate(conn, str(path))
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: {exc}") from None
    finally:
        conn.close()
    return Migrated(str(path), "sqlite", before, after)


def _postgresql(store: Any, node_id: str) -> Migrated:
    import psycopg
    from mtad.store.migrations import postgresql as migrations
    from mtad.store.postgres.engine import PgConnection
    from mtad.store.postgres.probe import connect, explain, where
    dsn = store.dsn.reveal()
    place = where(dsn)
    conn = PgConnection(lambda: connect(store, node_id))
    try:
        try:
            conn.ensure()
        except psycopg.Error as exc:
            raise ConfigError("store.dsn", explain(exc, dsn)) from None
        try:
            before, after = migrations.migrate(conn, place, node_id)
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL at {place}: {' '.join(str(exc).split())}; the schema is left as it was"
                             ) from None
    finally:
        conn.discard()
    return Migrated(place, "postgresql", before, after)
