"""The panel's sessions: in memory, one per sign-in, ended by sign-out, idleness or age.

A session id is 32 random bytes (URL-safe base64) sent only in the ``mtad_session`` cookie (HttpOnly,
SameSite=Strict, Secure over HTTPS, path ``/ui``); the table is keyed by the id's SHA-256, so the ids themselves
are not kept. Each session has its own CSRF token (32 random bytes), which every form and htmx request sends back
(``web.check_csrf``). A session unused for ``ui.idle_timeout`` or older than ``ui.session_lifetime`` is gone.
Sessions are this process's: a restart signs everyone out, and behind a load balancer each node has its own
(sign in again when moved). The table is bounded (``MAX_SESSIONS``): past it the least recently used goes.
Single-threaded (the event loop's).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from mtad.api import ApiKey

MAX_SESSIONS = 10_000
COOKIE = "mtad_session"


@dataclass
class Session:
    user: str  # a panel user's login, or "api" (signed in with an API key)
    key: ApiKey  # what it may reach: the API key's domains, or every domain for a panel user
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    created: float = 0.0
    last_seen: float = 0.0
    notices: list[tuple[str, str]] = field(default_factory=list)  # (kind, text) for the next page shown


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class Sessions:
    def __init__(self, idle_timeout: float, lifetime: float, clock: Callable[[], float] = time.monotonic):
        self.idle_timeout = idle_timeout
        self.lifetime = lifetime
        self.clock = clock
        self._table: OrderedDict[str, Session] = OrderedDict()

    def start(self, user: str, key: ApiKey) -> tuple[str, Session]:
        """A new session: (its id for the cookie, the session)."""
        now = self.clock()
        session_id = secrets.token_urlsafe(32)
        session = Session(user, key, created=now, last_seen=now)
        self._table[_digest(session_id)] = session
        while len(self._table) > MAX_SESSIONS:
            self._table.popitem(last=False)
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of ``session_id`` (its idle time restarts), or None."""
        if not session_id or len(session_id) > 100:
            return None
        digest = _digest(session_id)
        session = self._table.get(digest)
        if session is None:
            return None
        now = self.clock()
        if now - session.last_seen > self.idle_timeout or now - session.created > self.lifetime:
            del self._table[digest]
            return None
        session.last_seen = now
        self._table.move_to_end(digest)
        return session

    def end(self, session_id: str | None) -> None:
        if session_id:
            self._table.pop(_digest(session_id), None)

    def __len__(self) -> int:
        return len(self._table)
