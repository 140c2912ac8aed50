"""Signing in and out of the panel: ``/ui/login`` (GET the form, POST the credentials) and ``POST /ui/logout``.

Two kinds of credential: a panel user's login and password (``mtad ui-user add``: the store's ``panel_users``,
scrypt hashes checked off the event loop, as the SMTP users'), or an API key alone (user field empty or ``api``);
a key limited to domains gives a session limited to them. Failures are limited per client address and per panel
login (API-key sign-ins per address only: nobody can lock everyone out of a key) by
SMTP AUTH's mechanism (``ingress.authguard.AuthGuard``) with the ``ui.*sign_in*`` numbers: while locked out, the
form answers 429 without checking the password. Every failure is the same message (no telling which part was
wrong) and is logged with the client's address. A sign-in replaces the session cookie (no fixation).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from urllib.parse import urlsplit

from aiohttp import web

from mtad.api import ApiKey, hash_key, printable
from mtad.base.passwords import verify_password
from mtad.ui import PREFIX
from mtad.ui.sessions import COOKIE
from mtad.ui.web import (CSRF_COOKIE, form, is_secure, page, panel, redirect, render, see_other, session,
                         ui_context)

log = logging.getLogger("mtad.ui")

API_USER = "api"
_UNUSED_HASH = "$scrypt$n=16384,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


def _next(target: str | None) -> str:
    """Where to go after signing in: a path of the panel, never another site (``//host``, ``/\\host``)."""
    if not target or not target.startswith(PREFIX + "/") or "\\" in target or target.startswith("//"):
        return PREFIX + "/"
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else PREFIX + "/"


def _form_page(request: web.Request, *, status: int = 200, error: str = "", user: str = "",
               target: str = "") -> web.Response:
    token = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)  # double submit: cookie and field
    resp = render(request, "login.html", status=status, title="Sign in", error=error, login=user,
                  next=_next(target), login_csrf=token)
    resp.set_cookie(CSRF_COOKIE, token, path=PREFIX, httponly=True, samesite="Strict", secure=is_secure(request))
    return resp


@page(public=True)
async def login_form(request: web.Request) -> web.StreamResponse:
    if panel(request).sessions.get(request.cookies.get(COOKIE)) is not None:
        raise redirect(_next(request.query.get("next")))
    return _form_page(request, target=request.query.get("next", ""))


async def _check(request: web.Request, user: str, secret: str) -> ApiKey | None:
    """The access these credentials give, or None."""
    if user in ("", API_USER):
        digest = hash_key(secret)
        for key in ui_context(request).api.keys():
            if hmac.compare_digest(key.key_hash, digest):
                return key
        return None
    found = await ui_context(request).api.store.panel_user(user)
    encoded = found.password_hash if found is not None else _UNUSED_HASH  # the same work for unknown logins
    ok = await asyncio.to_thread(verify_password, secret, encoded)
    return ApiKey("") if ok and found is not None else None


@page(public=True)
async def login(request: web.Request) -> web.StreamResponse:
    fields = await form(request)
    user = str(fields.get("user") or "").strip().lower()[:64]
    secret = str(fields.get("password") or "")
    target = str(fields.get("next") or "")
    p = panel(request)
    client = request.remote or "?"
    # A panel user is counted per login too; an API key (too long to guess) only per client address, so that
    # nobody can lock everyone out of signing in with a key.
    account = user if user not in ("", API_USER) else f"{API_USER} from {client}"
    scope = p.guard.admit(client, account, time.monotonic())
    if scope is not None:
        log.warning("panel sign-in refused for %s (%s locked out after failed sign-ins)", client, scope)
        resp = _form_page(request, status=429, error="Too many failed sign-ins: try again later.", user=user,
                          target=target)
        resp.headers["Retry-After"] = str(int(ui_context(request).config.sign_in_lockout.seconds))
        return resp
    key = await _check(request, user, secret) if secret else None
    p.guard.done(client, account, key is not None, time.monotonic())
    if key is None:
        log.warning("panel sign-in failed for %r from %s", printable(account, 64), client)
        return _form_page(request, status=401, error="Wrong user name, password or API key.", user=user,
                          target=target)
    p.sessions.end(request.cookies.get(COOKIE))
    session_id, _ = p.sessions.start(user if user not in ("", API_USER) else API_USER, key)
    log.info("panel: %s signed in from %s", printable(user or API_USER, 64), client)
    resp = see_other(_next(target))
    resp.set_cookie(COOKIE, session_id, path=PREFIX, httponly=True, samesite="Strict", secure=is_secure(request))
    resp.del_cookie(CSRF_COOKIE, path=PREFIX)
    return resp


@page
async def logout(request: web.Request) -> web.StreamResponse:
    p = panel(request)
    log.info("panel: %s signed out", printable(session(request).user, 64))
    p.sessions.end(request.cookies.get(COOKIE))
    resp = see_other(PREFIX + "/login")
    resp.del_cookie(COOKIE, path=PREFIX)
    return resp


def setup(app: web.Application) -> None:
    app.router.add_get(PREFIX + "/login", login_form)
    app.router.add_post(PREFIX + "/login", login)
    app.router.add_post(PREFIX + "/logout", logout)
