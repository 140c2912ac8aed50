"""Event webhook configuration: the ``webhooks`` table, one row per (domain, webhook id, URL).

Rows come from the config file (``source = 'config'``, synced at start and on reload, read-only through the API)
and from the API (``source = 'api'``). A change is seen by the next event recorded: every write here clears the
record-time cache of webhook targets inside its transaction and again after its commit; on PostgreSQL it also
notifies the other nodes, whose caches are cleared when the notification arrives (``store.changes``). ``redeliver`` queues
stored events again for the current webhooks (``mtad webhooks redeliver``). ``WebhookConfigStore`` is the
contract, ``WebhookConfigMethods`` its SQLite implementation; the POSTs are ``events.webhooks``'s.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol, Sequence

from mtad.config.schema import WebhooksConfig
from mtad.store import events as _events
from mtad.store.changes import changed


@dataclass(frozen=True)
class Webhook:
    """One webhook of a domain: its URLs (in order of creation), one format, and where it was made."""

    id: str  # accepted | delivered | opened | clicked | unsubscribed | complained | permanent_fail | temporary_fail
    urls: tuple[str, ...]
    format: str  # json | legacy
    source: str  # config | api


class WebhookError(ValueError):
    """A refused change; ``status`` is the HTTP status to answer (400 refused, 404 no such webhook)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# A check of a change before it is written: (webhook id, its URLs, format); raises WebhookError.
Check = Callable[[str, list[str], str], None]


def sync_config(conn: sqlite3.Connection, cfg: WebhooksConfig, now: float) -> int:
    """Make the table's config-file rows equal to ``cfg`` (API rows are kept). Returns the URL count."""
    conn.execute("DELETE FROM webhooks WHERE source = 'config'")
    rows = [(domain.lower(), hook, url, wh.format, now)
            for domain, hooks in cfg.domains.items() for hook, wh in hooks.items() for url in wh.urls]
    conn.executemany("INSERT INTO webhooks (domain, hook, url, format, source, created_at) VALUES (?, ?, ?, ?,"
                     " 'config', ?) ON CONFLICT (domain, hook, url) DO UPDATE SET format = excluded.format,"
                     " source = 'config'", rows)
    _events.invalidate_webhooks()
    changed(conn, "webhooks")
    return len(rows)


def list_webhooks(conn: sqlite3.Connection, domain: str) -> dict[str, Webhook]:
    """webhook id -> its webhook, for one domain; a webhook with any config-file URL is ``config``'s."""
    hooks: dict[str, tuple[list[str], str, str]] = {}
    for hook, url, fmt, source in conn.execute(
            "SELECT hook, url, format, source FROM webhooks WHERE domain = ? ORDER BY created_at, url", (domain,)):
        urls, first_format, seen = hooks.setdefault(hook, ([], fmt, source))
        urls.append(url)
        if source == "config":
            hooks[hook] = (urls, first_format, "config")
    return {hook: Webhook(hook, tuple(urls), fmt, source) for hook, (urls, fmt, source) in hooks.items()}


def put_webhook(conn: sqlite3.Connection, domain: str, hook: str, urls: Sequence[str], fmt: str, now: float, *,
                create: bool) -> None:
    """Create (``create``) or replace the API-managed URLs of one webhook."""
    existing = list_webhooks(conn, domain).get(hook)
    if existing and existing.source == "config":
        raise WebhookError(400, f"Webhook '{hook}' is set in the configuration file and is read-only here")
    if create and existing:
        raise WebhookError(400, f"Webhook '{hook}' already exists")
    if not create and not existing:
        raise WebhookError(404, "Webhook not found")
    conn.execute("DELETE FROM webhooks WHERE domain = ? AND hook = ?", (domain, hook))
    conn.executemany("INSERT INTO webhooks (domain, hook, url, format, source, created_at) VALUES (?, ?, ?, ?, 'api', ?)",
                     [(domain, hook, url, fmt, now) for url in dict.fromkeys(urls)])
    _events.invalidate_webhooks()
    changed(conn, "webhooks")


def delete_webhook(conn: sqlite3.Connection, domain: str, hook: str) -> Webhook:
    existing = list_webhooks(conn, domain).get(hook)
    if not existing:
        raise WebhookError(404, "Webhook not found")
    if existing.source == "config":
        raise WebhookError(400, f"Webhook '{hook}' is set in the configuration file and is read-only here")
    conn.execute("DELETE FROM webhooks WHERE domain = ? AND hook = ?", (domain, hook))
    _events.invalidate_webhooks()
    changed(conn, "webhooks")
    return existing


def put_url(conn: sqlite3.Connection, domain: str, url: str, *, add: Iterable[str], remove: Iterable[str],
            now: float, check: Check | None = None) -> None:
    """Mailgun's v4 webhooks (one URL, several event types): put ``url`` on the webhooks ``add`` (created as
    ``json`` when absent) and take it off ``remove`` (a webhook left without URLs is deleted), all or nothing
    (the caller's transaction). ``check`` vets each webhook the URL is added to. Config-file webhooks are
    read-only."""
    hooks = list_webhooks(conn, domain)
    for hook in dict.fromkeys(add):
        existing = hooks.get(hook)
        if existing is None:
            if check is not None:
                check(hook, [url], "json")
            put_webhook(conn, domain, hook, [url], "json", now, create=True)
        elif url not in existing.urls:
            urls = [*existing.urls, url]
            if check is not None:
                check(hook, urls, existing.format)
            put_webhook(conn, domain, hook, urls, existing.format, now, create=False)
    for hook in dict.fromkeys(remove):
        existing = hooks.get(hook)
        if existing is None or url not in existing.urls:
            continue
        rest = [u for u in existing.urls if u != url]
        if rest:
            put_webhook(conn, domain, hook, rest, existing.format, now, create=False)
        else:
            delete_webhook(conn, domain, hook)


def put_urls(conn: sqlite3.Connection, domain: str, urls: Sequence[str], *, add: Iterable[str],
             remove: Iterable[str], now: float, check: Check | None) -> dict[str, Webhook]:
    add, remove = list(add), list(remove)
    for url in urls:
        put_url(conn, domain, url, add=add, remove=remove, now=now, check=check)
    return list_webhooks(conn, domain)


def redeliver(conn: sqlite3.Connection, *, since: float, until: float | None = None, kinds: Iterable[str] = (),
              domain: str | None = None, url: str | None = None, now: float | None = None) -> int:
    """Queue the events of ``[since, until]`` again for the current webhooks (optionally one event kind,
    domain or URL). Returns the number of POSTs queued. Events get new rows, so each is POSTed again once."""
    now = time.time() if now is None else now
    kinds = list(kinds)
    where, params = ["timestamp >= ?"], [since]
    if until is not None:
        where.append("timestamp <= ?")
        params.append(until)
    if kinds:
        where.append(f"event IN ({','.join('?' * len(kinds))})")
        params += kinds
    if domain:
        where.append("domain = ?")
        params.append(domain.lower())
    hooks: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for d, h, u, fmt in conn.execute("SELECT domain, hook, url, format FROM webhooks"):
        if url is None or u == url:
            hooks.setdefault((d, h), []).append((u, fmt))
    queued = 0
    for event_id, d, kind, severity in conn.execute(
            f"SELECT id, domain, event, severity FROM events WHERE {' AND '.join(where)} ORDER BY timestamp, seq",
            params).fetchall():
        hook = _events.webhook_id({"event": kind, "severity": severity or "permanent"})
        targets = hooks.get((d, hook or ""))
        if targets:
            queued += _events.add_webhook_work(conn, d, event_id, targets, now)
    return queued


@dataclass(frozen=True)
class WebhookPost:
    """One webhook POST of an event to a URL (a ``webhook_deliveries`` row), as the web panel lists it."""

    id: int
    event_id: str
    url: str
    state: str  # queued | deferred | done | failed
    attempts: int
    last_status: int | None
    last_error: str | None
    updated_at: float


def recent_posts(conn: sqlite3.Connection, domain: str, limit: int) -> tuple[WebhookPost, ...]:
    return tuple(WebhookPost(*r) for r in conn.execute(
        "SELECT id, event_id, url, state, attempts, last_status, last_error, updated_at FROM webhook_deliveries"
        " WHERE domain = ? ORDER BY id DESC LIMIT ?", (domain, limit)))


class WebhookConfigStore(Protocol):
    """The webhooks of each domain. Every change commits before it returns and is seen by the next event
    recorded; a refused change raises ``WebhookError`` and writes nothing."""

    async def sync_webhooks(self, config: WebhooksConfig, now: float) -> int:
        """Make the config file's webhooks equal to ``config`` (the API's are kept); idempotent. The number of
        config URLs."""
        ...

    async def list_webhooks(self, domain: str) -> dict[str, Webhook]:
        """webhook id -> webhook, in order of creation."""
        ...

    async def put_webhook(self, domain: str, hook: str, urls: Sequence[str], fmt: str, now: float, *,
                          create: bool) -> None:
        """Create (``create``: 400 if it exists) or replace (404 if it does not) the URLs of an API webhook;
        duplicate URLs are kept once. A config-file webhook is refused (400)."""
        ...

    async def delete_webhook(self, domain: str, hook: str) -> Webhook:
        """Delete an API webhook and answer what it was (404 if none, 400 for a config-file one)."""
        ...

    async def put_webhook_urls(self, domain: str, urls: Sequence[str], *, add: Sequence[str] = (),
                               remove: Sequence[str] = (), now: float, check: Check | None = None
                               ) -> dict[str, Webhook]:
        """Mailgun's v4 change, all or nothing: each URL is added to the webhooks ``add`` (created ``json``,
        vetted by ``check``) and taken off ``remove`` (a webhook left without URLs is deleted). Answers the
        domain's webhooks after the change."""
        ...

    async def redeliver_webhooks(self, *, since: float, until: float | None = None, kinds: Sequence[str] = (),
                                 domain: str | None = None, url: str | None = None) -> int:
        """Queue the stored events of ``[since, until]`` again, one new POST per current webhook URL (filtered
        by event kind, domain, URL); the number queued. Not idempotent: each call queues again."""
        ...

    async def recent_webhook_posts(self, domain: str, limit: int = 50) -> tuple[WebhookPost, ...]:
        """The newest ``limit`` webhook POSTs of a domain's events, newest first, whatever their state."""
        ...


class WebhookConfigMethods:
    """``WebhookConfigStore`` over the SQLite engine (a mixin of ``SqliteStore``)."""

    async def _webhook_change(self, fn):
        try:
            return await self.write(fn)
        finally:
            _events.invalidate_webhooks()  # again after the commit: a reader never keeps an uncommitted view
            self._changed("webhooks")

    async def sync_webhooks(self, config: WebhooksConfig, now: float) -> int:
        return await self._webhook_change(lambda c: sync_config(c, config, now))

    async def list_webhooks(self, domain: str) -> dict[str, Webhook]:
        return await self.read(lambda c: list_webhooks(c, domain))

    async def put_webhook(self, domain: str, hook: str, urls: Sequence[str], fmt: str, now: float, *,
                          create: bool) -> None:
        urls = tuple(urls)
        await self._webhook_change(lambda c: put_webhook(c, domain, hook, urls, fmt, now, create=create))

    async def delete_webhook(self, domain: str, hook: str) -> Webhook:
        return await self._webhook_change(lambda c: delete_webhook(c, domain, hook))

    async def put_webhook_urls(self, domain: str, urls: Sequence[str], *, add: Sequence[str] = (),
                               remove: Sequence[str] = (), now: float, check: Check | None = None
                               ) -> dict[str, Webhook]:
        urls, add, remove = tuple(urls), tuple(add), tuple(remove)
        return await self._webhook_change(lambda c: put_urls(c, domain, urls, add=add, remove=remove, now=now,
                                                             check=check))

    async def redeliver_webhooks(self, *, since: float, until: float | None = None, kinds: Sequence[str] = (),
                                 domain: str | None = None, url: str | None = None) -> int:
        kinds = tuple(kinds)
        return await self.write(lambda c: redeliver(c, since=since, until=until, kinds=kinds, domain=domain,
                                                    url=url))

    async def recent_webhook_posts(self, domain: str, limit: int = 50) -> tuple[WebhookPost, ...]:
        return await self.read(lambda c: recent_posts(c, domain, limit))
