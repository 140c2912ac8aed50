"""Numbered schema migrations (mtad.store.migrations): every historical schema, migrated, is the schema of a new store.

Historical files: release bebe064's state (version 1, ``tests/e2e/data/state_bebe064.sql``), the files the builds
between it and numbered migrations stamped 2 (f496db1: variables only; d09700a: variables, leases, attachments;
their SCHEMA texts in ``tests/unit/data``), and a file left at every intermediate step of today's list.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from mtad.base.errors import StoreError
from mtad.store.engine import Store
from mtad.store.migrations import Migration, check, pending
from mtad.store.migrations import sqlite as migrations
from tests.e2e.old_state import restore_bebe064

DATA = Path(__file__).parent / "data"


def connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def _sql(text: str | None) -> str:
    text = re.sub(r"--[^\n]*", "", text or "")
    text = re.sub(r"\bIF NOT EXISTS\b", "", text, flags=re.I)
    return re.sub(r"\s+", " ", re.sub(r"\s*([(),])\s*", r"\1", text)).strip()


def schema(conn: sqlite3.Connection) -> dict:
    """The schema as what it means, not as it was spelled: per table its columns (in any order: a column added
    by a step comes last), keys, foreign keys and rowid-ness; per index its table and normalised definition."""
    out: dict = {}
    for kind, name, table, sql in conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"
                                               " WHERE name NOT LIKE 'sqlite_%' ORDER BY name"):
        if kind == "table":
            out[("table", name)] = (
                sorted(tuple(r[1:]) for r in conn.execute(f"PRAGMA table_info({name})")),
                sorted(tuple(r[2:]) for r in conn.execute(f"PRAGMA foreign_key_list({name})")),
                "WITHOUT ROWID" in sql.upper(), "AUTOINCREMENT" in sql.upper())
        else:
            out[(kind, name)] = (table, _sql(sql))
    return out


def fresh_schema(tmp_path: Path) -> dict:
    conn = connect(tmp_path / "fresh.sqlite3")
    assert migrations.migrate(conn, "fresh") == (0, migrations.SCHEMA_VERSION)
    return schema(conn)


def test_the_steps_are_numbered_in_order():
    check(migrations.STEPS)
    assert migrations.SCHEMA_VERSION == len(migrations.STEPS) >= 4
    with pytest.raises(ValueError):
        check((Migration(1, "a", print), Migration(3, "b", print)))


def _release_bebe064(path: Path) -> None:
    restore_bebe064(path, "http://127.0.0.1:9")


def _script(text: str, version: int):
    def make(path: Path) -> None:
        conn = connect(path)
        conn.executescript(text)
        conn.execute(f"PRAGMA user_version={version}")
        conn.close()
    return make


HISTORY = {
    "1: release bebe064 (its real state file)": _release_bebe064,
    "2: as f496db1 stamped it (variables, no leases nor attachments)": _script((DATA / "schema_f496db1.sql").read_text(), 2),
    "2: as d09700a stamped it (variables, leases, attachments)": _script((DATA / "schema_d09700a.sql").read_text(), 2),
}


@pytest.mark.parametrize("made_by", list(HISTORY))
def test_a_historical_file_migrates_to_the_schema_of_a_new_store(tmp_path, made_by):
    path = tmp_path / "old.sqlite3"
    HISTORY[made_by](path)
    conn = connect(path)
    before_rows = conn.execute("SELECT count(*) FROM deliveries").fetchone()[0]
    first = int(made_by.split(":")[0])
    assert migrations.migrate(conn, str(path)) == (first, migrations.SCHEMA_VERSION)
    assert schema(conn) == fresh_schema(tmp_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == migrations.SCHEMA_VERSION
    assert conn.execute("SELECT count(*) FROM deliveries").fetchone()[0] == before_rows  # nothing lost
    assert migrations.migrate(conn, str(path)) == (migrations.SCHEMA_VERSION, migrations.SCHEMA_VERSION)


@pytest.mark.parametrize("version", range(1, migrations.SCHEMA_VERSION))
def test_a_file_left_at_any_step_migrates_to_the_schema_of_a_new_store(tmp_path, version):
    conn = connect(tmp_path / "partial.sqlite3")
    conn.execute("BEGIN")
    for step in migrations.STEPS[:version]:
        step.apply(conn)
    conn.execute(f"PRAGMA user_version={version}")
    conn.execute("COMMIT")
    assert migrations.migrate(conn, "partial") == (version, migrations.SCHEMA_VERSION)
    assert schema(conn) == fresh_schema(tmp_path)


def test_an_old_claim_is_a_lease_that_already_ran_out(tmp_path):
    """A row locked by a process of the release before leases has no lease anybody renews: after migration it
    is claimable (``mtad queue flush`` unlocks it even before a daemon starts)."""
    path = tmp_path / "old.sqlite3"
    _release_bebe064(path)
    conn = connect(path)
    migrations.migrate(conn, str(path))
    rows = conn.execute("SELECT locked_by, locked_at, lease_until FROM deliveries WHERE locked_by IS NOT NULL").fetchall()
    assert rows and all(lease == at for _, at, lease in rows), rows


def test_a_newer_file_is_refused_naming_both_versions(tmp_path):
    path = tmp_path / "new.sqlite3"
    conn = connect(path)
    conn.execute(f"PRAGMA user_version={migrations.SCHEMA_VERSION + 1}")
    conn.close()
    store = Store(path)
    with pytest.raises(StoreError, match=f"schema version {migrations.SCHEMA_VERSION + 1}; this mtad knows"
                                         f" versions up to {migrations.SCHEMA_VERSION}"):
        store.open()
    assert connect(path).execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0  # nothing written
    with pytest.raises(StoreError):
        pending(migrations.STEPS, migrations.SCHEMA_VERSION + 1, "x")


def test_a_failing_step_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "old.sqlite3"
    _release_bebe064(path)
    conn = connect(path)
    before = schema(conn)

    def broken(c):
        c.execute("ALTER TABLE events ADD COLUMN half_done TEXT")
        raise sqlite3.OperationalError("disk I/O error")
    steps = migrations.STEPS[:2] + (Migration(3, "broken", broken),) + migrations.STEPS[3:]
    monkeypatch.setattr(migrations, "STEPS", steps)
    with pytest.raises(StoreError, match="schema version 3 \\(broken\\) failed: disk I/O error; the file is left"
                                         " at version 1"):
        migrations.migrate(conn, str(path))
    assert schema(conn) == before and conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert not conn.in_transaction
