"""The web panel's sessions (``mtad.ui.sessions``): idle expiry, a lifetime, sign-out, and ids never kept."""

from __future__ import annotations

from mtad.api import ApiKey
from mtad.ui import sessions as sessions_mod
from mtad.ui.sessions import Sessions


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_ends_when_idle_for_the_idle_timeout_and_each_use_restarts_it():
    clock = Clock()
    sessions = Sessions(idle_timeout=60, lifetime=3600, clock=clock)
    sid, session = sessions.start("ops", ApiKey(""))
    assert sid not in sessions._table and len(sessions) == 1  # the table holds a digest, never the id
    for _ in range(5):
        clock.now += 50
        assert sessions.get(sid) is session
    clock.now += 61
    assert sessions.get(sid) is None and len(sessions) == 0


def test_a_session_ends_at_its_lifetime_however_used_and_at_sign_out():
    clock = Clock()
    sessions = Sessions(idle_timeout=60, lifetime=120, clock=clock)
    sid, _ = sessions.start("api", ApiKey("sha256:x", frozenset({"a.test"})))
    clock.now += 50
    assert sessions.get(sid) is not None
    clock.now += 50
    assert sessions.get(sid) is not None
    clock.now += 30
    assert sessions.get(sid) is None
    sid, _ = sessions.start("api", ApiKey(""))
    sessions.end(sid)
    assert sessions.get(sid) is None
    assert sessions.get(None) is None and sessions.get("x" * 500) is None


def test_each_session_has_its_own_csrf_token_and_the_table_is_bounded(monkeypatch):
    monkeypatch.setattr(sessions_mod, "MAX_SESSIONS", 3)
    sessions = Sessions(idle_timeout=60, lifetime=120)
    started = [sessions.start("ops", ApiKey("")) for _ in range(4)]
    assert len({s.csrf for _, s in started}) == 4 and all(len(s.csrf) >= 40 for _, s in started)
    assert len(sessions) == 3 and sessions.get(started[0][0]) is None  # the least recently used went
    assert sessions.get(started[3][0]) is started[3][1]
