"""The SSRF policy applied when a route or webhook is made: numeric host spellings, localhost, allowed networks."""

import ipaddress

import pytest

from mtad.api import printable
from mtad.net.httpclient import ip_literal, url_refusal


@pytest.mark.parametrize("host, address", [("2130706434", "127.0.0.2"), ("127.2", "127.0.0.2"),
                                           ("0x7f.1", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"),
                                           ("169.254.169.254.", "169.254.169.254"), ("[::1]", "::1"),
                                           ("0", "0.0.0.0"), ("example.com", None), ("cafe", None)])
def test_hosts_are_read_as_the_system_resolver_reads_numbers(host, address):
    assert ip_literal(host) == (ipaddress.ip_address(address) if address else None)


@pytest.mark.parametrize("url", ["http://2130706434/", "http://127.2/", "http://169.254.169.254./latest",
                                 "https://[::1]:8443/", "http://LOCALHOST./", "http://a.localhost/", "http://10.0.0.1/"])
def test_internal_addresses_are_refused_unless_allowed(url):
    assert "not allowed" in url_refusal(url, ())
    if "169.254" not in url and "::1" not in url:
        assert url_refusal(url, ("127.0.0.0/8", "10.0.0.0/8")) is None


@pytest.mark.parametrize("url", ["http://example.com/hook", "https://93.184.216.34/", "http://10.example/"])
def test_public_addresses_and_names_are_made(url):
    assert url_refusal(url, ()) is None


def test_log_text_escapes_line_breaks_and_controls():
    assert printable("/v3/x\nFORGED 2024 ERROR y\r\x1b") == "/v3/x\\nFORGED 2024 ERROR y\\r\\x1b"
    assert printable("a" * 500, 10) == "a" * 10 + "..."
    assert printable("/v3/ünïcode") == "/v3/ünïcode"
