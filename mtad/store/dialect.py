"""The few places where the store's SQL differs between SQLite and PostgreSQL, as named fragments.

The store's SQL functions (``store.queue``, ``store.events``, ...) are written once, in the SQL both engines
speak (standard SQL plus ``ON CONFLICT`` upserts with the target table named); each takes ``?`` placeholders,
which the PostgreSQL connection translates (``store.postgres.engine``). Where the two really differ, a function
asks its connection's dialect (``dialect_of(conn)``) for the fragment by name; nothing else rewrites statements.

What differs, and why:
- ``lock_rows``: a claim's ``SELECT ... LIMIT n`` locks the rows it picks on PostgreSQL (``FOR UPDATE SKIP
  LOCKED``: several nodes claim at once, each skips the rows another is taking); SQLite has one writer.
- JSON inside a text column: ``json_text`` (SQLite ``json_extract``, PostgreSQL ``#>>``), ``json_flag`` (a JSON
  boolean: SQLite reads it as 0/1), ``json_tags`` (the elements of an event's ``tags`` array), ``json_campaign`` (an event names a campaign),
  ``json_array1``
  (a one-element JSON array of a column, as text).
- Case: ``nocase`` compares a column to a parameter without case (SQLite's ``COLLATE NOCASE``); ``like_nocase``
  is SQLite's ``LIKE`` (ASCII case-insensitive), PostgreSQL's ``ILIKE``.
- ``greatest``: the larger of two values (SQLite's two-argument ``max``, PostgreSQL's ``GREATEST``).
- ``header_block``: the bytes of a BLOB/BYTEA column up to the end of its header block.
- ``creation_order``: the column that keeps insertion order (SQLite's implicit ``rowid``, PostgreSQL's explicit
  identity ``seq``), for tables ordered by creation.
- ``hour_probe``: SQLite answers an equality on recipient or message-id fastest by probing its hour-bucketed
  index hour by hour (``INDEXED BY``, a recursive CTE); PostgreSQL's planner uses its own index for the plain
  query. ``unlikely_index``: SQLite's unary ``+`` that keeps a column's index out of a plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


def _sqlite_path(path: tuple[str, ...]) -> str:
    return "$" + "".join(f'."{p}"' if "-" in p else f".{p}" for p in path)


def _pg_path(path: tuple[str, ...]) -> str:
    return "{" + ",".join(f'"{p}"' if "-" in p or "," in p else p for p in path) + "}"


@dataclass(frozen=True)
class Dialect:
    name: str  # sqlite | postgresql
    lock_rows: str  # appended to a claim's SELECT ... LIMIT ?
    creation_order: str  # the insertion-order column of tables ordered by creation
    like_nocase: str  # LIKE | ILIKE
    hour_probe: bool  # eventquery probes the hour-bucketed indexes (SQLite only)
    unlikely_index: str  # prefix of a column whose index a plan should not use

    @property
    def is_postgresql(self) -> bool:
        return self.name == "postgresql"

    def json_text(self, column: str, *path: str) -> str:
        """The value at ``path`` of the JSON text in ``column``, as text (NULL if absent)."""
        if self.is_postgresql:
            return f"({column}::jsonb #>> '{_pg_path(path)}')"
        return f"json_extract({column}, '{_sqlite_path(path)}')"

    def json_flag(self, column: str, *path: str, value: bool) -> str:
        """True when the JSON boolean at ``path`` of ``column`` is ``value``."""
        if self.is_postgresql:
            return f"({column}::jsonb #> '{_pg_path(path)}') = '{'true' if value else 'false'}'::jsonb"
        return f"json_extract({column}, '{_sqlite_path(path)}') = {int(value)}"

    def json_tags(self, column: str) -> str:
        """A table of one text column ``value``: the elements of the array ``tags`` of the JSON in ``column``."""
        if self.is_postgresql:
            return (f"jsonb_array_elements_text(CASE WHEN jsonb_typeof({column}::jsonb -> 'tags') = 'array'"
                    f" THEN {column}::jsonb -> 'tags' ELSE '[]'::jsonb END) AS tags(value)")
        return f"json_each({column}, '$.tags')"

    def json_campaign(self, column: str) -> str:
        """True when the array ``campaigns`` of the JSON in ``column`` has an element whose ``id`` is the next
        parameter (an event's campaigns: ``[{"id": ...}]``)."""
        if self.is_postgresql:
            return (f"EXISTS (SELECT 1 FROM jsonb_array_elements(CASE WHEN jsonb_typeof({column}::jsonb ->"
                    f" 'campaigns') = 'array' THEN {column}::jsonb -> 'campaigns' ELSE '[]'::jsonb END)"
                    " AS campaigns(value) WHERE campaigns.value ->> 'id' = ?)")
        return f"EXISTS (SELECT 1 FROM json_each({column}, '$.campaigns') WHERE json_extract(value, '$.id') = ?)"

    def json_array1(self, column: str) -> str:
        """``[column]`` as JSON text."""
        if self.is_postgresql:
            return f"json_build_array({column})::text"
        return f"json_array({column})"

    def nocase(self, column: str) -> str:
        """``column`` equals the next parameter, ignoring (ASCII) case."""
        if self.is_postgresql:
            return f"lower({column}) = lower(?)"
        return f"{column} = ? COLLATE NOCASE"

    def greatest(self, a: str, b: str) -> str:
        """The larger of two values (SQLite's scalar ``max``)."""
        return f"GREATEST({a}, {b})" if self.is_postgresql else f"max({a}, {b})"

    def header_block(self, column: str) -> str:
        """The bytes of ``column`` up to and including the CRLF that ends its header block (all if none)."""
        if self.is_postgresql:
            at = f"position('\\x0d0a0d0a'::bytea in {column})"
            return f"CASE WHEN {at} > 0 THEN substr({column}, 1, {at} + 1) ELSE {column} END"
        at = f"instr({column}, X'0D0A0D0A')"
        return f"CASE WHEN {at} > 0 THEN substr({column}, 1, {at} + 1) ELSE {column} END"


SQLITE = Dialect("sqlite", lock_rows="", creation_order="rowid", like_nocase="LIKE", hour_probe=True,
                 unlikely_index="+")
POSTGRESQL = Dialect("postgresql", lock_rows=" FOR UPDATE SKIP LOCKED", creation_order="seq",
                     like_nocase="ILIKE", hour_probe=False, unlikely_index="")


def dialect_of(conn: Any) -> Dialect:
    """The dialect of a store connection: its ``dialect`` attribute, SQLite for a plain ``sqlite3`` one."""
    return getattr(conn, "dialect", SQLITE)


def _pg_element(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, (int, float)):
        return repr(value)  # float: 'inf', 'nan' and exponents are PostgreSQL's input syntax too
    raise TypeError(f"pg_array: no array element for {type(value).__name__}")


def pg_array(values: Sequence[Any]) -> str:
    """``values`` (str, int, float, bool or None) as PostgreSQL's text form of a one-dimensional array, for a
    parameter the statement casts (``?::bigint[]``, ``?::text[]``): one text parameter, which psycopg passes in C,
    where a Python list is dumped by psycopg's ``ListDumper`` in Python, element by element (~1-2 µs each: a
    burst of outcomes or a claim of a thousand rows has thousands). Every string element is quoted (``"NULL"``,
    braces, commas and spaces stay text); ``\\`` and ``"`` are escaped."""
    kinds = set(map(type, values))
    if kinds <= {int, float}:
        return "{" + ",".join(map(repr, values)) + "}"
    if kinds == {str}:
        return '{"' + '","'.join([v.replace("\\", "\\\\").replace('"', '\\"') for v in values]) + '"}'
    return "{" + ",".join(map(_pg_element, values)) + "}"
