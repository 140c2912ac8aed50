"""The store's backends for tests that run against each: ``backend_store`` opens a fresh store of one backend.

``BACKENDS`` are the backends every store-level test runs on: ``sqlite`` (a file in the test's folder) and
``postgresql`` (a fresh database on the session's private server, ``tests.support.postgres``; skipped with the
reason where no PostgreSQL binaries are found). Fixture ``backend_store``: ``open(**kwargs) -> store``, opened, of
the test's backend; called again it opens the same file or database again (what a restart finds); ``direct()`` is
a connection of its own to it, for setting up rows with SQL; every store and connection is closed after the test. ``open.backend`` names the backend, ``open.integrity_error`` is the exception its
driver raises for a broken constraint (a queue id stored twice).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

BACKENDS = ("sqlite", "postgresql")


class Opener:
    def __init__(self, backend: str, tmp_path: Path, request: pytest.FixtureRequest):
        self.backend = backend
        self.tmp_path = tmp_path
        self.request = request
        self.dsn: str | None = None
        self.opened: list[Any] = []
        self.connections: list[Any] = []
        if backend == "postgresql":
            import psycopg
            self.integrity_error: type[Exception] = psycopg.IntegrityError
        else:
            self.integrity_error = sqlite3.IntegrityError

    def make(self, **kwargs: Any) -> Any:
        """The store, not opened."""
        if self.backend == "postgresql":
            import psycopg
            from mtad.store.postgres.store import PostgresStore
            if self.dsn is None:
                self.dsn = self.request.getfixturevalue("pg_database")()
            dsn = self.dsn
            kwargs.setdefault("pool_size", 3)
            kwargs.pop("read_only", None)
            return PostgresStore(lambda: psycopg.connect(dsn, autocommit=True, connect_timeout=10), "test database",
                                 **kwargs)
        from mtad.store.sqlite import SqliteStore
        return SqliteStore(self.tmp_path / "db.sqlite3", **kwargs)

    def __call__(self, **kwargs: Any) -> Any:
        store = self.make(**kwargs)
        store.open()
        self.opened.append(store)
        return store

    def direct(self) -> Any:
        """A connection of its own to the same file or database, each statement committed at once (``?``
        placeholders on both backends): for tests that set up rows with SQL. Open a store first (it builds the
        schema)."""
        if self.backend == "postgresql":
            import psycopg
            from mtad.store.postgres.engine import PgConnection
            assert self.dsn is not None, "open a store first"
            dsn = self.dsn
            conn = PgConnection(lambda: psycopg.connect(dsn, autocommit=True, connect_timeout=10))
            conn.ensure()
        else:
            from mtad.store.engine import connect
            conn = connect(self.tmp_path / "db.sqlite3")
        self.connections.append(conn)
        return conn

    def close_all(self) -> None:
        for store in self.opened:
            if store.is_open:
                store.close()
        for conn in self.connections:
            conn.close()


@pytest.fixture(scope="module", params=BACKENDS)
def both_backends(request) -> str:
    """A module that imports this as ``store_backend`` starts its daemons on each backend (tests/conftest.py)."""
    return request.param


@pytest.fixture(params=BACKENDS)
def backend_store(request, tmp_path):
    opener = Opener(request.param, tmp_path, request)
    yield opener
    opener.close_all()
