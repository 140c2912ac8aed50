import asyncio

import pytest

from mtad.smtp.dataread import DataRefused, clean, read_data


async def feed(chunks, max_size=10_000, eof=False):
    reader = asyncio.StreamReader(limit=2048)
    for chunk in chunks:
        reader.feed_data(chunk)
    if eof:
        reader.feed_eof()
    result = await read_data(reader, max_size)
    rest = reader._buffer[:]
    return result, bytes(rest)


async def test_only_crlf_dot_crlf_ends_data_and_pipelined_bytes_stay():
    result, rest = await feed([b"a\n.\nb\r\n.\rc", b"\r\n.\r\nMAIL FROM:<x@y>\r\n"])
    assert result.content == b"a\n.\nb\r\n.\rc\r\n"
    assert rest == b"MAIL FROM:<x@y>\r\n"


async def test_empty_message():
    result, rest = await feed([b".\r\nQUIT\r\n"])
    assert result.content == b"" and rest == b"QUIT\r\n"


async def test_terminator_split_over_reads():
    reader = asyncio.StreamReader()
    task = asyncio.create_task(read_data(reader, 1000))
    for piece in (b"hello\r", b"\n", b".", b"\r", b"\nNOOP\r\n"):
        reader.feed_data(piece)
        await asyncio.sleep(0)
    result = await task
    assert result.content == b"hello\r\n" and bytes(reader._buffer) == b"NOOP\r\n"


async def test_too_big_is_read_and_discarded():
    body = b"x" * 5000 + b"\r\n"
    result, rest = await feed([body[:3000], body[3000:] + b".\r\nRSET\r\n"], max_size=1000)
    assert result.content is None and result.size == len(body) and rest == b"RSET\r\n"


async def test_connection_closed_mid_data():
    with pytest.raises(asyncio.IncompleteReadError):
        await feed([b"partial\r\n"], eof=True)


@pytest.mark.parametrize("raw", [b"a\n.\nb\r\n", b"a\r\n.\nb\r\n", b"a\n.\r\nb\r\n", b"a\r.\rb\r\n", b"a\0b\r\n"])
def test_bare_line_endings_normalised(raw):
    out = clean(raw, bare_newline="normalize", max_line_length=998)
    assert b"\0" not in out
    assert out.count(b"\n") == out.count(b"\r\n") == out.count(b"\r")


@pytest.mark.parametrize("raw", [b"a\n.\nb\r\n", b"a\r.\rb\r\n", b"a\0b\r\n"])
def test_bare_line_endings_rejected(raw):
    with pytest.raises(DataRefused, match="^550 5.6.0"):
        clean(raw, bare_newline="reject", max_line_length=998)


def test_dot_unstuffing_and_line_limit():
    assert clean(b"..a\r\nb\r\n..\r\n", bare_newline="normalize", max_line_length=998) == b".a\r\nb\r\n.\r\n"
    with pytest.raises(DataRefused, match="^552 5.3.4"):
        clean(b"x" * 1001 + b"\r\n", bare_newline="normalize", max_line_length=998)


async def test_bytes_are_reserved_as_they_arrive_and_a_full_budget_discards_the_rest():
    from mtad.base.inflight import ByteBudget
    budget = ByteBudget(3 << 20)
    other = budget.hold()
    assert other.take(1 << 20)  # another session holds 1 MiB
    reader = asyncio.StreamReader()
    with budget.hold() as hold:
        task = asyncio.create_task(read_data(reader, 50 << 20, hold))
        chunk = b"x" * 1000 + b"\r\n"
        fed = 0
        while fed < (3 << 20):
            reader.feed_data(chunk * 100)
            fed += len(chunk) * 100
            await asyncio.sleep(0)
            assert budget.used <= budget.limit
        reader.feed_data(b".\r\nQUIT\r\n")
        result = await task
        assert result.content is None and result.over_budget and result.size == fed
        assert hold.held == 0 and budget.used == 1 << 20 and budget.refused == 1
    assert bytes(reader._buffer) == b"QUIT\r\n"
    other.release()
    assert budget.used == 0


async def test_reserved_bytes_cover_what_is_kept():
    from mtad.base.inflight import ByteBudget
    budget = ByteBudget(10 << 20)
    reader = asyncio.StreamReader()
    body = (b"y" * 998 + b"\r\n") * 3000
    with budget.hold() as hold:
        reader.feed_data(body + b".\r\n")
        result = await read_data(reader, 50 << 20, hold)
        assert result.content == body and hold.held == len(body) == budget.used
    assert budget.used == 0 and budget.peak == len(body)
