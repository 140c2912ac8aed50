"""The store's whole interface, as a ``typing.Protocol``: what any backend implements (SQLite today,
``store.sqlite.SqliteStore``) and what its contract tests check. Code outside the store types its collaborator
as the part it needs (``QueueStore``, ``EventStore``, ...) or as ``StoreProtocol``.
"""

from __future__ import annotations

from typing import Protocol

from mtad.store.events import EventStore
from mtad.store.queue import QueueStore


class Lifecycle(Protocol):
    """``open()`` before use (creates or migrates the store), ``close()`` at the end; ``is_open`` in between."""

    def open(self) -> None: ...

    def close(self) -> None: ...

    @property
    def is_open(self) -> bool: ...


class StoreProtocol(QueueStore, EventStore, Lifecycle, Protocol):
    """Every typed method of the store (see each part's contract)."""
