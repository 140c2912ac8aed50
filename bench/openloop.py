"""An open-loop HTTP/1.1 load generator (wrk2's method), for ``tracking_bench.py endpoint --rate``.

``run(port, path, headers, rate=R, duration=D, connections=C, processes=P)`` sends ``R x D`` GET requests over
``C`` keep-alive connections split across ``P`` processes (so that the generator is not the bottleneck on its
own core). Request ``i`` is due at ``t0 + i / R`` whatever happened to the earlier ones (process ``k`` sends
requests ``k, k + P, k + 2P, ...``): a request due while every connection of its process still waits for an
answer waits in a FIFO for the first free one, and its latency is measured from when it was DUE, not when it
went out, so a server that stalls pays for every request it delayed (no coordinated omission). Latency is
therefore "what a user clicking at that instant saw". Each process reports its latencies, status counts,
errors (connection lost with a request in flight, malformed answers, no answer within ``timeout`` after the
last request was due) and the CPU time it used, which ``Result`` sums.
"""

from __future__ import annotations

import array
import asyncio
import multiprocessing
import re
import resource
import time
from collections import Counter, deque
from dataclasses import dataclass, field

_LENGTH = re.compile(rb"(?i)\r\ncontent-length:[ \t]*(\d+)")
_CHUNKED = re.compile(rb"(?i)\r\ntransfer-encoding:[ \t]*chunked")


@dataclass
class Result:
    """The merged figures of one run."""

    offered: float  # requests/s asked for
    sent: int  # requests due (rate x duration)
    latencies: list[float] = field(default_factory=list)  # seconds from due to answered, answered requests
    statuses: Counter = field(default_factory=Counter)
    errors: int = 0
    elapsed: float = 0.0  # from t0 to the last answer
    cpu: float = 0.0  # the generator's CPU seconds (all processes)

    @property
    def achieved(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    def pct(self, p: float) -> float:
        """The ``p``-th percentile latency in ms (nearest rank)."""
        if not self.latencies:
            return float("nan")
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, max(0, int(round(p / 100 * len(xs))) - 1))] * 1000


class _Conn(asyncio.Protocol):
    def __init__(self, gen: "_Generator"):
        self.gen = gen
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.due: float | None = None  # the in-flight request's due time

    def connection_made(self, transport):  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end + 2])
            if _CHUNKED.search(head):
                last = self.buf.find(b"\r\n0\r\n\r\n", end)
                if last < 0:
                    return
                total = last + 7
            else:
                m = _LENGTH.search(head)
                total = end + 4 + (int(m.group(1)) if m else 0)
            if len(self.buf) < total:
                return
            del self.buf[:total]
            try:
                status = int(head[9:12])
            except ValueError:
                status = 0
            self.gen.answered(self, status)

    def connection_lost(self, exc) -> None:
        self.gen.lost(self)


class _Generator:
    def __init__(self, request: bytes):
        self.request = request
        self.idle: deque[_Conn] = deque()
        self.backlog: deque[float] = deque()
        self.latencies = array.array("d")
        self.statuses: Counter = Counter()
        self.errors = 0
        self.in_flight = 0
        self.last_answer = 0.0
        self.port = 0
        self.all_answered: asyncio.Event | None = None
        self.dispatched_all = False

    def dispatch(self, due: float) -> None:
        self.in_flight += 1
        if self.idle:
            self._send(self.idle.popleft(), due)
        else:
            self.backlog.append(due)

    def _send(self, conn: _Conn, due: float) -> None:
        conn.due = due
        conn.transport.write(self.request)

    def answered(self, conn: _Conn, status: int) -> None:
        now = time.monotonic()
        if conn.due is not None:
            self.latencies.append(now - conn.due)
            self.statuses[status] += 1
            self.last_answer = now
            self._finished()
        conn.due = None
        if self.backlog:
            self._send(conn, self.backlog.popleft())
        else:
            self.idle.append(conn)

    def _finished(self) -> None:
        self.in_flight -= 1
        if self.dispatched_all and self.in_flight == 0 and self.all_answered is not None:
            self.all_answered.set()

    def lost(self, conn: _Conn) -> None:
        if conn.due is not None:
            self.errors += 1
            conn.due = None
            self._finished()
        if conn in self.idle:
            self.idle.remove(conn)
        if not self.dispatched_all or self.in_flight:
            asyncio.get_running_loop().create_task(self.connect())

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(lambda: _Conn(self), "127.0.0.1", self.port)
        except OSError:
            self.errors += 1
            return
        if self.backlog:
            self._send(conn, self.backlog.popleft())
        else:
            self.idle.append(conn)


async def _drive(pipe, port: int, request: bytes, connections: int, rate: float, index: int, processes: int,
                 total: int, timeout: float) -> tuple:
    gen = _Generator(request)
    gen.port = port
    gen.all_answered = asyncio.Event()
    await asyncio.gather(*(gen.connect() for _ in range(connections)))
    loop = asyncio.get_running_loop()
    pipe.send("ready")
    t0 = await loop.run_in_executor(None, pipe.recv)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    mine = range(index, total, processes)
    i = 0
    while i < len(mine):
        now = time.monotonic()
        while i < len(mine) and t0 + mine[i] / rate <= now:
            gen.dispatch(t0 + mine[i] / rate)
            i += 1
        if i < len(mine):
            await asyncio.sleep(max(0.0, t0 + mine[i] / rate - time.monotonic()))
    gen.dispatched_all = True
    if gen.in_flight:
        try:
            await asyncio.wait_for(gen.all_answered.wait(), timeout)
        except asyncio.TimeoutError:
            pass
    gen.errors += gen.in_flight  # never answered
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return gen.latencies.tobytes(), dict(gen.statuses), gen.errors, gen.last_answer, cpu


def _worker(pipe, *args) -> None:
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    pipe.send(asyncio.run(_drive(pipe, *args)))


def run(port: int, path: str, headers: dict[str, str], *, rate: float, duration: float, connections: int = 200,
        processes: int = 2, timeout: float = 30.0) -> Result:
    """Offer ``rate`` requests/s of ``GET path`` to 127.0.0.1:``port`` for ``duration`` seconds (module doc)."""
    total = int(rate * duration)
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
    ctx = multiprocessing.get_context("fork")
    pipes, procs = [], []
    for k in range(processes):
        mine, theirs = ctx.Pipe()
        share = connections // processes + (1 if k < connections % processes else 0)
        p = ctx.Process(target=_worker, args=(theirs, port, request, share, rate, k, processes, total, timeout),
                        daemon=True)
        p.start()
        pipes.append(mine)
        procs.append(p)
    for pipe in pipes:
        if pipe.recv() != "ready":
            raise RuntimeError("load generator did not start")
    t0 = time.monotonic() + 0.2
    for pipe in pipes:
        pipe.send(t0)
    result = Result(rate, total)
    last = t0
    for pipe, p in zip(pipes, procs):
        lat, statuses, errors, last_answer, cpu = pipe.recv()
        p.join(10)
        xs = array.array("d")
        xs.frombytes(lat)
        result.latencies.extend(xs)
        result.statuses.update(statuses)
        result.errors += errors
        result.cpu += cpu
        last = max(last, last_answer)
    result.elapsed = last - t0
    return result
