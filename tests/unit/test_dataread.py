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
