"""The web control panel: server-rendered pages at ``/ui/`` on the API's listener (issue 17).

What it is: Jinja2 templates (autoescaped: subjects, headers, route expressions and addresses are hostile) shipped
in ``templates/``, a little progressive JavaScript (vendored htmx and uPlot in ``static/``, no CDN, no inline
script), one module per page (``dashboard``, ``logs``, ``queue``, ``routes``, ``domains``, ``suppressions``,
``webhooks``, ``lists``, ``mailtemplates``) with ``setup(app)``. ``web`` holds what every page shares (the signed-in check, CSRF, security
headers, rendering), ``sessions`` the in-memory sessions, ``signin`` signing in and out.

Contract: every page but the sign-in form needs a session; every POST needs the session's CSRF token (else 403);
answers carry a CSP without inline script, ``X-Frame-Options: DENY`` and ``nosniff``. Changes go through the same
code as the HTTP API: a page calls the API module's handler with its own request (the session's key in
``request["api_key"]``, so a key limited to domains is limited here too) or the store methods and helpers the
API uses; nothing is validated twice in two ways.

Layer: just above ``mtad.api`` (it reuses the API's modules and ``ApiContext``); only ``mtad.app`` imports it.
Never SQL: the store's typed methods only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from aiohttp import web

from mtad.api import ApiContext
from mtad.config.schema import UiConfig

if TYPE_CHECKING:
    from mtad.outbound.throttle import Throttled

PREFIX = "/ui"


@dataclass(frozen=True)
class UiContext:
    """What the panel needs besides the API's collaborators, built by app.py."""

    api: ApiContext
    config: UiConfig
    throttled: Callable[[], Sequence["Throttled"]] = tuple  # providers suspended or limited now


def setup(app: web.Application, ui: UiContext) -> None:
    """Add the panel's routes to the API application ``app`` (after the API's own)."""
    from mtad.ui import (dashboard, domains, lists, logs, mailtemplates, queue, routes, signin, suppressions,
                         web as uiweb, webhooks)
    uiweb.install(app, ui)
    signin.setup(app)
    for page in (dashboard, logs, queue, routes, domains, suppressions, webhooks, lists, mailtemplates):
        page.setup(app)
    uiweb.finish(app)
