"""Outbound SMTP: one connection to one destination, used for one or several messages.

``open_session`` tries the destination's hosts in order (each host's addresses in turn) until one
answers, says EHLO, upgrades to TLS as the policy asks, and authenticates (smarthost). ``send`` runs
one transaction and returns an ``Outcome`` per recipient: one RCPT may fail while others succeed, and
a reply lost after the final dot is a deferral (at-least-once, as Postfix does). Under the
opportunistic policy a failed TLS handshake is retried in plaintext on the same host, and the host is
remembered as TLS-broken for a while (Postfix, KumoMTA) so later connections go plaintext at once.
Errors are classified by ``classify`` only. aiosmtplib opens the session; its transactions then go through
``pipelining`` on one path: MAIL, RCPT and DATA in one write when the server advertises PIPELINING, one
command at a time otherwise.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import ssl
import time
from dataclasses import dataclass, field
from typing import Literal

import aiosmtplib

from mtad.outbound import classify
from mtad.outbound import pipelining as smtp_pipeline
from mtad.base.errors import PermFailure, TempFailure
from mtad.net.resolver import Resolver
from mtad.base.types import Outcome

log = logging.getLogger("mtad.delivery")
TlsPolicy = Literal["opportunistic", "required", "disabled", "implicit"]


@dataclass(frozen=True)
class Destination:
    """Where and how to connect, decided by the scheduler from MX records, provider policy and options."""

    name: str  # the destination domain (or "smarthost")
    hosts: tuple[str, ...]
    port: int = 25
    tls: TlsPolicy = "opportunistic"
    verify: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    connect_timeout: float = 30.0
    command_timeout: float = 300.0
    data_timeout: float = 600.0


class BrokenTls:
    """Hosts whose TLS handshake failed recently: skip STARTTLS with them until the memory expires."""

    def __init__(self, seconds: float, clock=time.monotonic):
        self.seconds = seconds
        self.clock = clock
        self._until: dict[str, float] = {}

    def remember(self, host: str) -> None:
        self._until[host] = self.clock() + self.seconds

    def is_broken(self, host: str) -> bool:
        until = self._until.get(host)
        if until is None:
            return False
        if until < self.clock():
            del self._until[host]
            return False
        return True


class TlsContexts:
    """Client TLS contexts: verifying (system CAs or a CA file) and not verifying."""

    def __init__(self, ca_file: str | None = None):
        self.ca_file = ca_file
        if ca_file:  # read now: a CA file that does not load stops the start
            self.get(verify=True)
        # create_default_context()'s settings without the system's CA store, which a context that verifies nothing
        # never reads (loading it costs ~40 ms of CPU at every start)
        self.relaxed = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.relaxed.check_hostname = False
        self.relaxed.verify_mode = ssl.CERT_NONE

    @functools.cached_property
    def verifying(self) -> ssl.SSLContext:
        """Made at the first verified delivery when it reads the system's CAs (~40 ms of CPU a daemon that verifies
        nothing does not spend)."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def get(self, verify: bool) -> ssl.SSLContext:
        return self.verifying if verify else self.relaxed


class Session:
    """An open, greeted (and possibly encrypted and authenticated) SMTP connection.

    aiosmtplib opens it (connect, EHLO, STARTTLS, AUTH); then ``pipelining.Pipeline`` takes its transport
    over and every transaction goes through ``send``: one path, whose only branch is how the commands go out
    (RFC 2920: MAIL, every RCPT and DATA in one write when the server offers PIPELINING, one command per
    reply otherwise), with the same per-recipient outcomes either way.
    """

    def __init__(self, client: aiosmtplib.SMTP, host: str, tls: bool, verified: bool, dest: Destination):
        self.client = client
        self.host = host
        self.tls = tls
        self.verified = verified
        self.dest = dest
        self.deliveries = 0
        self._usable = True
        self.pipelined = client.supports_extension("pipelining")
        self.pipe = smtp_pipeline.Pipeline(client.transport)  # type: ignore[arg-type]

    @property
    def usable(self) -> bool:
        return self._usable and self.pipe.usable

    @usable.setter
    def usable(self, value: bool) -> None:
        self._usable = value

    def _outcome(self, exc: BaseException) -> Outcome:
        return classify.from_exception(exc, mx_host=self.host, tls=self.tls, verified=self.verified)

    def _reply(self, code: int, message: str) -> Outcome:
        return classify.from_reply(code, message, mx_host=self.host, tls=self.tls, verified=self.verified)

    async def send(self, sender: str, recipients: list[str], body: bytes) -> dict[str, Outcome]:
        """One transaction; an Outcome for every recipient."""
        self.deliveries += 1
        client = self.client
        options = []
        if not body.isascii() and client.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        if (not sender.isascii() or not all(r.isascii() for r in recipients)) and \
                client.supports_extension("smtputf8"):
            options.append("SMTPUTF8")
        encoding = "utf-8" if "SMTPUTF8" in options else "ascii"
        try:
            mail_line = smtp_pipeline.command_line(b"MAIL FROM:", sender, options, encoding)
            rcpt_lines = [smtp_pipeline.command_line(b"RCPT TO:", r, [], encoding) for r in recipients]
        except (ValueError, UnicodeError) as exc:  # nothing sent: the session stays usable
            return {r: self._outcome(exc) for r in recipients}
        timeout = self.dest.command_timeout
        pipe = self.pipe
        mail: tuple[int, str] | None = None
        rcpts: list[tuple[int, str]] = []
        data: tuple[int, str] | None = None
        try:
            if self.pipelined:  # RFC 2920: one write, then the replies in order
                pipe.write(mail_line + b"".join(rcpt_lines) + b"DATA\r\n")
                mail = await pipe.read(timeout)
                for _ in recipients:
                    rcpts.append(await pipe.read(timeout))
                data = await pipe.read(timeout)
            else:  # one command, one reply; nothing more after a refused MAIL, no DATA without a recipient
                pipe.write(mail_line)
                mail = await pipe.read(timeout)
                if mail[0] == 250:
                    for line in rcpt_lines:
                        pipe.write(line)
                        rcpts.append(await pipe.read(timeout))
                        if rcpts[-1][0] == 421:  # closing: the rest get the same answer
                            rcpts += [rcpts[-1]] * (len(rcpt_lines) - len(rcpts))
                            break
                    if any(_accepted(reply) for reply in rcpts):
                        pipe.write(b"DATA\r\n")
                        data = await pipe.read(timeout)
        except Exception as exc:  # noqa: BLE001 - classified once
            self.usable = False
            if mail is not None and mail[0] != 250:  # e.g. 421 to MAIL, then the server hung up
                return {r: self._reply(*mail) for r in recipients}
            lost = self._outcome(exc)  # a recipient refused before the loss keeps its refusal
            return {r: self._reply(*reply) if not _accepted(reply) else lost for r, reply in zip(recipients, rcpts)} \
                | {r: lost for r in recipients[len(rcpts):]}
        assert mail is not None
        if mail[0] != 250:
            outcomes = {r: self._reply(*mail) for r in recipients}
            accepted = []
        else:
            outcomes = {}
            accepted = []
            for rcpt, reply in zip(recipients, rcpts):
                if _accepted(reply):
                    accepted.append(rcpt)
                else:
                    outcomes[rcpt] = self._reply(*reply)
        if 421 in (mail[0], *(reply[0] for reply in rcpts), data[0] if data else 0):
            self.usable = False  # the server is closing the connection
        if not accepted or data is None or data[0] != 354:
            if data is not None and data[0] == 354:  # 354 without recipients gets an empty message (RFC 2920 3.1)
                await self._command(smtp_pipeline.text(b""), self.dest.data_timeout)
            if data is not None:
                result = self._reply(*data)
                for rcpt in accepted:
                    outcomes[rcpt] = result
            if self.usable:
                await self._command([b"RSET\r\n"], timeout)
            return outcomes
        try:
            pipe.write(*smtp_pipeline.text(body))
            result = self._reply(*await pipe.read(self.dest.data_timeout))
            if result.code == 421:
                self.usable = False
        except Exception as exc:  # noqa: BLE001 - a lost reply after the dot is a deferral
            self.usable = False
            result = self._outcome(exc)
        for rcpt in accepted:
            outcomes[rcpt] = result
        return outcomes

    async def _command(self, chunks: list[bytes], timeout: float) -> tuple[int, str] | None:
        try:
            self.pipe.write(*chunks)
            return await self.pipe.read(timeout)
        except Exception:  # noqa: BLE001
            self.usable = False
            return None

    async def close(self) -> None:
        if self.pipe.usable:
            await self._command([b"QUIT\r\n"], 5)
        self.pipe.close()
        self.client.close()


def _accepted(reply: tuple[int, str]) -> bool:
    return reply[0] in (250, 251)


class Connector:
    """Opens Sessions to Destinations."""

    def __init__(self, hostname: str, resolver: Resolver, tls: TlsContexts, broken_tls: BrokenTls):
        self.hostname = hostname
        self.resolver = resolver
        self.tls = tls
        self.broken_tls = broken_tls

    async def _addresses(self, host: str) -> list[str]:
        try:
            ipaddress.ip_address(host)
            return [host]
        except ValueError:
            return await self.resolver.resolve_addresses(host)

    async def open(self, dest: Destination) -> Session:
        """A ready Session with the first host that works; raises the last error (classify it)."""
        last: BaseException = TempFailure(f"no hosts for {dest.name}")
        resolved_any = False
        for host in dest.hosts:
            try:
                addresses = await self._addresses(host)
            except Exception as exc:  # noqa: BLE001 - try the next host
                last = exc
                resolved_any = True  # a temporary lookup failure: not proof that no address exists
                continue
            resolved_any = resolved_any or bool(addresses)
            for address in addresses:
                try:
                    return await self._open_one(dest, host, address)
                except aiosmtplib.SMTPResponseException as exc:
                    last = exc
                    if 500 <= exc.code < 600 and dest.tls != "required":
                        raise  # a 5xx greeting or EHLO is the host's final word
                except Exception as exc:  # noqa: BLE001 - try the next address
                    last = exc
                    log.info("%s: %s [%s]:%d failed: %s", dest.name, host, address, dest.port, exc)
        if not resolved_any:
            raise PermFailure(f"{dest.name}: no address for its mail hosts ({', '.join(dest.hosts)})", "5.4.4")
        raise last

    async def _open_one(self, dest: Destination, host: str, address: str) -> Session:
        use_starttls = dest.tls in ("opportunistic", "required") and not (
            dest.tls == "opportunistic" and self.broken_tls.is_broken(host))
        client = await self._connect(dest, host, address)
        tls = dest.tls == "implicit"
        try:
            if use_starttls and client.supports_extension("starttls"):
                try:
                    await client.starttls(server_hostname=host, tls_context=self.tls.get(dest.verify),
                                          timeout=dest.command_timeout)
                    await client.ehlo(hostname=self.hostname)
                    tls = True
                except (ssl.SSLError, ssl.CertificateError, aiosmtplib.SMTPException, OSError) as exc:
                    client.close()
                    if dest.tls == "required":
                        raise TempFailure(f"TLS required but the handshake with {host} failed: {exc}") from exc
                    self.broken_tls.remember(host)
                    log.info("%s: TLS with %s failed (%s); retrying in plaintext", dest.name, host, exc)
                    client = await self._connect(dest, host, address)
            elif dest.tls == "required":
                raise TempFailure(f"TLS required but {host} does not offer STARTTLS")
            if dest.username:
                await client.login(dest.username, dest.password or "", timeout=dest.command_timeout)
        except BaseException:
            client.close()
            raise
        return Session(client, host, tls, tls and dest.verify, dest)

    async def _connect(self, dest: Destination, host: str, address: str) -> aiosmtplib.SMTP:
        implicit = dest.tls == "implicit"  # implicit TLS connects by name, for SNI and verification
        client = aiosmtplib.SMTP(hostname=host if implicit else address, port=dest.port,
                                 local_hostname=self.hostname, timeout=dest.command_timeout, use_tls=implicit,
                                 start_tls=False, tls_context=self.tls.get(dest.verify) if implicit else None)
        await client.connect(timeout=dest.connect_timeout)
        await client.ehlo(hostname=self.hostname)
        return client
