"""The PostgreSQL store backend (``store.backend: postgresql``; docs/scaling.md).

So far only the connection settings and ``probe`` (``mtad check-config``) are built; the backend implementing the
store's Protocol follows (issue 12). The driver is asyncpg, imported only when this backend is configured.
"""
