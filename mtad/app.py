"""The composition root: builds every part from the configuration, runs them, handles signals.

SIGTERM/SIGINT: stop listening, let sessions in DATA finish, answer the rest 421 4.3.2, close the
store, exit 0. SIGHUP: re-read the config file and apply users, domains and limits without dropping
connections, and reload from disk the TLS certificate and key (for new sessions), DKIM keys and API keys;
a file that does not load keeps what was in use (listeners and the store path need a restart). systemd
is told READY/STATUS/STOPPING.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import secrets
import signal
import socket
import ssl
import time
from pathlib import Path

from mtad.store import accounts as accounts_mod
from mtad.config import schema as config_mod
from mtad.mail import dkim
from mtad.base import ports
from mtad.outbound import providers
from mtad.base import sdnotify
from mtad.config.schema import Config
from mtad.outbound.delivery import BrokenTls, Connector, TlsContexts
from mtad.ingress.directory import Directory
from mtad.base.errors import ConfigError, StoreError
from mtad.inbound.forward import Forwarder
from mtad.net.httpclient import HttpClient
from mtad.inbound.routing import Routing, check_config_routes, config_routes, route_of
from mtad.ingress.lists import ListDirectory
from mtad.ingress.pipeline import Ingress
from mtad.net.resolver import Resolver
from mtad.inbound.verdicts.check import Verifier
from mtad.inbound.router import Route
from mtad.outbound.scheduler import Scheduler
from mtad.smtp.server import MtadSMTP, Sessions
from mtad.store.events import EventBus
from mtad.store import new_store
from mtad.inbound.store_action import StoreAction
from mtad.inbound.spam import Policies, SpamFilter
from mtad.inbound.reports import Reports
from mtad.outbound.returnpath import ReturnPaths
from mtad.mail import returnpath
from mtad.mail import unsubaddr
from mtad.net.forwarded import ClientAddress
from mtad.base.keys import derive
from mtad.smtp.tls import ServerTls, make_self_signed
from mtad.store.workloop import WorkLoop

SHIPPED_SHAPING = Path(__file__).parent / "config" / "providers.yaml"


def tls_files(cfg: Config) -> tuple[Path, Path]:
    """The listeners' certificate and key: the configured files, else the self-signed pair in the state folder."""
    if cfg.tls.cert and cfg.tls.key:
        return cfg.path(cfg.tls.cert), cfg.path(cfg.tls.key)
    return cfg.state_path / "tls" / "cert.pem", cfg.state_path / "tls" / "key.pem"


def load_dkim_keys(cfg: Config) -> dict[str, list[dkim.DkimKey]]:
    """Signing keys per sending domain, from the files the config names."""
    keys: dict[str, list[dkim.DkimKey]] = {}
    for domain, dcfg in cfg.sending_domains.items():
        if not dcfg.dkim_sign:
            continue
        for i, key in enumerate(dcfg.dkim):
            path = cfg.path(key.key_file)
            try:
                keys.setdefault(domain, []).append(dkim.load_key(domain, key.selector, path.read_bytes()))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"sending_domains.{domain}.dkim[{i}].key_file", f"cannot load {path}: {exc}") from None
    return keys


def signing_key(cfg: Config) -> str:
    """The HMAC key of route POSTs and webhooks: from the config, else made once in the state folder."""
    if cfg.signing_key is not None:
        return cfg.signing_key.reveal()
    path = cfg.state_path / "signing-key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("key-" + secrets.token_hex(16))
    return path.read_text().strip()


def api_keys(cfg: Config) -> tuple[list, str | None]:
    """API keys from the config; else one made once in the state folder (returned to print at start)."""
    from mtad.api import ApiKey, hash_key
    if cfg.api.keys:
        return [ApiKey(k.key_hash.reveal(), frozenset(d.lower() for d in k.domains)) for k in cfg.api.keys], None
    path = cfg.state_path / "api-key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("key-" + secrets.token_hex(16))
    key = path.read_text().strip()
    return [ApiKey(hash_key(key))], key


def api_base_url(cfg: Config, address: str | None = None) -> str:
    """The API's base URL as clients see it (paging links, stored-message URLs); ``address``: where the API
    really listens, when the config says port 0."""
    scheme = "https" if cfg.api.tls else "http"
    return cfg.api.public_url.rstrip("/") or f"{scheme}://{address or cfg.api.address}"


def tracking_base_url(cfg: Config, api_address: str | None = None, listen_address: str | None = None) -> str:
    """The tracking URLs' base: ``tracking.base_url``, else the tracking listener's URL when it has one, else the
    API's public URL (the endpoints are then served on the API listener)."""
    if cfg.tracking.base_url:
        return cfg.tracking.base_url.rstrip("/")
    if cfg.tracking.listen:
        return f"{'https' if cfg.tracking.tls else 'http'}://{listen_address or cfg.tracking.listen}"
    return api_base_url(cfg, api_address)


def load_shaping(cfg: Config) -> providers.ShapingConfig:
    path = cfg.path(cfg.delivery.shaping_file) if cfg.delivery.shaping_file else SHIPPED_SHAPING
    return providers.load_shaping(path)

log = logging.getLogger("mtad")


# The cyclic GC's young collections run every GC_YOUNG net new container objects (CPython's default 700). Under a
# steady flow (clicks: their events wait up to 50 ms for their write) the default ran one every ~50 requests, about
# 25 µs of CPU per click in all; 5000 makes them rare (a few ms each when they come). Set after start-up (``run``).
GC_YOUNG = 5000


class App:
    def __init__(self, cfg: Config, config_path: Path | None = None, shutdown_grace: float = 30.0):
        self.cfg = cfg
        self.config_path = config_path
        self.shutdown_grace = shutdown_grace
        self.event_bus = EventBus()  # the store tells it of recorded events (metrics) and webhook work (dispatcher)
        self._unsubscribe: list = []
        self.store = new_store(cfg.store, cfg.store_path, cfg.node_id, bus=self.event_bus)  # sqlite | postgresql
        self.sessions = Sessions()
        self.servers: list[asyncio.base_events.Server] = []
        self.ingress: Ingress | None = None
        self.scheduler: Scheduler | None = None
        self._background: list[asyncio.Task] = []
        self._stop = asyncio.Event()
        self._started = False
        self._reload_pending = False
        self.tls_context: ssl.SSLContext | None = None
        self.server_tls: ServerTls | None = None
        self.config_dkim_keys: dict[str, list[dkim.DkimKey]] = {}  # from the config's key files, as last loaded
        self.accounts = accounts_mod.Accounts()
        self.api_socket: socket.socket | None = None  # pre-bound when api.address has port 0
        self.api_address = cfg.api.address  # where the API really listens
        self.bound: list[ports.Bound] = []  # where the SMTP listeners really listen
        self.tracking_socket: socket.socket | None = None  # pre-bound when tracking.listen has port 0
        self.tracking_address = cfg.tracking.listen  # where the tracking listener really listens

    # --- start -----------------------------------------------------------------------------------
    def _tls(self) -> ssl.SSLContext:
        cfg = self.cfg
        cert, key = tls_files(cfg)
        if not (cfg.tls.cert and cfg.tls.key):
            if not cert.exists() or not key.exists():
                make_self_signed(cert, key, cfg.hostname)
                log.info("made a self-signed certificate for %s in %s", cfg.hostname, cert.parent)
        try:
            self.server_tls = ServerTls(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("tls", f"cannot load certificate {cert} / key {key}: {exc}") from None
        return self.server_tls.context

    async def start(self) -> None:
        cfg = self.cfg
        cfg.state_path.mkdir(parents=True, exist_ok=True)
        if cfg.api.enabled and cfg.api.port == 0:  # the base URL below needs the real port: bind first
            self.api_socket = ports.bind_tcp(cfg.api.host, 0)
            self.api_address = ports.address_of(self.api_socket)
        await asyncio.to_thread(self.store.open)
        # Claims lock rows with the node id: release this node's own (its previous process's); on a shared
        # database other nodes' leases are theirs (a dead node's run out and are taken over by claims).
        shared = cfg.store.backend != "sqlite"
        released = await self.store.release_stale_locks(cfg.node_id if shared else None)
        if released:
            log.info("released %d stale work locks", released)
        # Changes other nodes make (routes, domains and credentials, webhooks): listening before loading them.
        if not await self.store.start_changes():
            log.warning("store: not yet listening for changes made by other nodes; they apply once it is")
        self._unsubscribe.append(self.store.on_change("routes", self._load_api_routes))
        self._unsubscribe.append(self.store.on_change("accounts", self._reload_accounts))
        needs_tls = any(listener.tls != "none" for listener in cfg.listeners) or (cfg.api.enabled and cfg.api.tls)
        self.tls_context = self._tls() if needs_tls else None
        self.signing_key = signing_key(cfg)
        self.routing = Routing(config_routes(cfg), srs_key=self.signing_key.encode(), use_srs=cfg.routing.srs,
                               allow_backtracking=cfg.routing.allow_backtracking_regex)
        await self._load_api_routes()
        self.accounts = await self.store.load_accounts()
        self.return_path_key = derive(self.signing_key, returnpath.PURPOSE)
        self.reports = Reports(key=self.return_path_key, store=self.store, addresses=cfg.feedback.addresses,
                               keep=cfg.routing.store_retention.seconds,
                               unsubscribe_key=derive(self.signing_key, unsubaddr.PURPOSE), lists=self.store)
        self.ingress = Ingress(hostname=cfg.hostname, limits=cfg.limits, directory=self.directory(cfg),
                               store=self.store, router=self.routing, lists=ListDirectory(self.store),
                               reports=self.reports)
        # issue 15: SPF/DKIM/DMARC/ARC verdicts on MX mail, DNS through a resolver with the delivery settings
        d = cfg.delivery
        self.verifier = Verifier(cfg.authentication, cfg.hostname,
                                 Resolver(list(d.dns_nameservers) or None, d.dns_port, d.dns_timeout.seconds))
        self.verifier.stored_policies = await self.store.load_auth_policies()
        self._unsubscribe.append(self.store.on_change("accounts", self._reload_auth_policies))
        self.ingress.verifier = self.verifier
        self.spam_filter = SpamFilter(cfg.spam)  # spam filtering of MX mail (issue 15 item 3)
        self._apply_spam(cfg)
        self.ingress.spam_filter = self.spam_filter
        self._unsubscribe.append(self.store.on_change("lists", self.ingress.lists.reload))
        await self.ingress.lists.reload()
        await self._setup_tracking()
        wakers = []
        self.config_dkim_keys = load_dkim_keys(cfg) if cfg.delivery.enabled else {}
        if cfg.delivery.enabled:
            self.scheduler = self._build_scheduler()
            self.scheduler.tracking = self.tracking
            wakers.append(self.scheduler.wake)
            self._background.append(asyncio.create_task(self.scheduler.run(), name="scheduler"))
        self.http = HttpClient(cfg.routing.allowed_networks, cfg.routing.timeout.seconds)
        self.forwarder = Forwarder(store=self.store, http=self.http, config=cfg.routing, signing_key=self.signing_key)
        self.forward_loop = WorkLoop(name="forward", store=self.store, table="forwards", handle=self.forwarder.handle,
                                     max_concurrent=cfg.routing.max_concurrent, actions=("http",),
                                     node_id=cfg.node_id)
        wakers.append(self.forward_loop.wake)
        self._background.append(asyncio.create_task(self.forward_loop.run(), name="forwards"))
        self.store_action = StoreAction(store=self.store, http=self.http, config=cfg.routing,
                                        signing_key=self.signing_key, base_url=api_base_url(cfg, self.api_address))
        # Polled, not woken by every commit: store() is rare, and a claim per commit would cost every message.
        self.store_loop = WorkLoop(name="store", store=self.store, table="forwards", handle=self.store_action.handle,
                                   max_concurrent=cfg.routing.max_concurrent, actions=("store",), poll_interval=0.5,
                                   node_id=cfg.node_id)
        self._background.append(asyncio.create_task(self.store_loop.run(), name="store-action"))
        self._background.append(asyncio.create_task(self.store_action.expire_loop(), name="store-expiry"))
        self.expander = self._build_expander(self.scheduler.wake if self.scheduler is not None else (lambda: None))
        wakers.append(self.expander.wake)
        self._background.append(asyncio.create_task(self.expander.run(), name="list-expansions"))
        self.dispatcher = self._build_dispatcher(self.scheduler.wake if self.scheduler is not None else (lambda: None))
        self._background.append(asyncio.create_task(self.dispatcher.run(), name="campaign-dispatch"))
        self.ingress.on_commit = lambda: [wake() for wake in wakers]
        if cfg.api.enabled:
            await self._start_api()
        await self._start_tracking_listener()
        loop = asyncio.get_running_loop()
        for listener in cfg.listeners:
            def factory(listener=listener) -> MtadSMTP:
                return MtadSMTP(self.ingress, listener, self.cfg.limits, self.cfg.hostname, self.tls_context,
                                self.sessions, loop)
            server = await loop.create_server(
                factory, host=listener.host, port=listener.port, backlog=1024,
                ssl=self.tls_context if listener.tls == "implicit" else None, reuse_address=True)
            self.servers.append(server)
            address = ports.address_of(server.sockets[0])  # the real port, when the config says 0
            self.bound.append(ports.Bound(listener.name, listener.role, address))
            log.info("listening on %s (%s, tls=%s)", address, listener.role, listener.tls)
        ports.write(cfg.state_path, self.bound, self.api_address if cfg.api.enabled else None)
        await self._start_webhooks()  # last: a start that fails above leaves no background write in flight

    async def _setup_tracking(self) -> None:
        """Engagement tracking: the per-recipient rendering policy (the scheduler's), the endpoints' context, the
        settings reloaded on every change (any node), ua-parser's rules loaded in a thread once some domain tracks."""
        from mtad.api.tracking import TrackingContext
        from mtad.base.keys import derive
        from mtad.events.engagement import Clients
        from mtad.mail.tracktoken import Sealer
        from mtad.outbound.tracking import Tracking
        cfg = self.cfg
        if cfg.tracking.listen and cfg.tracking.listen.rsplit(":", 1)[1] == "0":
            self.tracking_socket = ports.bind_tcp(cfg.tracking.listen.rsplit(":", 1)[0].strip("[]"), 0)
            self.tracking_address = ports.address_of(self.tracking_socket)
        base = tracking_base_url(cfg, self.api_address, self.tracking_address)
        self.tracking = Tracking(cfg.tracking, base, self.signing_key, await self.store.tracking_settings())

        async def reload_settings() -> None:
            self.tracking.update(await self.store.tracking_settings())
            warm_if_used()
        self._unsubscribe.append(self.store.on_change("tracking", reload_settings))
        geoip = str(cfg.path(cfg.tracking.geoip_database)) if cfg.tracking.geoip_database else None
        try:
            clients = Clients(cfg.tracking, geoip)
        except (OSError, ValueError) as exc:
            raise ConfigError("tracking.geoip_database", f"cannot read {geoip}: {exc}") from None

        def warm_if_used() -> None:  # ua-parser's rules (~0.3 s of CPU) only once tracking is on for some domain
            if self.tracking.in_use() and not any(t.get_name() == "ua-rules" for t in self._background):
                self._background.append(asyncio.create_task(asyncio.to_thread(clients.warm), name="ua-rules"))
        warm_if_used()

        async def listed(domain: str, address: str, tags: tuple[str, ...]) -> bool:
            entry = await self.store.get_suppression(domain, "unsubscribes", address)
            return entry is not None and ("*" in entry.tags or set(tags) <= set(entry.tags))
        self.tracking_context = TrackingContext(
            store=self.store, tracking=Sealer(derive(self.signing_key, "tracking")),
            unsubscribe=Sealer(derive(self.signing_key, "unsubscribe")), clients=clients, suppressed=listed,
            retention=cfg.tracking.retention.seconds, client_address=ClientAddress(cfg.tracking.trusted_proxies))

    async def _start_tracking_listener(self) -> None:
        """The tracking endpoints on a listener of their own (``tracking.listen``); else they are on the API's."""
        cfg = self.cfg
        if not cfg.tracking.listen:
            if not cfg.api.enabled and cfg.tracking != config_mod.TrackingConfig():
                log.warning("tracking: no listener serves the tracking URLs (api disabled, tracking.listen empty)")
            return
        from aiohttp import web
        from mtad.api.server import ApiRunner
        from mtad.api.tracking import tracking_app
        self.tracking_runner = ApiRunner(tracking_app(self.tracking_context), access_log=None)
        await self.tracking_runner.setup()
        ssl_context = self.tls_context if cfg.tracking.tls else None
        if self.tracking_socket is not None:
            site = web.SockSite(self.tracking_runner, self.tracking_socket, backlog=1024, ssl_context=ssl_context)
        else:
            host, port = cfg.tracking.listen.rsplit(":", 1)
            site = web.TCPSite(self.tracking_runner, host.strip("[]"), int(port), backlog=1024, ssl_context=ssl_context)
        await site.start()
        log.info("tracking endpoints on %s (URLs under %s)", self.tracking_address, self.tracking.base_url)

    def directory(self, cfg: Config) -> Directory:
        """The config file's users and domains plus those created through the API."""
        return Directory.from_config(cfg).merged(*self.accounts.directory_parts())

    def apply_accounts(self, accounts: accounts_mod.Accounts) -> None:
        """Domains or credentials changed through the API: new directory and DKIM keys, no restart."""
        self.accounts = accounts
        if self.ingress is not None:
            self.ingress.reload(limits=self.ingress.limits, directory=self.directory(self.cfg))
        if self.scheduler is not None:
            self.scheduler.dkim_keys = {**accounts.dkim_keys(), **self.config_dkim_keys}
        if getattr(self, "spam_filter", None) is not None:
            self._apply_spam(self.cfg)

    def _apply_spam(self, cfg: Config) -> None:
        """The spam filter's spamd and every receiving domain's policy (config file and API domains)."""
        self.spam_filter.configure(cfg.spam)
        self.spam_filter.policies = Policies.build(cfg.spam, self.accounts.domains.values())
        if self.spam_filter.unconfigured():
            log.warning("spam: domains %s ask for spam filtering but no spam.spamd is configured: their mail is "
                        "not scanned (their on_error policy applies)", ", ".join(self.spam_filter.unconfigured()))

    async def _reload_accounts(self) -> None:
        """Domains or credentials changed through the API of any node (``store.changes``): applied here when they
        differ from what this node has."""
        accounts = await self.store.load_accounts()
        if accounts != self.accounts:
            self.apply_accounts(accounts)

    async def _reload_auth_policies(self) -> None:
        """Authentication policies set through the API of any node (``store.authpolicy``)."""
        self.verifier.stored_policies = await self.store.load_auth_policies()

    async def _load_api_routes(self) -> None:
        """Routes created through the API (of any node; at start and after a change, ``store.changes``); one
        that no longer compiles (config changed) is skipped."""
        async def load() -> list[Route]:
            return [route_of(record) for record in await self.store.load_routes()]
        if getattr(self, "routing", None) is not None:
            await self.routing.reload_api(load, skip_bad=True)

    async def _start_webhooks(self) -> None:
        """Event webhooks (own HTTP client and work loop, woken through the store's event bus) and event
        retention."""
        from mtad.events import retention
        from mtad.events import webhooks
        cfg = self.cfg
        await self.store.sync_webhooks(cfg.webhooks, time.time())
        self.webhook_http = HttpClient(cfg.routing.allowed_networks, cfg.webhooks.timeout.seconds)
        self.webhook_dispatcher = webhooks.Dispatcher(store=self.store, http=self.webhook_http, config=cfg.webhooks,
                                                      signing_key=self.signing_key)
        self.webhook_loop = webhooks.WebhookLoop(store=self.store, dispatcher=self.webhook_dispatcher,
                                                 config=cfg.webhooks, node_id=cfg.node_id)
        self._unsubscribe.append(self.event_bus.on_webhook_work(
            self.webhook_loop.wake_threadsafe(asyncio.get_running_loop())))
        self._background.append(asyncio.create_task(self.webhook_loop.run(), name="webhooks"))
        self.pruner = retention.Pruner(self.store, cfg.store.event_retention.seconds)
        self._background.append(asyncio.create_task(self.pruner.run(), name="retention"))
        self.tracking_pruner = retention.Pruner(self.store, cfg.tracking.retention.seconds,
                                                prune=self.store.prune_tracking, what="tracked messages")
        self._background.append(asyncio.create_task(self.tracking_pruner.run(), name="tracking-retention"))

    def _metrics_sources(self):
        """What ``GET /metrics`` reads, as it is now (webhooks and the pruner start after the API)."""
        from mtad.api.metrics import MetricsSources
        return MetricsSources(store=self.store, sessions=self.sessions, ingress=self.ingress,
                              forwarder=getattr(self, "forwarder", None),
                              webhook_dispatcher=getattr(self, "webhook_dispatcher", None),
                              webhook_loop=getattr(self, "webhook_loop", None), pruner=getattr(self, "pruner", None),
                              event_counters=getattr(self, "event_counters", None), node_id=self.cfg.node_id)

    async def _start_api(self) -> None:
        from aiohttp import web
        from mtad.api import ApiContext, create_app
        from mtad.api.features import all_features
        cfg = self.cfg
        keys, generated = api_keys(cfg)
        base_url = api_base_url(cfg, self.api_address)
        self.api_keys = keys
        self.api_context = ApiContext(
            config=cfg.api, store=self.store, base_url=base_url, keys=lambda: self.api_keys,
            running_config=lambda: self.cfg, allowed_networks=cfg.routing.allowed_networks, ingress=self.ingress,
            routing=self.routing, accounts=lambda: self.accounts, apply_accounts=self.apply_accounts,
            metrics=self._metrics_sources, signing_key=self.signing_key,
            tracking_base_url=self.tracking.base_url)
        features, own_auth = all_features(), ()
        if cfg.ui.enabled:  # the web control panel at /ui/ (mtad/ui), on the same listener
            from mtad import ui
            panel = ui.UiContext(api=self.api_context, config=cfg.ui, throttled=self._throttled)
            features, own_auth = [*features, lambda app: ui.setup(app, panel)], (ui.PREFIX,)
        if not cfg.tracking.listen:  # the tracking endpoints on the API listener
            from mtad.api.tracking import add_routes
            features.append(lambda app: add_routes(app, self.tracking_context))
        from mtad.api.server import ApiRunner  # unparsable requests answered in the API's JSON shape
        self.api_runner = ApiRunner(create_app(self.api_context, features, own_auth), access_log=None)
        await self.api_runner.setup()
        if self.api_socket is not None:
            site = web.SockSite(self.api_runner, self.api_socket, backlog=1024,
                                ssl_context=self.tls_context if cfg.api.tls else None)
        else:
            site = web.TCPSite(self.api_runner, cfg.api.host, cfg.api.port, backlog=1024,
                               ssl_context=self.tls_context if cfg.api.tls else None)
        await site.start()
        log.info("HTTP API on %s", base_url)
        if cfg.ui.enabled:
            log.info("web control panel on %s/ui/ (sign in with an API key or a user of `mtad ui-user add`)",
                     base_url)
        from mtad.api.metrics import EventCounters
        self.event_counters = EventCounters(self.scheduler.shaping if self.scheduler is not None else None)
        self._unsubscribe.append(self.event_bus.on_event(self.event_counters.observe))
        if generated:
            log.info("API key (kept in %s): %s", cfg.state_path / "api-key", generated)

    def _throttled(self) -> tuple:
        """Providers suspended or limited now by shaping automation (the panel's dashboard)."""
        return self.scheduler.suspensions.snapshot() if self.scheduler is not None else ()

    def _build_scheduler(self) -> Scheduler:
        cfg = self.cfg
        d = cfg.delivery
        resolver = Resolver(list(d.dns_nameservers) or None, d.dns_port, d.dns_timeout.seconds)
        connector = Connector(cfg.hostname, resolver, TlsContexts(cfg.path(d.tls_ca_file) if d.tls_ca_file else None),
                              BrokenTls(d.tls_failure_memory.seconds))
        password = d.smarthost.password.reveal() if d.smarthost and d.smarthost.password else None
        return Scheduler(store=self.store, connector=connector, resolver=resolver, shaping=load_shaping(cfg),
                         config=d, hostname=cfg.hostname, dkim_keys={**self.accounts.dkim_keys(), **self.config_dkim_keys},
                         smarthost_password=password,
                         dsn_policies={domain: c.dsn for domain, c in cfg.sending_domains.items()},
                         node_id=cfg.node_id, return_paths=self._return_paths(cfg))

    def _return_paths(self, cfg: Config) -> ReturnPaths:
        """Each delivery's MAIL FROM (``outbound.returnpath``): the sending domains' policies; the domains are the
        directory's as it is now (API domains included)."""
        return ReturnPaths(self.return_path_key, {domain: c.return_path for domain, c in cfg.sending_domains.items()},
                           smarthost=cfg.delivery.smarthost is not None,
                           is_sending_domain=lambda domain: self.ingress is not None
                           and domain in self.ingress.directory.sending_domains)

    def _build_expander(self, wake):
        """Mailing-list expansions (outbound.lists): copies per member, their unsubscribe links served by the API."""
        from mtad.base import keys
        from mtad.mail import listlinks
        from mtad.outbound.lists import Expander
        cfg = self.cfg
        key = keys.derive(self.signing_key or "mtad", listlinks.PURPOSE)
        base = api_base_url(cfg, self.api_address)
        email_key = keys.derive(self.signing_key, unsubaddr.PURPOSE)

        def unsubscribe_address(list_id: int, queue_id: str, address: str, domain: str) -> str:
            if domain not in self.ingress.directory.sending_domains or list_id >= 10 ** 9:  # not taken at MX
                return ""
            return unsubaddr.address(email_key, queue_id, address, domain, unsubaddr.LIST, list_id)
        return Expander(store=self.store, unsubscribe_url=lambda list_id, address: listlinks.url(base, key, list_id,
                                                                                               address),
                        unsubscribe_address=unsubscribe_address, wake=wake, srs_key=self.signing_key.encode() if cfg.routing.srs else None,
                        node_id=cfg.node_id)

    def _build_dispatcher(self, wake):
        """InboxFirst campaigns' dispatch (outbound.dispatch): paced copies per segment member."""
        from mtad.base import keys
        from mtad.mail import listlinks
        from mtad.outbound.dispatch import Dispatcher
        key = keys.derive(self.signing_key or "mtad", listlinks.PURPOSE)
        base = api_base_url(self.cfg, self.api_address)
        return Dispatcher(store=self.store, unsubscribe_url=lambda list_id, address: listlinks.url(base, key, list_id,
                                                                                                 address),
                          wake=wake, node_id=self.cfg.node_id)

    # --- run -------------------------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        # Before start(): a SIGHUP arriving once the listeners are up must reload, never kill (its default action).
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            await self.start()
        except BaseException:
            # A failed start (a listener's address in use...) may leave background writes queued: let the store
            # finish them while the loop still runs, so its writer never answers into a closed loop.
            for task in self._background:
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)
            await self.store.stop_changes()
            await asyncio.to_thread(self.store.close)
            raise
        self._started = True
        sdnotify.notify("READY=1\nSTATUS=accepting mail")
        gc.freeze()  # what start built lives as long as the process: the cyclic GC's full passes skip it
        gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])
        gc.enable()  # off while ``mtad run`` imported and started (mtad.cli.cmd_run)
        if self._reload_pending:
            self.reload()
        await self._stop.wait()
        await self.stop()

    def reload(self) -> None:
        if not self._started:  # SIGHUP during start-up: applied once start() is done
            self._reload_pending = True
            return
        if self.config_path is None:
            log.info("SIGHUP: no config file to reload (embedded default)")
            return
        try:
            cfg = config_mod.load(self.config_path)
            check_config_routes(cfg.routing)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        if cfg.listeners != self.cfg.listeners or cfg.store_path != self.cfg.store_path or cfg.store != self.cfg.store:
            log.warning("reload: listener and store changes need a restart; applying the rest")
        self.cfg = cfg
        self._reload_tls(cfg)
        self._reload_dkim_keys(cfg)
        self._reload_api_keys(cfg)
        self.reports.configure(cfg.feedback.addresses, cfg.routing.store_retention.seconds)
        if self.scheduler is not None:
            self.scheduler.return_paths = self._return_paths(cfg)
        if self.ingress is not None:
            self.ingress.reload(limits=cfg.limits, directory=self.directory(cfg))
            self.verifier.configure(cfg.authentication, cfg.hostname)
            self._apply_spam(cfg)
            self._background.append(asyncio.get_running_loop().create_task(self._reload_routes(cfg)))
        log.info("configuration reloaded from %s", self.config_path)
        sdnotify.notify("STATUS=configuration reloaded")
        self._background.append(asyncio.get_running_loop().create_task(self._sync_webhooks(cfg)))

    def _reload_tls(self, cfg: Config) -> None:
        """The certificate and key from disk (renewed by certbot) for new TLS sessions; a file that does
        not load keeps the certificate being served (one error line)."""
        if self.server_tls is None:
            return
        cert, key = tls_files(cfg)
        try:
            self.server_tls.reload(cert, key)
        except (OSError, ssl.SSLError) as exc:
            log.error("reload: TLS certificate not changed, still serving the previous one: cannot load %s / %s: %s",
                      cert, key, exc)
            return
        log.info("reload: TLS certificate loaded from %s", cert)

    def _reload_dkim_keys(self, cfg: Config) -> None:
        """DKIM keys from the config's key files; if one does not load, all keep signing with the previous keys."""
        if self.scheduler is None:
            return
        try:
            keys = load_dkim_keys(cfg)
        except ConfigError as exc:
            log.error("reload: DKIM keys not changed, still signing with the previous ones: %s", exc)
            return
        self.config_dkim_keys = keys
        self.scheduler.dkim_keys = {**self.accounts.dkim_keys(), **keys}

    def _reload_api_keys(self, cfg: Config) -> None:
        """The API keys of the config (or the state folder's) for the next requests."""
        if getattr(self, "api_context", None) is None:
            return
        try:
            self.api_keys = api_keys(cfg)[0]
        except OSError as exc:
            log.error("reload: API keys not changed: %s", exc)

    async def _reload_routes(self, cfg: Config) -> None:
        try:
            await self.routing.replace_async(config_routes(cfg))
        except Exception as exc:  # noqa: BLE001 - a bad route keeps the old table
            log.error("reload: routes not changed: %s", exc)

    async def _sync_webhooks(self, cfg: Config) -> None:
        try:
            await self.store.sync_webhooks(cfg.webhooks, time.time())
        except Exception:  # noqa: BLE001 - keep the previous webhooks
            log.exception("reload: webhooks not changed")

    async def stop(self) -> None:
        sdnotify.notify("STOPPING=1\nSTATUS=finishing sessions")
        log.info("stopping: no new connections; finishing sessions in DATA")
        for server in self.servers:
            server.close()
        await self.sessions.shutdown(self.shutdown_grace)
        if self.scheduler is not None:
            await self.scheduler.stop()
        await self.expander.stop()
        await self.dispatcher.stop()
        await self.forward_loop.stop()
        await self.forwarder.close()
        await self.verifier.close()
        await self.store_loop.stop()
        await self.http.close()
        if getattr(self, "webhook_loop", None) is not None:
            await self.webhook_loop.stop()
            await self.webhook_http.close()
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        if getattr(self, "api_runner", None) is not None:
            await self.api_runner.cleanup()
        if getattr(self, "tracking_runner", None) is not None:
            await self.tracking_runner.cleanup()
        for task in self._background:
            task.cancel()
        if self._background:
            await asyncio.wait(self._background, timeout=5)
        for server in self.servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 1)
            except asyncio.TimeoutError:
                pass
        await self.store.stop_changes()
        await asyncio.to_thread(self.store.close)
        ports.remove(self.cfg.state_path)
        log.info("stopped")


def run(cfg: Config, config_path: Path | None = None) -> int:
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    app = App(cfg, config_path)
    try:
        runner(app.run())
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return 2
    except (OSError, StoreError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0
