"""Smarthost mode: every message goes to one relay, over verified STARTTLS and with AUTH, whatever the
recipients' domains; no MX lookup is made for them.
"""

from __future__ import annotations

import pytest

from tests.e2e.outbound_support import Authenticator, server_tls, submit, wait_final
from tests.support.daemon import Mtad

RELAY = "relay.smarthost.test"


@pytest.fixture(scope="module")
def relay(certs, loopback_dns, mx_farm):
    mx = mx_farm.add(RELAY, tls=server_tls(certs, RELAY), auth=Authenticator("mtad-relay", "relay-secret"))
    loopback_dns.add_a(RELAY, mx.ip)
    return mx


@pytest.fixture(scope="module")
def daemon(outbound_mtad, relay, mx_farm) -> Mtad:
    return outbound_mtad(delivery={"smarthost": {"host": RELAY, "port": mx_farm.port, "tls": "starttls",
                                                 "verify": True, "username": "mtad-relay",
                                                 "password": "relay-secret"}})


def test_everything_goes_through_the_smarthost_with_auth(daemon, relay, certs, loopback_dns):
    recipients = ["victor@nowhere-one.test", "wendy@nowhere-two.test"]
    sent = submit(daemon, certs, recipients)

    final = wait_final(daemon, sent)
    for rcpt in recipients:
        status = final[rcpt]["delivery-status"]
        assert final[rcpt]["event"] == "delivered"
        assert (status["mx-host"], status["tls"], status["certificate-verified"]) == (RELAY, True, True)
    got = relay.by_message_id(sent.message_id)
    assert sorted(r for m in got for r in m.rcpt_tos) == recipients  # one transaction per destination domain
    assert all(m.auth_user == "mtad-relay" and m.tls for m in got)
    # The recipients' domains were never looked up: they do not even exist in DNS.
    assert not loopback_dns.queries_for("nowhere-one.test") and not loopback_dns.queries_for("nowhere-two.test")
