"""The PostgreSQL store backend (``store.backend: postgresql``; docs/scaling.md).

``engine`` (``PgEngine``: the SQLite engine's group commit over one psycopg 3 writer connection, in pipeline mode,
and reader threads; ``PgConnection``: sqlite3's surface for the store's SQL functions), ``store``
(``PostgresStore``: the engine with the same typed methods as ``SqliteStore``), ``probe`` (connection settings,
``mtad check-config``'s report, one-line errors). psycopg is imported only when this backend is configured.
"""
