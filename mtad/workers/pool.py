"""The helper-process pool: jobs of one kind, batched to a few child processes, done in process when none can.

``WorkerPool(kind, processes)``; ``await pool.run(item)`` returns what ``kind.run_here(item)`` returns, and
raises what it raises; ``await pool.run_many(items)`` does a list, answers in order. A ``JobKind`` (subclassed
by the package that owns the job) says how items cross to a child and back, and how to do one here.

Contract:
- ``processes == 0``: every item is done in this process: on the event loop (no thread hop: for small jobs a
  thread costs more CPU in GIL hand-offs than the job), or in a thread when ``kind.offload(item)``.
- ``processes > 0``: the children start together at the first item (none before: a pool never used costs
  nothing), each ``python -c`` running ``mtad.workers.child`` on ``kind.target``. Items submitted in one loop
  iteration go out together, up to ``kind.batch`` items per write, to the child with the fewest items
  outstanding; a child answers its batches in order. All I/O is on the event loop: no threads.
  ``kind.hold_while_busy``: while every child has a batch unanswered, new items wait here and go out together
  when one answers (fewer writes, reads and wake-ups on both sides when items come faster than a child does
  them; an item waits no longer than it would have in the pipe behind that batch).
- A child that dies, answers garbage or does not answer a batch within ``kind.timeout`` is killed and replaced
  after ``RESTART_DELAY`` seconds (doubling to ``MAX_RESTART_DELAY`` while it keeps failing); its outstanding
  items, and those submitted while no child runs, are done in process. A batch the job function failed as a
  whole (``(False, text)``), or an item whose answer ``kind.decode`` refuses with ``RunHere``, is done in
  process too. Nothing is lost and nothing is done twice for its caller.
- ``close()`` closes the children's stdin and waits for them (killing one that takes over 5 s); what they had
  not answered is done in process, and so is everything submitted after. A child also exits when this process
  dies (its stdin reaches EOF), so SIGKILL leaves no orphan.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections import deque
from pathlib import Path
from typing import Any, Generic, TypeVar

from mtad.workers import wire

I = TypeVar("I")  # noqa: E741 - an item
R = TypeVar("R")  # its result

RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 60.0
CLOSE_WAIT = 5.0
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_CHILD_CODE = (f"import sys; sys.path.insert(0, {_PACKAGE_ROOT!r}); "
               f"from mtad.workers.child import main; main(sys.argv[1])")


def child_argv(target: str) -> list[str]:
    """The command line of a child running ``target`` (what ``ps`` shows)."""
    return [sys.executable, "-c", _CHILD_CODE, target]


class RunHere(Exception):
    """Raised by ``JobKind.decode``: the child could not do this item; the pool does it in process."""


class JobKind(Generic[I, R]):
    """One kind of job, as its owning package defines it. Override what differs from these defaults.

    - ``target``: ``"package.module:function"``, imported by the child; ``function(payload, memo)`` gets what
      ``encode`` made of a batch and returns one plain-data answer per item (``memo``: a dict kept by the child
      across batches).
    - ``encode(items, sent)``: a batch as plain data (``wire``); ``sent`` is a set kept per child, empty for a new
      one, for things sent to that child once (keys, say).
    - ``decode(item, answer)``: the caller's result, or raise (the caller gets the exception; ``RunHere`` makes
      the pool do the item in process).
    - ``run_here(item)``: the same job in this process; ``offload(item)``: do that in a thread.
    """

    name = "job"  # in log lines: "<name> worker 1234 lost ..."
    target = ""
    batch = 32  # items per write to a child
    timeout: float | None = None  # seconds a child may take over a batch before it is replaced
    hold_while_busy = False  # True: items wait while every child is busy, then go in one batch (module doc)
    log = logging.getLogger("mtad.workers")

    def encode(self, items: list[I], sent: set) -> Any:
        return items

    def decode(self, item: I, answer: Any) -> R:
        return answer

    def run_here(self, item: I) -> R:
        raise NotImplementedError

    def offload(self, item: I) -> bool:
        return False


class _Batch:
    __slots__ = ("items", "timer")

    def __init__(self, items: list[tuple[asyncio.Future, Any]]):
        self.items = items
        self.timer: asyncio.TimerHandle | None = None


class _Child:
    """One child process and the batches it has not answered yet (answers come in order)."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc
        self.sent: set = set()
        self.waiting: deque[_Batch] = deque()
        self.outstanding = 0  # items in ``waiting``
        self.reader: asyncio.Task | None = None


class WorkerPool(Generic[I, R]):
    def __init__(self, kind: JobKind[I, R], processes: int):
        self.kind = kind
        self.size = max(0, processes)
        self._children: list[_Child] = []
        self._pending: list[tuple[asyncio.Future, Any]] = []
        self._flush_scheduled = False
        self._starting: asyncio.Task | None = None
        self._restart: asyncio.TimerHandle | None = None
        self._delay = RESTART_DELAY
        self._closed = False
        self._tasks: set[asyncio.Task] = set()  # reaping children, jobs in threads

    # --- public ------------------------------------------------------------------------------------
    async def run(self, item: I) -> R:
        return await self._submit(item)

    async def run_many(self, items: list[I]) -> list[R]:
        """Each item's result, in order; raises the first item's exception once all are done."""
        results = await asyncio.gather(*(self._submit(i) for i in items), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return results

    async def close(self) -> None:
        """Stop the children (what they had not answered is done in process); idempotent."""
        self._closed = True
        if self._restart is not None:
            self._restart.cancel()
            self._restart = None
        if self._starting is not None:
            self._starting.cancel()
            await asyncio.gather(self._starting, return_exceptions=True)
            self._starting = None
        children, self._children = self._children, []
        for c in children:
            self._run_here(self._unanswered(c))  # its reader drains answers nobody waits for: it never blocks
            try:
                c.proc.stdin.close()
            except Exception:  # noqa: BLE001 - already gone
                pass
        for c in children:
            try:
                await asyncio.wait_for(c.proc.wait(), CLOSE_WAIT)
            except asyncio.TimeoutError:
                c.proc.kill()
                await c.proc.wait()
            if c.reader is not None:
                c.reader.cancel()
        pending, self._pending = self._pending, []
        self._run_here(pending)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def pids(self) -> list[int]:
        return [c.proc.pid for c in self._children]

    # --- submitting --------------------------------------------------------------------------------
    def _submit(self, item: I) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if self.size == 0 or self._closed:
            self._run_here([(fut, item)])
            return fut
        if not self._children and self._starting is None and self._restart is None:
            self._starting = loop.create_task(self._start())
        self._pending.append((fut, item))
        self._schedule_flush()
        return fut

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._pending:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending = [entry for entry in self._pending if not entry[0].done()]
        self._pending = []
        if not pending:
            return
        if not self._children:
            if self._starting is not None:  # children are on their way: wait for them (about 0.1 s)
                self._pending = pending
            else:
                self._run_here(pending)
            return
        if self.kind.hold_while_busy and all(c.waiting for c in self._children):
            self._pending = pending  # sent when a child answers (``_read``) or is lost (``_lost``)
            return
        size = max(1, self.kind.batch)
        for start in range(0, len(pending), size):
            batch = pending[start:start + size]
            if not self._children:
                self._run_here(batch)
                continue
            self._send(min(self._children, key=lambda c: c.outstanding), batch)

    def _send(self, child: _Child, items: list[tuple[asyncio.Future, Any]]) -> None:
        try:
            data = wire.frame(self.kind.encode([item for _fut, item in items], child.sent))
        except Exception:  # noqa: BLE001 - a job kind's bug, not the child's: done here, loudly
            self.kind.log.exception("%s: a batch could not be encoded for a worker; done in process", self.kind.name)
            self._run_here(items)
            return
        batch = _Batch(items)
        child.waiting.append(batch)
        child.outstanding += len(items)
        try:
            child.proc.stdin.write(data)
        except Exception as exc:  # noqa: BLE001 - its pipe broke: lost, its batches done here
            self._lost(child, exc)
            return
        if self.kind.timeout is not None:
            batch.timer = asyncio.get_running_loop().call_later(self.kind.timeout, self._overdue, child, batch)

    # --- answers -----------------------------------------------------------------------------------
    async def _read(self, child: _Child) -> None:
        try:
            while True:
                ok, answers = await wire.read_async(child.proc.stdout)
                if not child.waiting:
                    if self._closed:
                        continue  # closing: those items were done in process already
                    raise ValueError("an answer for no batch")
                batch = child.waiting.popleft()
                child.outstanding -= len(batch.items)
                if batch.timer is not None:
                    batch.timer.cancel()
                if not ok:
                    self.kind.log.error("%s worker %d failed a batch (%s); %d done in process", self.kind.name,
                                        child.proc.pid, answers, len(batch.items))
                    self._run_here(batch.items)
                    continue
                if len(answers) != len(batch.items):
                    raise ValueError(f"{len(answers)} answers for {len(batch.items)} items")
                self._answer(batch.items, answers)
                if not child.waiting:
                    self._delay = RESTART_DELAY  # answering again: the next failure restarts quickly
                    if self._pending:
                        self._schedule_flush()  # items held while it was busy
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - EOF (the child died) or a broken answer
            self._lost(child, exc)

    def _answer(self, items: list[tuple[asyncio.Future, Any]], answers: list) -> None:
        here = []
        for (fut, item), answer in zip(items, answers):
            if fut.done():
                continue
            try:
                fut.set_result(self.kind.decode(item, answer))
            except RunHere:
                here.append((fut, item))
            except Exception as exc:  # noqa: BLE001 - the item's own error, for its caller
                fut.set_exception(exc)
        self._run_here(here)

    def _overdue(self, child: _Child, batch: _Batch) -> None:
        if batch in child.waiting:
            self.kind.log.error("%s worker %d: no answer in %gs; restarting it", self.kind.name, child.proc.pid,
                                self.kind.timeout)
            self._lost(child, TimeoutError(f"no answer in {self.kind.timeout:g}s"))

    # --- children ----------------------------------------------------------------------------------
    async def _start(self) -> None:
        try:
            for _ in range(self.size - len(self._children)):
                proc = await asyncio.create_subprocess_exec(
                    *child_argv(self.kind.target), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                    stderr=None)
                child = _Child(proc)
                child.reader = asyncio.get_running_loop().create_task(self._read(child))
                self._children.append(child)
            self.kind.log.info("%s workers started (pids %s)", self.kind.name, " ".join(map(str, self.pids)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - done in process until a retry works
            self.kind.log.error("cannot start a %s worker (done in process meanwhile): %s", self.kind.name, exc)
            self._schedule_restart()
        finally:
            self._starting = None
            self._schedule_flush()

    def _schedule_restart(self) -> None:
        if self._closed or self._restart is not None:
            return
        self._restart = asyncio.get_running_loop().call_later(self._delay, self._restarted)
        self._delay = min(self._delay * 2, MAX_RESTART_DELAY)

    def _restarted(self) -> None:
        self._restart = None
        if not self._closed and self._starting is None and len(self._children) < self.size:
            self._starting = asyncio.get_running_loop().create_task(self._start())

    def _lost(self, child: _Child, exc: BaseException) -> None:
        if child not in self._children:
            return
        self._children.remove(child)
        if child.proc.returncode is None:
            child.proc.kill()
        self._track(asyncio.get_running_loop().create_task(child.proc.wait()))  # no zombie
        if child.reader is not None and child.reader is not asyncio.current_task():
            child.reader.cancel()
        unanswered = self._unanswered(child)
        if not self._closed:
            self.kind.log.warning("%s worker %d lost (%s); %d done in process, restarting", self.kind.name,
                                  child.proc.pid, exc.__class__.__name__ if isinstance(exc, EOFError) else exc,
                                  len(unanswered))
        self._run_here(unanswered)
        self._schedule_restart()
        self._schedule_flush()  # items held while it was busy: to another child, or here

    @staticmethod
    def _unanswered(child: _Child) -> list[tuple[asyncio.Future, Any]]:
        items = []
        for batch in child.waiting:
            if batch.timer is not None:
                batch.timer.cancel()
            items += batch.items
        child.waiting.clear()
        child.outstanding = 0
        return items

    # --- in process --------------------------------------------------------------------------------
    def _run_here(self, items: list[tuple[asyncio.Future, Any]]) -> None:
        for fut, item in items:
            if fut.done():
                continue
            if self.kind.offload(item):
                task = asyncio.get_running_loop().create_task(asyncio.to_thread(self.kind.run_here, item))
                task.add_done_callback(lambda t, fut=fut: _settle(fut, t))
                self._track(task)
                continue
            try:
                fut.set_result(self.kind.run_here(item))
            except Exception as exc:  # noqa: BLE001 - the item's own error, for its caller
                fut.set_exception(exc)

    def _track(self, task: asyncio.Task) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _settle(fut: asyncio.Future, task: asyncio.Task) -> None:
    if fut.done():
        return
    if task.cancelled():
        fut.cancel()
    elif task.exception() is not None:
        fut.set_exception(task.exception())
    else:
        fut.set_result(task.result())
