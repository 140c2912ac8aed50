"""mtad.base: the value types and small mechanisms every layer shares; the standard library only.

Job: frozen records that cross stages (``types``), the exception tree (``errors``), policy numbers (``rates``),
password hashing, logging set-up, sd_notify, micro-batching (``coalesce``), the in-memory byte budget
(``inflight``), the ports file.
May import: the standard library only (import-linter contract "base is the standard library only").
Contract: no I/O at import, no global state a caller must set up; everything here is usable by every layer.
"""
