"""Route POST forms built off mtad's event loop and its GIL: a job kind of the helper-process pool (``mtad.workers``).

``form_pool(processes)`` is a ``WorkerPool`` of ``FormJob`` -> ``FormParts``: ``await pool.run_many(jobs)``
builds a batch in a child (up to ``BATCH`` jobs per write) and returns one ``FormParts`` per job, in order,
exactly what ``build.form_parts`` gives in process. A job the child could not build, and every job while no
child runs (``processes == 0``, a child lost or not answering a batch within ``TIMEOUT`` seconds), is built in
process: inline up to ``INLINE_PARSE`` bytes, larger in a thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from mtad.inbound.form.build import FormParts, form_parts
from mtad.workers.pool import JobKind, RunHere, WorkerPool

log = logging.getLogger("mtad.formworker")

BATCH = 200  # forms per write to a worker (the forwarder's batches are no larger)
TIMEOUT = 120.0  # seconds a worker may take over a batch before it is replaced
INLINE_PARSE = 16_384  # bytes: built in process, messages up to this size on the event loop, larger in a thread


@dataclass(frozen=True)
class FormJob:
    body: bytes
    recipient: str
    sender: str
    raw: bool  # the raw-MIME format
    max_depth: int = 20

    def args(self) -> tuple:
        return self.body, self.recipient, self.sender, self.raw, self.max_depth


def build_batch(payload: list[tuple], memo: dict) -> list[tuple | None]:
    """In the child: ``payload`` is ``[FormJob.args(), ...]``; one ``(head, tail, boundary)`` per job, or None
    for a job it could not build (the parent builds that one)."""
    out: list[tuple | None] = []
    for args in payload:
        try:
            parts = form_parts(*args)
        except Exception:  # noqa: BLE001 - form_parts does not raise by contract; the parent retries in process
            log.exception("form could not be built in the worker")
            out.append(None)
        else:
            out.append((parts.head, parts.tail, parts.boundary))
    return out


class _Forms(JobKind[FormJob, FormParts]):
    name = "form"
    target = f"{__name__}:build_batch"
    batch = BATCH
    timeout = TIMEOUT
    log = log

    def encode(self, items: list[FormJob], sent: set) -> Any:
        return [job.args() for job in items]

    def decode(self, item: FormJob, answer: Any) -> FormParts:
        if answer is None:
            raise RunHere
        return FormParts(*answer)

    def run_here(self, item: FormJob) -> FormParts:
        return form_parts(*item.args())

    def offload(self, item: FormJob) -> bool:
        return len(item.body) > INLINE_PARSE


def form_pool(processes: int) -> WorkerPool[FormJob, FormParts]:
    return WorkerPool(_Forms(), processes)
