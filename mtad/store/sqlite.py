"""The SQLite backend: the engine (``engine.Store``: writer thread, group commit) with every kind of state's
typed methods mixed in. ``SqliteStore`` implements ``store.protocol.StoreProtocol``."""

from __future__ import annotations

from mtad.store.engine import Store
from mtad.store.accounts import AccountMethods
from mtad.store.routes import RouteMethods
from mtad.store.settings import SettingsMethods
from mtad.store.suppressions import SuppressionMethods


class SqliteStore(Store, SuppressionMethods, AccountMethods, RouteMethods, SettingsMethods):
    """The store mtad runs on: ``open()`` before use, ``close()`` at the end."""
