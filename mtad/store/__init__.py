"""mtad.store: the durable state, and the only package that speaks SQL.

Job: ``engine`` (SQLite in WAL mode, one writer thread, group commit, staged rows), ``migrations`` (numbered
schema steps run at open), ``queue`` (messages, deliveries, forwards, suppressions), ``accounts`` (API domains and
credentials), ``routes`` (API routes), ``leases`` (claims as renewed leases, outcome writes retried), ``workloop``
(the claim loop of HTTP work rows).
May import: ``mtad.base``, ``mtad.mail``, ``mtad.net``, ``mtad.config``; no module outside it imports sqlite3
(import-linter contract "Only the store speaks SQL"; known crossings listed in pyproject.toml are being removed).
Contract: a caller's write returns only after it is durably committed, a failing write rolls back alone, a claim
is a lease (see ``engine`` and ``leases``). Target (docs/architecture.md): typed async methods per kind of state
behind a ``typing.Protocol``, so a second backend implements the same interface and passes tests/contract.
"""
