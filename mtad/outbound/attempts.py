"""What an attempt of a delivery decided, made ready for the store: pure functions, no I/O.

``finished(job, record, now)`` turns the per-recipient outcomes of one attempt into the store's
``FinishedAttempt``: a deferred recipient out of time fails (reason ``old``), each recipient gets its
``delivered``/``failed`` event (``events.shape``), a mailbox that does not exist goes on the bounce list
(``classify.is_mailbox_bounce``), and a DSN's own attempt is a system one (no stats, webhooks, bounce list, DSN).
``dsn_for(...)`` is the DSN the store commits with it, built when the store hands over the message's headers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

from mtad.base.types import NewMessage, Outcome
from mtad.events import shape
from mtad.outbound.classify import is_mailbox_bounce
from mtad.outbound.dsn import is_dsn
from mtad.store.events import NewEvent
from mtad.store.queue import DeliveryJob, DsnBuilder, Enqueue, FinishedAttempt, new_queue_id


@dataclass(frozen=True)
class AttemptRecord:
    """What one attempt decided, per recipient."""

    outcomes: Mapping[str, Outcome]  # recipient -> its outcome
    attempt_no: int
    retry_at: float | None  # when deferred recipients are tried again; None: they have run out of time
    session_seconds: float = 0.0


def finished(job: DeliveryJob, record: AttemptRecord, now: float) -> FinishedAttempt:
    system = is_dsn(job)
    deferred: list[str] = []
    failed: dict[str, Outcome] = {}
    events: list[NewEvent] = []
    bounce_list = []
    domain = job.sending_domain
    for rcpt, outcome in record.outcomes.items():
        if outcome.kind == "deferred" and record.retry_at is None:
            outcome = Outcome("failed", outcome.code, outcome.enhanced, outcome.message, outcome.mx_host, outcome.tls,
                              outcome.certificate_verified, reason="old")
        status = shape.outcome_status(outcome, record.attempt_no, record.session_seconds,
                                      (record.retry_at - now) if outcome.kind == "deferred" and record.retry_at else None)
        if outcome.kind == "delivered":
            event = shape.delivery_event("delivered", job, rcpt, now, {"delivery-status": status})
        elif outcome.kind == "deferred":
            deferred.append(rcpt)
            event = shape.delivery_event("failed", job, rcpt, now, {"severity": "temporary", "reason": "generic",
                                                                     "delivery-status": status})
        else:
            failed[rcpt] = outcome
            event = shape.delivery_event("failed", job, rcpt, now, {"severity": "permanent",
                                                                     "reason": outcome.reason or "bounce",
                                                                     "delivery-status": status})
            if not system and is_mailbox_bounce(outcome):
                bounce_list.append((rcpt, {"code": str(outcome.code), "error": outcome.message}))
        events.append(NewEvent(domain, event, system))
    last = next(iter(record.outcomes.values()), None)
    return FinishedAttempt(record.attempt_no, record.retry_at, tuple(deferred), failed, tuple(events),
                           tuple(bounce_list), last.code if last else None, last.message if last else None, system)


# builds the DSN of a job's failed recipients from the message's header block: ``dsn.build`` with its settings
Bouncer = Callable[[DeliveryJob, dict[str, Outcome], bytes], "NewMessage | None"]


def dsn_for(build: Bouncer | None, job: DeliveryJob, attempt: FinishedAttempt, now: float) -> DsnBuilder | None:
    """What the store calls for the DSN of ``attempt`` (None: no DSN): it hands over the failed message's header
    block and commits the bounce, with its ``accepted`` events, in the attempt's transaction."""
    if build is None or not attempt.failed or attempt.system:
        return None
    failed = dict(attempt.failed)

    def bounce(original_headers: bytes) -> Enqueue | None:
        msg = build(job, failed, original_headers)
        if msg is None:
            return None
        queue_id = new_queue_id()
        return Enqueue(queue_id, msg, shape.accepted(msg, queue_id, now))
    return bounce
