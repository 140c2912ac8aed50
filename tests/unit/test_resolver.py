"""mtad.resolver against a real DNS server on 127.0.0.1 (dnspython's own network path runs)."""

from __future__ import annotations

import pytest

from mtad.base.errors import PermFailure, TempFailure
from mtad.net.resolver import MxHost, MxResult, Resolver
from tests.support.dns_fixture import dns_server  # noqa: F401  (the fixture)
from tests.support.dns_server import DnsServer


def resolver_for(server: DnsServer, timeout: float = 2.0) -> Resolver:
    return Resolver(["127.0.0.1"], port=server.port, timeout=timeout)


async def test_mx_hosts_come_in_preference_order(dns_server):
    dns_server.add_mx("example.test", [(30, "mx3.example.test."), (10, "MX1.example.test"), (20, "mx2.example.test")])
    result = await resolver_for(dns_server).resolve_mx("example.test")
    assert result == MxResult((MxHost(10, "mx1.example.test"), MxHost(20, "mx2.example.test"),
                               MxHost(30, "mx3.example.test")), implicit=False)


async def test_equal_preferences_are_all_kept_in_varying_order(dns_server):
    hosts = [(10, f"mx{i}.example.test") for i in range(6)]
    dns_server.add_mx("example.test", hosts + [(5, "first.example.test")])
    resolver = resolver_for(dns_server)
    orders = set()
    for _ in range(20):
        result = await resolver.resolve_mx("example.test")
        assert result.hosts[0] == MxHost(5, "first.example.test")
        assert sorted(h.host for h in result.hosts[1:]) == sorted(h for _, h in hosts)
        orders.add(tuple(h.host for h in result.hosts))
    assert len(orders) > 1  # 20 draws of 6! orders: all equal only if the shuffle is missing


async def test_domain_without_mx_is_its_own_implicit_mx(dns_server):
    dns_server.add_a("bare.example.test", "127.0.0.2")
    result = await resolver_for(dns_server).resolve_mx("Bare.Example.Test")
    assert result == MxResult((MxHost(0, "bare.example.test"),), implicit=True)


async def test_null_mx_fails_permanently(dns_server):
    dns_server.add_mx("nomail.example.test", [(0, ".")])
    with pytest.raises(PermFailure, match="null MX"):
        await resolver_for(dns_server).resolve_mx("nomail.example.test")


async def test_null_mx_beside_real_hosts_is_ignored(dns_server):
    dns_server.add_mx("mixed.example.test", [(0, "."), (10, "mx.example.test")])
    result = await resolver_for(dns_server).resolve_mx("mixed.example.test")
    assert result.hosts == (MxHost(10, "mx.example.test"),)


async def test_nxdomain_fails_permanently(dns_server):
    with pytest.raises(PermFailure, match="NXDOMAIN"):
        await resolver_for(dns_server).resolve_mx("missing.example.test")


async def test_invalid_domain_name_fails_permanently(dns_server):
    with pytest.raises(PermFailure, match="not a valid domain name"):
        await resolver_for(dns_server).resolve_mx("a" * 64 + ".example.test")
    assert dns_server.queries == []


async def test_servfail_is_temporary(dns_server):
    dns_server.add_mx("broken.example.test", [(10, "mx.example.test")])
    dns_server.servfail("broken.example.test")
    with pytest.raises(TempFailure, match="SERVFAIL"):
        await resolver_for(dns_server).resolve_mx("broken.example.test")


async def test_timeout_is_temporary(dns_server):
    dns_server.add_mx("slow.example.test", [(10, "mx.example.test")])
    dns_server.drop("slow.example.test")
    with pytest.raises(TempFailure, match="timed out"):
        await resolver_for(dns_server, timeout=0.2).resolve_mx("slow.example.test")


async def test_answers_are_cached_for_their_ttl(dns_server):
    dns_server.add_mx("example.test", [(10, "mx.example.test")])
    dns_server.add_a("mx.example.test", "127.0.0.5")
    resolver = resolver_for(dns_server)
    for _ in range(3):
        assert (await resolver.resolve_mx("example.test")).hosts == (MxHost(10, "mx.example.test"),)
        assert await resolver.resolve_addresses("mx.example.test") == ["127.0.0.5"]
        with pytest.raises(PermFailure):
            await resolver.resolve_mx("missing.example.test")
    assert len(dns_server.queries_for("example.test", "MX")) == 1
    assert len(dns_server.queries_for("mx.example.test", "A")) == 1
    assert len(dns_server.queries_for("mx.example.test", "AAAA")) == 1  # NODATA, cached by its SOA minimum
    assert len(dns_server.queries_for("missing.example.test")) == 1  # NXDOMAIN, likewise


async def test_zero_ttl_answers_are_not_cached():
    with DnsServer(ttl=0) as server:
        server.add_mx("example.test", [(10, "mx.example.test")])
        resolver = resolver_for(server)
        await resolver.resolve_mx("example.test")
        await resolver.resolve_mx("example.test")
        assert len(server.queries_for("example.test", "MX")) == 2


async def test_addresses_are_ipv4_then_ipv6(dns_server):
    dns_server.add_a("mx.example.test", "::1")
    dns_server.add_a("mx.example.test", "127.0.0.7")
    dns_server.add_a("mx.example.test", "127.0.0.8")
    addresses = await resolver_for(dns_server).resolve_addresses("mx.example.test")
    assert sorted(addresses[:2]) == ["127.0.0.7", "127.0.0.8"] and addresses[2:] == ["::1"]


async def test_host_without_addresses_or_name_gives_empty_list(dns_server):
    dns_server.add_mx("mailonly.example.test", [(10, "mx.example.test")])
    resolver = resolver_for(dns_server)
    assert await resolver.resolve_addresses("mailonly.example.test") == []
    assert await resolver.resolve_addresses("missing.example.test") == []


async def test_address_lookup_failure_is_temporary_unless_something_answered(dns_server):
    dns_server.add_a("broken.example.test", "127.0.0.9")
    dns_server.servfail("broken.example.test")
    with pytest.raises(TempFailure):
        await resolver_for(dns_server).resolve_addresses("broken.example.test")


async def test_ip_literals_need_no_lookup(dns_server):
    resolver = resolver_for(dns_server)
    assert await resolver.resolve_addresses("127.0.0.1") == ["127.0.0.1"]
    assert await resolver.resolve_addresses("[::1]") == ["::1"]
    assert dns_server.queries == []


async def test_large_answers_are_fetched_over_tcp(dns_server):
    hosts = [(10, f"a-rather-long-mail-exchanger-name-number-{i}.example.test") for i in range(20)]
    dns_server.add_mx("big.example.test", hosts)
    result = await resolver_for(dns_server).resolve_mx("big.example.test")
    assert len(result.hosts) == 20
    assert [q[2] for q in dns_server.queries_for("big.example.test")] == ["udp", "tcp"]


def test_empty_nameserver_list_is_refused():
    with pytest.raises(ValueError, match="at least one"):
        Resolver([])
