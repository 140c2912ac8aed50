"""Changes of shared configuration reach every node: what is cached in a process is reloaded when it changes.

Some of the store's state is read once and kept in memory by each node, because it is read for every message:
the API's routes (compiled into the route table), the API's domains and credentials (the ``Directory`` of the
SMTP server, the DKIM keys of the scheduler) and the webhook URLs (``store.events``' record-time cache). When one
node changes them through its API, every node must see the change within a second, without a restart. Everything
else the nodes share is read from the store where it is used (suppressions, pauses and allowlists at each claim;
events, logs and stats at each API request) and needs nothing here. API keys are not in the store: they come from
each node's configuration file (``SIGHUP`` reloads them), by design.

How:
- A SQL function that changes such state calls ``changed(conn, kind)`` inside its write (``KINDS``). On
  PostgreSQL that stages ``pg_notify('mtad_changes', kind)`` in the same transaction: PostgreSQL delivers it to
  every listening session when, and only if, the transaction commits (a write rolled back to its savepoint, or a
  failed commit, notifies nobody), once per kind per group commit (``Staged``). On SQLite it does nothing: there
  is one node, and the store's method announces the change itself after the commit (``ChangeMethods._changed``).
- Each node's store runs a ``ChangeFeed`` (``start_changes``): on PostgreSQL one extra connection that
  ``LISTEN``\\s on a thread (``psycopg``'s ``notifies()``, woken by the server, no polling) and hands each
  notification to the event loop, where the callbacks registered with ``on_change(kind, callback)`` run. Webhook
  notifications also clear the webhook cache at once, on the listener's thread.
- Callbacks are coalesced per callback: a notification arriving while that callback runs makes it run once more
  after it ends, so the last run always starts after the last change was committed.
- Backstop (PostgreSQL): a notification can be lost only while the listening connection is down; after it
  connects again, and every ``BACKSTOP`` seconds anyway, every callback runs (a callback compares what it loads with what it has and
  applies only a difference, so this costs a few reads).

``ChangeMethods`` is the mixin every store composes (``store.methods.METHODS``): ``on_change``,
``start_changes``/``stop_changes`` and ``changes`` (the feed: ``received``, ``listening``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Awaitable, Callable, Protocol

from mtad.store.batch import stage as stage_row
from mtad.store import events as _events
from mtad.store.dialect import dialect_of

log = logging.getLogger("mtad.store.changes")

CHANNEL = "mtad_changes"
KINDS = frozenset({"routes", "accounts", "webhooks", "lists", "tracking", "shaping"})  # routes; domains and
# credentials; webhook URLs; mailing lists (their addresses and access levels, which ingress keeps); tracking: the
# domains' tracking settings (store.engagement); shaping: what automation rules decided for a provider
# (store.shaping.ProviderAction)
BACKSTOP = 30.0  # seconds between reloads of everything, in case a notification was lost
_RECONNECT = (0.5, 10.0)  # first and longest wait before the listener connects again

Callback = Callable[[], Awaitable[None]]


# --- inside a write ---------------------------------------------------------------------------------------

def changed(conn: Any, kind: str) -> None:
    """Tell the other nodes, at the commit of ``conn``'s transaction, that state of ``kind`` changed (see the
    module doc). Called by the SQL functions of that state; nothing on SQLite."""
    assert kind in KINDS, kind
    if not dialect_of(conn).is_postgresql:
        return
    stage_row(conn, "changes", _notify, kind)  # outside a group commit: in the caller's transaction


def _notify(conn: Any, kinds: list[str]) -> None:
    for kind in dict.fromkeys(kinds):  # PostgreSQL folds equal notifications of a transaction anyway
        conn.execute("SELECT pg_notify(?, ?)", (CHANNEL, kind))


# --- each node: listening and calling back ------------------------------------------------------------------

class ChangeFeed:
    """The callbacks of one node, called on its event loop when a kind of state changes (see the module doc).

    ``connect``: makes a new PostgreSQL connection (the store's own settings), or None (SQLite: only ``announce``
    calls back). ``received``: notifications received; ``listening``: set while the LISTEN connection is up."""

    def __init__(self, connect: Callable[[], Any] | None, *, backstop: float = BACKSTOP):
        self._connect = connect
        self.backstop = backstop
        self._callbacks: dict[str, list[Callback]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._running: dict[Callback, asyncio.Task] = {}
        self._again: set[Callback] = set()
        self._timer: asyncio.Task | None = None
        self.listening = threading.Event()
        self.received = 0

    @property
    def listens(self) -> bool:
        """True when changes come back through LISTEN (PostgreSQL), also those this node made."""
        return self._connect is not None

    def subscribe(self, kind: str, callback: Callback) -> Callable[[], None]:
        """Run ``await callback()`` on the loop after every change of ``kind``; returns what unsubscribes it."""
        assert kind in KINDS, kind
        self._callbacks.setdefault(kind, []).append(callback)
        return lambda: self._callbacks.get(kind, []).remove(callback) if callback in self._callbacks.get(
            kind, []) else None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        if self._connect is not None and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._listen, name="mtad-store-listen", daemon=True)
            self._thread.start()
        if self.backstop > 0 and self._timer is None:
            self._timer = loop.create_task(self._every(), name="store-changes-backstop")

    async def stop(self) -> None:
        self._stop.set()
        tasks = [t for t in (self._timer, *self._running.values()) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._timer = None
        self._running.clear()
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join, 5.0)
        self._loop = None

    # --- calling back (on the loop) ------------------------------------------------------------------------
    def announce(self, kind: str) -> None:
        """State of ``kind`` changed: run its callbacks on the loop (callable from any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._dispatch, kind)
        except RuntimeError:  # the loop closed meanwhile: nothing left to tell
            pass

    def everything(self) -> None:
        """Every kind changed, as far as we know (after a reconnect, and on the backstop's timer)."""
        _events.invalidate_webhooks()
        for kind in sorted(KINDS):
            self.announce(kind)

    def _dispatch(self, kind: str) -> None:
        for callback in list(self._callbacks.get(kind, ())):
            task = self._running.get(callback)
            if task is not None and not task.done():
                self._again.add(callback)  # runs once more when this run ends: it starts after the change
                continue
            assert self._loop is not None
            self._running[callback] = self._loop.create_task(self._call(callback), name=f"store-changed-{kind}")

    async def _call(self, callback: Callback) -> None:
        while True:
            self._again.discard(callback)
            try:
                await callback()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one failed reload must not stop the next
                log.exception("reloading after a change failed; the next change or the backstop tries again")
            if callback not in self._again:
                return

    async def _every(self) -> None:
        while True:
            await asyncio.sleep(self.backstop)
            self.everything()

    # --- listening (its own thread and connection) -----------------------------------------------------------
    def _listen(self) -> None:
        import psycopg
        wait, first, failing = _RECONNECT[0], True, False
        while not self._stop.is_set():
            try:
                conn = self._connect()  # type: ignore[misc]
            except Exception as exc:  # noqa: BLE001 - the store's own errors are reported by its writes
                if not failing:
                    log.warning("store: cannot LISTEN for changes of other nodes (%s); trying again",
                                " ".join(str(exc).split()))
                failing = True
                self._stop.wait(wait)
                wait = min(wait * 2, _RECONNECT[1])
                continue
            try:
                conn.autocommit = True
                conn.execute(f"LISTEN {CHANNEL}")
                self.listening.set()
                if failing or not first:
                    log.info("store: listening for changes of other nodes again; reloading what they may have"
                             " changed meanwhile")
                    self.everything()
                first, failing, wait = False, False, _RECONNECT[0]
                while not self._stop.is_set():
                    for note in conn.notifies(timeout=1.0):
                        self._received(note.payload)
            except psycopg.Error as exc:
                if not self._stop.is_set():
                    log.warning("store: the LISTEN connection broke (%s); connecting again",
                                " ".join(str(exc).split()))
                    failing = True
            finally:
                self.listening.clear()
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - it is gone either way
                    pass

    def _received(self, kind: str) -> None:
        self.received += 1
        if kind == "webhooks":
            _events.invalidate_webhooks()  # at once: the writer thread reads the table again for the next event
        if kind in KINDS:
            self.announce(kind)


class ChangeStore(Protocol):
    """Callbacks after changes of shared configuration, on every node (see the module doc)."""

    def on_change(self, kind: str, callback: Callback) -> Callable[[], None]:
        """Run ``await callback()`` on the event loop after state of ``kind`` (``KINDS``) changed through any
        node (on SQLite: this one), coalesced, and every ``BACKSTOP`` seconds; returns what unsubscribes it."""
        ...

    async def start_changes(self, wait: float = 5.0) -> bool:
        """Start calling back (and listening, on PostgreSQL) on the running loop; False if not listening yet."""
        ...

    async def stop_changes(self) -> None:
        """Stop listening and calling back (before ``close``)."""
        ...


class ChangeMethods:
    """The change feed of a store (a mixin of every store, ``store.methods.METHODS``; see the module doc)."""

    _feed: ChangeFeed | None = None

    @property
    def changes(self) -> ChangeFeed:
        if self._feed is None:
            # PostgreSQL: the engine's own connection factory (``PgEngine._connect``), for the LISTEN connection
            connect = getattr(self, "_connect", None) if dialect_of(self).is_postgresql else None
            self._feed = ChangeFeed(connect, backstop=BACKSTOP if connect is not None else 0)  # SQLite: one node
        return self._feed

    def on_change(self, kind: str, callback: Callback) -> Callable[[], None]:
        """Run ``await callback()`` on the event loop after state of ``kind`` (``KINDS``) changed, on any node
        (on SQLite: this one). Returns what unsubscribes it."""
        return self.changes.subscribe(kind, callback)

    async def start_changes(self, wait: float = 5.0) -> bool:
        """Start calling back on the running loop; on PostgreSQL start listening, and wait up to ``wait``
        seconds for the LISTEN connection. False when it is not up yet (it keeps trying)."""
        feed = self.changes
        feed.start(asyncio.get_running_loop())
        if not feed.listens:
            return True
        return await asyncio.to_thread(feed.listening.wait, wait)

    async def stop_changes(self) -> None:
        if self._feed is not None:
            await self._feed.stop()

    def _changed(self, kind: str) -> None:
        """After a write of ``kind`` committed: call this node's callbacks when no LISTEN brings them back."""
        feed = self._feed
        if feed is not None and not feed.listens:
            feed.announce(kind)
