"""Domains and SMTP credentials over HTTP: a domain created by API gets a DKIM key whose signature verifies
(dkimpy, against the record the API told us to publish), DNS records checked through the loopback DNS
server, credentials usable for SMTP AUTH at once; config-file domains and users are read-only."""

from __future__ import annotations

import smtplib

import dkim as dkimpy
import pytest

from tests.e2e.apihelpers import delivering, txt_lookup
from tests.e2e.helpers import send as smtp_send, submission
from tests.support.dns_server import DnsServer
from tests.support.api import api

DEST = "dest.test"


@pytest.fixture(scope="module")
def env(daemon_factory, mx_farm):
    dns = DnsServer(ttl=1).start()
    sink = mx_farm.add("mx.sink.test")
    daemon = daemon_factory(**delivering(dns, sink, [DEST]))
    yield daemon, sink, dns
    dns.stop()


def records_by_type(body: dict) -> dict[str, dict]:
    out = {}
    for r in body["sending_dns_records"] + body["receiving_dns_records"]:
        kind = "DKIM" if "_domainkey" in r.get("name", "") else ("SPF" if r["record_type"] == "TXT" else r["record_type"])
        out[kind] = r
    return out


async def test_created_domain_signs_with_a_key_that_verifies_and_dns_records_are_checked(env, certs):
    daemon, sink, dns = env
    body = await api(daemon, "POST", "/v3/domains", data={"name": "Fresh.test", "smtp_password": "pass-12345",
                                                             "dkim_key_size": "1024", "dkim_selector": "mx1"})
    assert body["message"] == "Domain has been created"
    domain = body["domain"]
    assert domain["name"] == "fresh.test" and domain["smtp_login"] == "postmaster@fresh.test"
    assert domain["smtp_password"] == "pass-12345" and domain["state"] == "unverified"
    records = records_by_type(body)
    assert records["SPF"] == {"record_type": "TXT", "name": "fresh.test", "value": "v=spf1 a:mtad.test ~all",
                              "valid": "invalid", "cached": []}
    assert records["DKIM"]["name"] == "mx1._domainkey.fresh.test" and records["DKIM"]["value"].startswith("v=DKIM1; k=rsa; p=")
    assert records["MX"]["value"] == "mtad.test" and records["MX"]["valid"] == "invalid"

    dns.add_txt("fresh.test", "v=spf1 a:mtad.test ~all")
    dns.add_txt(records["DKIM"]["name"], records["DKIM"]["value"])
    dns.add_mx("fresh.test", [(10, "mtad.test")])
    body = await api(daemon, "GET", "/v3/domains/fresh.test")
    assert {k: r["valid"] for k, r in records_by_type(body).items()} == {"SPF": "valid", "DKIM": "valid", "MX": "valid"}
    assert body["domain"]["state"] == "active"
    verified = await api(daemon, "PUT", "/v3/domains/fresh.test/verify")
    assert verified["message"] == "Domain DNS records have been updated" and verified["domain"]["state"] == "active"

    sent = await api(daemon, "POST", "/v3/fresh.test/messages", data={
        "from": "News <news@fresh.test>", "to": f"reader@{DEST}", "subject": "signed", "text": "Signed by fresh.test"})
    got = (await sink.wait_for(f"reader@{DEST}"))[0]
    assert got.mail_from.startswith("bounce+") and got.mail_from.endswith("@fresh.test")  # its return path
    assert b"d=fresh.test;" in got.data.replace(b"\r\n ", b" ") and b"s=mx1;" in got.data
    assert dkimpy.verify(got.data, dnsfunc=txt_lookup({records["DKIM"]["name"]: records["DKIM"]["value"]}))

    listing = await api(daemon, "GET", "/v3/domains")
    sources = {d["name"]: d["source"] for d in listing["items"]}
    assert sources["fresh.test"] == "api" and sources["example.com"] == "config" and sources["inbound.test"] == "config"
    assert listing["total_count"] == len(listing["items"])
    err = await api(daemon, "POST", "/v3/domains", data={"name": "fresh.test"}, expect=400)
    assert "already exists" in err["message"]

    # the smtp_password made postmaster@fresh.test an SMTP login
    with submission(daemon, certs.client_context(), "postmaster@fresh.test", "pass-12345") as s:
        assert smtp_send(s, "postmaster@fresh.test", [f"viasmtp@{DEST}"], b"Subject: x\r\n\r\nx\r\n")[0] == 250

    gone = await api(daemon, "DELETE", "/v3/domains/fresh.test")
    assert gone == {"message": "Domain has been deleted"}
    await api(daemon, "GET", "/v3/domains/fresh.test", expect=404)
    err = await api(daemon, "POST", "/v3/fresh.test/messages", data={
        "from": "news@fresh.test", "to": f"reader@{DEST}", "text": "x"}, expect=404)
    assert err["message"] == "Domain not found: fresh.test"
    with pytest.raises(smtplib.SMTPAuthenticationError):
        submission(daemon, certs.client_context(), "postmaster@fresh.test", "pass-12345")


async def test_credentials_lifecycle_and_smtp_auth(env, certs):
    daemon, _, _ = env
    await api(daemon, "POST", "/v3/domains", data={"name": "creds.test", "receiving": "no", "dkim_key_size": "1024"})
    created = await api(daemon, "POST", "/v3/domains/creds.test/credentials",
                           data={"login": "alice", "password": "alice-pass"})
    assert created == {"message": "Created 1 credentials pair(s)"}
    listing = await api(daemon, "GET", "/v3/domains/creds.test/credentials")
    assert [i["login"] for i in listing["items"]] == ["alice@creds.test"] and listing["total_count"] == 1
    assert "password" not in str(listing)
    with submission(daemon, certs.client_context(), "alice@creds.test", "alice-pass") as s:
        assert smtp_send(s, "alice@creds.test", [f"x@{DEST}"], b"Subject: x\r\n\r\nx\r\n")[0] == 250
    changed = await api(daemon, "PUT", "/v3/domains/creds.test/credentials/alice@creds.test",
                           data={"password": "new-pass-1"})
    assert changed == {"message": "Password changed"}
    with pytest.raises(smtplib.SMTPAuthenticationError):
        submission(daemon, certs.client_context(), "alice@creds.test", "alice-pass")
    submission(daemon, certs.client_context(), "alice@creds.test", "new-pass-1").quit()
    deleted = await api(daemon, "DELETE", "/v3/domains/creds.test/credentials/alice")
    assert deleted == {"message": "Credentials have been deleted", "spec": "alice@creds.test"}
    with pytest.raises(smtplib.SMTPAuthenticationError):
        submission(daemon, certs.client_context(), "alice@creds.test", "new-pass-1")
    for data, words in [({"login": "bob", "password": "1234"}, "5 to 32"), ({"password": "long-enough"}, "'login'"),
                        ({"login": "bob@elsewhere.test", "password": "long-enough"}, "address of creds.test")]:
        err = await api(daemon, "POST", "/v3/domains/creds.test/credentials", data=data, expect=400)
        assert words in err["message"]
    await api(daemon, "DELETE", "/v3/domains/creds.test/credentials/nobody", expect=404)
    await api(daemon, "GET", "/v3/domains/nothere.test/credentials", expect=404)


async def test_config_domains_and_users_are_read_only(env, certs):
    daemon, _, _ = env
    body = await api(daemon, "GET", "/v3/domains/example.com")
    assert body["domain"]["source"] == "config"
    err = await api(daemon, "DELETE", "/v3/domains/example.com", expect=403)
    assert "configuration file" in err["message"]
    listing = await api(daemon, "GET", "/v3/domains/example.com/credentials")
    assert {i["login"]: i["source"] for i in listing["items"]} == {"postmaster@example.com": "config"}
    await api(daemon, "DELETE", "/v3/domains/example.com/credentials/postmaster", expect=403)
    await api(daemon, "PUT", "/v3/domains/example.com/credentials/postmaster", data={"password": "whatever1"},
              expect=403)
    # API users may join a config domain
    await api(daemon, "POST", "/v3/domains/example.com/credentials", data={"login": "newbie", "password": "newbie-pw"})
    submission(daemon, certs.client_context(), "newbie@example.com", "newbie-pw").quit()
    await api(daemon, "DELETE", "/v3/domains/example.com/credentials/newbie")
    for data, words in [({"name": "bad name!"}, "not a valid domain"), ({}, "'name'"),
                        ({"name": "x.test", "spam_action": "explode"}, "'spam_action'"),
                        ({"name": "x.test", "dkim_key_size": "512"}, "'dkim_key_size'"),
                        ({"name": "example.com"}, "already exists")]:
        err = await api(daemon, "POST", "/v3/domains", data=data, expect=400)
        assert words in err["message"], (data, err)
    await api(daemon, "GET", "/v3/domains/unknown.test", expect=404)


async def test_a_failed_lookup_is_reported_as_unknown(env):
    daemon, _, dns = env
    await api(daemon, "POST", "/v3/domains", data={"name": "flaky.test", "dkim_key_size": "1024"})
    dns.servfail("flaky.test")
    body = await api(daemon, "GET", "/v3/domains/flaky.test")
    records = records_by_type(body)
    assert records["SPF"]["valid"] == "unknown" and records["MX"]["valid"] == "unknown"
    assert records["DKIM"]["valid"] == "invalid"  # its own name answers (NXDOMAIN): known to be absent
    assert body["domain"]["state"] == "unverified"
    await api(daemon, "DELETE", "/v3/domains/flaky.test")


async def test_api_domains_survive_a_restart(env, certs):
    daemon, sink, dns = env
    body = await api(daemon, "POST", "/v3/domains", data={"name": "durable.test", "dkim_key_size": "1024"})
    dkim_record = records_by_type(body)["DKIM"]
    await api(daemon, "POST", "/v3/domains/durable.test/credentials", data={"login": "app", "password": "app-pass-1"})
    assert daemon.stop() == 0
    daemon.start()
    submission(daemon, certs.client_context(), "app@durable.test", "app-pass-1").quit()
    await api(daemon, "POST", "/v3/durable.test/messages", data={"from": "app@durable.test", "to": f"after@{DEST}",
                                                                  "text": "after a restart"})
    got = (await sink.wait_for(f"after@{DEST}"))[0]
    assert dkimpy.verify(got.data, dnsfunc=txt_lookup({dkim_record["name"]: dkim_record["value"]}))
