"""mtad.outbound.pipelining through delivery.Session: MAIL, RCPT and DATA in one write when PIPELINING is offered, and
the same per-recipient outcomes as the one-command-at-a-time path (a scripted server on 127.0.0.1)."""

from __future__ import annotations

import asyncio

import aiosmtplib
import pytest

from mtad.outbound import pipelining as smtp_pipeline
from mtad.outbound.delivery import Destination, Session


class Scripted:
    """An SMTP server answering by rule; records every chunk read, and the DATA texts."""

    def __init__(self, pipelining: bool = True, rcpt=None, data="354 go on", final="250 2.0.0 queued",
                 drop_after_dot=False, hang_up_after=None):
        self.pipelining, self.rcpt, self.data, self.final = pipelining, rcpt or {}, data, final
        self.drop_after_dot = drop_after_dot
        self.hang_up_after = hang_up_after  # a RCPT address: its reply is sent, then the connection closed
        self.chunks: list[bytes] = []
        self.texts: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted ESMTP\r\n")
        buf, in_data = b"", False
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            self.chunks.append(chunk)
            buf += chunk
            out = []
            while True:
                if in_data:
                    end = buf.find(b"\r\n.\r\n") if not buf.startswith(b".\r\n") else -3
                    if end == -1:
                        break
                    self.texts.append(buf[:end + 2] if end >= 0 else b"")
                    buf, in_data = buf[end + 5:], False
                    if self.drop_after_dot:
                        writer.close()
                        return
                    out.append(self.final.encode() + b"\r\n")
                    continue
                line, sep, rest = buf.partition(b"\r\n")
                if not sep:
                    break
                buf = rest
                verb = line[:4].upper()
                if verb == b"EHLO":
                    out.append(b"250-scripted\r\n" + (b"250-PIPELINING\r\n" if self.pipelining else b"")
                               + b"250 8BITMIME\r\n")
                elif verb == b"RCPT":
                    address = line.decode().split("<", 1)[1].rstrip(">")
                    out.append(self.rcpt.get(address, "250 2.1.5 ok").encode() + b"\r\n")
                    if address == self.hang_up_after:
                        writer.write(b"".join(out))
                        writer.close()
                        return
                elif verb == b"DATA":
                    out.append(self.data.encode() + b"\r\n")
                    in_data = self.data.startswith("354")
                elif verb == b"QUIT":
                    writer.write(b"".join(out) + b"221 bye\r\n")
                    writer.close()
                    return
                else:
                    out.append(b"250 ok\r\n")
            if out:
                writer.write(b"".join(out))
                await writer.drain()

    def commands(self) -> list[bytes]:
        return [c for c in self.chunks if not c.startswith(b"EHLO")]


async def session_with(server: Scripted) -> tuple[Session, asyncio.base_events.Server]:
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=5)
    await client.connect()
    await client.ehlo()
    return Session(client, "mx.test", False, False, Destination("test", ("127.0.0.1",), port)), listener


BODY = b"From: a@example.com\r\nSubject: x\r\n\r\n.starts with a dot\r\nline\r\n"


@pytest.mark.parametrize("pipelining", [True, False])
async def test_outcomes_per_recipient_are_the_same_either_way(pipelining):
    server = Scripted(pipelining, rcpt={"gone@example.net": "550 5.1.1 no such user"})
    session, listener = await session_with(server)
    try:
        assert session.pipelined == pipelining
        outcomes = await session.send("a@example.com", ["b@example.net", "gone@example.net"], BODY)
        assert outcomes["b@example.net"].kind == "delivered" and outcomes["b@example.net"].code == 250
        assert (outcomes["gone@example.net"].kind, outcomes["gone@example.net"].enhanced) == ("failed", "5.1.1")
        again = await session.send("a@example.com", ["c@example.net"], BODY)  # the session goes on
        assert again["c@example.net"].kind == "delivered" and session.usable
    finally:
        await session.close()
        listener.close()
    assert server.texts == [BODY.replace(b"\r\n.s", b"\r\n..s")] * 2  # dot-stuffed, unstuffed by nobody here
    if pipelining:
        first = server.commands()[0]
        assert first.startswith(b"MAIL FROM:<a@example.com>") and first.count(b"RCPT TO:") == 2
        assert first.endswith(b"DATA\r\n")


@pytest.mark.parametrize("pipelining", [True, False])
async def test_every_recipient_refused_sends_no_text_and_resets(pipelining):
    server = Scripted(pipelining, rcpt={"b@example.net": "450 4.2.0 try later"}, data="554 5.5.1 no valid recipients")
    session, listener = await session_with(server)
    try:
        outcomes = await session.send("a@example.com", ["b@example.net"], BODY)
        assert outcomes["b@example.net"].kind == "deferred" and outcomes["b@example.net"].code == 450
        assert session.usable and server.texts == []
        assert any(c.startswith(b"RSET") for c in server.commands())
    finally:
        await session.close()
        listener.close()


@pytest.mark.parametrize("pipelining", [True, False])
async def test_data_refused_is_the_outcome_of_the_accepted_recipients(pipelining):
    server = Scripted(pipelining, data="451 4.3.0 busy")
    session, listener = await session_with(server)
    try:
        outcomes = await session.send("a@example.com", ["b@example.net"], BODY)
        assert (outcomes["b@example.net"].kind, outcomes["b@example.net"].code) == ("deferred", 451)
    finally:
        await session.close()
        listener.close()


@pytest.mark.parametrize("pipelining", [True, False])
async def test_a_reply_lost_after_the_dot_is_a_deferral_and_ends_the_session(pipelining):
    server = Scripted(pipelining, drop_after_dot=True)
    session, listener = await session_with(server)
    try:
        outcomes = await session.send("a@example.com", ["b@example.net"], BODY)
        assert outcomes["b@example.net"].kind == "deferred" and not session.usable
    finally:
        await session.close()
        listener.close()


def test_unsafe_addresses_and_text_framing():
    with pytest.raises(ValueError):
        smtp_pipeline.command_line(b"RCPT TO:", "a b@example.net", [], "ascii")
    for smuggler in ("a@example.net> NOTIFY=NEVER", "a@example.net\r\nRSET"):  # aiosmtplib's parse keeps the address
        assert smtp_pipeline.command_line(b"RCPT TO:", smuggler, [], "ascii") == b"RCPT TO:<a@example.net>\r\n"
    assert smtp_pipeline.command_line(b"MAIL FROM:", "", ["BODY=8BITMIME"], "ascii") == \
        b"MAIL FROM:<> BODY=8BITMIME\r\n"
    assert b"".join(smtp_pipeline.text(b"a\nb")) == b"a\r\nb\r\n.\r\n"
    assert b"".join(smtp_pipeline.text(b".x\r\n")) == b"..x\r\n.\r\n"


@pytest.mark.parametrize("pipelining", [True, False])
async def test_a_connection_lost_mid_transaction_keeps_the_refusals_already_given(pipelining):
    server = Scripted(pipelining, rcpt={"gone@example.net": "550 5.1.1 no such user"}, hang_up_after="gone@example.net")
    session, listener = await session_with(server)
    try:
        outcomes = await session.send("a@example.com", ["b@example.net", "gone@example.net", "c@example.net"], BODY)
        assert (outcomes["gone@example.net"].kind, outcomes["gone@example.net"].code) == ("failed", 550)
        assert outcomes["b@example.net"].kind == outcomes["c@example.net"].kind == "deferred"
        assert not session.usable and server.texts == []
    finally:
        await session.close()
        listener.close()


@pytest.mark.parametrize("pipelining", [True, False])
async def test_421_to_a_recipient_defers_the_rest_and_ends_the_session(pipelining):
    server = Scripted(pipelining, rcpt={"b@example.net": "421 4.3.2 closing"}, hang_up_after="b@example.net")
    session, listener = await session_with(server)
    try:
        outcomes = await session.send("a@example.com", ["b@example.net", "c@example.net"], BODY)
        assert {r: (o.kind, o.code) for r, o in outcomes.items()} == \
            {"b@example.net": ("deferred", 421), "c@example.net": ("deferred", 421)}
        assert not session.usable and server.texts == []
    finally:
        await session.close()
        listener.close()
