"""The durable store: SQLite in WAL mode, written by one thread with group commit.

Contract:
- ``await store.write(fn)`` runs ``fn(conn)`` inside a transaction and returns only after the
  transaction is durably committed (``synchronous=FULL``). Writes queued while one commit is in
  progress are committed together in the next transaction (group commit), each inside its own
  SAVEPOINT so one failing write rolls back alone. A failed commit (disk full, I/O error) raises
  ``StoreError`` in every waiting caller and leaves nothing of their writes behind.
- A write may stage rows (``conn.staged``, see ``Staged``) that are applied once for the whole batch
  just before COMMIT, in the same transaction: events and their counters (``events.record``).
- Reads run on a small thread pool, each thread with its own read-only connection (WAL readers
  never block the writer).
- Nothing here blocks the event loop.

The schema (its tables are listed in ``mtad.store.migrations.sqlite``) is built and brought forward by numbered
steps (``mtad.store.migrations``): ``open`` runs the steps a file lacks in one transaction and refuses a file newer
than this mtad. Work rows carry ``state, attempts, next_attempt_at, locked_by, locked_at, lease_until``: a claim is
a lease (``mtad.store.leases``) that its holder renews and that others may take over once ``lease_until`` has
passed; a process's own locks are released at its start (``release_stale_locks``).

Deviation from the suggested aiosqlite: aiosqlite hops to its thread once per statement; a group
commit needs many statements of many callers executed in one transaction in one hop, so the store
owns its writer thread (plain sqlite3) instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, TypeVar

from mtad.base.errors import StoreError
from mtad.store.migrations import sqlite as migrations

log = logging.getLogger("mtad.store")
T = TypeVar("T")

SCHEMA_VERSION = migrations.SCHEMA_VERSION  # the version ``open`` brings every file to


class Staged:
    """Rows that the writes of one group commit stage, applied together just before its COMMIT.

    A write appends to its own list (``pending(name, apply)``); when the write succeeds (its savepoint is
    released) the list joins the batch's, when it fails the list is dropped with the rest of the write.
    ``apply(conn, items)`` then runs once per name, in the order names were first staged, inside the same
    transaction: what is staged is exactly as durable as the writes that staged it, and costs one pass per
    batch instead of statements per write inside savepoints. Staged rows are not visible to the writes of the
    batch themselves.
    """

    __slots__ = ("_kept", "_job")

    def __init__(self) -> None:
        self._kept: dict[str, tuple[Callable[[sqlite3.Connection, list], None], list]] = {}
        self._job: dict[str, tuple[Callable[[sqlite3.Connection, list], None], list]] = {}

    def pending(self, name: str, apply: Callable[[sqlite3.Connection, list], None]) -> list:
        """The running write's list ``name``, to append to."""
        entry = self._job.get(name)
        if entry is None:
            entry = self._job[name] = (apply, [])
        return entry[1]

    def keep(self) -> None:
        if self._job:
            for name, (apply, items) in self._job.items():
                kept = self._kept.get(name)
                if kept is None:
                    self._kept[name] = (apply, items)
                else:
                    kept[1].extend(items)
            self._job = {}

    def drop(self) -> None:
        self._job = {}

    def apply(self, conn: sqlite3.Connection) -> None:
        self.keep()
        kept, self._kept = self._kept, {}
        for apply, items in kept.values():
            if items:
                apply(conn, items)


class Connection(sqlite3.Connection):
    """A connection whose ``staged`` is the running group commit's ``Staged`` (None outside ``Store.write``:
    whoever stages then applies at once)."""

    staged: Staged | None = None


def connect(path: Path, *, readonly: bool = False) -> Connection:
    """A connection with mtad's pragmas: WAL, full fsync on commit, foreign keys, a page cache sized below."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30, factory=Connection,
                           cached_statements=256)  # room for execute_rows' shapes beside every other statement
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA synchronous=FULL")
    # The writer's page cache holds the hot ends of the events and counters B-trees (SQLite's default 2 MB
    # re-reads them); message bodies pass through it too, so it stays small: it is resident memory.
    conn.execute(f"PRAGMA cache_size={-2000 if readonly else -8192}")  # KiB
    if readonly:
        conn.execute("PRAGMA query_only=ON")
    return conn


class _Job:
    __slots__ = ("fn", "future", "loop")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], future: asyncio.Future, loop):
        self.fn, self.future, self.loop = fn, future, loop


def _settle(job: _Job, result: Any = None, error: BaseException | None = None) -> None:
    _settle_all([(job, result, error)])


def _settle_all(items: list[tuple[_Job, Any, BaseException | None]]) -> None:
    """Hand results to their callers: one call into each event loop for the whole batch."""
    by_loop: dict[Any, list[tuple[_Job, Any, BaseException | None]]] = {}
    for item in items:
        by_loop.setdefault(item[0].loop, []).append(item)

    def apply(group: list[tuple[_Job, Any, BaseException | None]]) -> None:
        for job, result, error in group:
            if job.future.done():
                continue
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result)
    for loop, group in by_loop.items():
        loop.call_soon_threadsafe(apply, group)


class Store:
    """SQLite store. ``open()`` before use, ``close()`` at the end.

    ``lease`` is how long a claim on a work row holds without renewal (``store.claim_lease``, see ``mtad.leases``).
    """

    def __init__(self, path: Path, *, max_group: int = 256, lease: float = 300.0, readers: int = 2):
        self.path = Path(path)
        self.max_group = max_group
        self.lease = lease
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._readers = concurrent.futures.ThreadPoolExecutor(max_workers=readers, thread_name_prefix="mtad-read")
        self._local = threading.local()
        self._read_conns: list[sqlite3.Connection] = []
        self.commits = 0  # transactions committed (for metrics and tests of grouping)
        self.committed_writes = 0
        self.last_commit_seconds = 0.0

    # --- lifecycle -------------------------------------------------------------------------------
    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(self.path)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreError(f"cannot put {self.path} in WAL mode (got {mode})")
        try:
            migrations.migrate(conn, str(self.path))
        except BaseException:
            conn.close()
            raise
        self._writer = threading.Thread(target=self._write_loop, args=(conn,), name="mtad-store-writer",
                                         daemon=True)
        self._writer.start()

    def close(self) -> None:
        if self._writer is not None:
            self._jobs.put(None)
            self._writer.join()
            self._writer = None
        self._readers.shutdown(wait=True)
        for conn in self._read_conns:
            conn.close()

    @property
    def is_open(self) -> bool:
        return self._writer is not None

    # --- writing ---------------------------------------------------------------------------------
    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in a transaction; return its result once durably committed."""
        if self._writer is None:
            raise StoreError("store is not open")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put(_Job(fn, future, loop))
        return await future

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        import time
        while True:
            first = self._jobs.get()
            if first is None:
                break
            batch = [first]
            stop = False
            while len(batch) < self.max_group:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                batch.append(job)
            started = time.perf_counter()
            self._run_batch(conn, batch)
            self.last_commit_seconds = time.perf_counter() - started
            if stop:
                break
        conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        pending = batch
        try:
            while pending:
                pending = self._try_batch(conn, pending)
        finally:
            conn.staged = None

    def _try_batch(self, conn: sqlite3.Connection, batch: list[_Job]) -> list[_Job]:
        """Run and commit ``batch``; returns the jobs to run again in a new transaction, if any.

        A write that fails is rolled back to its savepoint and reported to its caller alone. If SQLite
        aborted the whole transaction instead (disk full, I/O error), the writes before it are gone
        too: they are run again in a new transaction, since each is a pure function of the database.
        """
        done: list[tuple[_Job, Any]] = []
        staged = conn.staged = Staged()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            for job in batch:
                _settle(job, error=StoreError(f"cannot begin transaction: {exc}"))
            return []
        savepoint = "w"  # one name: released before the next, and one cached statement
        for n, job in enumerate(batch):
            try:
                conn.execute(f"SAVEPOINT {savepoint}")
                result = job.fn(conn)
                conn.execute(f"RELEASE {savepoint}")
                staged.keep()
                done.append((job, result))
            except BaseException as exc:  # noqa: BLE001 - any failure belongs to that caller alone
                if isinstance(exc, sqlite3.OperationalError):  # disk full, I/O error, locked
                    exc = StoreError(str(exc))
                elif not isinstance(exc, Exception):
                    exc = StoreError(repr(exc))
                staged.drop()
                _settle(job, error=exc)
                if not conn.in_transaction:
                    log.error("store transaction aborted by SQLite (%s); retrying %d writes", exc, len(done))
                    return [j for j, _ in done] + batch[n + 1:]
                try:
                    conn.execute(f"ROLLBACK TO {savepoint}")
                    conn.execute(f"RELEASE {savepoint}")
                except sqlite3.Error:
                    pass
        try:
            staged.apply(conn)  # what the writes staged, e.g. the counters of their events: same transaction
            conn.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 - a failed commit fails every write of the batch
            log.error("store commit failed: %s", exc)
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            for job, _ in done:
                _settle(job, error=StoreError(f"commit failed: {exc}"))
            return []
        self.commits += 1
        self.committed_writes += len(done)
        _settle_all([(job, result, None) for job, result in done])
        return []

    # --- reading ---------------------------------------------------------------------------------
    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, readonly=True)
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
            self._read_conns.append(conn)
        return conn

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on a reader thread (a consistent WAL snapshot per call)."""
        def run() -> T:
            conn = self._reader()
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, run)

