"""Domains and SMTP credentials over HTTP, in the shapes of Mailgun's domains API.

- ``GET /v3/domains`` (skip, limit), ``POST /v3/domains`` (name, smtp_password, spam_action, wildcard,
  dkim_key_size 1024|2048, dkim_selector; mtad's ``receiving`` yes|no, default yes),
  ``GET/DELETE /v3/domains/{name}``, ``PUT /v3/domains/{name}/verify``;
- ``PUT /v3/domains/{name}`` (Mailgun's domain update: spam_action, wildcard; mtad's spam_threshold and
  spam_on_error, empty for the config's default): the spam policy mtad.inbound.spam applies at once;
- ``GET/POST/DELETE /v3/domains/{name}/credentials`` (DELETE: every API credential of the domain),
  ``PUT/DELETE /v3/domains/{name}/credentials/{login}``;
- the same domain operations under ``/v4/domains`` (what mailgun.js 14 and the Python SDK's ``domainlist``
  call; Mailgun's v4 answers have the v3 shapes plus fields mtad always answers, e.g.
  ``use_automatic_sender_security``).

A domain created here is a sending domain (and a receiving one unless ``receiving=no``) with its own
DKIM key, generated at creation and kept in the store; it and its credentials take effect at once
(``App.apply_accounts``: directory and the scheduler's DKIM keys), without a restart. Domains and
users of the config file are listed but read-only here (403); API credentials may be added to them.
Passwords are kept as scrypt hashes (never returned).

The DNS records to publish: SPF (``v=spf1 a:HOSTNAME ~all`` at the domain), the DKIM TXT record,
and MX (HOSTNAME, for receiving). ``GET /v3/domains/{name}``, creation and ``verify`` look them up
through the resolver configured for delivery (``delivery.dns_nameservers``) and report each as
``valid``, ``invalid`` (absent or different; ``cached`` shows what was found) or ``unknown`` (the
lookup failed); a domain is ``active`` when its sending records are valid, else ``unverified``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import hashlib
import re
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import dns.exception
from aiohttp import web

from mtad.store import accounts as accounts_mod
from mtad.mail import dkim
from mtad.api import ApiContext, context, error

if TYPE_CHECKING:
    import dns.asyncresolver
from mtad.api.formdata import read_post
from mtad.base.passwords import hash_password

LOCK: web.AppKey[asyncio.Lock] = web.AppKey("domains_lock")
STATES: web.AppKey[dict] = web.AppKey("domain_states")
RESOLVER: web.AppKey[list] = web.AppKey("domains_resolver")
_STARTED = time.time()
_DOMAIN = re.compile(r"^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_LOCAL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}$")
_SELECTOR = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
SPAM_ACTIONS = ("disabled", "tag", "block")


def _date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def _bool(value: Any, name: str, default: bool) -> bool:
    if value is None or value == "":
        return default
    v = str(value).strip().lower()
    if v in ("yes", "true", "1", "on"):
        return True
    if v in ("no", "false", "0", "off"):
        return False
    raise web.HTTPBadRequest(text=f"'{name}' must be yes or no (true or false)")


def _int(value: str | None, name: str, default: int, low: int = 0, high: int = 1000) -> int:
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except ValueError:
        raise web.HTTPBadRequest(text=f"'{name}' must be an integer") from None
    if not low <= n <= high:
        raise web.HTTPBadRequest(text=f"'{name}' must be between {low} and {high}")
    return n


# --- what exists ------------------------------------------------------------------------------------

def _config_domains(ctx: ApiContext) -> dict[str, bool]:
    """Config-file domains -> receiving."""
    cfg = _cfg(ctx)
    names = {d: False for d in cfg.sending_domains}
    for d in cfg.receiving_domains:
        names[d.lower()] = True
    return names


def _cfg(ctx: ApiContext):
    return ctx.running_config()  # it changes on reload


def _config_keys(ctx: ApiContext, name: str) -> list[dkim.DkimKey]:
    """The DKIM keys the config file gives ``name`` (to show their DNS records)."""
    cfg = _cfg(ctx)
    dcfg = cfg.sending_domains.get(name)
    if dcfg is None or not dcfg.dkim_sign:
        return []
    keys = []
    for key in dcfg.dkim:
        try:
            keys.append(dkim.load_key(name, key.selector, cfg.path(key.key_file).read_bytes()))
        except (OSError, ValueError):
            continue  # checked at start; a key file removed since is simply not shown
    return keys


def _accounts(ctx: ApiContext) -> accounts_mod.Accounts:
    return ctx.accounts()


def _spam(ctx: ApiContext, name: str, record: accounts_mod.DomainRecord | None) -> tuple[str, float, str]:
    """(spam_action, threshold, on_error) in force for the domain: its own, else the config's defaults."""
    spam = _cfg(ctx).spam
    if record is not None:
        return (record.spam_action, spam.threshold if record.spam_threshold is None else record.spam_threshold,
                record.spam_on_error or spam.on_error)
    own = spam.domains.get(name)
    if own is None:
        return "disabled", spam.threshold, spam.on_error
    return own.action, spam.threshold if own.threshold is None else own.threshold, own.on_error or spam.on_error


def _domain_json(request: web.Request, name: str, source: str, created: float, receiving: bool,
                 record: accounts_mod.DomainRecord | None) -> dict[str, Any]:
    ctx = context(request)
    selector = record.dkim_selector if record else next((k.selector for k in _config_keys(ctx, name)), "")
    spam_action, spam_threshold, spam_on_error = _spam(ctx, name, record)
    return {
        "id": hashlib.sha1(name.encode()).hexdigest()[:24],
        "name": name,
        "created_at": _date(created),
        "smtp_login": f"postmaster@{name}",
        "spam_action": spam_action,
        "spam_threshold": spam_threshold,  # mtad: the score from which mail is spam (X-Mailgun-Sflag, block)
        "spam_on_error": spam_on_error,  # mtad: accept | tempfail when spamd gives no score
        "wildcard": record.wildcard if record else False,
        "state": request.app[STATES].get(name, "unverified"),
        "type": "custom",
        "is_disabled": False,
        "require_tls": False,
        "skip_verification": False,
        "web_scheme": "https",
        "web_prefix": "email",
        "use_automatic_sender_security": False,
        "receiving": receiving,
        "dkim_selector": selector,
        "source": source,
    }


def _all_domains(request: web.Request) -> list[dict[str, Any]]:
    ctx = context(request)
    items = [_domain_json(request, name, "config", _STARTED, receiving, None)
             for name, receiving in sorted(_config_domains(ctx).items())]
    api = sorted(_accounts(ctx).domains.values(), key=lambda d: d.created_at)
    items += [_domain_json(request, d.name, "api", d.created_at, d.receiving, d) for d in api]
    key = request["api_key"]
    return [d for d in items if key.allows(d["name"])]


def _lookup(request: web.Request, name: str) -> tuple[str, dict[str, Any]] | None:
    """(source, domain JSON) of a domain mtad knows, or None."""
    ctx = context(request)
    config = _config_domains(ctx)
    if name in config:
        return "config", _domain_json(request, name, "config", _STARTED, config[name], None)
    record = _accounts(ctx).domains.get(name)
    if record is not None:
        return "api", _domain_json(request, name, "api", record.created_at, record.receiving, record)
    return None


# --- DNS records --------------------------------------------------------------------------------------

def _resolver(request: web.Request) -> dns.asyncresolver.Resolver:
    holder = request.app[RESOLVER]
    if not holder:
        # here, not at the top: dnspython's resolver (~75 ms of CPU to import) loads at the first use, not at start;
        # it also binds ``dns.resolver``, whose exceptions ``_query`` catches
        import dns.asyncresolver
        import dns.resolver
        d = _cfg(context(request)).delivery
        resolver = dns.asyncresolver.Resolver(configure=not d.dns_nameservers)
        if d.dns_nameservers:
            resolver.nameservers = list(d.dns_nameservers)
        resolver.port = d.dns_port
        resolver.lifetime = d.dns_timeout.seconds
        resolver.timeout = min(resolver.timeout, d.dns_timeout.seconds)
        holder.append(resolver)
    return holder[0]


async def _query(resolver: dns.asyncresolver.Resolver, name: str, rdtype: str) -> list[str] | None:
    """Record texts at ``name`` ([] when none), or None when the lookup failed."""
    try:
        answer = await resolver.resolve(name, rdtype, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException:
        return None
    if rdtype == "TXT":
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
    if rdtype == "MX":
        return [r.exchange.to_text(omit_final_dot=True).lower() for r in answer]
    return [r.to_text() for r in answer]


def _state(found: list[str] | None, ok) -> str:
    if found is None:
        return "unknown"
    return "valid" if any(ok(v) for v in found) else "invalid"


def _dkim_value(value: str) -> str:
    m = re.search(r"(?:^|;)\s*p=([^;]*)", value)
    return re.sub(r"\s+", "", m.group(1)) if m else ""


async def dns_records(request: web.Request, name: str, receiving: bool, keys: list[dkim.DkimKey]
                      ) -> tuple[list[dict], list[dict]]:
    """(sending_dns_records, receiving_dns_records) with each one's state as the resolver sees it."""
    hostname = context(request).ingress.hostname.lower()
    resolver = _resolver(request)
    spf = f"v=spf1 a:{hostname} ~all"
    dkim_records = [dkim.dns_record(k) for k in keys]
    lookups = [_query(resolver, name, "TXT")] + [_query(resolver, n, "TXT") for n, _ in dkim_records]
    if receiving:
        lookups.append(_query(resolver, name, "MX"))
    cname = await _tracking_cname(request, name)  # the domain's own tracking host, a CNAME to mtad's
    if cname is not None:
        lookups.append(_query(resolver, cname[0], "CNAME"))
    results = await asyncio.gather(*lookups)
    if cname is not None:
        cname_found = results.pop()

    def spf_ok(v: str) -> bool:
        tokens = v.lower().split()
        return bool(tokens) and tokens[0] == "v=spf1" and any(t.lstrip("+") in (f"a:{hostname}", f"include:{hostname}")
                                                              for t in tokens[1:])
    spf_found = [v for v in results[0] or [] if v.lower().startswith("v=spf1")] if results[0] is not None else None
    sending = [{"record_type": "TXT", "name": name, "value": spf, "valid": _state(results[0], spf_ok),
                "cached": spf_found or []}]
    for (rname, value), found in zip(dkim_records, results[1:1 + len(dkim_records)]):
        want = _dkim_value(value)
        sending.append({"record_type": "TXT", "name": rname, "value": value,
                        "valid": _state(found, lambda v, want=want: _dkim_value(v) == want),
                        "cached": found or []})
    receiving_records = []
    if receiving:
        found = results[-1]
        receiving_records.append({"record_type": "MX", "priority": "10", "name": name, "value": hostname,
                                  "valid": _state(found, lambda v: v == hostname), "cached": found or []})
    state = "active" if all(r["valid"] == "valid" for r in sending) else "unverified"
    if cname is not None:  # not part of the state: tracking is not needed to send
        target = cname[1]
        sending.append({"record_type": "CNAME", "name": cname[0], "value": target,
                        "valid": _state(cname_found, lambda v: v.rstrip(".").lower() == target),
                        "cached": cname_found or []})
    request.app[STATES][name] = state
    return sending, receiving_records


async def _tracking_cname(request: web.Request, name: str) -> tuple[str, str] | None:
    """(the domain's tracking host, the configured tracking host) when the domain has a tracking host of its own
    (``PUT /v3/domains/{name}/tracking`` ``base_url``) on another name than the configured one."""
    ctx = context(request)
    settings = (await ctx.store.tracking_settings()).get(name)
    if settings is None or not settings.base_url or not ctx.tracking_base_url:
        return None
    own, target = urlsplit(settings.base_url).hostname, urlsplit(ctx.tracking_base_url).hostname
    if not own or not target or own == target:
        return None
    return own.lower(), target.lower()


async def _with_records(request: web.Request, name: str, body: dict[str, Any]) -> dict[str, Any]:
    ctx = context(request)
    record = _accounts(ctx).domains.get(name)
    keys = [record.signing_key()] if record else _config_keys(ctx, name)
    receiving = body["domain"]["receiving"]
    sending, receiving_records = await dns_records(request, name, receiving, keys)
    body["domain"]["state"] = request.app[STATES][name]
    body["sending_dns_records"] = sending
    body["receiving_dns_records"] = receiving_records
    return body


async def _apply(request: web.Request) -> None:
    ctx = context(request)
    ctx.apply_accounts(await ctx.store.load_accounts())


def _read_only(what: str) -> web.Response:
    return error(403, f"{what} is defined in the configuration file and is read-only through the API")


# --- domains --------------------------------------------------------------------------------------------

async def list_domains(request: web.Request) -> web.Response:
    skip = _int(request.query.get("skip"), "skip", 0, 0, 10**9)
    limit = _int(request.query.get("limit"), "limit", 100, 1, 1000)
    items = _all_domains(request)
    return web.json_response({"total_count": len(items), "items": items[skip:skip + limit]})


def _new_domain_form(form, request: web.Request) -> dict[str, Any]:
    """The fields of ``POST /v3/domains``, checked (HTTPBadRequest / HTTPForbidden naming the field)."""
    name = str(form.get("name") or "").strip().lower().rstrip(".")
    if not name:
        raise web.HTTPBadRequest(text="'name' parameter is missing")
    if not _DOMAIN.match(name):
        raise web.HTTPBadRequest(text=f"'name' is not a valid domain name: {name[:100]!r}")
    if not request["api_key"].allows(name):
        raise web.HTTPForbidden(text=f"Forbidden: this key may not use domain {name}")
    spam_action = str(form.get("spam_action") or "disabled")
    if spam_action not in SPAM_ACTIONS:
        raise web.HTTPBadRequest(text=f"'spam_action' must be one of {', '.join(SPAM_ACTIONS)}")
    bits = _int(form.get("dkim_key_size"), "dkim_key_size", 2048, 1024, 4096)
    if bits not in (1024, 2048, 4096):
        raise web.HTTPBadRequest(text="'dkim_key_size' must be 1024, 2048 or 4096")
    selector = str(form.get("dkim_selector") or "k1").strip().lower()
    if not _SELECTOR.match(selector):
        raise web.HTTPBadRequest(text=f"'dkim_selector' is not a valid selector: {selector[:64]!r}")
    password = form.get("smtp_password")
    if password is not None and (not isinstance(password, str) or not 5 <= len(password) <= 32):
        raise web.HTTPBadRequest(text="'smtp_password' must be 5 to 32 characters long")
    return {"name": name, "spam_action": spam_action, "bits": bits, "selector": selector, "password": password or None,
            "spam_threshold": _threshold(form.get("spam_threshold")), "spam_on_error": _on_error(form),
            "receiving": _bool(form.get("receiving"), "receiving", True),
            "wildcard": _bool(form.get("wildcard"), "wildcard", False)}


async def create_domain(request: web.Request) -> web.Response:
    ctx = context(request)
    f = _new_domain_form(await read_post(request), request)
    name = f["name"]
    if name in _config_domains(ctx) or name in _accounts(ctx).domains:
        return error(400, f"Domain {name} already exists")
    pem = await asyncio.to_thread(dkim.generate_key, "rsa", f["bits"])
    now = time.time()
    record = accounts_mod.DomainRecord(name, now, f["receiving"], f["spam_action"], f["wildcard"], f["selector"],
                                       pem.decode(), f["spam_threshold"], f["spam_on_error"])
    credential = None
    if f["password"]:
        credential = accounts_mod.Credential(f"postmaster@{name}", name,
                                             await asyncio.to_thread(hash_password, f["password"]), now)
    async with request.app[LOCK]:
        if not await ctx.store.add_domain(record, credential):
            return error(400, f"Domain {name} already exists")
        await _apply(request)
    body = {"domain": _domain_json(request, name, "api", now, f["receiving"], record),
            "message": "Domain has been created"}
    if f["password"]:
        body["domain"]["smtp_password"] = f["password"]  # shown once, as Mailgun does; kept only as a hash
    return web.json_response(await _with_records(request, name, body))


def _threshold(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        n = float(value)
    except (TypeError, ValueError):
        raise web.HTTPBadRequest(text="'spam_threshold' must be a number") from None
    if not -1000 <= n <= 1000:  # SpamAssassin scores: low negatives to 20 and more (GTUBE: 1000)
        raise web.HTTPBadRequest(text="'spam_threshold' must be between -1000 and 1000")
    return n


def _on_error(form) -> str | None:
    on_error = str(form.get("spam_on_error") or "")
    if on_error not in ("", "accept", "tempfail"):
        raise web.HTTPBadRequest(text="'spam_on_error' must be accept or tempfail (empty: the default)")
    return on_error or None


def _updated(form, record: accounts_mod.DomainRecord) -> accounts_mod.DomainRecord:
    """The record with the fields of ``PUT /v3/domains/{name}`` that were given (HTTPBadRequest naming a bad one)."""
    changes: dict[str, Any] = {}
    if "spam_action" in form:
        action = str(form.get("spam_action") or "")
        if action not in SPAM_ACTIONS:
            raise web.HTTPBadRequest(text=f"'spam_action' must be one of {', '.join(SPAM_ACTIONS)}")
        changes["spam_action"] = action
    if "wildcard" in form:
        changes["wildcard"] = _bool(form.get("wildcard"), "wildcard", record.wildcard)
    if "spam_threshold" in form:
        changes["spam_threshold"] = _threshold(form.get("spam_threshold"))
    if "spam_on_error" in form:
        changes["spam_on_error"] = _on_error(form)
    return dataclasses.replace(record, **changes)


async def update_domain(request: web.Request) -> web.Response:
    """``PUT /v3/domains/{name}``: Mailgun's domain update, for the settings mtad has (others are ignored)."""
    ctx = context(request)
    name = request.match_info["name"].lower()
    found = _lookup(request, name)
    if found is None:
        return error(404, "Domain not found")
    if found[0] == "config":
        return _read_only(f"Domain {name}")
    form = await read_post(request)
    async with request.app[LOCK]:
        record = _accounts(ctx).domains.get(name)
        if record is None:
            return error(404, "Domain not found")
        record = _updated(form, record)
        if not await ctx.store.update_domain(record):
            return error(404, "Domain not found")
        await _apply(request)
    return web.json_response({"message": "Domain has been updated",
                              "domain": _domain_json(request, name, "api", record.created_at, record.receiving,
                                                     record)})


async def get_domain(request: web.Request) -> web.Response:
    name = request.match_info["name"].lower()
    found = _lookup(request, name)
    if found is None:
        return error(404, "Domain not found")
    return web.json_response(await _with_records(request, name, {"domain": found[1]}))


async def verify_domain(request: web.Request) -> web.Response:
    name = request.match_info["name"].lower()
    found = _lookup(request, name)
    if found is None:
        return error(404, "Domain not found")
    body = await _with_records(request, name, {"domain": found[1]})
    body["message"] = "Domain DNS records have been updated"
    return web.json_response(body)


async def delete_domain(request: web.Request) -> web.Response:
    ctx = context(request)
    name = request.match_info["name"].lower()
    found = _lookup(request, name)
    if found is None:
        return error(404, "Domain not found")
    if found[0] == "config":
        return _read_only(f"Domain {name}")
    async with request.app[LOCK]:
        await ctx.store.delete_domain(name)
        await _apply(request)
    request.app[STATES].pop(name, None)
    return web.json_response({"message": "Domain has been deleted"})


# --- credentials ------------------------------------------------------------------------------------------

def _login(name: str, login: str) -> str:
    login = login.strip().lower()
    local, at, domain = login.rpartition("@")
    if not at:
        local, domain = login, name
    if domain != name:
        raise web.HTTPBadRequest(text=f"'login' must be an address of {name}")
    if not _LOCAL.match(local):
        raise web.HTTPBadRequest(text=f"'login' is not a valid local part: {local[:64]!r}")
    return f"{local}@{name}"


def _config_users(ctx: ApiContext, name: str) -> list[str]:
    return sorted(login.lower() for login, (_, domain) in _cfg(ctx).users().items() if domain == name)


def _password(form) -> str:
    password = form.get("password")
    if not isinstance(password, str) or not password:
        raise web.HTTPBadRequest(text="'password' parameter is missing")
    if not 5 <= len(password) <= 32:
        raise web.HTTPBadRequest(text="'password' must be 5 to 32 characters long")
    return password


async def list_credentials(request: web.Request) -> web.Response:
    ctx = context(request)
    name = request.match_info["name"].lower()
    if _lookup(request, name) is None:
        return error(404, "Domain not found")
    skip = _int(request.query.get("skip"), "skip", 0, 0, 10**9)
    limit = _int(request.query.get("limit"), "limit", 100, 1, 1000)
    items = [{"login": login, "mailbox": login, "created_at": _date(_STARTED), "size_bytes": None, "source": "config"}
             for login in _config_users(ctx, name)]
    api = sorted((c for c in _accounts(ctx).credentials.values() if c.domain == name), key=lambda c: c.created_at)
    items += [{"login": c.login, "mailbox": c.login, "created_at": _date(c.created_at), "size_bytes": None,
               "source": "api"} for c in api]
    return web.json_response({"total_count": len(items), "items": items[skip:skip + limit]})


async def delete_all_credentials(request: web.Request) -> web.Response:
    """``DELETE /v3/domains/{name}/credentials``: the domain's API credentials (the config file's stay)."""
    ctx = context(request)
    name = request.match_info["name"].lower()
    if _lookup(request, name) is None:
        return error(404, "Domain not found")
    logins = sorted(c.login for c in _accounts(ctx).credentials.values() if c.domain == name)
    async with request.app[LOCK]:
        count = await ctx.store.delete_credentials(logins)
        await _apply(request)
    return web.json_response({"message": "All domain credentials have been deleted", "count": count})


async def create_credential(request: web.Request) -> web.Response:
    ctx = context(request)
    name = request.match_info["name"].lower()
    if _lookup(request, name) is None:
        return error(404, "Domain not found")
    form = await read_post(request)
    raw_login = form.get("login")
    if not isinstance(raw_login, str) or not raw_login.strip():
        return error(400, "'login' parameter is missing")
    login = _login(name, raw_login)
    password = _password(form)
    if login in _config_users(ctx, name) or login in _accounts(ctx).credentials:
        return error(400, f"Credentials {login} already exist")
    credential = accounts_mod.Credential(login, name, await asyncio.to_thread(hash_password, password), time.time())
    async with request.app[LOCK]:
        if not await ctx.store.add_credential(credential):
            return error(400, f"Credentials {login} already exist")
        await _apply(request)
    return web.json_response({"message": "Created 1 credentials pair(s)"})


def _api_credential(request: web.Request) -> tuple[Any, str, web.Response | None]:
    """(context, login, refusal): credentials of the config file are read-only; unknown ones are 404."""
    ctx = context(request)
    name = request.match_info["name"].lower()
    login = _login(name, request.match_info["login"])
    if login in _config_users(ctx, name):
        return ctx, login, _read_only(f"Credentials {login}")
    if login not in _accounts(ctx).credentials:
        return ctx, login, error(404, "Credentials not found")
    return ctx, login, None


async def update_credential(request: web.Request) -> web.Response:
    ctx, login, refusal = _api_credential(request)
    if refusal is not None:
        return refusal
    password = _password(await read_post(request))
    hashed = await asyncio.to_thread(hash_password, password)
    async with request.app[LOCK]:
        await ctx.store.set_password(login, hashed)
        await _apply(request)
    return web.json_response({"message": "Password changed"})


async def delete_credential(request: web.Request) -> web.Response:
    ctx, login, refusal = _api_credential(request)
    if refusal is not None:
        return refusal
    async with request.app[LOCK]:
        await ctx.store.delete_credentials([login])
        await _apply(request)
    return web.json_response({"message": "Credentials have been deleted", "spec": login})


def setup(app: web.Application) -> None:
    app[LOCK] = asyncio.Lock()
    app[STATES] = {}
    app[RESOLVER] = []
    app.router.add_get("/v3/domains", list_domains)
    app.router.add_post("/v3/domains", create_domain)
    app.router.add_get("/v3/domains/{name}", get_domain)
    app.router.add_delete("/v3/domains/{name}", delete_domain)
    app.router.add_put("/v3/domains/{name}", update_domain)
    app.router.add_put("/v3/domains/{name}/verify", verify_domain)
    app.router.add_get("/v3/domains/{name}/credentials", list_credentials)
    app.router.add_post("/v3/domains/{name}/credentials", create_credential)
    app.router.add_put("/v3/domains/{name}/credentials/{login}", update_credential)
    app.router.add_delete("/v3/domains/{name}/credentials/{login}", delete_credential)
    app.router.add_delete("/v3/domains/{name}/credentials", delete_all_credentials)
    # mailgun.js 14 and the Python SDK's domainlist call v4 for these (same shapes; v4 adds nothing mtad has)
    app.router.add_get("/v4/domains", list_domains)
    app.router.add_post("/v4/domains", create_domain)
    app.router.add_get("/v4/domains/{name}", get_domain)
    app.router.add_delete("/v4/domains/{name}", delete_domain)
    app.router.add_put("/v4/domains/{name}", update_domain)
    app.router.add_put("/v4/domains/{name}/verify", verify_domain)
