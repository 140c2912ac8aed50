"""What every panel page shares: its state on the application, the signed-in check, CSRF, headers, rendering.

- ``page(handler)``: the handler runs only for a live session (else a GET is sent to the sign-in form and anything
  else gets 403), a POST only with the session's CSRF token (form field ``csrf`` or header ``X-CSRF-Token``) and,
  when the browser says where it comes from (``Origin``), only from the panel's own origin; anything it raises
  becomes an HTML error page (a traceback only in the log). ``page(..., public=True)``: the sign-in form, whose
  POST is checked against a CSRF cookie of its own (double submit).
- Every answer under ``/ui`` gets the security headers (``SECURITY_HEADERS``: a CSP without inline script or
  style, frames refused, no MIME sniffing, no referrer off the site) and pages ``Cache-Control: no-store``.
- ``render(request, template, **values)``: a Jinja2 template from ``templates/`` (autoescaped), with the session's
  user, CSRF token and notices.
- ``call_api(handler, request)``: run an API handler on the panel's request and read its JSON answer: the panel's
  changes are the API's own code.
"""

from __future__ import annotations

import datetime
import functools
import hmac
import json
import logging
import time
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web
from markupsafe import escape

from mtad.api import printable
from mtad.config.schema import LimitsConfig
from mtad.ingress.authguard import AuthGuard
from mtad.ui import PREFIX, UiContext
from mtad.ui.sessions import COOKIE, Session, Sessions

log = logging.getLogger("mtad.ui")

HERE = Path(__file__).parent
CSRF_COOKIE = "mtad_csrf"  # the sign-in form's token (double submit): no session exists yet
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
                               " connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none';"
                               " base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


class Panel:
    """The panel's state, kept on the API application (``STATE``)."""

    def __init__(self, ui: UiContext):
        self.ui = ui
        self.sessions = Sessions(ui.config.idle_timeout.seconds, ui.config.session_lifetime.seconds)
        c = ui.config  # SMTP AUTH's failure limits (mtad.ingress.authguard), with the panel's numbers
        self.guard = AuthGuard(LimitsConfig(max_auth_failures_per_client=c.max_sign_in_failures_per_client,
                                            max_auth_failures_per_account=c.max_sign_in_failures_per_account,
                                            auth_failure_window=c.sign_in_failure_window,
                                            auth_lockout=c.sign_in_lockout))

    @functools.cached_property
    def templates(self) -> "jinja2.Environment":
        """Made at the first page: a daemon whose panel nobody opens never loads Jinja2 (a tenth of its start-up imports)."""
        import jinja2
        templates = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                                       trim_blocks=True, lstrip_blocks=True)
        templates.filters["when"] = when
        templates.filters["ago"] = ago
        templates.filters["seconds"] = seconds
        return templates


STATE: web.AppKey[Panel] = web.AppKey("mtad_ui")


def panel(request: web.Request) -> Panel:
    return request.app[STATE]


def ui_context(request: web.Request) -> UiContext:
    return request.app[STATE].ui


def session(request: web.Request) -> Session:
    return request["ui_session"]


# --- formats -------------------------------------------------------------------------------------------------

def when(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.datetime.fromtimestamp(float(ts), datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def seconds(n: float | None) -> str:
    """``95`` -> ``1m 35s``."""
    if n is None:
        return "-"
    n = int(max(0, n))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if n >= size:
            parts.append(f"{n // size}{unit}")
            n %= size
    if n or not parts:
        parts.append(f"{n}s")
    return " ".join(parts[:2])


def ago(ts: float | None) -> str:
    if not ts:
        return "-"
    delta = time.time() - float(ts)
    return f"in {seconds(-delta)}" if delta < 0 else f"{seconds(delta)} ago"


# --- rendering -----------------------------------------------------------------------------------------------

def is_htmx(request: web.Request) -> bool:
    return request.headers.get("HX-Request") == "true"


def notify(request: web.Request, text: str, kind: str = "ok") -> None:
    """A notice shown on the next page the session sees (after a redirect)."""
    request["ui_session"].notices.append((kind, text))


def render(request: web.Request, template: str, *, status: int = 200, **values: Any) -> web.Response:
    sess: Session | None = request.get("ui_session")
    notices = []
    if sess is not None and status < 300:
        notices, sess.notices[:] = list(sess.notices), []
    html = panel(request).templates.get_template(template).render(
        user=sess.user if sess else None, csrf=sess.csrf if sess else "", notices=notices, prefix=PREFIX,
        path=request.path, **values)
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def redirect(location: str) -> web.HTTPSeeOther:
    """To raise: 303 to ``location``."""
    return web.HTTPSeeOther(location)


def see_other(location: str) -> web.Response:
    """To return: 303 to ``location`` (a response that cookies can be set on)."""
    return web.Response(status=303, headers={"Location": location})


def error_page(request: web.Request, status: int, message: str) -> web.Response:
    if is_htmx(request):
        return web.Response(text=f'<p class="error" role="alert">{escape(message)}</p>', status=status,
                            content_type="text/html")
    return render(request, "error.html", status=status, title=f"{status}", message=message)


# --- the signed-in check and CSRF ----------------------------------------------------------------------------

def _origin_ok(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # older browsers and non-browser clients: the token alone decides
    own = {f"{request.scheme}://{request.host}"}
    public = ui_context(request).api.base_url
    parts = urlsplit(public)
    if parts.scheme and parts.netloc:
        own.add(f"{parts.scheme}://{parts.netloc}")
    return origin in own


async def form(request: web.Request):
    """The POSTed form (the API's one reader: a malformed body is a 400)."""
    from mtad.api.formdata import read_post
    return await read_post(request)


def _token_matches(expected: str, given: Any) -> bool:
    return isinstance(given, str) and bool(expected) and hmac.compare_digest(expected.encode(), given.encode())


async def _csrf_ok(request: web.Request, expected: str) -> bool:
    if not _origin_ok(request):
        return False
    given = request.headers.get("X-CSRF-Token")
    if given is None:
        given = (await form(request)).get("csrf")
    return _token_matches(expected, given)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def page(handler: Handler | None = None, *, public: bool = False) -> Any:
    """Wrap a panel handler (see the module's docstring)."""
    if handler is None:
        return lambda h: page(h, public=public)

    async def wrapped(request: web.Request) -> web.StreamResponse:
        p = panel(request)
        try:
            if not public:
                sess = p.sessions.get(request.cookies.get(COOKIE))
                if sess is None:
                    return _signed_out(request)
                request["ui_session"] = sess
                request["api_key"] = sess.key  # what the API's own code checks a domain against
                if request.method not in ("GET", "HEAD") and not await _csrf_ok(request, sess.csrf):
                    log.warning("panel: refused a %s %s without a valid CSRF token from %s", request.method,
                                printable(request.path), request.remote)
                    return error_page(request, 403, "Refused: the form's security token is missing or out of date."
                                      " Reload the page and try again.")
            elif request.method == "POST" and not await _csrf_ok(request, request.cookies.get(CSRF_COOKIE, "")):
                return error_page(request, 403, "Refused: the form's security token is missing or out of date."
                                  " Reload the page and try again.")
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            text = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
            return error_page(request, exc.status, text)
        except Exception:  # noqa: BLE001 - never a traceback to the browser
            log.exception("panel error on %s %s", request.method, printable(request.path))
            return error_page(request, 500, "Internal error (see mtad's log)")
    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


def _signed_out(request: web.Request) -> web.StreamResponse:
    login = f"{PREFIX}/login"
    if request.method == "GET" and not is_htmx(request):
        target = request.path_qs
        raise redirect(f"{login}?next={target}" if target.startswith(PREFIX + "/") and target != login else login)
    if is_htmx(request):
        return web.Response(status=401, headers={"HX-Redirect": login})
    return error_page(request, 403, "Signed out: sign in again.")


# --- the API's own code --------------------------------------------------------------------------------------

async def call_api(handler: Handler, request: web.Request) -> tuple[int, str, dict[str, Any]]:
    """(status, message, JSON body) of the API handler ``handler`` run on ``request``."""
    try:
        resp = await handler(request)
    except web.HTTPException as exc:
        text = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        return exc.status, text or "", {}
    body: Any = {}
    raw = getattr(resp, "body", None)
    if raw:
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
    if not isinstance(body, dict):
        body = {}
    return resp.status, str(body.get("message", "")), body


# --- wiring --------------------------------------------------------------------------------------------------

async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.path != PREFIX and not request.path.startswith(PREFIX + "/"):
        return
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.path.startswith(PREFIX + "/static/"):
        response.headers.setdefault("Cache-Control", "max-age=3600")
    else:
        response.headers["Cache-Control"] = "no-store"


def is_secure(request: web.Request) -> bool:
    return request.secure or ui_context(request).api.base_url.startswith("https:")


def install(app: web.Application, ui: UiContext) -> None:
    app[STATE] = Panel(ui)
    app.on_response_prepare.append(_headers)

    async def home(request: web.Request) -> web.StreamResponse:
        raise redirect(PREFIX + "/")
    app.router.add_get(PREFIX, home)
    app.router.add_static(PREFIX + "/static", HERE / "static", append_version=False)


def finish(app: web.Application) -> None:
    """Last: any other path under the prefix is the panel's 404 page (signed in) or the sign-in form."""
    @page
    async def not_found(request: web.Request) -> web.StreamResponse:
        return error_page(request, 404, "No such page.")
    app.router.add_route("*", PREFIX + "/{tail:.*}", not_found)
