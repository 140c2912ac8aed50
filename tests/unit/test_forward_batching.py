"""The forward path's pieces: coalesced batches, forms built in a worker process, the small HTTP client."""

from __future__ import annotations

import asyncio
import random

from mtad.inbound.form import quotes
from mtad.inbound.form import build as routeform
from mtad.base.coalesce import Coalescer
from mtad.net.fasthttp import FastPoster
from mtad.inbound.form.jobs import FormJob, form_pool

MESSAGE = (b"From: A <a@example.com>\r\nTo: b@example.net\r\nSubject: hi\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n"
           b"--x\r\nContent-Type: text/plain\r\n\r\nHello\r\n\r\nOn Mon, Bob wrote:\r\n> old\r\n--x\r\n"
           b"Content-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"r.pdf\"\r\n\r\n%PDF\r\n--x--\r\n")


def test_coalescer_runs_one_call_per_burst_and_keeps_order():
    calls = []

    async def run(items):
        calls.append(list(items))
        await asyncio.sleep(0)
        return [i * 2 for i in items]

    async def main():
        c = Coalescer(run)
        return await asyncio.gather(*(c.submit(i) for i in range(10)))
    assert asyncio.run(main()) == [i * 2 for i in range(10)]
    assert calls == [list(range(10))]


def test_a_failing_batch_fails_each_caller():
    async def run(items):
        raise ValueError("boom")

    async def main():
        c = Coalescer(run)
        return await asyncio.gather(*(c.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in asyncio.run(main()))


def test_with_an_interval_the_first_item_runs_at_once_and_the_next_ones_share_a_call():
    calls = []

    async def run(items):
        calls.append(list(items))
        return [i * 2 for i in items]

    async def main():
        c = Coalescer(run, interval=0.3)
        first = c.enqueue(0)
        assert await first == 0  # after a quiet spell: at once
        futures = []
        for i in range(1, 5):  # slower than a call takes: without the interval, one call each
            futures.append(c.enqueue(i))
            await asyncio.sleep(0.01)
        assert not any(f.done() for f in futures)  # enqueue does not wait
        return await asyncio.gather(*futures)
    assert asyncio.run(main()) == [2, 4, 6, 8]
    assert calls == [[0], [1, 2, 3, 4]]


def test_with_an_interval_a_full_batch_does_not_wait():
    calls = []

    async def run(items):
        calls.append(len(items))
        return items

    async def main():
        c = Coalescer(run, interval=30, max_batch=4)
        await c.enqueue(0)
        return await asyncio.wait_for(asyncio.gather(*(c.enqueue(i) for i in range(1, 9))), 5)
    assert asyncio.run(main()) == list(range(1, 9))
    assert calls == [1, 4, 4]


def test_signed_parts_are_the_form_encode_form_makes():
    parts = routeform.form_parts(MESSAGE, "b@example.net", "a@example.com", raw=False)
    form = routeform.sign(parts, "key")
    assert form.content_type == f"multipart/form-data; boundary={parts.boundary}"
    assert form.body.startswith(parts.head) and form.body.endswith(parts.tail)
    middle = form.body[len(parts.head):len(form.body) - len(parts.tail)]
    assert [b'name="timestamp"' in middle, b'name="token"' in middle, b'name="signature"' in middle] == [True] * 3
    assert b'filename="r.pdf"' in parts.tail and parts.tail.endswith(f"--{parts.boundary}--\r\n".encode())


def test_worker_process_builds_what_the_process_would():
    async def main():
        workers = form_pool(1)
        try:
            jobs = [FormJob(MESSAGE, "b@example.net", "a@example.com", raw) for raw in (False, True)]
            built = await workers.run_many(jobs)
            assert len(workers.pids) == 1  # built by the worker, not in process
            return built
        finally:
            await workers.close()
    built = asyncio.run(main())
    for parts, raw in zip(built, (False, True)):
        local = routeform.form_parts(MESSAGE, "b@example.net", "a@example.com", raw)
        assert parts.head.replace(parts.boundary.encode(), b"B") == local.head.replace(local.boundary.encode(), b"B")
        assert parts.tail.replace(parts.boundary.encode(), b"B") == local.tail.replace(local.boundary.encode(), b"B")


async def _serve(replies: list[bytes]):
    async def handle(reader, writer):
        for reply in replies:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int([ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")][0].split(b":")[1])
            await reader.readexactly(length)
            writer.write(reply)
            await writer.drain()
        writer.close()
    return await asyncio.start_server(handle, "127.0.0.1", 0)


def test_fast_client_reads_sized_and_chunked_replies_on_one_connection():
    replies = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
               b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nbad\r\n0\r\n\r\n",
               b"HTTP/1.1 406 No\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"]

    async def main():
        server = await _serve(replies)
        port = server.sockets[0].getsockname()[1]
        poster = FastPoster()
        out = [await poster.post("127.0.0.1", port, "/p", f"127.0.0.1:{port}", b"x" * n, {}, 5) for n in (1, 10, 100)]
        poster.close()
        server.close()
        return out
    assert asyncio.run(main()) == [(200, b"ok"), (500, b"bad"), (406, b"")]


def test_the_quote_prefilter_never_hides_a_quote():
    frags = ["On Tue, Jan 2 John wrote:", "> quoted", "-----Original Message-----", "From: x", "Sent: y",
             "____________", "Le 2 janv a écrit :", "hello", "", "Thanks,", "-- ", "*From:* a", "\u2003> odd"]
    rng = random.Random(1)
    for _ in range(5000):
        body = rng.choice(["\n", "\r\n"]).join(rng.choice(frags) for _ in range(rng.randint(1, 10)))
        lines = body.replace("\r\n", "\n").split("\n")
        text, sig = quotes._split_signature(quotes._cut_quotes(lines))
        assert quotes.strip_text(body) == ("\n".join(text).strip(), "\n".join(sig).strip())


def test_fast_client_sends_again_when_a_kept_alive_connection_was_closed_by_the_server():
    """The keep-alive race: the server closes an idle connection; the next POST goes out on a new one."""
    received = []

    async def handle(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int([ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")][0].split(b":")[1])
        received.append(await reader.readexactly(length))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # says keep-alive...
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.close()  # ...then closes without reading the next request, as a server's idle timeout would

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        poster = FastPoster()
        first = await poster.post("127.0.0.1", port, "/p", "h", b"one", {}, 5)
        await asyncio.sleep(0.05)  # the second POST goes out on the pooled connection, which the server then closes
        second = await poster.post("127.0.0.1", port, "/p", "h", b"two", {}, 5)
        poster.close()
        server.close()
        return first, second
    assert asyncio.run(main()) == ((200, b"ok"), (200, b"ok"))
    assert received == [b"one", b"two"]


def test_fast_client_reads_a_body_delimited_by_the_end_of_the_connection_and_refuses_garbage():
    async def main(reply):
        async def handle(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(reply)
            await writer.drain()
            writer.close()
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        poster = FastPoster()
        try:
            return await poster.post("127.0.0.1", port, "/p", "h", b"", {}, 5)
        except OSError as exc:
            return type(exc).__name__
        finally:
            poster.close()
            server.close()
    assert asyncio.run(main(b"HTTP/1.0 202 Accepted\r\n\r\nqueued")) == (202, b"queued")
    assert asyncio.run(main(b"SMTP 220 hello\r\n")) == "BadResponse"
