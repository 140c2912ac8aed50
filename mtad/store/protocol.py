"""The store's whole interface as ``typing.Protocol``s: what a second backend implements (SQLite today,
``store.sqlite.SqliteStore``), what its contract tests check, and what the code outside ``mtad.store`` depends on.
Each part is declared next to its SQLite implementation (``store.<kind>``) with its contract; ``StoreProtocol`` is
all of them together. Code that needs one part types its collaborator as that part (the scheduler takes a
``QueueStore``, the suppression API a ``SuppressionStore``), or as ``StoreProtocol``.
"""

from __future__ import annotations

from typing import Protocol

from mtad.store.accounts import AccountStore
from mtad.store.authpolicy import AuthPolicyStore
from mtad.store.campaigns import CampaignStore
from mtad.store.changes import ChangeStore
from mtad.store.engagement import EngagementStore
from mtad.store.events import EventStore
from mtad.store.panelusers import PanelUserStore
from mtad.store.lists import ListStore
from mtad.store.dispatch import DispatchStore
from mtad.store.queue import QueueStore
from mtad.store.reports import ReportStore
from mtad.store.routes import RouteStore
from mtad.store.stored import StoredMessageStore
from mtad.store.suppressions import SuppressionStore
from mtad.store.templates import TemplateStore
from mtad.store.webhooks import WebhookConfigStore
from mtad.store.work import WorkStore


class Lifecycle(Protocol):
    """``open()`` before any other method (creates or migrates the schema), ``close()`` once at the end (waits for
    the writes in flight); ``is_open`` between the two."""

    def open(self) -> None: ...

    def close(self) -> None: ...

    @property
    def is_open(self) -> bool: ...


class StoreProtocol(QueueStore, EventStore, SuppressionStore, AccountStore, RouteStore, WebhookConfigStore,
                    WorkStore, StoredMessageStore, ChangeStore, AuthPolicyStore, PanelUserStore, ListStore, ReportStore, TemplateStore, CampaignStore, Lifecycle, EngagementStore, DispatchStore, Protocol):
    """Every typed method of the store (see each part's contract)."""
