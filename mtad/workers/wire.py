"""The frames between a pool and its children, both ways: an 8-byte big-endian length, then ``marshal`` data.

Only plain data crosses (tuples, lists, dicts, bytes, str, int, float, bool, None): ``marshal`` loads no code
and runs nothing, and it is the fastest serialiser for such values. Both ends run the same interpreter, so
the format needs no version.
- request: whatever the job kind's ``encode`` made of a batch (one frame per batch).
- answer, one per request and in order: ``(True, [answer, ...])``, one answer per item, or
  ``(False, "error text")`` when the job function failed the whole batch.
"""

from __future__ import annotations

import asyncio
import marshal
import struct
from typing import Any, BinaryIO

HEADER = struct.Struct(">Q")


def frame(value: Any) -> bytes:
    """One frame; raises ``ValueError`` for a value that is not plain data."""
    data = marshal.dumps(value)
    return HEADER.pack(len(data)) + data


def read(rfile: BinaryIO) -> Any:
    """The next frame's value from a blocking file; raises ``EOFError`` at the end of the stream."""
    head = rfile.read(HEADER.size)
    if len(head) < HEADER.size:
        raise EOFError("end of stream")
    (size,) = HEADER.unpack(head)
    data = rfile.read(size)
    if len(data) < size:
        raise EOFError("stream ended inside a frame")
    return marshal.loads(data)


async def read_async(stream: asyncio.StreamReader) -> Any:
    """The next frame's value from an asyncio stream; ``IncompleteReadError`` (an ``EOFError``) at its end."""
    (size,) = HEADER.unpack(await stream.readexactly(HEADER.size))
    return marshal.loads(await stream.readexactly(size))
