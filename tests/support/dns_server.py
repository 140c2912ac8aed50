"""A real DNS server on 127.0.0.1 for tests: UDP and TCP on one ephemeral port, answering from a mutable zone.

The zone maps a name (lower case, no final dot) to its records::

    {"example.test": {"MX": [(10, "mx1.example.test")], "A": ["127.0.0.1"], "AAAA": ["::1"], "TXT": ["v=spf1 -all"]}}

Unknown names get NXDOMAIN; a known name without records of the asked type gets an empty NOERROR answer (NODATA);
names passed to ``servfail()`` get SERVFAIL and names passed to ``drop()`` get no reply at all (a timeout). UDP
answers larger than 512 bytes (or the client's EDNS size) are truncated so that the client retries over TCP, as
with a real server. Every query is recorded in ``queries`` as ``(name, type, "udp" | "tcp")``.

Messages are parsed and built with dnspython; the sockets are served by two daemon threads, so the server works
for sync and async tests alike and for an mtad started as a subprocess.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

Zone = dict[str, dict[str, list[Any]]]


class DnsServer:
    """Serve ``zone`` on 127.0.0.1:``port`` (UDP and TCP) until ``stop()``."""

    def __init__(self, zone: Zone | None = None, ttl: int = 300):
        self.zone: Zone = zone if zone is not None else {}
        self.ttl = ttl
        self.queries: list[tuple[str, str, str]] = []
        self._servfail: set[str] = set()
        self._drop: set[str] = set()
        self._lock = threading.Lock()
        self._servers: list[socketserver.BaseServer] = []
        self.port = 0

    # --- zone editing -------------------------------------------------------------------------------------------

    def set_records(self, name: str, rtype: str, values: list[Any]) -> None:
        """Replace the ``rtype`` records of ``name``."""
        self._records(name, rtype)[:] = values

    def add_mx(self, domain: str, hosts: list[tuple[int, str]]) -> None:
        self._records(domain, "MX").extend(hosts)

    def add_a(self, host: str, ip: str) -> None:
        self._records(host, "AAAA" if ":" in ip else "A").append(ip)

    def add_txt(self, name: str, text: str) -> None:
        self._records(name, "TXT").append(text)

    def servfail(self, name: str) -> None:
        self._servfail.add(_norm(name))

    def heal(self, name: str) -> None:
        """``name`` answered again (no more SERVFAIL)."""
        self._servfail.discard(_norm(name))

    def drop(self, name: str) -> None:
        self._drop.add(_norm(name))

    def queries_for(self, name: str, rdtype: str | None = None) -> list[tuple[str, str, str]]:
        with self._lock:
            return [q for q in self.queries if q[0] == _norm(name) and rdtype in (None, q[1])]

    def _records(self, name: str, rdtype: str) -> list[Any]:
        return self.zone.setdefault(_norm(name), {}).setdefault(rdtype, [])

    # --- serving ------------------------------------------------------------------------------------------------

    def start(self) -> "DnsServer":
        for _ in range(20):  # the UDP port's twin on TCP may be taken by someone else: try another
            udp = socketserver.UDPServer(("127.0.0.1", 0), _UdpHandler, bind_and_activate=True)
            try:
                tcp = _TcpServer(("127.0.0.1", udp.server_address[1]), _TcpHandler)
            except OSError:
                udp.server_close()
                continue
            break
        else:
            raise OSError("no free port for both UDP and TCP on 127.0.0.1")
        self.port = udp.server_address[1]
        for server in (udp, tcp):
            server.dns = self  # type: ignore[attr-defined]
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
            self._servers.append(server)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()

    def __enter__(self) -> "DnsServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def answer(self, wire: bytes, transport: str) -> bytes | None:
        """The wire reply to one query, or None to stay silent."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if not query.question:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        name = _norm(question.name.to_text())
        rdtype = dns.rdatatype.to_text(question.rdtype)
        with self._lock:
            self.queries.append((name, rdtype, transport))
        if name in self._drop:
            return None
        records = self.zone.get(name, {}).get(rdtype)
        if name in self._servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif records:
            texts = [_rdata_text(rdtype, value) for value in records]
            response.answer.append(dns.rrset.from_text_list(question.name, self.ttl, "IN", rdtype, texts))
        else:  # NXDOMAIN or NODATA, with the SOA whose minimum makes the answer cacheable (RFC 2308)
            if name not in self.zone:
                response.set_rcode(dns.rcode.NXDOMAIN)
            tld = question.name.split(2)[1] if len(question.name) > 1 else None
            if tld is not None:
                response.authority.append(dns.rrset.from_text(
                    tld, self.ttl, "IN", "SOA", f"ns.{tld} hostmaster.{tld} 1 3600 600 86400 {self.ttl}"))
        if transport == "tcp":
            return response.to_wire()
        limit = max(512, query.payload if query.edns >= 0 else 512)
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.AA | dns.flags.TC
            return truncated.to_wire()


def _norm(name: str) -> str:
    return name.lower().rstrip(".")


def _rdata_text(rdtype: str, value: Any) -> str:
    if rdtype == "MX":
        preference, host = value
        return f"{preference} {host.rstrip('.')}."
    if rdtype == "TXT":  # one TXT string holds at most 255 bytes: split longer text (DKIM keys) into several
        escaped = [value[i:i + 255].replace("\\", "\\\\").replace('"', '\\"') for i in range(0, len(value), 255)]
        return " ".join(f'"{chunk}"' for chunk in escaped) or '""'
    return str(value)


class _UdpHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        wire, sock = self.request
        reply = self.server.dns.answer(wire, "udp")  # type: ignore[attr-defined]
        if reply is not None:
            sock.sendto(reply, self.client_address)


class _TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class _TcpHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        conn: socket.socket = self.request
        conn.settimeout(5)
        try:
            while True:  # RFC 7766: several queries may share one connection
                size = _recv_exact(conn, 2)
                if size is None:
                    return
                wire = _recv_exact(conn, int.from_bytes(size, "big"))
                if wire is None:
                    return
                reply = self.server.dns.answer(wire, "tcp")  # type: ignore[attr-defined]
                if reply is None:
                    return
                conn.sendall(len(reply).to_bytes(2, "big") + reply)
        except OSError:
            return


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data
