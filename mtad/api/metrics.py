"""Prometheus metrics at ``GET /metrics`` (public, no API key), in the text exposition format.

Read at scrape time: queue depth by state and provider (the store's pending deliveries; provider =
the name of the shaping policy of the destination: a configured provider such as ``google``, else the
destination domain itself; matched by domain suffix since MX hosts are not resolved for a scrape),
route forwards and webhook backlog by state, SMTP sessions and messages by result (ingress
counters), route forward POSTs by outcome, webhook POSTs by outcome, store commits and the latency of
the last group commit. Counted as events are recorded (``EventCounters``, a listener of the store's
``EventBus`` on the writer thread): events by kind, and deliveries by outcome and provider (the policy of the
recipient domain and the MX host that answered). Counts restart at zero with the process, as
Prometheus counters do.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from mtad.outbound import providers
from mtad.api import context
from mtad.store.queue import QueueCounts

if TYPE_CHECKING:
    from mtad.events.retention import Pruner
    from mtad.events.webhooks import Dispatcher, WebhookLoop
    from mtad.inbound.forward import Forwarder
    from mtad.ingress.pipeline import Ingress
    from mtad.smtp.server import Sessions
    from mtad.store.engine import Store


class EventCounters:
    """Counts recorded events (an ``EventBus`` listener: called inside the write transaction)."""

    def __init__(self, shaping: providers.ShapingConfig | None):
        self.shaping = shaping
        self.lock = threading.Lock()
        self.events: Counter[str] = Counter()
        self.deliveries: Counter[tuple[str, str]] = Counter()  # (outcome, provider)
        self._providers: dict[tuple[str, str], str] = {}

    def provider(self, domain: str, mx_host: str = "") -> str:
        if self.shaping is None:
            return "default"
        key = (domain, mx_host)
        name = self._providers.get(key)
        if name is None:
            name = providers.for_destination(domain, [mx_host] if mx_host else [], self.shaping).name or "default"
            if len(self._providers) > 10000:
                self._providers.clear()
            self._providers[key] = name
        return name

    def observe(self, domain: str, event: dict[str, Any]) -> None:
        kind = event["event"]
        with self.lock:
            self.events[kind] += 1
            if kind not in ("delivered", "failed") or event.get("method") == "http":
                return  # route forwards have their own counters
            status = event.get("delivery-status") or {}
            outcome = "delivered" if kind == "delivered" else (
                "deferred" if event.get("severity") == "temporary" else "failed")
            self.deliveries[(outcome, self.provider(event.get("recipient-domain", ""), status.get("mx-host") or ""))] += 1


@dataclass(frozen=True)
class MetricsSources:
    """The running parts /metrics reads (built by app.py at each scrape); None where that part does not run."""

    store: "Store"
    sessions: "Sessions | None" = None
    ingress: "Ingress | None" = None
    forwarder: "Forwarder | None" = None
    webhook_dispatcher: "Dispatcher | None" = None
    webhook_loop: "WebhookLoop | None" = None
    pruner: "Pruner | None" = None
    event_counters: EventCounters | None = None
    node_id: str = ""  # this node (``node_id``); the queue gauges are the whole store's, every node's work


class _Collector:
    def __init__(self, sources: MetricsSources, snapshot: QueueCounts):
        self.sources = sources
        self.snapshot = snapshot

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        src, snap = self.sources, self.snapshot
        counters = src.event_counters
        if src.node_id:
            info = GaugeMetricFamily("mtad_node_info", "This node (node_id); the queue gauges count the work of"
                                     " every node on the store", labels=["node_id"])
            info.add_metric([src.node_id], 1)
            yield info
        depth = GaugeMetricFamily("mtad_queue_depth", "Pending outbound deliveries (one per message and destination"
                                  " domain) by state and provider", labels=["state", "provider"])
        by: Counter[tuple[str, str]] = Counter()
        for state, domain, n in snap.deliveries:
            by[(state, counters.provider(domain) if counters else "default")] += n
        for state in ("queued", "deferred", "held", "active"):
            if not any(k[0] == state for k in by):
                by[(state, "default")] += 0
        for (state, provider), n in sorted(by.items()):
            depth.add_metric([state, provider], n)
        yield depth
        fwd = GaugeMetricFamily("mtad_forward_queue_depth", "Pending route forwards to URLs by state", labels=["state"])
        hooks = GaugeMetricFamily("mtad_webhook_backlog", "Webhook POSTs waiting (queued or to be retried)",
                                  labels=["state"])
        for family, rows in ((fwd, snap.forwards), (hooks, snap.webhooks)):
            counts = dict(rows)
            for state in ("queued", "deferred"):
                family.add_metric([state], counts.get(state, 0))
            yield family
        if counters is not None:
            with counters.lock:
                events = dict(counters.events)
                deliveries = dict(counters.deliveries)
            fam = CounterMetricFamily("mtad_events", "Events recorded, by kind", labels=["event"])
            for kind in sorted(set(events) | {"accepted", "delivered", "failed"}):
                fam.add_metric([kind], events.get(kind, 0))
            yield fam
            fam = CounterMetricFamily("mtad_deliveries", "Outbound delivery outcomes per recipient, by outcome and"
                                      " provider", labels=["outcome", "provider"])
            for outcome in ("delivered", "deferred", "failed"):
                if not any(k[0] == outcome for k in deliveries):
                    deliveries[(outcome, "default")] = 0
            for (outcome, provider), n in sorted(deliveries.items()):
                fam.add_metric([outcome, provider], n)
            yield fam
        sessions = src.sessions
        if sessions is not None:
            yield CounterMetricFamily("mtad_smtp_sessions", "SMTP connections accepted", value=sessions.total_connections)
            yield GaugeMetricFamily("mtad_smtp_sessions_active", "SMTP connections open now", value=len(sessions.active))
        ingress = src.ingress
        if ingress is not None:
            fam = CounterMetricFamily("mtad_smtp_messages", "Messages at the end of DATA by result (accepted = 250,"
                                      " refused = 5xx, store_failure = 452)", labels=["result"])
            c = ingress.counters
            for name, value in (("accepted", c.accepted), ("refused", c.refused), ("store_failure", c.store_failures)):
                fam.add_metric([name], value)
            yield fam
            budget = ingress.inflight
            yield GaugeMetricFamily("mtad_inflight_bytes", "Message bytes held in memory now (SMTP DATA being"
                                    " received, API sends being committed); limit: limits.max_inflight_bytes",
                                    value=budget.used)
            yield CounterMetricFamily("mtad_inflight_refusals", "Messages answered 452 4.3.1 because"
                                      " limits.max_inflight_bytes was reached", value=budget.refused)
            guard = ingress.auth_guard
            yield CounterMetricFamily("mtad_smtp_auth_failures", "SMTP AUTH attempts with wrong credentials",
                                      value=guard.failures)
            fam = CounterMetricFamily("mtad_smtp_auth_lockouts", "SMTP AUTH lockouts begun (limits."
                                      "max_auth_failures_per_client / _per_account), by scope", labels=["scope"])
            refused = CounterMetricFamily("mtad_smtp_auth_refused", "SMTP AUTH attempts answered 454 4.7.0 while"
                                          " locked out, by scope", labels=["scope"])
            for scope in ("client", "account"):
                fam.add_metric([scope], guard.lockouts[scope])
                refused.add_metric([scope], guard.refused[scope])
            yield fam
            yield refused
        forwarder = src.forwarder
        if forwarder is not None:
            fam = CounterMetricFamily("mtad_forwards", "Route forward POSTs by outcome", labels=["outcome"])
            for name in ("delivered", "retried", "failed"):
                fam.add_metric([name], forwarder.counters.get(name, 0))
            yield fam
        dispatcher = src.webhook_dispatcher
        if dispatcher is not None:
            fam = CounterMetricFamily("mtad_webhook_posts", "Webhook POSTs by outcome", labels=["outcome"])
            for name in ("done", "retried", "failed"):
                fam.add_metric([name], dispatcher.counters.get(name, 0))
            yield fam
        loop = src.webhook_loop
        if loop is not None:
            yield GaugeMetricFamily("mtad_webhook_inflight", "Webhook POSTs in flight", value=loop.inflight)
        pruner = src.pruner
        if pruner is not None:
            yield CounterMetricFamily("mtad_events_pruned", "Events and webhook rows deleted by retention",
                                      value=pruner.pruned)
        store = src.store
        yield CounterMetricFamily("mtad_store_commits", "Store transactions committed", value=store.commits)
        yield CounterMetricFamily("mtad_store_writes", "Writes committed (several per group commit)",
                                  value=store.committed_writes)
        yield GaugeMetricFamily("mtad_store_commit_seconds", "Duration of the last group commit",
                                value=store.last_commit_seconds)
        feed = getattr(store, "changes", None)
        if feed is not None and feed.listens:
            yield CounterMetricFamily("mtad_store_change_notifications", "Changes of routes, domains, credentials"
                                      " or webhooks notified by any node (PostgreSQL LISTEN)", value=feed.received)
            yield GaugeMetricFamily("mtad_store_listening", "1 while the LISTEN connection for other nodes'"
                                    " changes is up", value=int(feed.listening.is_set()))


async def metrics(request: web.Request) -> web.Response:
    # here, not at the top: prometheus_client (~25 ms of CPU to import) loads at the first scrape, not at every start
    from prometheus_client import CollectorRegistry, generate_latest
    ctx = context(request)
    snapshot = await ctx.store.queue_counts()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(ctx.metrics(), snapshot))
    resp = web.Response(body=generate_latest(registry))
    resp.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
    return resp


def setup(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics)
