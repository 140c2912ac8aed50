"""Numbered schema migrations: what every backend's list of steps is, and how the steps to run are chosen.

Contract:
- A backend keeps one ordered list of ``Migration`` steps, versions 1, 2, 3, ... without gaps
  (``mtad.store.migrations.sqlite.STEPS``; a PostgreSQL backend keeps its own list beside it). Version 1 is the
  schema of the first release that stamped versions (SQLite: mtad at commit bebe064); each later step is what one
  change added. A store's schema version is the number of the last step applied to it.
- Every store, new or old, is built by the same steps: a new store runs them all, an older one the steps above its
  version. So there is one definition of the schema (the steps) and every test run exercises every step.
- The steps a store lacks run in order in one transaction together with the new version number: a failing step
  leaves the store exactly as it was. A store whose version is newer than the last step this mtad knows is refused
  (``NewerSchema``, a ``StoreError``, naming both versions): an older mtad never writes to a newer schema.
- Steps only add (tables, columns, indexes, data filled in) and are safe to run on a store that already has what
  they add: builds between releases stamped the same number on different shapes (see the SQLite list).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from mtad.base.errors import StoreError


@dataclass(frozen=True)
class Migration:
    """One step: ``apply(conn)`` turns a store of version ``version - 1`` into one of ``version``.

    ``conn`` is the backend's connection, inside the transaction of the whole migration."""

    version: int
    description: str
    apply: Callable[[Any], None]


def latest(steps: Sequence[Migration]) -> int:
    """The schema version the steps build: the number of the last one (0 without steps)."""
    return steps[-1].version if steps else 0


def check(steps: Sequence[Migration]) -> None:
    """Raise ``ValueError`` unless the steps are numbered 1, 2, 3, ... in order (a bug, caught by the tests)."""
    numbers = [step.version for step in steps]
    if numbers != list(range(1, len(steps) + 1)):
        raise ValueError(f"migration steps must be numbered 1..{len(steps)} in order, got {numbers}")


class NewerSchema(StoreError):
    """The store's schema version is newer than this mtad knows: it was written by a newer mtad."""


def pending(steps: Sequence[Migration], current: int, where: str) -> tuple[Migration, ...]:
    """The steps a store of version ``current`` lacks, in order; ``StoreError`` if ``current`` is newer than the
    steps know (``where`` names the store in the message)."""
    known = latest(steps)
    if current > known:
        raise NewerSchema(f"{where} has schema version {current}; this mtad knows versions up to {known}:"
                         " use the mtad that wrote it, or a newer one")
    if current < 0:
        raise StoreError(f"{where} has schema version {current}, which no mtad writes")
    return tuple(step for step in steps if step.version > current)
