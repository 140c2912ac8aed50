"""Opens, clicks and unsubscribes as events: who fetched (client-info, geolocation, machine or human) and the
Mailgun-shaped ``opened``/``clicked``/``unsubscribed`` events built from it.

- ``Clients(config)``: ``client_info(user_agent)`` parses a User-Agent with ua-parser (the maintained port of
  uap-core's rules, its Rust matcher ``ua-parser-rs`` when installed) into Mailgun's ``client-info``:
  ``client-type`` (browser, mobile browser, email client, library, robot, unknown), ``client-os``,
  ``device-type`` (desktop, mobile, tablet, unknown), ``client-name``, ``user-agent``; remembered per
  User-Agent (a few thousand distinct ones cover nearly all traffic). ``geolocation(ip)`` reads a MaxMind-format
  database (``tracking.geoip_database``, the ``maxminddb`` reader) into ``{country, region, city}`` (ISO codes
  for country and region, the English city name); ``Unknown`` for each without a database or a match.
- Machine fetchers (``bot``): ``apple`` for Apple Mail Privacy Protection, whose proxies fetch images for the
  user with the bare User-Agent ``Mozilla/5.0`` from Apple's network (``tracking.machine_networks``, 17.0.0.0/8 by
  default); ``scanner`` for a User-Agent matching ``tracking.machine_user_agents`` (security gateways and link
  scanners that name themselves), a ua-parser ``Spider``, or a fetch sooner than ``tracking.scanner_window``
  after the message was sent (scanners click every link at delivery). The event carries it as
  ``client-info.bot`` (empty for a person) and ``flags.is-machine``. A machine's open or click is recorded and
  counted in the totals (stats ``total``, campaign counters, ``opens_total``), but is never the unique one
  (``flags.is-unique`` false, whether or not a person opened first): the unique figures of the stats API, the
  analytics logs' ``unique_opened``/``unique_clicked``, and the campaign reports count people only (as far as
  mtad can tell); consumers of events and webhooks filter on the flag.
- ``engagement_event(kind, tracked, recipient, now, fetch, url=..., events=...)``: the event, built with
  ``shape.base_event`` from the tracked message's stored data (once per message and kind: ``MessageEvents``,
  whose parts the message's events share); ``unique(event)`` its variant for the first open or click of a
  message by a recipient (``flags.is-unique``: counted as ``unique`` in the stats and found by the
  logs API's ``unique_opened``/``unique_clicked``).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
from dataclasses import dataclass
from typing import Any, Mapping

from mtad.base.types import domain_of
from mtad.config.schema import TrackingConfig
from mtad.events import shape
from mtad.store.engagement import TrackedMessage

log = logging.getLogger("mtad.tracking")

UNKNOWN = "Unknown"
BARE_AGENT = "Mozilla/5.0"
# ua-parser families that are mail programs (uap-core names them so), libraries, and image proxies of webmail
EMAIL_CLIENTS = frozenset({"Apple Mail", "Thunderbird", "Outlook", "Windows Live Mail", "Airmail", "Spark", "Mailbird",
                           "Postbox", "Lotus Notes", "Evolution", "K-9 Mail", "Sparrow", "Eudora", "Claws Mail",
                           "GmailImageProxy", "YahooMailProxy", "Outlook-iOS", "Outlook-Android"})
LIBRARIES = frozenset({"curl", "Wget", "Python Requests", "Python-urllib", "aiohttp", "Go-http-client", "Java",
                       "Apache-HttpClient", "okhttp", "libwww-perl", "PHP", "Ruby", "node-fetch", "axios"})
MOBILE_OS = frozenset({"iOS", "Android", "Windows Phone", "BlackBerry OS", "KaiOS", "iPadOS"})
DESKTOP_OS = frozenset({"Windows", "Mac OS X", "Linux", "Ubuntu", "Chrome OS", "Fedora", "Debian", "FreeBSD",
                        "OpenBSD", "macOS"})
TABLETS = re.compile(r"(?i)\b(ipad|tablet|kindle|silk|playbook|nexus (7|9|10))\b")


@dataclass(frozen=True)
class Fetch:
    """One request for a tracking URL: where from and with what."""

    ip: str
    user_agent: str


class Clients:
    """Client information, geolocation and machine detection (see the module doc); one per daemon."""

    def __init__(self, config: TrackingConfig, geoip_path: str | None = None):
        self.config = config
        self._networks = tuple(ipaddress.ip_network(n, strict=False) for n in config.machine_networks)
        self._agents = tuple(re.compile(p) for p in config.machine_user_agents)
        self._geo = None
        if geoip_path:
            import maxminddb
            self._geo = maxminddb.open_database(geoip_path)
        self.client_info = functools.lru_cache(maxsize=8192)(self._client_info)
        self.event_info = functools.lru_cache(maxsize=8192)(self._event_info)
        self.geolocation = functools.lru_cache(maxsize=8192)(self._geolocation)
        self._in_networks = functools.lru_cache(maxsize=8192)(self._in_networks_uncached)

    def close(self) -> None:
        if self._geo is not None:
            self._geo.close()

    def warm(self) -> None:
        """Load ua-parser's rules now (a second or so) rather than at the first open."""
        self._client_info("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36")

    def _client_info(self, user_agent: str) -> Mapping[str, str]:
        import ua_parser
        try:
            parsed = ua_parser.parse(user_agent[:512])
        except Exception:  # noqa: BLE001 - a hostile header is an unknown client, never an error
            parsed = None
        family = parsed.user_agent.family if parsed and parsed.user_agent else ""
        os_family = parsed.os.family if parsed and parsed.os else ""
        device = parsed.device.family if parsed and parsed.device else ""
        if family == "Other":
            family = ""
        if device == "Spider" or self._named_machine(user_agent):
            client_type = "robot"
        elif family in EMAIL_CLIENTS or "mail" in family.lower():
            client_type = "email client"
        elif family in LIBRARIES:
            client_type = "library"
        elif family:
            client_type = "mobile browser" if os_family in MOBILE_OS or "Mobile" in family else "browser"
        else:
            client_type = "unknown"
        if device in ("iPad",) or TABLETS.search(user_agent) or (os_family == "Android" and "Mobile" not in user_agent
                                                                 and family != ""):
            device_type = "tablet"
        elif os_family in MOBILE_OS or device in ("iPhone", "iPod"):
            device_type = "mobile"
        elif os_family in DESKTOP_OS or device == "Mac":
            device_type = "desktop"
        else:
            device_type = "unknown"
        return {"client-type": client_type, "client-os": os_family or UNKNOWN, "device-type": device_type,
                "client-name": family or UNKNOWN, "user-agent": user_agent}

    def _event_info(self, user_agent: str, bot: str) -> Mapping[str, str]:
        """An event's ``client-info``: ``client_info`` and ``bot`` (shared by the events of that User-Agent)."""
        return {**self.client_info(user_agent), "bot": bot}

    def _named_machine(self, user_agent: str) -> bool:
        return any(p.search(user_agent) for p in self._agents)

    def _geolocation(self, ip: str) -> Mapping[str, str]:
        unknown = {"country": UNKNOWN, "region": UNKNOWN, "city": UNKNOWN}
        if self._geo is None:
            return unknown
        try:
            found = self._geo.get(ip)
        except (ValueError, OSError):
            return unknown
        if not isinstance(found, dict):
            return unknown
        country = (found.get("country") or found.get("registered_country") or {}).get("iso_code") or UNKNOWN
        subdivisions = found.get("subdivisions") or [{}]
        region = subdivisions[0].get("iso_code") or UNKNOWN
        city = ((found.get("city") or {}).get("names") or {}).get("en") or UNKNOWN
        return {"country": country, "region": region, "city": city}

    def bot(self, fetch: Fetch, sent_at: float, now: float) -> str:
        """``apple``, ``scanner`` or ``""`` (a person, as far as mtad can tell)."""
        if fetch.user_agent.strip() == BARE_AGENT or self._in_networks(fetch.ip):
            return "apple"
        if self.client_info(fetch.user_agent)["client-type"] == "robot":
            return "scanner"
        if now - sent_at < self.config.scanner_window.seconds:
            return "scanner"
        return ""

    def _in_networks_uncached(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in net for net in self._networks)


class MessageEvents:
    """What every event of one tracked message shows of it (message part, tags, campaigns, user variables,
    storage key), built once per kind with ``shape.base_event`` and shared, read-only, by the events built from it
    (``engagement_event(..., events=)``): a click then costs a dict copy, not a rebuild of the message's parts."""

    __slots__ = ("tracked", "_bases")

    def __init__(self, tracked: TrackedMessage):
        self.tracked = tracked
        self._bases: dict[str, dict[str, Any]] = {}

    def base(self, kind: str) -> dict[str, Any]:
        found = self._bases.get(kind)
        if found is None:
            data = self.tracked.data
            found = self._bases[kind] = shape.base_event(
                kind, timestamp=0.0, recipient="", queue_id=self.tracked.queue_id,
                message=shape.message_part(data.get("headers") or {}, int(data.get("size") or 0),
                                           data.get("attachments") or ()),
                options=data.get("options") or {}, envelope={}, flags={})
        return found


def engagement_event(kind: str, tracked: TrackedMessage, recipient: str, now: float, fetch: Fetch,
                     clients: Clients, *, url: str | None = None, events: MessageEvents | None = None) -> dict[str, Any]:
    """An ``opened``, ``clicked`` or ``unsubscribed`` event of ``recipient`` for the tracked message (``events``:
    its ``MessageEvents``, kept by the caller for the message's next events; the event shares their parts, and
    its ``client-info`` and ``geolocation`` are shared with other events of the same User-Agent and address:
    nobody may change an event's nested values)."""
    data = tracked.data
    options = data.get("options") or {}
    bot = clients.bot(fetch, tracked.created_at, now)
    event = (events if events is not None and events.tracked is tracked else MessageEvents(tracked)).base(kind).copy()
    event["id"] = shape.new_event_id()
    event["timestamp"] = now
    event["recipient"] = recipient
    event["recipient-domain"] = domain_of(recipient)
    event["envelope"] = {"sender": data.get("sender", ""), "targets": recipient, "transport": "smtp"}
    event["flags"] = {"is-authenticated": bool(data.get("authenticated")),
                      "is-test-mode": bool(options.get("test_mode")), "is-routed": False, "is-machine": bool(bot),
                      "is-unique": False}
    event["ip"] = fetch.ip
    event["client-info"] = clients.event_info(fetch.user_agent, bot)
    event["geolocation"] = clients.geolocation(fetch.ip)
    if url is not None:
        event["url"] = url
    return event


def unique(event: Mapping[str, Any]) -> dict[str, Any]:
    """The same event as the first of its kind for its message and recipient."""
    return {**event, "flags": {**event.get("flags", {}), "is-unique": True}}
