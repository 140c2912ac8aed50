"""``mail.unsubaddr`` (unsubscribe addresses) and ``net.forwarded`` (client addresses behind reverse proxies)."""

from __future__ import annotations

import pytest

from mtad.mail import unsubaddr
from mtad.net.forwarded import ClientAddress

KEY = b"k" * 32
QID = "0123456789ABCDEF012"


@pytest.mark.parametrize("scope, list_id", [("d", 0), ("t", 0), ("l", 7), ("l", 999_999_999)])
def test_an_unsubscribe_address_round_trips_fits_a_local_part_and_ignores_case(scope, list_id):
    address = unsubaddr.address(KEY, QID, "Someone.Long-Name@dest.test", "example.com", scope, list_id)
    local = address.partition("@")[0]
    assert len(local) <= 64 and unsubaddr.is_unsubscribe(address)
    for text in (address, address.upper()):
        token = unsubaddr.verify(KEY, text)
        assert token == unsubaddr.Token(scope, QID, token.recipient_tag, list_id)
        assert token.names(KEY, "someone.long-name@dest.test") and not token.names(KEY, "other@dest.test")


def test_a_forged_or_altered_unsubscribe_address_does_not_verify():
    address = unsubaddr.address(KEY, QID, "a@b.test", "example.com")
    assert unsubaddr.verify(b"x" * 32, address) is None
    assert unsubaddr.verify(KEY, address.replace("+d.", "+t.")) is None
    assert unsubaddr.verify(KEY, address.replace("0123", "0124")) is None
    for junk in ("unsubscribe+@example.com", "unsubscribe+d.x.y-z@example.com", "bounce+x@example.com", ""):
        assert unsubaddr.verify(KEY, junk) is None
    with pytest.raises(ValueError):
        unsubaddr.token(KEY, QID, "a@b.test", "l", 0)


@pytest.mark.parametrize("peer, xff, expected", [
    ("198.51.100.9", ("203.0.113.1",), "198.51.100.9"),  # untrusted peer: never read
    ("10.0.0.5", ("203.0.113.1",), "203.0.113.1"),
    ("10.0.0.5", ("1.1.1.1, 203.0.113.1", "10.0.0.4"), "203.0.113.1"),  # right-most untrusted, all fields
    ("10.0.0.5", ("10.0.0.3, 10.0.0.4",), "10.0.0.3"),  # all trusted: the left-most
    ("10.0.0.5", ("unknown, 203.0.113.1",), "203.0.113.1"),
    ("10.0.0.5", ("203.0.113.1, unknown",), "10.0.0.5"),  # not an address right of the client: the last hop
    ("10.0.0.5", (), "10.0.0.5"),
    ("::ffff:10.0.0.5", ("[2001:db8::1]:443",), "2001:db8::1"),
    ("10.0.0.5", ("203.0.113.1:5555",), "203.0.113.1"),
])
def test_the_client_address_behind_trusted_proxies(peer, xff, expected):
    assert ClientAddress(["10.0.0.0/8"]).of(peer, xff) == expected


def test_without_trusted_proxies_the_header_is_never_read():
    assert ClientAddress().of("10.0.0.5", ("203.0.113.1",)) == "10.0.0.5"
