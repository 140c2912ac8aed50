"""The ``dns_server`` pytest fixture: a started ``DnsServer`` on 127.0.0.1, stopped after the test.

Import it where it is needed (``from tests.support.dns_fixture import dns_server``, e.g. in a conftest.py) and
point the resolver at ``dns_server.port``::

    def test_something(dns_server):
        dns_server.add_mx("example.test", [(10, "mx1.example.test")])
        dns_server.add_a("mx1.example.test", "127.0.0.1")
        resolver = Resolver(["127.0.0.1"], port=dns_server.port)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.dns_server import DnsServer


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    with DnsServer(ttl=300) as server:
        yield server
