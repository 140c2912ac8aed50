"""DKIM signing off the event loop's core: a job kind of the helper-process pool (``mtad.workers``).

``DkimSigner(workers).sign(message, keys)`` returns what ``dkim.sign`` returns, and raises its ``ValueError``.

Contract:
- ``workers == 0``: signed in this process, on the event loop (no thread hop: a thread per signature costs
  more CPU in GIL hand-offs than the signature itself).
- ``workers > 0``: signed by that many pool children, started at the first signature (no DKIM, no
  processes); each imports only this module, ``mtad.mail.dkim`` and the pool. Up to ``BATCH`` messages go
  in one write; a child gets each key once (its PEM, under a small id) and sends back only the header
  fields. A child that dies is replaced and its messages are signed in process meanwhile: nothing is sent
  unsigned because of a worker (``mtad.workers.pool``).
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from mtad.mail import dkim
from mtad.workers.pool import JobKind, WorkerPool

BATCH = 32  # messages per write to a worker: ~8 ms of RSA-2048 signing

_Item = tuple[bytes, tuple[dkim.DkimKey, ...]]


def sign_batch(payload: tuple[list, list], memo: dict) -> list[tuple[bool, bytes | str]]:
    """In the child: ``payload`` is ``(new_keys, items)``, ``new_keys`` ``[(kid, domain, selector, pem), ...]``
    (kept in ``memo`` for later batches), ``items`` ``[(message, (kid, ...)), ...]``. One answer per item:
    ``(True, header_fields)`` or ``(False, error_text)``."""
    keys: dict[int, dkim.DkimKey] = memo.setdefault("keys", {})
    new_keys, items = payload
    for kid, domain, selector, pem in new_keys:
        keys[kid] = dkim.load_key(domain, selector, pem)
    answers: list[tuple[bool, bytes | str]] = []
    for message, kids in items:
        try:
            answers.append((True, dkim.signatures(message, [keys[k] for k in kids])))
        except Exception as exc:  # noqa: BLE001 - reported per message; the parent decides
            answers.append((False, str(exc) if isinstance(exc, ValueError) else f"{exc.__class__.__name__}: {exc}"))
    return answers


class _Signing(JobKind[_Item, bytes]):
    name = "DKIM signing"
    target = f"{__name__}:sign_batch"
    batch = BATCH
    log = logging.getLogger("mtad.dkim")

    def __init__(self) -> None:
        self._kid_of: weakref.WeakKeyDictionary[dkim.DkimKey, int] = weakref.WeakKeyDictionary()
        self._kid_by_spec: dict[tuple[str, str, bytes], int] = {}
        self._key_spec: dict[int, tuple[int, str, str, bytes]] = {}

    def encode(self, items: list[_Item], sent: set) -> Any:
        new_keys = []
        out = []
        for message, keys in items:
            kids = tuple(self._kid(k) for k in keys)
            for kid in kids:
                if kid not in sent:
                    sent.add(kid)
                    new_keys.append(self._key_spec[kid])
            out.append((message, kids))
        return new_keys, out

    def decode(self, item: _Item, answer: Any) -> bytes:
        ok, value = answer
        if not ok:
            raise ValueError(value)
        return value + item[0]

    def run_here(self, item: _Item) -> bytes:
        return dkim.sign(item[0], list(item[1]))

    def _kid(self, key: dkim.DkimKey) -> int:
        """A small id for a key, the same for every object holding the same key (reloads make new objects)."""
        kid = self._kid_of.get(key)
        if kid is None:
            spec = (key.domain, key.selector, dkim.private_pem(key))
            kid = self._kid_by_spec.get(spec)
            if kid is None:
                kid = self._kid_by_spec[spec] = len(self._kid_by_spec)
                self._key_spec[kid] = (kid, *spec)
            self._kid_of[key] = kid
        return kid


class DkimSigner:
    def __init__(self, workers: int):
        self.pool: WorkerPool[_Item, bytes] = WorkerPool(_Signing(), workers)

    async def sign(self, message: bytes, keys: list[dkim.DkimKey]) -> bytes:
        if not keys:
            return message
        return await self.pool.run((message, tuple(keys)))

    async def close(self) -> None:
        """Stop the workers (pending messages are signed in process); idempotent."""
        await self.pool.close()

    @property
    def pids(self) -> list[int]:
        return self.pool.pids
