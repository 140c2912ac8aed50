"""Route forwards to URLs: signed HTTP POSTs in Mailgun's formats, retried durably.

A URL ending in ``mime`` gets the raw format (``body-mime``); any other URL the parsed format
(fields, attachments as file uploads). Both carry ``timestamp``, ``token`` and ``signature``. A 2xx
completes the forward; 406 Not Acceptable means the application refuses it, so it is not retried;
anything else (status, timeout, refused connection) is retried on ``routing.retry_schedule``, then
fails (the rule of all HTTP work, ``net.retry``). Every attempt leaves an event on the receiving domain: ``delivered`` or ``failed``.

Forms are built by ``form.build`` (MIME parse and encoding, in a worker process: ``form.jobs``) and
signed here just before sending.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from mtad.events import shape
from mtad.base.coalesce import Coalescer
from mtad.config.schema import RoutingConfig
from mtad.net import retry
from mtad.net.httpclient import HttpClient, HttpResult
from mtad.store.leases import settle_call
from mtad.store.events import NewEvent
from mtad.store.queue import QueuedMessage
from mtad.store.work import WorkItem, WorkOutcome, WorkStore

if TYPE_CHECKING:
    from mtad.inbound.form.build import Form, FormParts
    from mtad.inbound.form.jobs import FormJob
    from mtad.workers.pool import WorkerPool

# ``form.build`` and ``form.jobs`` (MIME parsing and the quote patterns: ~15 ms of CPU to import) are imported at
# the first forward, not at every start.

__all__ = ["Forwarder", "build_form"]

log = logging.getLogger("mtad.forward")

LARGE = 1_000_000  # bytes: messages from this size are built in a thread, not queued behind a worker's batch
MAX_BATCH = 200  # forwards per coalesced read, form batch or outcome write


def build_form(message: QueuedMessage, recipient: str, url: str, key: str, max_depth: int = 20) -> Form:
    """The multipart body of a route POST (parsed or raw MIME), signed. Always multipart, as Mailgun posts."""
    from mtad.inbound.form.build import form_parts, is_raw_format, sign
    return sign(form_parts(message.body, recipient, message.sender, is_raw_format(url), max_depth), key)


@dataclass(frozen=True)
class Settlement:
    """One forward's outcome, written with its event (if any) in the batch's transaction."""

    outcome: WorkOutcome
    event: NewEvent | None = None  # in the receiving domain


class Forwarder:
    """Handles claimed ``forwards`` rows with action ``http``.

    Concurrent forwards share the work around their POSTs: the messages of a burst are read in one
    store read, their forms built in one batch by a worker process (``routing.form_workers``; 0
    builds them in process), and their outcomes written in one store write. ``close()`` stops the
    worker processes.
    """

    def __init__(self, *, store: WorkStore, http: HttpClient, config: RoutingConfig, signing_key: str,
                 clock: Callable[[], float] = time.time, max_depth: int = 20):
        self.store = store
        self.http = http
        self.config = config
        self.signing_key = signing_key
        self.clock = clock
        self.max_depth = max_depth
        self.counters = {"delivered": 0, "retried": 0, "failed": 0}
        self._processes = getattr(config, "form_workers", 1)
        self._workers: WorkerPool[FormJob, FormParts] | None = None  # at the first form (``workers``)
        self._messages: Coalescer[str, QueuedMessage | None] = Coalescer(self._read_messages, max_batch=MAX_BATCH)
        self._forms: Coalescer[FormJob, FormParts] = Coalescer(self._build_forms, max_batch=MAX_BATCH)
        self._settlements: Coalescer[Settlement, None] = Coalescer(self._write_settlements, max_batch=MAX_BATCH)

    @property
    def workers(self) -> WorkerPool[FormJob, FormParts]:
        """The form builders' pool (its processes start at its first batch: ``mtad.workers.pool``)."""
        if self._workers is None:
            from mtad.inbound.form.jobs import form_pool
            self._workers = form_pool(self._processes)
        return self._workers

    async def handle(self, row: WorkItem) -> None:
        from mtad.inbound.form.build import form_parts, is_raw_format, sign  # loaded by the first: ~1 µs
        from mtad.inbound.form.jobs import FormJob
        message = await self._messages.submit(row.message)
        if message is None:  # deleted meanwhile
            await self._settlements.submit(Settlement(WorkOutcome(row.id, "failed", row.attempts, None, None,
                                                                  "message deleted", self.clock())))
            return
        job = FormJob(message.body, row.recipient, message.sender, is_raw_format(row.destination), self.max_depth)
        if len(job.body) >= LARGE:
            parts = await asyncio.to_thread(form_parts, *job.args())
        else:
            parts = await self._forms.submit(job)
        form = sign(parts, self.signing_key)
        started = time.monotonic()
        result = await self.http.post(row.destination, data=form.body, headers={"Content-Type": form.content_type})
        await self._record(row, message, result, time.monotonic() - started)

    async def close(self) -> None:
        if self._workers is not None:
            await self._workers.close()

    # --- the batched steps --------------------------------------------------------------------------

    async def _read_messages(self, ids: list[str]) -> list[QueuedMessage | None]:
        found = await self.store.work_messages(ids)
        return [found.get(i) for i in ids]

    async def _build_forms(self, jobs: list[FormJob]) -> list[FormParts]:
        return await self.workers.run_many(jobs)  # in process when no worker can (mtad.workers.pool)

    async def _write_settlements(self, settlements: list[Settlement]) -> list[None]:
        """One write for a burst of outcomes; kept and tried again while the store fails
        (``leases.settle_call``): the POST was made, and a forward is not made again just because its outcome could
        not be recorded."""
        outcomes = [s.outcome for s in settlements]
        recorded = [s.event for s in settlements if s.event is not None]
        await settle_call(self.store, lambda: self.store.finish_work("forwards", outcomes, recorded),
                          f"outcomes of {len(settlements)} forwards ({', '.join(str(o.id) for o in outcomes[:5])})")
        return [None] * len(settlements)

    async def _record(self, row: WorkItem, message: QueuedMessage, result: HttpResult, seconds: float) -> None:
        now = self.clock()
        attempt = row.attempts + 1
        state, retry_at = retry.decide(result.status, attempt, [d.seconds for d in self.config.retry_schedule], now)
        ok = state == "done"
        kind, severity = ("delivered", "") if ok else ("failed", "temporary" if retry_at else "permanent")
        error = result.error or (result.body[:200] if not ok else "")
        status = {"code": result.status or 0, "message": error if not ok else "OK", "attempt-no": attempt,
                  "session-seconds": round(seconds, 3), "url": row.destination}
        if retry_at:
            status["retry-seconds"] = int(retry_at - now)
        extra: dict[str, Any] = shape.with_authentication(
            {"delivery-status": status, "method": "http", "route": {"id": row.route_id}},
            message.envelope.get("verdicts"))
        if kind == "failed":
            extra["severity"] = severity
            extra["reason"] = "rejected" if result.status == 406 else ("generic" if severity == "temporary" else "old")
        event = shape.base_event(
            kind, timestamp=now, recipient=row.recipient, queue_id=message.id,
            message=shape.message_part(message.headers, message.size, message.attachments),
            options=message.options,
            envelope={"sender": message.sender, "targets": row.destination, "transport": "http"},
            flags={"is-routed": True, "is-authenticated": False, "is-test-mode": False}, extra=extra)
        await self._settlements.submit(Settlement(WorkOutcome(row.id, state, attempt, retry_at, result.status, error,
                                                              now), NewEvent(message.domain, event)))
        self.counters["delivered" if ok else ("retried" if retry_at else "failed")] += 1
        log.info("%s: forward to=<%s> url=%s status=%s%s", message.id, row.recipient, row.destination,
                 result.status if result.status is not None else "none",
                 (f" error={error!r}" if error and not ok else "") + (f" retry_in={int(retry_at - now)}s" if retry_at else ""))
