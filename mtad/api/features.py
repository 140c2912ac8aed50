"""The API's feature modules, in the order their routes are added. Each has ``setup(app)``."""

from __future__ import annotations

from typing import Callable

from aiohttp import web


def all_features() -> list[Callable[[web.Application], None]]:
    features: list[Callable[[web.Application], None]] = []
    from mtad.api import domains, messages, routes, stored  # issue 6: sending, routes, storage, domains
    features += [messages.setup, routes.setup, stored.setup, domains.setup]
    from mtad.api import events, metrics, stats, suppressions, webhooks  # issue 5: events, webhooks, suppressions, stats
    features += [events.setup, webhooks.setup, suppressions.setup, stats.setup, metrics.setup]
    from mtad.api import legacy  # issue 10: the seed manual's /v2 paths
    features += [legacy.setup]
    from mtad.api import domain_auth  # issue 15: a receiving domain's inbound authentication policy
    features += [domain_auth.setup]
    from mtad.api import lists  # issue 14: mailing lists (v3 and the seed's v2 paths), the list-unsubscribe page
    features += [lists.setup]
    from mtad.api import domaintracking  # issue 13: domain tracking settings (the endpoints: api.tracking, app.py)
    features += [domaintracking.setup]
    from mtad.api import templates  # issue 14: stored templates
    features += [templates.setup]
    from mtad.api import campaigns  # issue 16: Mailgun's campaigns API (seed 000)
    features += [campaigns.setup]
    from mtad.api import inboxfirst  # issue 16: InboxFirst-style campaigns (seed 004) under /ga/api/v2/
    features += [inboxfirst.setup]
    return features
