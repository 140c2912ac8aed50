"""DKIM signing, and per-recipient rendering then signing, off the event loop's core: a job kind of the
helper-process pool (``mtad.workers``).

``DkimSigner(workers).sign(message, keys)`` returns what ``dkim.sign`` returns, and raises its ``ValueError``.
``render(message, keys, spec, want_links)`` makes one recipient's copy (``mtad.mail.render``: tracking links, open
pixel, unsubscribe footer and List-Unsubscribe headers, system variables) and signs it, in the same job: the
headers rendering adds are signed, and the event loop never parses HTML. It returns ``(copy, links)``: ``links``
is the message's link list (``render.link_list``) when ``want_links``, else None. A copy that cannot be signed
(no From header) comes back unsigned, as ``sign`` callers send it; a rendering that fails (a bug) raises
``RenderError`` (the scheduler then sends the stored message as it is, signed).

Contract:
- ``workers == 0``: done in this process, on the event loop (no thread hop: a thread per signature costs
  more CPU in GIL hand-offs than the signature itself).
- ``workers > 0``: done by that many pool children, started at the first job (no DKIM, no processes); each
  imports only this module, ``mtad.mail`` and the pool. Up to ``BATCH`` items go in one write; a child gets each
  key once (its PEM, under a small id) and sends back only the header fields of a plain signature (the whole
  copy of a rendered one). The copies of one message for several recipients share its bytes in a batch (the
  wire's ``marshal`` writes an object referenced twice once). A child that dies is replaced and its items are
  done in process meanwhile: nothing is sent unsigned because of a worker (``mtad.workers.pool``).
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from mtad.mail import dkim
from mtad.mail import render as render_mod
from mtad.workers.pool import JobKind, WorkerPool

BATCH = 32  # messages per write to a worker: ~8 ms of RSA-2048 signing

# (message, keys, the render spec's wire tuple or None, want the link list)
_Item = tuple[bytes, tuple[dkim.DkimKey, ...], "tuple | None", bool]
_Result = "bytes | tuple[bytes, list[str] | None]"
log = logging.getLogger("mtad.dkim")


class RenderError(Exception):
    """Rendering a copy failed (the text says why); nothing was sent."""


def _render_sign(message: bytes, keys: list[dkim.DkimKey], spec: tuple, want_links: bool
                 ) -> tuple[bytes, list[str] | None]:
    try:
        copy = render_mod.render(message, render_mod.RenderSpec.from_wire(spec))
        links = render_mod.link_list(message) if want_links else None
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which sends the message unrendered
        raise RenderError(f"{exc.__class__.__name__}: {exc}") from None
    if keys:
        try:
            copy = dkim.signatures(copy, keys) + copy
        except ValueError as exc:  # e.g. no From header: RFC 6376 5.4 forbids signing; sent unsigned
            log.warning("not DKIM-signed: %s", exc)
    return copy, links


def sign_batch(payload: tuple[list, list], memo: dict) -> list[tuple[bool, Any]]:
    """In the child: ``payload`` is ``(new_keys, items)``, ``new_keys`` ``[(kid, domain, selector, pem), ...]``
    (kept in ``memo`` for later batches), ``items`` ``[(message, (kid, ...), spec or None, want_links), ...]``.
    One answer per item: ``(True, header_fields)`` for a plain signature, ``(True, (copy, links))`` for a
    rendered one, or ``(False, error_text)``."""
    keys: dict[int, dkim.DkimKey] = memo.setdefault("keys", {})
    new_keys, items = payload
    for kid, domain, selector, pem in new_keys:
        keys[kid] = dkim.load_key(domain, selector, pem)
    answers: list[tuple[bool, Any]] = []
    for message, kids, spec, want_links in items:
        try:
            if spec is None:
                answers.append((True, dkim.signatures(message, [keys[k] for k in kids])))
            else:
                answers.append((True, _render_sign(message, [keys[k] for k in kids], spec, want_links)))
        except Exception as exc:  # noqa: BLE001 - reported per message; the parent decides
            kind = "render" if isinstance(exc, RenderError) else ("value" if isinstance(exc, ValueError) else "")
            answers.append((False, (kind, str(exc) if kind else f"{exc.__class__.__name__}: {exc}")))
    return answers


class _Signing(JobKind[_Item, Any]):
    name = "DKIM signing"
    target = f"{__name__}:sign_batch"
    batch = BATCH
    log = log

    def __init__(self) -> None:
        self._kid_of: weakref.WeakKeyDictionary[dkim.DkimKey, int] = weakref.WeakKeyDictionary()
        self._kid_by_spec: dict[tuple[str, str, bytes], int] = {}
        self._key_spec: dict[int, tuple[int, str, str, bytes]] = {}

    def encode(self, items: list[_Item], sent: set) -> Any:
        new_keys = []
        out = []
        for message, keys, spec, want_links in items:
            kids = tuple(self._kid(k) for k in keys)
            for kid in kids:
                if kid not in sent:
                    sent.add(kid)
                    new_keys.append(self._key_spec[kid])
            out.append((message, kids, spec, want_links))
        return new_keys, out

    def decode(self, item: _Item, answer: Any) -> Any:
        ok, value = answer
        if not ok:
            kind, text = value
            raise RenderError(text) if kind == "render" else ValueError(text)
        if item[2] is not None:
            copy, links = value
            return copy, links
        return value + item[0]

    def run_here(self, item: _Item) -> Any:
        message, keys, spec, want_links = item
        if spec is not None:
            return _render_sign(message, list(keys), spec, want_links)
        return dkim.sign(message, list(keys))

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
        self.pool: WorkerPool[_Item, Any] = WorkerPool(_Signing(), workers)

    async def sign(self, message: bytes, keys: list[dkim.DkimKey]) -> bytes:
        if not keys:
            return message
        return await self.pool.run((message, tuple(keys), None, False))

    async def render(self, message: bytes, keys: list[dkim.DkimKey], spec: render_mod.RenderSpec,
                     want_links: bool = False) -> tuple[bytes, list[str] | None]:
        """One recipient's copy, signed with ``keys`` (see the module doc); raises ``RenderError``."""
        return await self.pool.run((message, tuple(keys), spec.wire(), want_links))

    async def close(self) -> None:
        """Stop the workers (pending messages are signed in process); idempotent."""
        await self.pool.close()

    @property
    def pids(self) -> list[int]:
        return self.pool.pids
