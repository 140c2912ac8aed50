"""What the HTTP API e2e tests share besides tests/support/{api,sink,receiver,wait}.py: the config of a daemon
that delivers through the loopback DNS fixture to a sink, a DKIM-signed sending domain, a TXT lookup for dkimpy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtad.mail import dkim
from tests.support.dns_server import DnsServer
from tests.support.sink import Mx, point


def delivering(dns: DnsServer, sink: Mx, domains: list[str]) -> dict[str, Any]:
    """Top-level config keys for a daemon that delivers mail for ``domains`` to ``sink`` via ``dns``."""
    point(dns, sink, *domains)
    return {"delivery": {"dns_nameservers": ["127.0.0.1"], "dns_port": dns.port, "dns_timeout": "1s",
                         "poll_interval": "0.1s", "port": sink.port, "retry": {"schedule": ["1s"]}},
            "routing": {"allowed_networks": ["127.0.0.0/8"], "retry_schedule": ["1s"], "timeout": "5s"}}


def dkim_domain(tmp: Path, domain: str, selector: str = "s1") -> tuple[dict[str, Any], dkim.DkimKey]:
    """A config-file sending domain signed with a fresh RSA key; the key to publish its record."""
    pem = dkim.generate_key("rsa", 1024)
    path = tmp / f"{domain}.pem"
    path.write_bytes(pem)
    return ({"dkim": [{"selector": selector, "key_file": str(path)}]}, dkim.load_key(domain, selector, pem))


def txt_lookup(records: dict[str, str]):
    """A dkimpy ``dnsfunc`` answering TXT records from ``records`` (name -> text), nothing else."""
    def lookup(name, timeout: float = 5) -> bytes | None:
        key = (name.decode() if isinstance(name, bytes) else name).rstrip(".").lower()
        value = records.get(key)
        return value.encode() if value is not None else None
    return lookup
