"""Move a single node's SQLite store into a PostgreSQL database: ``mtad store copy`` (docs/scaling.md).

Contract of ``copy_store(source, target, node_id, setting)``:
- The source is an mtad SQLite store that no process has open: a running daemon is refused (``in_use``: its
  ``ports`` file names a live mtad, or a process holds the file open, as ``/proc/PID/fd`` shows). The source is
  brought to this mtad's schema first (``migrations.sqlite``; as any command that writes does), then read inside
  one transaction holding its write lock (``BEGIN IMMEDIATE``): a consistent snapshot nobody changes meanwhile.
- The target is a PostgreSQL database whose schema is created or brought up to date first
  (``migrations.postgresql``); it must hold no mtad rows: a database that does is refused (nothing written), so
  a copy never merges two queues (duplicate ids, mail delivered twice).
- Every table is copied inside ONE PostgreSQL transaction (``COPY FROM STDIN``, row by row, bodies included):
  all of it is committed or none of it. Within it the rows of each table are counted on both sides after the
  copy; any difference rolls everything back. Claims (``locked_by``, ``locked_at``, ``lease_until`` of the work
  tables) are cleared: a claim made on the old node means nothing to the new cluster. Identity sequences are
  advanced past the copied ids (and past SQLite's ``sqlite_sequence``, so an event ``seq`` is never reused).

What is copied is not listed here: it is read off the two schemas, both built by their numbered steps
(``store.migrations``): every table of the SQLite store, every column. The tables and columns of the two schemas
must be the same (the one difference the backends declare, ``dialect.creation_order``: SQLite's implicit
``rowid`` is PostgreSQL's explicit ``seq``); when they are not — a step added to one list and not to the other —
the copy refuses, naming what differs, and so does tests/unit/test_store_copy.py. Parent tables are copied before
the tables whose foreign keys point at them. Only the claims are data here (``CLEARED``).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mtad.base import ports
from mtad.base.errors import ConfigError, StoreError
from mtad.store import engine
from mtad.store.dialect import POSTGRESQL, SQLITE
from mtad.store.migrations import postgresql as pg_migrations
from mtad.store.migrations import sqlite as sqlite_migrations
from mtad.store.queue import LEASED_TABLES

log = logging.getLogger("mtad.store")

# A claim on a work row is a lease of one node (store.leases): on the new cluster nobody holds it.
CLAIM_COLUMNS = ("locked_by", "locked_at", "lease_until")
CLEARED: dict[str, tuple[str, ...]] = {table: CLAIM_COLUMNS for table in LEASED_TABLES}
# Tables only PostgreSQL has, by design: what the nodes of one database share for a moment (provider shaping:
# connection slots, token buckets and automation rules' actions, store.shaping), never copied, since a single
# SQLite node has none.
CLUSTER_ONLY = frozenset({"shaping_slots", "shaping_buckets", "provider_actions"})
# Columns PostgreSQL keeps explicitly where SQLite has them implicitly: target column -> source expression.
IMPLICIT = {POSTGRESQL.creation_order: SQLITE.creation_order}


@dataclass(frozen=True)
class Column:
    """One column of the target and where its values come from: ``source`` is an SQL expression on the source
    table (the same column, SQLite's ``rowid``, or ``NULL`` for a cleared claim)."""

    name: str
    source: str
    pg_type: str  # information_schema's data_type: text, bytea, bigint, integer, double precision


@dataclass(frozen=True)
class TableCopy:
    """How one table is copied; ``identity``: its identity column on the target (advanced after the copy)."""

    name: str
    columns: tuple[Column, ...]
    identity: str | None

    def select_sql(self) -> str:
        return f"SELECT {', '.join(c.source for c in self.columns)} FROM {self.name}"

    def copy_sql(self) -> str:
        return f"COPY {self.name} ({', '.join(c.name for c in self.columns)}) FROM STDIN"

    @property
    def cleared(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.source == "NULL")


@dataclass(frozen=True)
class TableCount:
    """Rows of one table on each side after the copy (inside the copy's transactions); ``claims``: rows whose
    claim was cleared."""

    table: str
    source_rows: int
    target_rows: int
    claims: int = 0


@dataclass(frozen=True)
class CopyReport:
    """What ``copy_store`` did. Versions are (before, after) of its migration of each side."""

    source: str
    target: str
    source_versions: tuple[int, int]
    target_versions: tuple[int, int]
    tables: tuple[TableCount, ...]
    sequences: tuple[tuple[str, int], ...]  # ("table.column", the value the sequence was set to)

    @property
    def rows(self) -> int:
        return sum(t.target_rows for t in self.tables)

    @property
    def claims(self) -> int:
        return sum(t.claims for t in self.tables)


# --- is the source in use? -------------------------------------------------------------------------------------

def _is_mtad(pid: int) -> bool:
    """True if ``pid`` is a live process that may be mtad (its command line names mtad; True where /proc is not
    readable: better refuse than copy under a live daemon)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        return b"mtad" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def _holders(paths: tuple[Path, ...]) -> list[int]:
    """The processes (other than this one) with one of ``paths`` open, from ``/proc/PID/fd`` (Linux; the
    processes this user may inspect)."""
    wanted = {str(p) for p in paths}
    found = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                try:
                    if os.readlink(fd) in wanted:
                        found.append(int(entry.name))
                        break
                except OSError:
                    continue
        except OSError:  # gone, or not ours to inspect
            continue
    return sorted(found)


def in_use(path: Path) -> str | None:
    """Why the SQLite store at ``path`` must not be copied now (a daemon runs on it), or None.

    Two checks: the ``ports`` file a running mtad keeps beside its store (``mtad.base.ports``) names a live mtad
    process; a process has the file (or its ``-wal``) open (``/proc/PID/fd``)."""
    path = path.resolve()
    found = ports.read(path.parent)
    if found and isinstance(found.get("pid"), int) and _is_mtad(found["pid"]):
        return (f"mtad (pid {found['pid']}) is running on {path} (see {path.parent / ports.FILE_NAME}):"
                " stop it first; a copy of a running node's store would lose what it accepts meanwhile")
    holders = _holders((path, path.with_name(path.name + "-wal")))
    if holders:
        return (f"{path} is open in process{'es' if len(holders) > 1 else ''} {', '.join(map(str, holders))}:"
                " stop the mtad using it first; a copy of a running node's store would lose what it accepts"
                " meanwhile")
    return None


# --- what to copy: read off the two schemas --------------------------------------------------------------------

def sqlite_tables(conn: sqlite3.Connection) -> dict[str, list[str]]:
    """The store's tables (in creation order) and their columns; not its full-text indexes (an FTS5 virtual
    table and its shadow tables: ``store.textsearch``'s, kept by triggers; PostgreSQL indexes the copied rows
    itself)."""
    virtual = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"
                                          " AND sql LIKE 'CREATE VIRTUAL TABLE%'")]
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"
                                        " AND name NOT LIKE 'sqlite_%' ORDER BY rowid")
             if not any(r[0] == v or r[0].startswith(v + "_") for v in virtual)]
    return {name: [r[1] for r in conn.execute(f"PRAGMA table_info({name})")] for name in names}


def postgresql_tables(conn: Any) -> dict[str, list[tuple[str, str, bool]]]:
    """The mtad tables of the target's schema (not ``mtad_schema``): column (name, data type, is identity)."""
    tables: dict[str, list[tuple[str, str, bool]]] = {}
    for table, column, kind, identity in conn.execute(
            "SELECT c.table_name, c.column_name, c.data_type, c.is_identity FROM information_schema.columns c"
            " JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name"
            " WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE' AND c.table_name <> ?"
            " ORDER BY c.table_name, c.ordinal_position", (pg_migrations.SCHEMA_TABLE,)):
        tables.setdefault(table, []).append((column, kind, identity == "YES"))
    return tables


def _parents_first(conn: sqlite3.Connection, names: list[str]) -> list[str]:
    """``names`` with every table after the tables its foreign keys reference (else in the given order)."""
    parents = {name: {r[2] for r in conn.execute(f"PRAGMA foreign_key_list({name})")} - {name} for name in names}
    ordered: list[str] = []
    while len(ordered) < len(names):
        ready = [n for n in names if n not in ordered and parents[n] <= set(ordered)]
        if not ready:
            raise StoreError(f"foreign keys form a cycle among {sorted(set(names) - set(ordered))}")
        ordered.append(ready[0])
    return ordered


def plan(source: sqlite3.Connection, target: Any) -> tuple[TableCopy, ...]:
    """How each table is copied, from the schemas of the two open stores (both at the same version);
    ``StoreError`` naming what differs when their tables or columns are not the same."""
    src = sqlite_tables(source)
    dst = {name: columns for name, columns in postgresql_tables(target).items() if name not in CLUSTER_ONLY}
    problems = []
    if set(src) - set(dst):
        problems.append(f"tables only in SQLite: {', '.join(sorted(set(src) - set(dst)))}")
    if set(dst) - set(src):
        problems.append(f"tables only in PostgreSQL: {', '.join(sorted(set(dst) - set(src)))}")
    copies = []
    for name in _parents_first(source, [n for n in src if n in dst]):
        columns = []
        names = set(src[name])
        for column, kind, _ in dst[name]:
            if column in CLEARED.get(name, ()):
                expr = "NULL"
            elif column in names:
                expr = column
            elif column in IMPLICIT:
                expr = f"{IMPLICIT[column]} AS {column}"
            else:
                problems.append(f"column {name}.{column} only in PostgreSQL")
                continue
            columns.append(Column(column, expr, kind))
        for column in sorted(names - {c for c, _, _ in dst[name]}):
            problems.append(f"column {name}.{column} only in SQLite")
        identity = next((c for c, _, ident in dst[name] if ident), None)
        copies.append(TableCopy(name, tuple(columns), identity))
    if problems:
        raise StoreError("the SQLite and PostgreSQL schemas of this mtad differ (a migration step missing from one"
                         f" list): {'; '.join(problems)}")
    return tuple(copies)


# --- the copy --------------------------------------------------------------------------------------------------

def _converter(column: Column, table: str) -> Callable[[Any], Any] | None:
    """A function making a source value fit the target column where SQLite's loose typing allows a mismatch
    (text in a BLOB column, bytes in a TEXT one); None where values go as they are."""
    if column.pg_type == "bytea":
        return lambda v: v.encode("utf-8", "surrogateescape") if isinstance(v, str) else v
    if column.pg_type == "text":
        def text(v: Any) -> Any:
            if isinstance(v, bytes):
                try:
                    v = v.decode("utf-8")
                except UnicodeDecodeError:
                    raise StoreError(f"{table}.{column.name} holds bytes that are not UTF-8 text") from None
            if isinstance(v, str) and "\x00" in v:
                raise StoreError(f"{table}.{column.name} holds a NUL character, which PostgreSQL text cannot")
            return v
        return text
    return None


def _copy_table(source: sqlite3.Connection, target: Any, table: TableCopy) -> int:
    """COPY the rows of one table; the number sent."""
    convert = [(i, f) for i, f in ((i, _converter(c, table.name)) for i, c in enumerate(table.columns)) if f]
    sent = 0
    with target.raw.cursor() as cur, cur.copy(table.copy_sql()) as copy:
        for row in source.execute(table.select_sql()):
            if convert:
                row = list(row)
                for i, fn in convert:
                    row[i] = fn(row[i])
            copy.write_row(row)
            sent += 1
    return sent


def _count(conn: Any, table: str) -> int:
    return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def _advance_sequences(source: sqlite3.Connection, target: Any, tables: tuple[TableCopy, ...]
                       ) -> list[tuple[str, int]]:
    """Set each identity sequence past the copied ids (and past ``sqlite_sequence``'s high-water mark)."""
    floors = dict(source.execute("SELECT name, seq FROM sqlite_sequence")) if source.execute(
        "SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone() else {}
    done = []
    for table in tables:
        if table.identity is None:
            continue
        top = max(target.execute(f"SELECT coalesce(max({table.identity}), 0) FROM {table.name}").fetchone()[0],
                  int(floors.get(table.name) or 0))
        if top > 0:
            target.execute("SELECT setval(pg_get_serial_sequence(?, ?), ?)", (table.name, table.identity, top))
            done.append((f"{table.name}.{table.identity}", top))
    return done


def _refuse_unless_empty(target: Any, tables: tuple[TableCopy, ...], where: str) -> None:
    held = [t.name for t in tables if target.execute(f"SELECT EXISTS (SELECT 1 FROM {t.name})").fetchone()[0]]
    if held:
        raise StoreError(f"PostgreSQL at {where} already holds mtad data (rows in {', '.join(held)}): copy only"
                         " into a database without mtad rows (a new one, or one `mtad store migrate` created);"
                         " nothing was written")


def copy_store(source: Path, target: Any, node_id: str = "", setting: str = "store.dsn") -> CopyReport:
    """Copy the SQLite store at ``source`` into the PostgreSQL database of ``target`` (a ``StoreConfig`` with
    ``backend: postgresql``); see the module doc. ``setting`` names where the DSN came from, for a connection
    error (``ConfigError(setting, ...)``). Anything refused or failed is a ``StoreError``; nothing is committed to
    the target then."""
    import psycopg
    from mtad.store.postgres.engine import PgConnection
    from mtad.store.postgres.probe import connect, explain, where as where_of

    if not source.is_file():
        raise StoreError(f"no SQLite store at {source}")
    busy = in_use(source)
    if busy:
        raise StoreError(f"refusing to copy: {busy}")
    dsn = target.dsn.reveal()
    where = where_of(dsn)
    src: sqlite3.Connection | None = None
    try:
        src = engine.connect(source)
        is_store = src.execute("SELECT 1 FROM sqlite_master WHERE name = 'messages'").fetchone()
    except sqlite3.Error as exc:
        if src is not None:
            src.close()
        raise StoreError(f"{source} is not an SQLite database: {exc}") from None
    dst = PgConnection(lambda: connect(target, node_id))
    committing = False
    try:
        if not is_store:
            raise StoreError(f"{source} is not an mtad store (it has no messages table)")
        try:
            dst.ensure()
        except psycopg.Error as exc:
            raise ConfigError(setting, explain(exc, dsn)) from None
        try:
            source_versions = sqlite_migrations.migrate(src, str(source))
            target_versions = pg_migrations.migrate(dst, where, node_id)
            src.execute("BEGIN IMMEDIATE")  # the write lock, until the end: nobody changes the source meanwhile
            try:
                tables = plan(src, dst)
                dst.command("BEGIN")
                try:
                    counts, sequences = _copy_all(src, dst, tables, where)
                    committing = True
                    dst.command("COMMIT")
                except BaseException:
                    if not dst.broken:
                        dst.command("ROLLBACK")
                    raise
            finally:
                if src.in_transaction:
                    src.execute("ROLLBACK")  # only read
        except psycopg.Error as exc:
            if committing:  # the connection broke during COMMIT: PostgreSQL may or may not have committed
                raise StoreError(f"the copy's COMMIT on PostgreSQL at {where} got no answer"
                                 f" ({' '.join(str(exc).split())}): all of it or none of it was committed; run the"
                                 " same copy again: it copies if nothing is there, and refuses if it all is") from None
            raise StoreError(f"copy to PostgreSQL at {where} failed, nothing was committed:"
                             f" {' '.join(str(exc).split())}") from None
        except sqlite3.Error as exc:  # reading the source: I/O error, locked beyond the busy timeout
            raise StoreError(f"reading {source} failed, nothing was committed to PostgreSQL: {exc}") from None
    finally:
        src.close()
        dst.discard()
    report = CopyReport(str(source), where, source_versions, target_versions, tuple(counts), tuple(sequences))
    log.info("store: copied %d rows of %s into PostgreSQL at %s", report.rows, source, where)
    return report


def _copy_all(src: sqlite3.Connection, dst: Any, tables: tuple[TableCopy, ...], where: str
              ) -> tuple[list[TableCount], list[tuple[str, int]]]:
    """Inside the target's open transaction: lock, check it is empty, copy, advance sequences, count both sides."""
    dst.command("SET LOCAL statement_timeout = 0")  # a big queue takes longer than store.statement_timeout
    dst.execute("SELECT pg_advisory_xact_lock(?)", (pg_migrations.LOCK_KEY,)).fetchone()  # no migration meanwhile
    dst.command(f"LOCK TABLE {', '.join(t.name for t in tables)} IN EXCLUSIVE MODE")  # nor a node's writes
    _refuse_unless_empty(dst, tables, where)
    counts = []
    for table in tables:
        claims = 0
        if table.cleared:
            claims = src.execute(f"SELECT count(*) FROM {table.name} WHERE "
                                 + " OR ".join(f"{c} IS NOT NULL" for c in table.cleared)).fetchone()[0]
        sent = _copy_table(src, dst, table)
        counts.append(TableCount(table.name, _count(src, table.name), _count(dst, table.name), claims))
        if not counts[-1].source_rows == sent == counts[-1].target_rows:
            raise StoreError(f"copy of {table.name} does not add up: {counts[-1].source_rows} rows in SQLite, {sent}"
                             f" sent, {counts[-1].target_rows} in PostgreSQL; nothing was committed")
    sequences = _advance_sequences(src, dst, tables)
    return counts, sequences


def summary(report: CopyReport) -> list[str]:
    """The lines ``mtad store copy`` prints."""
    width = max(len(t.table) for t in report.tables) if report.tables else 5
    lines = [f"source: {report.source} (schema version {_versions(report.source_versions)})",
             f"target: PostgreSQL at {report.target} (schema version {_versions(report.target_versions)})",
             f"{'table':<{width}}  {'SQLite':>10}  {'PostgreSQL':>10}"]
    lines += [f"{t.table:<{width}}  {t.source_rows:>10}  {t.target_rows:>10}"
              + (f"  ({t.claims} claims of the old node cleared)" if t.claims else "") for t in report.tables]
    lines.append(f"{'total':<{width}}  {sum(t.source_rows for t in report.tables):>10}  {report.rows:>10}")
    if report.sequences:
        lines.append("identity sequences advanced: " + ", ".join(f"{n} to {v}" for n, v in report.sequences))
    lines.append("copied in one transaction; row counts verified on both sides")
    return lines


def _versions(pair: tuple[int, int]) -> str:
    before, after = pair
    return f"{after}" if before == after else f"{before} -> {after}" if before else f"{after}, created"


def report_json(report: CopyReport) -> str:
    """The report as JSON (``mtad store copy --json``)."""
    return json.dumps({"source": report.source, "target": report.target,
                       "source_versions": list(report.source_versions),
                       "target_versions": list(report.target_versions),
                       "tables": {t.table: {"source": t.source_rows, "target": t.target_rows, "claims_cleared": t.claims}
                                  for t in report.tables},
                       "sequences": dict(report.sequences)}, indent=2)
