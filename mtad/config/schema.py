"""mtad's configuration: the YAML schema as frozen dataclasses, its defaults, and loading.

``load(path)`` reads one YAML file strictly (unknown keys and bad values are ``ConfigError``s naming the
key path); ``embedded_default(state_dir)`` is the configuration used when no file is given. Every
default lives here, once. docs/configuration.md is the reference for users.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from mtad.config.load import Secret, build, dump, parse_yaml
from mtad.base.errors import ConfigError
from mtad.base.rates import Duration, Rate, Size

Role = Literal["mx", "submission"]
TlsMode = Literal["starttls", "implicit", "none"]


class HostPort:
    """``address`` as HOST:PORT (IPv6 in brackets): its ``host`` and ``port``."""

    address: str

    @property
    def host(self) -> str:
        return self.address.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])


def check_address(address: str, path: str, *, ip_only: bool) -> None:
    """ConfigError unless ``address`` is HOST:PORT with a port 0-65535 (0: the kernel picks one); with
    ``ip_only`` HOST must be an IP address or ``localhost``."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536 or not host:
        raise ConfigError(path, f"expected HOST:PORT, got {address!r}")
    if ip_only:
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            if host != "localhost":
                raise ConfigError(path, f"expected an IP address, got {host!r}") from None


@dataclass(frozen=True)
class ListenerConfig(HostPort):
    """One SMTP listener. ``mx`` takes mail for receiving domains (and authenticated relay after TLS);
    ``submission`` requires AUTH before MAIL."""

    address: str
    role: Role
    tls: TlsMode = "starttls"
    name: str = ""

    def __post_build__(self, path: str) -> None:
        check_address(self.address, f"{path}.address", ip_only=True)


@dataclass(frozen=True)
class TlsConfig:
    """Certificate and key (PEM). If both are absent a self-signed pair is made in the state folder."""

    cert: str | None = None
    key: str | None = None

    def __post_build__(self, path: str) -> None:
        if (self.cert is None) != (self.key is None):
            raise ConfigError(path, "cert and key must be given together")


@dataclass(frozen=True)
class LimitsConfig:
    """Protocol limits. Defaults follow Postfix where it has an equivalent (named in docs)."""

    max_message_size: Size = Size(25_000_000)  # message_size_limit; Mailgun's 25 MB
    max_recipients: int = 1000  # smtpd_recipient_limit
    max_line_length: int = 998  # RFC 5322 2.1.1, for DATA lines (CRLF excluded)
    max_command_length: int = 2048  # RFC 5321 512 + extension parameters
    max_header_count: int = 1000
    max_header_size: Size = Size(1_000_000)  # the whole header block
    max_mime_depth: int = 20
    command_timeout: Duration = Duration(300)  # RFC 5321 4.5.3.2.7
    data_timeout: Duration = Duration(600)  # whole DATA transfer
    session_lifetime: Duration = Duration(1800)  # whole connection, whatever the client does
    max_connections: int = 1000
    max_connections_per_ip: int = 50  # smtpd_client_connection_count_limit
    max_auth_failures: int = 3  # then 421 and close
    auth_failure_delay: Duration = Duration(1)  # before answering a failed AUTH (tarpit)
    # across connections (Postfix anvil's smtpd_client_auth_rate_limit): failures within auth_failure_window,
    # then AUTH from that client address (IPv6: its /64) or for that login is refused 454 for auth_lockout
    max_auth_failures_per_client: int = 10  # 0: no limit
    max_auth_failures_per_account: int = 20  # 0: no limit
    auth_failure_window: Duration = Duration(600)
    auth_lockout: Duration = Duration(600)
    max_errors: int = 20  # smtpd_hard_error_limit: bad commands before 421
    max_inflight_bytes: Size = Size(512_000_000)  # message bytes held in memory, all sessions
    bare_newline: Literal["normalize", "reject"] = "normalize"  # Postfix smtpd_forbid_bare_newline

    def __post_build__(self, path: str) -> None:
        for name in ("max_recipients", "max_line_length", "max_connections", "max_connections_per_ip",
                     "max_header_count", "max_mime_depth", "max_command_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{path}.{name}", "must be at least 1")
        for name in ("max_auth_failures_per_client", "max_auth_failures_per_account"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{path}.{name}", "must be 0 (no limit) or more")


@dataclass(frozen=True)
class UserConfig:
    """An SMTP user of a sending domain. The login is ``name@domain``."""

    password_hash: Secret
    send_as: tuple[str, ...] = ()  # domains this user may send as; empty = its own domain

    def __post_build__(self, path: str) -> None:
        if self.password_hash.read and not self.password_hash.reveal().startswith("$scrypt$"):
            raise ConfigError(f"{path}.password_hash", "expected a hash from `mtad passwd` ($scrypt$...)")


@dataclass(frozen=True)
class DkimKeyConfig:
    selector: str
    key_file: str  # PEM private key (RSA or Ed25519); relative paths are relative to the config file


@dataclass(frozen=True)
class SendingDomainConfig:
    users: dict[str, UserConfig] = field(default_factory=dict)
    dkim: tuple[DkimKeyConfig, ...] = ()
    dkim_sign: bool = True
    dsn: Literal["smtp", "always", "never"] = "smtp"  # bounce messages to the sender: for SMTP submissions only
    # envelope sender at delivery: verp = bounce+TOKEN@domain (late bounces come back to mtad), sender = the
    # message's own; auto = verp when delivering to MX hosts, sender through a smarthost (mail.returnpath)
    return_path: Literal["auto", "verp", "sender"] = "auto"


@dataclass(frozen=True)
class FeedbackConfig:
    """Feedback loops: addresses the MX listener takes ARF reports (RFC 5965) at, whatever their domain."""

    addresses: tuple[str, ...] = ()

    def __post_build__(self, path: str) -> None:
        for i, address in enumerate(self.addresses):
            local, at, domain = address.rpartition("@")
            if not at or not local or not domain or any(c.isspace() or c in "<>," for c in address):
                raise ConfigError(f"{path}.addresses[{i}]", f"expected an address like fbl@example.com, got {address!r}")


@dataclass(frozen=True)
class StoreConfig:
    backend: Literal["sqlite", "postgresql"] = "sqlite"  # postgresql: several nodes on one database (docs/scaling.md)
    path: str = "mtad.sqlite3"  # relative to state_dir (sqlite)
    dsn: Secret | None = None  # postgresql://USER:PASSWORD@HOST:PORT/DATABASE (postgresql only)
    pool_size: int = 10  # connections to PostgreSQL per node
    statement_timeout: Duration = Duration(30)  # PostgreSQL cancels a statement running longer
    max_group: int = 256  # writes committed in one transaction at most
    event_retention: Duration = Duration(30 * 86400)
    claim_lease: Duration = Duration(300)  # a claim on a work row holds this long unless its holder renews it

    def __post_build__(self, path: str) -> None:
        if self.claim_lease.seconds < 3:
            raise ConfigError(f"{path}.claim_lease", "must be at least 3s (it is renewed every third of it)")
        if self.backend == "postgresql":
            if self.dsn is None:
                raise ConfigError(f"{path}.dsn", "required with backend: postgresql "
                                                 "(postgresql://USER:PASSWORD@HOST:PORT/DATABASE)")
            if self.dsn.read and not _is_postgres_uri(self.dsn.reveal()):
                raise ConfigError(f"{path}.dsn", "expected a postgresql://USER:PASSWORD@HOST:PORT/DATABASE URI"
                                                 f"{'' if self.dsn.source == 'inline' else f' (from {self.dsn.source})'}")
        elif self.dsn is not None:
            raise ConfigError(f"{path}.dsn", "only for backend: postgresql (the sqlite store is the file at path)")
        if not 1 <= self.pool_size <= 1000:
            raise ConfigError(f"{path}.pool_size", f"must be 1 to 1000, got {self.pool_size}")
        if self.statement_timeout.seconds <= 0:
            raise ConfigError(f"{path}.statement_timeout", "must be more than 0s")


def _is_postgres_uri(dsn: str) -> bool:
    """A libpq connection URI (the form the driver takes), not the ``key=value`` form."""
    return dsn.startswith(("postgresql://", "postgres://"))


_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class RetryConfig:
    """When deferred mail is tried again: the n-th retry waits ``schedule[n-1]`` (the last repeats),
    until ``max_age`` after acceptance, then it fails permanently (reason ``old``)."""

    schedule: tuple[Duration, ...] = (Duration(300), Duration(600), Duration(1200), Duration(2400),
                                      Duration(3600), Duration(7200), Duration(14400))
    max_age: Duration = Duration(5 * 86400)  # Postfix maximal_queue_lifetime

    def __post_build__(self, path: str) -> None:
        if not self.schedule:
            raise ConfigError(f"{path}.schedule", "give at least one delay")

    def delay(self, attempt_no: int) -> float:
        return self.schedule[min(max(attempt_no, 1), len(self.schedule)) - 1].seconds


@dataclass(frozen=True)
class SmarthostConfig:
    """Send everything through another relay instead of looking up MX records.

    The relay is one destination the operator chose, shaped on its own rather than by the provider shaping
    (every recipient domain shares these limits): connections as Postfix's relayhost concurrency, no message
    rate unless set."""

    host: str
    port: int = 587
    tls: Literal["starttls", "implicit", "none"] = "starttls"
    verify: bool = True
    username: str | None = None
    password: Secret | None = None
    max_connections: int = 20  # Postfix default_destination_concurrency_limit
    max_message_rate: Rate | None = None  # e.g. 500/s; none: unlimited

    def __post_build__(self, path: str) -> None:
        if self.max_connections < 1:
            raise ConfigError(f"{path}.max_connections", "must be at least 1")


@dataclass(frozen=True)
class DeliveryConfig:
    """The outbound stage. Provider shaping lives in ``shaping_file`` (default: the shipped providers.yaml)."""

    enabled: bool = True
    port: int = 25
    dns_nameservers: tuple[str, ...] = ()  # empty: the system resolver
    dns_port: int = 53
    dns_timeout: Duration = Duration(5)
    tls_ca_file: str | None = None  # CAs for verifying MX certificates (default: the system's)
    tls_failure_memory: Duration = Duration(3600)  # plaintext to a host whose TLS broke, this long
    smarthost: SmarthostConfig | None = None
    retry: RetryConfig = RetryConfig()
    shaping_file: str | None = None
    max_inflight: int = 1000  # deliveries claimed from the store at once
    poll_interval: Duration = Duration(1)
    dsn: bool = True  # bounce messages on permanent failure, as each sending domain's ``dsn`` policy says
    message_retention: Duration = Duration(3 * 86400)  # finished messages kept for inspection
    dkim_workers: int = 2  # DKIM signing processes, started on first use; 0: sign in the main process

    def __post_build__(self, path: str) -> None:
        if not 0 <= self.dkim_workers <= 64:
            raise ConfigError(f"{path}.dkim_workers", "must be between 0 and 64")


@dataclass(frozen=True)
class RouteConfig:
    """One route, as in Mailgun's API: ``expression`` filters and ``actions``; lower priority runs first."""

    expression: str
    actions: tuple[str, ...]
    id: str = ""
    priority: int = 0
    description: str = ""


_ROUTE_SCHEDULE = tuple(Duration(s) for s in (600, 600, 900, 1800, 3600, 7200, 14400))


@dataclass(frozen=True)
class RoutingConfig:
    """Inbound routing: the routes, and how forwards to URLs are made."""

    routes: tuple[RouteConfig, ...] = ()
    retry_schedule: tuple[Duration, ...] = _ROUTE_SCHEDULE  # Mailgun's: about 8 hours in all
    timeout: Duration = Duration(30)  # one POST, connect to last byte
    max_concurrent: int = 50  # POSTs in flight, all applications together
    allowed_networks: tuple[str, ...] = ()  # private/loopback networks URLs may reach (public always may)
    allow_backtracking_regex: bool = False  # allow patterns RE2 cannot run, with a time budget
    srs: bool = True  # rewrite the envelope sender of forwards to addresses
    store_retention: Duration = Duration(3 * 86400)  # how long store() keeps a message (Mailgun: 3 days)
    form_workers: int = 1  # worker processes that build forward POST bodies (0: in mtad's own process)

    def __post_build__(self, path: str) -> None:
        for i, net in enumerate(self.allowed_networks):
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ConfigError(f"{path}.allowed_networks[{i}]", f"expected a network like 10.0.0.0/8, got {net!r}") from None
        if not self.retry_schedule:
            raise ConfigError(f"{path}.retry_schedule", "give at least one delay")
        if not 0 <= self.form_workers <= 64:
            raise ConfigError(f"{path}.form_workers", "expected 0 to 64")
        # The routes themselves are compiled by the inbound layer (``inbound.routing.check_config_routes``, called
        # by ``mtad check-config``, at start and at reload): the config keeps them as data.


AuthAction = Literal["reject", "quarantine", "ignore"]
_AUTHSERV_ID = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


@dataclass(frozen=True)
class AuthPolicyConfig:
    """What is done with an inbound message of a receiving domain when authentication fails (issue 15):
    ``reject`` (550 5.7.1 at the end of DATA), ``quarantine`` (accepted, tagged ``X-Mailgun-Auth-Quarantine``)
    or ``ignore`` (accepted, verdicts recorded only). The strictest action of the conditions met applies."""

    dmarc_reject: AuthAction = "reject"  # DMARC fail, the From domain asks p=reject
    dmarc_quarantine: AuthAction = "quarantine"  # DMARC fail, the From domain asks p=quarantine
    spf_fail: AuthAction = "ignore"  # SPF fail (-all matched), whatever DMARC says
    no_auth: AuthAction = "ignore"  # neither SPF nor any DKIM signature passed


@dataclass(frozen=True)
class AuthenticationConfig:
    """Inbound authentication verdicts (SPF, DKIM, DMARC, ARC) on every unauthenticated message received on an MX
    listener, before the route runs; DNS through the delivery resolver (``delivery.dns_*``)."""

    enabled: bool = True
    authserv_id: str = ""  # the Authentication-Results authserv-id; empty: hostname
    max_concurrent: int = 200  # messages checked at once; more wait their turn
    timeout: Duration = Duration(10)  # for all the checks of one message; past it the unfinished are temperror
    max_signatures: int = 5  # DKIM signatures verified per message (the first ones)
    workers: int = 1  # DKIM/ARC verification processes, started on first use; 0: in the main process
    policy: AuthPolicyConfig = AuthPolicyConfig()  # every receiving domain's, unless in domains
    domains: dict[str, AuthPolicyConfig] = field(default_factory=dict)  # receiving domain -> its own policy

    def __post_build__(self, path: str) -> None:
        if self.authserv_id and not _AUTHSERV_ID.fullmatch(self.authserv_id):
            raise ConfigError(f"{path}.authserv_id", "expected a host name like mx.example.com")
        if not 1 <= self.max_concurrent <= 100_000:
            raise ConfigError(f"{path}.max_concurrent", "must be 1 to 100000")
        if not 1 <= self.max_signatures <= 50:
            raise ConfigError(f"{path}.max_signatures", "must be 1 to 50")
        if not 0 <= self.workers <= 64:
            raise ConfigError(f"{path}.workers", "must be between 0 and 64")
        if self.timeout.seconds <= 0:
            raise ConfigError(f"{path}.timeout", "must be more than 0s")
        for domain in self.domains:
            if domain != domain.lower() or "@" in domain:
                raise ConfigError(f"{path}.domains.{domain}", "domain names must be lower case, without @")


WEBHOOK_IDS = ("accepted", "delivered", "opened", "clicked", "unsubscribed", "complained", "permanent_fail",
               "temporary_fail")
# The seed manual's schedule: retried seven times, three times every 10 minutes, then four times every 30.
_WEBHOOK_SCHEDULE = tuple(Duration(s) for s in (600, 600, 600, 1800, 1800, 1800, 1800))


@dataclass(frozen=True)
class WebhookConfig:
    """One webhook of a domain: up to 3 URLs, all POSTed in one format (``json``, or Mailgun's legacy form)."""

    urls: tuple[str, ...]
    format: Literal["json", "legacy"] = "json"

    def __post_build__(self, path: str) -> None:
        from mtad.net.urls import check_url
        if not 1 <= len(self.urls) <= 3:
            raise ConfigError(f"{path}.urls", "give one to three URLs")
        for i, url in enumerate(self.urls):
            problem = check_url(url)
            if problem:
                raise ConfigError(f"{path}.urls[{i}]", problem)


@dataclass(frozen=True)
class WebhooksConfig:
    """Event webhooks: per-domain URLs from the config (more by API), and how they are POSTed and retried."""

    domains: dict[str, dict[str, WebhookConfig]] = field(default_factory=dict)  # domain -> webhook id -> urls
    retry_schedule: tuple[Duration, ...] = _WEBHOOK_SCHEDULE  # delays after each failed attempt
    timeout: Duration = Duration(10)  # one POST, connect to last byte
    max_concurrent: int = 100  # POSTs in flight, all receivers together
    max_per_url: int = 4  # POSTs in flight to one URL: a slow receiver holds this many slots at most

    def __post_build__(self, path: str) -> None:
        for domain, hooks in self.domains.items():
            for hook_id in hooks:
                if hook_id not in WEBHOOK_IDS:
                    raise ConfigError(f"{path}.domains.{domain}.{hook_id}",
                                      f"unknown webhook id (known: {', '.join(WEBHOOK_IDS)})")
        if self.max_concurrent < 1 or self.max_per_url < 1:
            raise ConfigError(path, "max_concurrent and max_per_url must be at least 1")


@dataclass(frozen=True)
class ApiKeyConfig:
    """An HTTP API key, stored as ``sha256:<hex>`` of the key (``mtad apikey`` makes one)."""

    key_hash: Secret
    domains: tuple[str, ...] = ()  # empty: every domain
    description: str = ""

    def __post_build__(self, path: str) -> None:
        value = self.key_hash.reveal()
        if self.key_hash.read and (not value.startswith("sha256:") or len(value) != 71):
            raise ConfigError(f"{path}.key_hash", "expected sha256:<64 hex digits> (from `mtad apikey`)")


@dataclass(frozen=True)
class ApiConfig(HostPort):
    """The Mailgun-compatible HTTP API (one aiohttp server)."""

    enabled: bool = True
    address: str = "127.0.0.1:2580"
    tls: bool = False  # serve HTTPS with the tls certificate
    keys: tuple[ApiKeyConfig, ...] = ()  # none: a key is made in the state folder and printed at start
    max_body_size: Size = Size(30_000_000)  # 25 MB messages plus form overhead
    max_auth_failures: int = 10  # per client address per minute, then 429
    public_url: str = ""  # base URL used in paging links and message URLs (default: http(s)://address)
    max_campaigns: int = 1000  # campaigns per domain (Mailgun's Pro plan limit); creating more is refused (400)

    def __post_build__(self, path: str) -> None:
        check_address(self.address, f"{path}.address", ip_only=False)
        if self.max_campaigns < 1:
            raise ConfigError(f"{path}.max_campaigns", "must be at least 1")


# Machine fetchers of opens and clicks (``events.engagement``): policy as data. Apple Mail Privacy Protection loads
# images through Apple's proxies (Apple's own 17.0.0.0/8 network) with the bare User-Agent "Mozilla/5.0"; link
# scanners announce themselves (or click within seconds of delivery, ``scanner_window``).
_MACHINE_AGENTS = (r"(?i)bot\b", r"(?i)spider", r"(?i)crawler", r"(?i)scanner", r"(?i)barracuda", r"(?i)proofpoint",
                   r"(?i)mimecast", r"(?i)safelinks", r"(?i)urldefense", r"(?i)python-requests", r"(?i)^curl/",
                   r"(?i)^wget/", r"(?i)headlesschrome", r"(?i)phantomjs")


@dataclass(frozen=True)
class TrackingDefaults:
    """Tracking of domains whose settings were never set through ``/v3/domains/{d}/tracking`` (Mailgun: off)."""

    open: bool = False
    click: bool | Literal["yes", "no", "htmlonly"] = False  # YAML reads yes/no as booleans
    unsubscribe: bool = False

    @property
    def click_mode(self) -> str:
        """``yes``, ``no`` or ``htmlonly``."""
        if isinstance(self.click, bool):
            return "yes" if self.click else "no"
        return self.click


@dataclass(frozen=True)
class TrackingConfig:
    """Open and click tracking and unsubscribe links: where their URLs point, where they are served."""

    base_url: str = ""  # the tracking URLs' base (https://trk.example.com); "": the API's public URL
    listen: str = ""  # HOST:PORT of a listener of its own; "": served on the API listener
    tls: bool = False  # serve HTTPS on ``listen`` with the tls certificate
    geoip_database: str = ""  # a MaxMind-format .mmdb (GeoLite2-City or -Country) for events' geolocation
    defaults: TrackingDefaults = TrackingDefaults()
    retention: Duration = Duration(90 * 86400)  # tracking URLs keep working this long after sending
    machine_networks: tuple[str, ...] = ("17.0.0.0/8",)  # image fetchers flagged as Apple MPP (with the bare UA)
    machine_user_agents: tuple[str, ...] = _MACHINE_AGENTS  # regular expressions of link scanners' User-Agents
    scanner_window: Duration = Duration(10)  # a click this soon after delivery is a scanner's
    # reverse proxies in front of the tracking endpoints: only from these is X-Forwarded-For read (net.forwarded)
    trusted_proxies: tuple[str, ...] = ()

    def __post_build__(self, path: str) -> None:
        if self.base_url and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", self.base_url):
            raise ConfigError(f"{path}.base_url", f"expected http(s)://HOST[/PATH], got {self.base_url!r}")
        if self.listen:
            check_address(self.listen, f"{path}.listen", ip_only=False)
        for i, net in enumerate(self.machine_networks):
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ConfigError(f"{path}.machine_networks[{i}]", f"not a network: {net!r}") from None
        for i, net in enumerate(self.trusted_proxies):
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ConfigError(f"{path}.trusted_proxies[{i}]", f"not a network: {net!r}") from None
        for i, pattern in enumerate(self.machine_user_agents):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"{path}.machine_user_agents[{i}]", f"not a regular expression: {exc}") from None


@dataclass(frozen=True)
class UiConfig:
    """The web control panel (mtad/ui) at /ui/ on the API listener: sign-in, sessions, sign-in failure limits."""

    enabled: bool = True
    idle_timeout: Duration = Duration(1800)  # a session unused this long is signed out
    session_lifetime: Duration = Duration(43200)  # a session ends this long after sign-in, used or not
    # failed sign-ins within sign_in_failure_window, then that client address or login is refused for sign_in_lockout
    max_sign_in_failures_per_client: int = 10  # 0: no limit
    max_sign_in_failures_per_account: int = 5  # 0: no limit
    sign_in_failure_window: Duration = Duration(600)
    sign_in_lockout: Duration = Duration(600)

    def __post_build__(self, path: str) -> None:
        if self.idle_timeout.seconds < 1 or self.session_lifetime.seconds < 1:
            raise ConfigError(path, "idle_timeout and session_lifetime must be at least 1s")
        for name in ("max_sign_in_failures_per_client", "max_sign_in_failures_per_account"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{path}.{name}", "must be 0 (no limit) or more")


@dataclass(frozen=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


SpamAction = Literal["disabled", "tag", "block"]
SpamOnError = Literal["accept", "tempfail"]


@dataclass(frozen=True)
class SpamdConfig(HostPort):
    """SpamAssassin's ``spamd``, asked over its protocol (mtad.inbound.spam): at ``address`` (HOST:PORT) or at the
    Unix ``socket`` (it wins when given). A message larger than ``max_size`` is not scanned (spamc's 500 KB
    default); at most ``max_concurrent`` scans at once (spamd's own default of 5 children, doubled); a scan not
    answered within ``timeout`` (waiting for a slot included) is an error: the domain's ``on_error`` applies."""

    address: str = "127.0.0.1:783"
    socket: str = ""
    timeout: Duration = Duration(10)
    max_size: Size = Size(500_000)
    max_concurrent: int = 10

    def __post_build__(self, path: str) -> None:
        check_address(self.address, f"{path}.address", ip_only=False)
        if self.timeout.seconds <= 0:
            raise ConfigError(f"{path}.timeout", "must be more than 0s")
        if not 1 <= self.max_concurrent <= 1000:
            raise ConfigError(f"{path}.max_concurrent", f"must be 1 to 1000, got {self.max_concurrent}")


@dataclass(frozen=True)
class SpamDomainConfig:
    """The spam policy of one receiving domain of this file (API domains keep theirs in the store)."""

    action: SpamAction = "disabled"
    threshold: float | None = None  # none: spam.threshold
    on_error: SpamOnError | None = None  # none: spam.on_error


@dataclass(frozen=True)
class SpamConfig:
    """Spam filtering of mail received on MX listeners (docs/configuration.md, "spam"): ``spamd`` is where to
    ask; ``domains`` the policy of this file's receiving domains; ``threshold`` and ``on_error`` the defaults of
    every domain (the seed manual's 5.0)."""

    spamd: SpamdConfig | None = None  # none: nothing is scanned (domains that ask for it follow on_error)
    threshold: float = 5.0
    on_error: SpamOnError = "accept"  # spamd down or slow: accept untagged | tempfail (451 4.7.1)
    domains: dict[str, SpamDomainConfig] = field(default_factory=dict)


def _default_listeners() -> tuple[ListenerConfig, ...]:
    return (
        ListenerConfig("127.0.0.1:2525", "mx", "starttls", "mx"),
        ListenerConfig("127.0.0.1:2587", "submission", "starttls", "submission"),
        ListenerConfig("127.0.0.1:2465", "submission", "implicit", "submissions"),
    )


@dataclass(frozen=True)
class Config:
    hostname: str = field(default_factory=socket.getfqdn)
    node_id: str = field(default_factory=socket.gethostname)  # this node among several on one database
    state_dir: str = "./mtad-state"
    listeners: tuple[ListenerConfig, ...] = field(default_factory=_default_listeners)
    tls: TlsConfig = TlsConfig()
    limits: LimitsConfig = LimitsConfig()
    sending_domains: dict[str, SendingDomainConfig] = field(default_factory=dict)
    receiving_domains: tuple[str, ...] = ()
    store: StoreConfig = StoreConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    routing: RoutingConfig = RoutingConfig()
    api: ApiConfig = ApiConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    authentication: AuthenticationConfig = AuthenticationConfig()  # inbound SPF/DKIM/DMARC/ARC (issue 15)
    signing_key: Secret | None = None  # HMAC key of route POSTs and webhooks; made in the state folder if absent
    feedback: FeedbackConfig = FeedbackConfig()  # where feedback loops send complaints (ARF)
    log: LogConfig = LogConfig()
    spam: SpamConfig = SpamConfig()  # SpamAssassin's spamd for receiving domains (mtad.inbound.spam)
    ui: UiConfig = UiConfig()  # the web control panel (issue 17)
    tracking: TrackingConfig = TrackingConfig()
    base_dir: str = field(default=".", metadata={"internal": True})  # where relative paths start

    def __post_build__(self, path: str) -> None:
        if not _NODE_ID.fullmatch(self.node_id):
            raise ConfigError("node_id", f"expected 1 to 64 letters, digits, '.', '_' or '-', got {self.node_id!r}")
        seen: set[str] = set()
        for i, listener in enumerate(self.listeners):
            if listener.address in seen and listener.port != 0:  # port 0: each gets its own free port
                raise ConfigError(f"listeners[{i}].address", f"{listener.address} is used twice")
            seen.add(listener.address)
        for domain, cfg in self.sending_domains.items():
            if domain != domain.lower() or "@" in domain:
                raise ConfigError(f"sending_domains.{domain}", "domain names must be lower case, without @")
            for user in cfg.users:
                if "@" in user:
                    raise ConfigError(f"sending_domains.{domain}.users.{user}",
                                      "give the local part only; the login is local@domain")
        receiving = {d.lower() for d in self.receiving_domains}
        for domain in self.spam.domains:
            if domain not in receiving:
                raise ConfigError(f"spam.domains.{domain}", "not one of receiving_domains (lower case); a domain "
                                                            "created through the API has its spam_action there")

    # --- derived views -------------------------------------------------------------------------
    def path(self, relative: str) -> Path:
        """A path from the config, resolved against the config file's folder."""
        p = Path(relative)
        return p if p.is_absolute() else Path(self.base_dir) / p

    @property
    def state_path(self) -> Path:
        return self.path(self.state_dir)

    @property
    def store_path(self) -> Path:
        p = Path(self.store.path)
        return p if p.is_absolute() else self.state_path / p

    def users(self) -> dict[str, tuple[UserConfig, str]]:
        """login -> (user, its own domain)."""
        return {f"{name}@{domain}": (user, domain)
                for domain, cfg in self.sending_domains.items() for name, user in cfg.users.items()}


def parse(data: object, base_dir: Path) -> Config:
    cfg = build(Config, data, "", base_dir)
    return dataclasses.replace(cfg, base_dir=str(base_dir))


def load(path: str | Path) -> Config:
    """Read and validate a YAML config file; relative paths inside it are relative to its folder."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigError("", f"cannot read {file}: {exc.strerror}") from None
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{file} is not valid YAML: {exc}") from None
    return parse(data, file.resolve().parent)


def effective(cfg: Config) -> str:
    """The effective configuration as YAML, secrets masked (``mtad check-config``).

    Defaults that depend on other values are shown as the daemon applies them: a user's empty ``send_as`` is its
    own domain (directory.py), no ``delivery.shaping_file`` is the shipped providers.yaml (app.load_shaping).
    """
    shown = dataclasses.replace(
        cfg,
        sending_domains={domain: dataclasses.replace(d, users={
            name: dataclasses.replace(user, send_as=user.send_as or (domain,)) for name, user in d.users.items()})
            for domain, d in cfg.sending_domains.items()},
        delivery=dataclasses.replace(cfg.delivery, shaping_file=cfg.delivery.shaping_file
                                     or str(Path(__file__).with_name("providers.yaml"))))
    return yaml.safe_dump(dump(shown), sort_keys=False, default_flow_style=False)
