"""Operator actions on the queue: show, flush, retry, delete, bounce, pause, resume.

The store does them (``QueueStore``: one transaction each); ``mtad queue ...`` may run them while the daemon runs
(SQLite's WAL lets both write; the daemon sees changes at its next poll, within ``delivery.poll_interval``).
This module holds what the operator sees of them: the JSON of ``show``, the failure ``bounce`` records.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

from mtad.base.types import Outcome
from mtad.outbound.attempts import AttemptRecord, finished
from mtad.store.queue import PAUSE_KINDS, DeliveryJob, FinishedAttempt, MessageDetail, QueueStore  # noqa: F401

OPERATOR_BOUNCE = Outcome("failed", 550, "5.0.0", "Bounced by the operator", reason="bounce")


def show_json(detail: MessageDetail) -> dict[str, Any]:
    """``mtad queue show``: the message's columns but its body, its header block, deliveries and forwards."""
    msg = detail.message
    info: dict[str, Any] = {}
    for f in dataclasses.fields(msg):
        if f.name != "body":
            value = getattr(msg, f.name)
            info[f.name] = list(value) if isinstance(value, tuple) else value
    info["headers_text"] = msg.body.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    info["deliveries"] = [{"id": d.id, "domain": d.domain, "recipients": json.dumps(list(d.recipients)),
                           "state": d.state, "attempts": d.attempts, "next_attempt_at": d.next_attempt_at,
                           "last_reply": d.last_reply} for d in detail.deliveries]
    info["forwards"] = [{"id": f.id, "recipient": f.recipient, "action": f.action, "destination": f.destination,
                         "state": f.state, "attempts": f.attempts, "last_status": f.last_status}
                        for f in detail.forwards]
    return info


async def show(store: QueueStore, queue_id: str) -> dict[str, Any] | None:
    detail = await store.message_detail(queue_id)
    return None if detail is None else show_json(detail)


async def flush(store: QueueStore, domain: str | None = None, queue_id: str | None = None) -> int:
    """Make queued and deferred work due now, and unlock what a claim whose lease ran out still locks (its holder
    died or lost the store): the running daemon takes it at its next poll."""
    return await store.flush(time.time(), domain=domain, queue_id=queue_id)


async def delete(store: QueueStore, queue_id: str) -> bool:
    return await store.delete_message(queue_id)


def bounced(job: DeliveryJob, now: float) -> FinishedAttempt:
    """Every pending recipient of ``job`` failed permanently by the operator."""
    return finished(job, AttemptRecord({r: OPERATOR_BOUNCE for r in job.recipients}, job.attempts + 1, None), now)


async def bounce(store: QueueStore, queue_id: str) -> int:
    """Fail every pending recipient of a message permanently now (events recorded; no DSN)."""
    now = time.time()
    return await store.bounce_message(queue_id, now, lambda job: bounced(job, now))


async def pause(store: QueueStore, kind: str, value: str) -> None:
    await store.pause(kind, value, time.time())


async def resume(store: QueueStore, kind: str, value: str) -> int:
    return await store.resume(kind, value, time.time())
