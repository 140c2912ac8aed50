"""The typed methods every backend composes with its engine: one list, so the backends cannot drift apart.

``SqliteStore(Store, *METHODS)`` and ``PostgresStore(PgEngine, *METHODS)``: each mixin's methods call
``self.write(fn)`` / ``self.read(fn)`` with the SQL functions of its module, which both engines run
(``store.dialect`` holds the few fragments that differ).
"""

from __future__ import annotations

from mtad.store.accounts import AccountMethods
from mtad.store.authpolicy import AuthPolicyMethods
from mtad.store.campaigns import CampaignMethods
from mtad.store.changes import ChangeMethods
from mtad.store.dispatch import DispatchMethods
from mtad.store.engagement import EngagementMethods
from mtad.store.events import EventMethods
from mtad.store.panelusers import PanelUserMethods
from mtad.store.lists import ListMethods
from mtad.store.queue import QueueMethods
from mtad.store.reports import ReportMethods
from mtad.store.routes import RouteMethods
from mtad.store.stored import StoredMessageMethods
from mtad.store.suppressions import SuppressionMethods
from mtad.store.templates import TemplateMethods
from mtad.store.webhooks import WebhookConfigMethods
from mtad.store.work import WorkMethods

METHODS = (QueueMethods, EventMethods, SuppressionMethods, AccountMethods, RouteMethods, WebhookConfigMethods,
           WorkMethods, StoredMessageMethods, ChangeMethods, AuthPolicyMethods, ListMethods, ReportMethods, TemplateMethods, CampaignMethods)
METHODS += (PanelUserMethods,)  # issue 17: the web control panel's users
METHODS += (EngagementMethods,)  # engagement tracking (store.engagement)
METHODS += (DispatchMethods,)  # issue 16: InboxFirst campaigns (store.dispatch)
