"""The PostgreSQL engine: the SQLite engine's model (one writer thread, group commit, reader threads) over psycopg 3.

Contract (the same as ``store.engine.Store``, whose group-commit loop this class reuses):
- ``await store.write(fn)`` runs ``fn(conn)`` inside a transaction on the node's one writer connection and
  returns only after PostgreSQL committed it (``synchronous_commit`` is the server's, ``on`` by default: the WAL
  is flushed). Writes queued while one commit is in progress are committed together in the next transaction,
  each inside its own SAVEPOINT so one failing write rolls back alone; ``conn.staged`` rows are applied once per
  batch just before COMMIT. (How: ``PgEngine._pipelined`` sends a batch in pipeline mode, kept between batches,
  without savepoints, one round trip; if anything of it fails, ``_one_by_one`` runs it again with a savepoint and
  the staged rows of each write.) A failed commit or a lost connection raises ``StoreError`` in every waiting caller.
  A connection lost *during* COMMIT leaves the outcome unknown to mtad: the callers get ``StoreError`` (SMTP
  451), so a client may send again a message that was in fact stored (a duplicate, never a loss).
- Reads run on ``pool_size - 1`` reader threads, each with its own connection, one ``REPEATABLE READ READ ONLY``
  transaction per call (a consistent snapshot, as SQLite's WAL readers).
- At ``open`` a server that cannot be reached or refuses the login, or takes no writes, is a
  ``ConfigError`` naming ``store.dsn`` (one line, never the password); a schema newer than this mtad a
  ``StoreError`` naming both versions.
- A lost connection is opened again at the next write or read (each attempt bounded by ``CONNECT_TIMEOUT``);
  meanwhile callers get ``StoreError``. Nothing here blocks the event loop.

The SQL functions are the store's own (``store.queue``, ``store.events``, ...), written for SQLite's ``sqlite3``
connection: ``PgConnection`` gives them what they use of it — ``execute``/``executemany`` with ``?``
placeholders (translated once per SQL text to ``$n``, run on ``psycopg.RawCursor``s: ``pg_raw_sql``), cursors to
iterate or ``fetchone``/``fetchall`` (rows are tuples, as the writer's are on SQLite), ``rowcount``,
``description`` — plus ``dialect`` (``store.dialect.POSTGRESQL``) for the few fragments that differ. Each connection sets ``statement_timeout`` and ``application_name = mtad
NODE_ID`` (``probe.connect_options``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from typing import Any, Callable, Iterable, Sequence, TypeVar

import psycopg
from psycopg.adapt import Loader

from mtad.base.errors import ConfigError, StoreError, StoreUnavailable
from mtad.store.dialect import POSTGRESQL
from mtad.store.engine import Staged, Store, _Job, _settle, _settle_all

log = logging.getLogger("mtad.store")
T = TypeVar("T")


@functools.lru_cache(maxsize=2048)
def pg_raw_sql(sql: str) -> str:
    """``sql`` with SQLite's ``?`` placeholders as PostgreSQL's own ``$1``, ``$2``... (outside quoted strings and
    names), for a ``psycopg.RawCursor``: the text goes to the server as it is, so psycopg does not parse it for
    ``%s`` at every execution — it caches that parse only for statements under 50 parameters and 4 KB, and a
    group commit's multi-row INSERTs (``store.batch.execute_rows``) are far above, which made the parse most of the
    writer's Python time per event. ``%`` needs no escaping here."""
    out: list[str] = []
    quote = ""
    n = 0
    for ch in sql:
        if quote:
            out.append(ch)
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
            out.append(ch)
        elif ch == "?":
            n += 1
            out.append(f"${n}")
        else:
            out.append(ch)
    return "".join(out)


class _NumberLoader(Loader):
    """``numeric`` results (``sum`` of a BIGINT column) as ``int`` when whole, else ``float``: what sqlite3 gives."""

    def load(self, data: Any) -> int | float:
        text = bytes(data).decode()
        try:
            return int(text)
        except ValueError:
            return float(text)


def _is_store_failure(exc: BaseException) -> bool:
    """A failure of the store rather than of the statement's data (which the caller gets as it is): the connection,
    the server's resources, a cancelled statement (``statement_timeout``), a read-only or shutting-down server."""
    return isinstance(exc, (psycopg.OperationalError, psycopg.InternalError, psycopg.InterfaceError))


def _as_store_error(exc: BaseException) -> BaseException:
    if isinstance(exc, StoreError):
        return exc
    if _is_store_failure(exc):
        return StoreError(f"PostgreSQL: {' '.join(str(exc).split())}")
    if not isinstance(exc, Exception):
        return StoreError(repr(exc))
    return exc


class Result:
    """A statement's cursor as the SQL functions use it (``fetchone``, ``fetchall``, iteration, ``rowcount``,
    ``description``, ``close``). In pipeline mode (``PgConnection.pipe``) the statement may not have been answered
    yet: reading anything of it first syncs the pipeline (one round trip for everything queued)."""

    __slots__ = ("_cur", "_conn")

    def __init__(self, cur: psycopg.Cursor, conn: "PgConnection"):
        self._cur = cur
        self._conn = conn

    @property
    def cursor(self) -> psycopg.Cursor:
        if self._cur.pgresult is None and self._conn.pipe is not None:
            self._conn.sync()
        return self._cur

    def fetchone(self) -> Any:
        return self.cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return self.cursor.fetchall()

    def __iter__(self) -> Any:
        return iter(self.cursor)

    @property
    def rowcount(self) -> int:
        return self.cursor.rowcount

    @property
    def description(self) -> Any:
        return self.cursor.description

    def close(self) -> None:
        self._cur.close()


class PgConnection:
    """One PostgreSQL connection as the store's SQL functions use a ``sqlite3`` connection (see the module doc).

    ``staged`` is the running group commit's ``Staged`` (None outside ``write``), ``bus`` the store's
    ``EventBus`` on the writer's connection."""

    dialect = POSTGRESQL
    isolates_staged = True  # a failed batch runs again with each write's staged rows in its savepoint (``PgEngine``)

    def __init__(self, connect: Callable[[], psycopg.Connection]):
        self._connect = connect
        self.raw: psycopg.Connection | None = None
        self.staged: Staged | None = None
        self.bus: Any = None
        self.round_trips = 0  # statements sent and answered (an executemany is one: psycopg pipelines it)
        self.pipe: psycopg.Pipeline | None = None  # set while a batch runs in pipeline mode (``PgEngine``)
        self._kept: Any = None  # ``enter_pipeline``'s context, kept between batches, and its pipeline
        self._kept_pipe: psycopg.Pipeline | None = None

    # --- the connection itself ------------------------------------------------------------------------------
    def ensure(self) -> psycopg.Connection:
        """The open connection, connecting (again) if there is none or it broke."""
        if self.raw is None or self.raw.closed or self.raw.broken:
            self.discard()
            raw = self._connect()
            raw.adapters.register_loader("numeric", _NumberLoader)
            self.raw = raw
        return self.raw

    @property
    def broken(self) -> bool:
        return self.raw is None or self.raw.closed or self.raw.broken

    def enter_pipeline(self) -> psycopg.Pipeline:
        """The connection in pipeline mode, entered once and kept across batches (``PgEngine._pipelined``):
        leaving pipeline mode costs a round trip of its own (psycopg syncs again on exit), so a batch pays only
        for its one ``sync``. ``leave_pipeline`` before statements that must be answered one at a time."""
        raw = self.ensure()
        if self._kept_pipe is None:
            self._kept = raw.pipeline()
            self._kept_pipe = self._kept.__enter__()
        return self._kept_pipe

    def leave_pipeline(self) -> None:
        """Out of pipeline mode: psycopg syncs, and whatever was queued is answered or discarded. A failure here is
        not raised: the failed batch's error was raised already, and a broken connection stays ``broken``."""
        kept, self._kept, self._kept_pipe = self._kept, None, None
        if kept is not None and self.raw is not None and not self.raw.closed:
            try:
                kept.__exit__(None, None, None)
            except Exception:  # noqa: BLE001 - psycopg left pipeline mode anyway (``Pipeline._exit``)
                pass

    def discard(self) -> None:
        self._kept, self._kept_pipe = None, None
        if self.raw is not None:
            try:
                self.raw.close()
            except Exception:  # noqa: BLE001 - it is gone either way
                pass
            self.raw = None

    close = discard

    def command(self, sql: str) -> None:
        """A statement without parameters nor result (BEGIN, SAVEPOINT, COMMIT, DDL); queued in pipeline mode."""
        assert self.raw is not None
        if self.pipe is None:
            self.round_trips += 1
        self.raw.execute(sql)  # type: ignore[arg-type] - our own constant text

    def sync(self) -> None:
        """Send what the pipeline queued and wait for every answer (raises the first error among them)."""
        assert self.pipe is not None
        self.round_trips += 1
        self.pipe.sync()

    # --- what the SQL functions call ------------------------------------------------------------------------
    def execute(self, sql: str, params: Sequence[Any] | Iterable[Any] = ()) -> Result:
        assert self.raw is not None
        if self.pipe is None:
            self.round_trips += 1
        cur = psycopg.RawCursor(self.raw)
        cur.execute(pg_raw_sql(sql), tuple(params))  # type: ignore[arg-type] - the store's own SQL text
        return Result(cur, self)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Result:
        assert self.raw is not None
        rows = [tuple(r) for r in rows]
        cur = psycopg.RawCursor(self.raw)
        if rows:
            if self.pipe is None:
                self.round_trips += 1
            cur.executemany(pg_raw_sql(sql), rows)  # type: ignore[arg-type] - pipelined by psycopg: one round trip
        return Result(cur, self)


class _WriteFailed(Exception):
    """A write of a pipelined batch raised by itself (``__cause__``): the batch runs again one write at a time."""


class PgEngine(Store):
    """The group-commit engine over PostgreSQL (see the module doc). ``open()`` connects, migrates the schema
    (``store.migrations.postgresql``, under an advisory lock) and starts the writer; ``close()`` ends it."""

    dialect = POSTGRESQL

    def __init__(self, connect: Callable[[], psycopg.Connection], where: str, *, max_group: int = 256,
                 lease: float = 300.0, pool_size: int = 10,
                 explain: Callable[[BaseException], str] | None = None, read_only: bool = False):
        super().__init__(where, max_group=max_group, lease=lease, readers=max(1, pool_size - 1))  # type: ignore[arg-type]
        self.where = where  # HOST:PORT/DATABASE, for messages
        self._writer_conn: PgConnection | None = None
        self.read_only = read_only  # a command that only reads: no writer, the schema must be current already
        self._readable = False
        self._connect = connect
        self.pipeline = True  # batches in pipeline mode (False: one round trip per statement; for comparisons)
        self._explain = explain or (lambda exc: f"cannot use PostgreSQL at {where}: {' '.join(str(exc).split())}")

    def _connection(self) -> PgConnection:
        return PgConnection(self._connect)

    # --- lifecycle -------------------------------------------------------------------------------------------
    def open(self) -> None:
        from mtad.store.migrations import postgresql as migrations
        conn = self._connection()
        try:
            conn.ensure()
        except psycopg.Error as exc:  # the server is not there, or refuses us: the setting is wrong
            raise ConfigError("store.dsn", self._explain(exc)) from None
        if self.read_only:
            try:
                found = migrations.version(conn)
            except psycopg.Error as exc:
                raise StoreError(f"PostgreSQL at {self.where}: {' '.join(str(exc).split())}") from None
            finally:
                conn.discard()
            if found != migrations.SCHEMA_VERSION:
                raise StoreError(f"PostgreSQL at {self.where} has " + (
                    "no mtad schema yet" if not found else f"schema version {found}, this mtad"
                    f" {migrations.SCHEMA_VERSION}") + ": start mtad run once to create or migrate it")
            self._readable = True
            return
        try:
            if conn.execute("SHOW transaction_read_only").fetchone()[0] == "on":
                raise ConfigError("store.dsn", f"PostgreSQL at {self.where} takes no writes (a standby, or"
                                               " default_transaction_read_only is on): point store.dsn at the primary")
            migrations.migrate(conn, self.where, getattr(self, "node_id", ""))
        except psycopg.Error as exc:
            conn.discard()
            raise StoreError(f"PostgreSQL at {self.where}: {' '.join(str(exc).split())}") from None
        except BaseException:
            conn.discard()
            raise
        self._writer_conn = conn
        self._writer = threading.Thread(target=self._write_loop, args=(conn,), name="mtad-store-writer",
                                         daemon=True)
        self._writer.start()
        self._readable = True

    @property
    def round_trips(self) -> int:
        """Round trips the writer made to the server so far (its statements; /metrics-style counter)."""
        return self._writer_conn.round_trips if self._writer_conn is not None else 0

    def close(self) -> None:
        self._readable = False
        super().close()

    # --- writing: ``Store``'s loop; one batch as PostgreSQL runs it ---------------------------------------------
    def _try_batch(self, conn: PgConnection, batch: list[_Job]) -> list[_Job]:  # type: ignore[override]
        """The batch in pipeline mode (``_pipelined``: statements queued, sent together, one round trip where no
        write reads a result); if the server refused any statement, again statement by statement
        (``_one_by_one``), which tells which write failed."""
        if self.pipeline:
            try:
                conn.ensure()
            except psycopg.Error as exc:
                return self._cannot_begin(conn, batch, exc)
            if self._pipelined(conn, batch):
                return []
        return self._one_by_one(conn, batch)

    def _cannot_begin(self, conn: PgConnection, batch: list[_Job], exc: BaseException) -> list[_Job]:
        conn.discard()
        for job in batch:
            _settle(job, error=StoreUnavailable(f"cannot begin a transaction on PostgreSQL at {self.where}: "
                                                f"{' '.join(str(exc).split())}"))
        return []

    def _pipelined(self, conn: PgConnection, batch: list[_Job]) -> bool:
        """Run and commit ``batch`` in one pipeline; True when every caller was answered (committed, or the
        connection was lost), False when a write failed — a statement the server refused, or a write that raised
        by itself: nothing is committed, the batch must run again one write at a time, each in its savepoint
        (``_one_by_one``), to fail only the write whose it was. The writes of a pipelined batch have no savepoints
        of their own: two statements fewer per write (a third of an outcome's), the price being that a failing
        write makes its batch run twice."""
        assert conn.raw is not None
        done: list[tuple[_Job, Any]] = []
        staged = conn.staged = Staged()
        try:
            conn.pipe = conn.enter_pipeline()  # kept from the last batch: no round trip to enter nor to leave
            conn.command("BEGIN")
            for job in batch:
                try:
                    result = job.fn(conn)
                except psycopg.Error:
                    raise
                except BaseException as exc:  # noqa: BLE001 - the caller's own failure: find it one by one
                    raise _WriteFailed() from exc
                staged.keep()
                done.append((job, result))
            try:
                staged.apply(conn)  # what the writes staged (their messages, events, counters): same transaction
            except psycopg.Error:
                raise
            except Exception as exc:  # noqa: BLE001 - a staged row psycopg cannot send: find its write one by one
                raise _WriteFailed() from exc
            conn.command("COMMIT")
            conn.sync()
        except (psycopg.Error, _WriteFailed) as exc:
            conn.pipe = None
            conn.leave_pipeline()  # the failed batch's queue answered or discarded: plain mode again
            if conn.broken:  # lost, maybe during COMMIT: committed or not, mtad cannot know
                error = StoreUnavailable(f"PostgreSQL connection lost: {' '.join(str(exc).split())}")
                log.error("store: %s; %d writes not committed", error, len(batch))
                conn.discard()
                _settle_all([(job, None, error) for job in batch])
                return True
            try:
                conn.command("ROLLBACK")
            except psycopg.Error:
                conn.discard()
            log.debug("store: a write of a pipelined batch failed (%s); running it again one by one",
                      exc.__cause__ if isinstance(exc, _WriteFailed) else exc)
            return False
        finally:
            conn.pipe = None
            conn.staged = None
        self.commits += 1
        self.committed_writes += len(done)
        _settle_all([(job, result, None) for job, result in done])
        return True

    def _one_by_one(self, conn: PgConnection, batch: list[_Job]) -> list[_Job]:
        conn.leave_pipeline()  # statement by statement, each answered before the next
        done: list[tuple[_Job, Any]] = []
        staged = conn.staged = Staged()

        def lost(exc: BaseException, rest: list[_Job]) -> list[_Job]:
            error = StoreUnavailable(f"PostgreSQL connection lost: {' '.join(str(exc).split())}")
            log.error("store: %s; %d writes not committed", error, len(done) + len(rest))
            conn.discard()
            _settle_all([(job, None, error) for job in [j for j, _ in done] + rest])
            return []
        try:
            conn.ensure()
            conn.command("BEGIN")
        except psycopg.Error as exc:
            return self._cannot_begin(conn, batch, exc)
        for n, job in enumerate(batch):
            try:
                conn.command("SAVEPOINT w")
                result = job.fn(conn)
                staged.apply(conn)  # this write's staged rows, in its savepoint: a row refused fails it alone
                conn.command("RELEASE w")
                done.append((job, result))
            except BaseException as exc:  # noqa: BLE001 - any failure belongs to that caller alone
                staged.drop()
                if conn.broken:
                    return lost(exc, batch[n:])
                _settle(job, error=_as_store_error(exc))
                try:
                    conn.command("ROLLBACK TO w")
                    conn.command("RELEASE w")
                except psycopg.Error as again:
                    return lost(again, batch[n + 1:])
        try:
            staged.apply(conn)  # what the writes staged, e.g. the counters of their events: same transaction
            conn.command("COMMIT")
        except Exception as exc:  # noqa: BLE001 - a failed commit fails every write of the batch
            log.error("store commit failed: %s", exc)
            unknown = conn.broken  # the connection broke during COMMIT: committed or not, mtad cannot know
            if unknown:
                conn.discard()
            else:
                try:
                    conn.command("ROLLBACK")
                except psycopg.Error:
                    conn.discard()
            kind = StoreUnavailable if unknown else StoreError
            for job, _ in done:
                _settle(job, error=kind(f"commit failed: {' '.join(str(exc).split())}"))
            return []
        self.commits += 1
        self.committed_writes += len(done)
        _settle_all([(job, result, None) for job, result in done])
        return []

    # --- reading ---------------------------------------------------------------------------------------------
    def _reader(self) -> PgConnection:  # type: ignore[override]
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connection()
            self._read_conns.append(conn)
        return conn

    async def read(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(conn)`` on a reader thread, in one read-only snapshot."""
        def run() -> T:
            conn = self._reader()
            try:
                conn.ensure()
                conn.command("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                result = fn(conn)
                conn.command("COMMIT")
                return result
            except BaseException as exc:
                if conn.broken:
                    conn.discard()
                    if isinstance(exc, psycopg.Error):
                        raise StoreUnavailable(f"PostgreSQL at {self.where}: {' '.join(str(exc).split())}") from None
                else:
                    try:
                        conn.command("ROLLBACK")
                    except psycopg.Error:
                        conn.discard()
                error = _as_store_error(exc)
                if error is exc:
                    raise
                raise error from None
        if not self._readable:
            raise StoreError("store is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, run)

