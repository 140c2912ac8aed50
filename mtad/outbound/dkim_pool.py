"""DKIM signing off the event loop's core: a few worker processes (``dkim_worker``) fed in batches.

``DkimSigner(workers).sign(message, keys)`` returns what ``dkim.sign`` returns, and raises its ``ValueError``.

Contract:
- ``workers == 0``: signed in this process, on the event loop (no thread hop: a thread per signature costs
  more CPU in GIL hand-offs than the signature itself).
- ``workers > 0``: started on first use (no DKIM, no processes), each a ``python`` importing only
  ``mtad.dkim``. Requests made in one loop iteration go out together, up to ``BATCH`` messages per write,
  to the worker with the least outstanding; the worker sends back only the header fields. All I/O is on
  the event loop: no threads.
- A worker that dies or answers garbage is replaced after ``RESTART_DELAY`` seconds (doubling to a minute
  while it keeps failing); its outstanding and later messages are signed in-process meanwhile. Nothing is
  lost, nothing is sent unsigned because of a worker.
- ``close()`` closes the workers' stdin and waits for them; a worker also exits when this process dies
  (its stdin reaches EOF), so SIGKILL leaves no orphan and no state behind.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import struct
import sys
import weakref
from collections import deque
from pathlib import Path

from mtad.mail import dkim

log = logging.getLogger("mtad.dkim")
BATCH = 32  # messages per write to a worker: ~8 ms of RSA-2048 signing
RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 60.0
_LEN = struct.Struct(">I")
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_WORKER_CODE = f"import sys; sys.path.insert(0, {_PACKAGE_ROOT!r}); from mtad.outbound.dkim_worker import main; main()"

_Item = tuple[asyncio.Future, bytes, list[dkim.DkimKey]]


class _Worker:
    """One worker process and the batches it has not answered yet (answers come in order)."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc
        self.known: set[int] = set()  # key ids already sent to it
        self.waiting: deque[list[_Item]] = deque()
        self.outstanding = 0  # messages in ``waiting``
        self.reader: asyncio.Task | None = None


class DkimSigner:
    def __init__(self, workers: int):
        self.size = max(0, workers)
        self._workers: list[_Worker] = []
        self._pending: list[_Item] = []
        self._flush_scheduled = False
        self._starting: asyncio.Task | None = None
        self._restart: asyncio.TimerHandle | None = None
        self._delay = RESTART_DELAY
        self._closed = False
        self._kid_of: weakref.WeakKeyDictionary[dkim.DkimKey, int] = weakref.WeakKeyDictionary()
        self._kid_by_spec: dict[tuple[str, str, bytes], int] = {}
        self._reaping: set[asyncio.Task] = set()
        self._key_spec: dict[int, tuple[int, str, str, bytes]] = {}

    # --- public ------------------------------------------------------------------------------------
    async def sign(self, message: bytes, keys: list[dkim.DkimKey]) -> bytes:
        if not keys:
            return message
        if self.size == 0 or self._closed:
            return dkim.sign(message, keys)
        if not self._workers and self._starting is None and self._restart is None:
            self._starting = asyncio.get_running_loop().create_task(self._start())
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((fut, message, keys))
        self._schedule_flush()
        return await fut

    async def close(self) -> None:
        """Stop the workers (pending messages are signed in-process); idempotent."""
        self._closed = True
        if self._restart is not None:
            self._restart.cancel()
            self._restart = None
        if self._starting is not None:
            self._starting.cancel()
            await asyncio.gather(self._starting, return_exceptions=True)
            self._starting = None
        workers, self._workers = self._workers, []
        for w in workers:
            self._sign_here([item for batch in w.waiting for item in batch])
            w.waiting.clear()  # its reader goes on draining answers nobody waits for, so the worker never blocks
            try:
                w.proc.stdin.close()
            except Exception:  # noqa: BLE001 - already gone
                pass
        for w in workers:
            try:
                await asyncio.wait_for(w.proc.wait(), 2)
            except asyncio.TimeoutError:
                w.proc.kill()
                await w.proc.wait()
            if w.reader is not None:
                w.reader.cancel()
        self._sign_here(self._pending)
        self._pending = []

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    # --- workers -----------------------------------------------------------------------------------
    async def _start(self) -> None:
        try:
            for _ in range(self.size - len(self._workers)):
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-c", _WORKER_CODE, stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE, stderr=None)
                worker = _Worker(proc)
                worker.reader = asyncio.get_running_loop().create_task(self._read(worker))
                self._workers.append(worker)
            log.debug("DKIM signing workers started: %s", self.pids)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - sign in-process until a retry works
            log.error("cannot start a DKIM signing worker (signing in-process meanwhile): %s", exc)
            self._schedule_restart()
        finally:
            self._starting = None
            self._schedule_flush()

    def _schedule_restart(self) -> None:
        if self._closed or self._restart is not None:
            return
        loop = asyncio.get_running_loop()
        self._restart = loop.call_later(self._delay, self._restarted)
        self._delay = min(self._delay * 2, MAX_RESTART_DELAY)

    def _restarted(self) -> None:
        self._restart = None
        if not self._closed and self._starting is None and len(self._workers) < self.size:
            self._starting = asyncio.get_running_loop().create_task(self._start())

    async def _read(self, worker: _Worker) -> None:
        stdout = worker.proc.stdout
        try:
            while True:
                head = await stdout.readexactly(4)
                answers = pickle.loads(await stdout.readexactly(_LEN.unpack(head)[0]))
                if self._closed and not worker.waiting:
                    continue  # closing: those messages were signed in-process already
                batch = worker.waiting.popleft()
                worker.outstanding -= len(batch)
                if len(answers) != len(batch):
                    raise ValueError(f"{len(answers)} answers for {len(batch)} messages")
                for (fut, message, _keys), (ok, value) in zip(batch, answers):
                    if fut.done():
                        continue
                    if ok:
                        fut.set_result(value + message)
                    else:
                        fut.set_exception(ValueError(value))
                if not worker.waiting:
                    self._delay = RESTART_DELAY  # answering again: the next failure restarts quickly
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - EOF (the worker died) or a broken answer
            self._lost(worker, exc)

    def _lost(self, worker: _Worker, exc: BaseException) -> None:
        if worker not in self._workers:
            return
        self._workers.remove(worker)
        if worker.proc.returncode is None:
            worker.proc.kill()
        reap = asyncio.get_running_loop().create_task(worker.proc.wait())  # no zombie
        self._reaping.add(reap)
        reap.add_done_callback(self._reaping.discard)
        unanswered = [item for batch in worker.waiting for item in batch]
        worker.waiting.clear()
        if not self._closed:
            log.warning("DKIM signing worker %d lost (%s); %d messages signed in-process, restarting",
                        worker.proc.pid, exc.__class__.__name__ if isinstance(exc, EOFError) else exc,
                        len(unanswered))
        self._sign_here(unanswered)
        self._schedule_restart()

    # --- batching ----------------------------------------------------------------------------------
    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._pending:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending = [item for item in self._pending if not item[0].done()]
        self._pending = []
        if not pending:
            return
        if not self._workers:
            if self._starting is not None:  # a worker is on its way: wait for it (about 0.1 s)
                self._pending = pending
            else:
                self._sign_here(pending)
            return
        for start in range(0, len(pending), BATCH):
            worker = min(self._workers, key=lambda w: w.outstanding)
            batch = pending[start:start + BATCH]
            try:
                self._send(worker, batch)
            except Exception as exc:  # noqa: BLE001 - its pipe broke: the reader reports the loss
                self._sign_here(batch)
                self._lost(worker, exc)
                if not self._workers:
                    self._sign_here(pending[start + BATCH:])
                    return

    def _send(self, worker: _Worker, batch: list[_Item]) -> None:
        new_keys = []
        items = []
        for _fut, message, keys in batch:
            kids = tuple(self._kid(k) for k in keys)
            for kid in kids:
                if kid not in worker.known:
                    worker.known.add(kid)
                    new_keys.append(self._key_spec[kid])
            items.append((message, kids))
        data = pickle.dumps((new_keys, items), protocol=pickle.HIGHEST_PROTOCOL)
        worker.proc.stdin.write(_LEN.pack(len(data)) + data)
        worker.waiting.append(batch)
        worker.outstanding += len(batch)

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

    @staticmethod
    def _sign_here(items: list[_Item]) -> None:
        for fut, message, keys in items:
            if fut.done():
                continue
            try:
                fut.set_result(dkim.sign(message, keys))
            except ValueError as exc:
                fut.set_exception(exc)
