"""The SQLite backend: the engine (``engine.Store``: writer thread, group commit) with every kind of state's
typed methods mixed in. ``SqliteStore`` implements ``store.protocol.StoreProtocol``."""

from __future__ import annotations

from mtad.store.accounts import AccountMethods
from mtad.store.engine import Store
from mtad.store.routes import RouteMethods
from mtad.store.settings import SettingsMethods
from mtad.store.stored import StoredMessageMethods
from mtad.store.suppressions import SuppressionMethods
from mtad.store.webhooks import WebhookConfigMethods
from mtad.store.work import WorkMethods


class SqliteStore(Store, SuppressionMethods, AccountMethods, RouteMethods, SettingsMethods, WebhookConfigMethods,
                  WorkMethods, StoredMessageMethods):
    """The store mtad runs on: ``open()`` before use, ``close()`` at the end."""
