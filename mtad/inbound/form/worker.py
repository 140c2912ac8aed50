"""Route POST forms built in worker processes, off mtad's event loop and its GIL.

``FormWorkers(processes)`` starts ``python -m mtad.formworker`` children on first use and keeps them.
``await workers.build(jobs)`` sends a batch of ``FormJob`` to the least busy child in one frame and
returns one ``FormParts`` per job, in order (a job the child could not build comes back as None: the
caller builds it itself). A child that dies, or takes longer than ``timeout`` for a batch, is killed
and replaced; that batch raises ``WorkerUnavailable`` and the caller builds its forms in process.

Frames on the pipes: an 8-byte big-endian length, then ``marshal`` data (plain tuples of bytes, str,
bool and int, nothing executable). A child exits when its stdin closes, so it never outlives mtad.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import marshal
import os
import signal
import struct
import sys
from dataclasses import dataclass

from mtad.inbound.form.build import FormParts, form_parts

log = logging.getLogger("mtad.formworker")

_HEADER = struct.Struct(">Q")


@dataclass(frozen=True)
class FormJob:
    body: bytes
    recipient: str
    sender: str
    raw: bool  # the raw-MIME format
    max_depth: int = 20


class WorkerUnavailable(Exception):
    pass


def _run_job(job: tuple) -> tuple | None:
    try:
        parts = form_parts(*job)
    except Exception:  # noqa: BLE001 - form_parts does not raise by contract; the caller retries in process
        log.exception("form could not be built in the worker")
        return None
    return parts.head, parts.tail, parts.boundary


def main() -> None:
    """The child: read batches from stdin, write results to stdout, until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C in a terminal reaches the whole group; mtad decides
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but frames may reach the pipe
    while True:
        header = stdin.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return
        (size,) = _HEADER.unpack(header)
        jobs = marshal.loads(stdin.read(size))
        out = marshal.dumps([_run_job(job) for job in jobs])
        stdout.write(_HEADER.pack(len(out)) + out)
        stdout.flush()


class _Child:
    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc
        self.waiting: collections.deque[asyncio.Future] = collections.deque()
        self.reader = asyncio.create_task(self._read())

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None and not self.reader.done()

    async def _read(self) -> None:
        stream = self.proc.stdout
        try:
            while True:
                (size,) = _HEADER.unpack(await stream.readexactly(_HEADER.size))
                results = marshal.loads(await stream.readexactly(size))
                future = self.waiting.popleft()
                if not future.done():
                    future.set_result(results)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, EOFError, IndexError) as exc:
            self._fail(f"form worker {self.proc.pid} gone: {exc.__class__.__name__}")

    def _fail(self, why: str) -> None:
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(WorkerUnavailable(why))

    async def send(self, jobs: list[tuple]) -> asyncio.Future:
        data = marshal.dumps(jobs)
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        try:
            self.proc.stdin.write(_HEADER.pack(len(data)) + data)
            await self.proc.stdin.drain()
        except BaseException:
            if future in self.waiting:
                self.waiting.remove(future)
            future.cancel()
            self.kill()  # a frame may be half written: this child's stream is no longer usable
            raise
        return future

    def kill(self) -> None:
        if self.proc.returncode is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
        self.reader.cancel()
        self._fail("form worker stopped")


class FormWorkers:
    def __init__(self, processes: int = 1, *, timeout: float = 120.0):
        self.processes = max(1, processes)
        self.timeout = timeout
        self._children: list[_Child] = []
        self._starting: asyncio.Lock | None = None
        self.batches = 0
        self.failures = 0
        self.closed = False

    async def _child(self) -> _Child:
        """The least busy live child, starting one while there are fewer than ``processes``."""
        self._children = [c for c in self._children if c.alive]
        idle = [c for c in self._children if not c.waiting]
        if idle or len(self._children) >= self.processes:
            return min(self._children, key=lambda c: len(c.waiting))
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if len(self._children) < self.processes:
                self._children.append(await self._spawn())
        return min(self._children, key=lambda c: len(c.waiting))

    async def _spawn(self) -> _Child:
        import mtad
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(mtad.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mtad.inbound.form.worker", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env=env, limit=1 << 20)
        log.info("form worker started (pid %d)", proc.pid)
        return _Child(proc)

    async def build(self, jobs: list[FormJob]) -> list[FormParts | None]:
        if self.closed:  # shutting down: the caller builds in process
            raise WorkerUnavailable("form workers closed")
        try:
            child = await self._child()
            future = await child.send([(j.body, j.recipient, j.sender, j.raw, j.max_depth) for j in jobs])
        except (OSError, ConnectionError, RuntimeError) as exc:  # RuntimeError: uvloop's closed pipe
            self.failures += 1
            raise WorkerUnavailable(f"form worker: {exc}") from exc
        try:
            results = await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except asyncio.TimeoutError:
            self.failures += 1
            log.error("form worker %d: no answer in %gs; restarting it", child.proc.pid, self.timeout)
            child.kill()
            raise WorkerUnavailable("form worker timed out") from None
        except WorkerUnavailable:
            self.failures += 1
            child.kill()
            raise
        self.batches += 1
        return [FormParts(*r) if r is not None else None for r in results]

    async def close(self) -> None:
        self.closed = True
        for child in self._children:
            if child.proc.returncode is None and child.proc.stdin is not None:
                child.proc.stdin.close()  # the child exits at end of input
        for child in self._children:
            try:
                await asyncio.wait_for(child.proc.wait(), 5)
            except asyncio.TimeoutError:
                child.kill()
            child.reader.cancel()
        self._children = []


if __name__ == "__main__":
    main()
