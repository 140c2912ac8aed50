"""``QueueStore.enqueue_stream``, run on every backend: the items a function yields are written one by one in one
transaction, all or none; an exception from the iteration stores nothing and reaches the caller; the items are
pulled as they are written (never all built first)."""

from __future__ import annotations

import tracemalloc

import pytest

from mtad.base.types import Envelope, HeaderSummary, NewMessage, SendOptions
from mtad.events import shape
from mtad.store import queue as spool
from tests.support.stores import backend_store  # noqa: F401 - the fixture: each test on every backend


def item(n: int, now: float = 1.0, size: int = 1000) -> spool.Enqueue:
    rcpt = f"r{n}@x.test"
    msg = NewMessage(Envelope("s@example.com", (rcpt,), auth_user="api", transport="http"),
                     b"Subject: t\r\n\r\n" + b"x" * size + b"\r\n", "outbound", "example.com",
                     HeaderSummary(f"id{n}@example.com", "s@example.com", rcpt, "t"), SendOptions())
    qid = spool.new_queue_id()
    return spool.Enqueue(qid, msg, tuple(shape.accepted(msg, qid, now)), (), (rcpt,))


async def test_all_items_are_committed_together(backend_store):
    store = backend_store()
    pulled = []

    def make():
        for n in range(200):
            pulled.append(n)
            yield item(n)
    written = await store.enqueue_stream(make, 1.0)
    assert len(written) == 200 and all(w.has_work and w.recipients == 1 for w in written)
    assert await store.count_messages() == 200
    assert len({w.queue_id for w in written}) == 200


async def test_items_are_pulled_as_they_are_written_not_all_held(backend_store):
    store = backend_store()
    tracemalloc.start()
    try:
        written = await store.enqueue_stream(lambda: (item(n, size=100_000) for n in range(300)), 1.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(written) == 300 and await store.count_messages() == 300
    assert peak < 15_000_000, f"{peak} bytes at the peak for 300 x 100 KB: the items were held together"


async def test_an_exception_from_the_iteration_stores_nothing(backend_store):
    store = backend_store()

    class Broken(ValueError):
        pass

    def make():
        for n in range(100):
            if n == 70:
                raise Broken("copy 70 cannot be built")
            yield item(n)
    with pytest.raises(Broken):
        await store.enqueue_stream(make, 1.0)
    assert await store.count_messages() == 0
    written = await store.enqueue_stream(lambda: (item(n) for n in range(3)), 1.0)  # the store still works
    assert len(written) == 3 and await store.count_messages() == 3
