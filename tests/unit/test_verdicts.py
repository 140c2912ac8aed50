"""Pieces of the inbound authentication verdicts (mtad/inbound/verdicts) that need no daemon: the RFC 7208
evaluation on a scripted resolver (macros, include, redirect, the lookup limits), DMARC records and alignment,
the policy decision, and dkimpy's integer conversions replaced in the verification job (same results)."""

from __future__ import annotations

import asyncio
import random

import dkim.crypto
import pytest

from mtad.base.errors import TempFailure
from mtad.config.schema import AuthPolicyConfig
from mtad.inbound.verdicts import dkimjob, dmarc, results, spf


ZONE = {
    ("a.test", "TXT"): ("v=spf1 include:inc.a.test -all", "unrelated text"),
    ("inc.a.test", "TXT"): ("v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 ~all",),
    ("r.test", "TXT"): ("v=spf1 redirect=a.test",),
    ("m.test", "TXT"): ("v=spf1 exists:%{ir}.%{l}._spf.m.test -all",),
    ("1.2.0.192.bob._spf.m.test", "A"): ("127.0.0.2",),
    ("two.test", "TXT"): ("v=spf1 -all", "v=spf1 +all"),
    ("loop.test", "TXT"): ("v=spf1 " + " ".join(f"a:x{i}.loop.test" for i in range(12)) + " -all",),
    ("mx.test", "TXT"): ("v=spf1 mx/24 -all",),
    ("mx.test", "MX"): ("mail.mx.test",),
    ("mail.mx.test", "A"): ("198.51.100.7",),
}


class Zone:
    """A scripted resolver: ``records`` from a dict; names in ``broken`` time out."""

    def __init__(self, zone: dict, broken: tuple[str, ...] = ()):
        self.zone, self.broken = zone, broken

    async def records(self, name: str, rdtype: str) -> tuple[str, ...]:
        if name in self.broken:
            raise TempFailure(f"{name}: timed out")
        return self.zone.get((name, rdtype), ())


def check(ip: str, sender: str, zone: dict = ZONE, broken: tuple[str, ...] = ()) -> str:
    return asyncio.run(spf.check_host(Zone(zone, broken), ip, sender, "helo.test")).result


@pytest.mark.parametrize("ip,sender,expected", [
    ("192.0.2.1", "x@a.test", "pass"),  # through include
    ("2001:db8::5", "x@a.test", "pass"),
    ("::ffff:192.0.2.9", "x@a.test", "pass"),  # an IPv4-mapped client is its IPv4 address
    ("198.51.100.1", "x@a.test", "fail"),  # include's softfail is no match; then -all
    ("192.0.2.1", "x@r.test", "pass"),  # redirect
    ("192.0.2.1", "bob@m.test", "pass"),  # exists with macros %{ir} and %{l}
    ("192.0.2.2", "bob@m.test", "fail"),
    ("198.51.100.99", "x@mx.test", "pass"),  # mx/24
    ("192.0.2.1", "x@two.test", "permerror"),  # two SPF records
    ("192.0.2.1", "x@loop.test", "permerror"),  # more than 10 DNS-querying terms
    ("192.0.2.1", "x@none.test", "none"),
    ("192.0.2.1", "x@not_a_domain", "none"),
])
def test_spf_evaluation(ip, sender, expected):
    assert check(ip, sender) == expected


def test_spf_temperror_and_malformed_records():
    assert check("192.0.2.1", "x@a.test", broken=("inc.a.test",)) == "temperror"
    for record in ("v=spf1 ip4:999.1.1.1 -all", "v=spf1 frobnicate -all", "v=spf1 exists:%{z} -all",
                   "v=spf1 a:%{d5r.} -all" + "x" * 300, "v=spf1 ip4:192.0.2.1/99"):
        assert check("192.0.2.1", "x@bad.test", {("bad.test", "TXT"): (record,)}) in ("permerror", "fail", "neutral")


def test_dmarc_records_alignment_and_pct():
    policy = dmarc.parse_record("v=DMARC1; p=reject; sp=quarantine; adkim=s", "example.co.uk", True)
    assert (policy.p, policy.sp, policy.adkim, policy.aspf) == ("reject", "quarantine", "s", "r")
    assert dmarc.parse_record("p=reject; v=DMARC1", "x", False) is None
    assert dmarc.parse_record("v=DMARC1; p=bogus", "x", False) is None
    assert dmarc.organizational_domain("mail.example.co.uk") == "example.co.uk"
    assert dmarc.aligned("bounce.example.co.uk", "example.co.uk", "r")
    assert not dmarc.aligned("bounce.example.co.uk", "example.co.uk", "s")
    # the record of the organizational domain: sp applies to a subdomain
    sub = dmarc.evaluate(policy, "news.example.co.uk", "fail", "other.test", [], sample=0.0)
    assert (sub.result, sub.policy) == ("fail", "quarantine")
    assert dmarc.evaluate(policy, "news.example.co.uk", "pass", "x.example.co.uk", []).result == "pass"
    half = dmarc.parse_record("v=DMARC1; p=reject; pct=50", "a.test", False)
    assert dmarc.evaluate(half, "a.test", "fail", "", [], sample=0.2).policy == "reject"
    assert dmarc.evaluate(half, "a.test", "fail", "", [], sample=0.7).policy == "quarantine"  # outside pct
    assert dmarc.author_domain(["A <a@x.test>, B <b@y.test>"]) is None
    assert dmarc.author_domain(["A <a@X.Test>"]) == "x.test"


def test_the_strictest_policy_of_the_recipient_domains_applies():
    failing = results.Verdicts(spf.SpfResult("fail", "s.test", "mailfrom"), (),
                               dmarc.DmarcResult("fail", "s.test", "reject"), "none")
    lenient = AuthPolicyConfig(dmarc_reject="quarantine")
    assert results.decide(failing, [lenient]).action == "quarantine"
    decision = results.decide(failing, [lenient, AuthPolicyConfig()])
    assert decision.action == "reject" and decision.reply.startswith("550 5.7.1")
    temp = results.Verdicts(spf.SpfResult("temperror", "s.test", "mailfrom"), (),
                            dmarc.DmarcResult("temperror", "s.test"), "none")
    assert results.decide(temp, [AuthPolicyConfig()]).action == "accept"  # a temperror never refuses


def test_hostile_values_cannot_break_the_header():
    sig = dkimjob.Signature("permerror", "evil.test;\r\nX-Injected: yes", "s(1)", "rsa-sha256", "AAAA",
                            "bad)\r\nX-Injected: yes")
    verdicts = results.Verdicts(spf.SpfResult("none", "x.test", "mailfrom"), (sig,),
                                dmarc.DmarcResult("none", "x.test"), "none")
    value = results.authentication_results("mx.test", verdicts)
    assert "\r\nX-Injected" not in value and "\r\n\t" in value


def test_the_replaced_integer_conversions_give_dkimpys_results():
    dkimjob._dkimpy()  # installs the replacements, keeping dkimpy's own in REPLACED
    original_int2str, original_str2int = dkimjob.REPLACED["int2str"], dkimjob.REPLACED["str2int"]
    assert dkim.crypto.int2str is dkimjob._int2str
    rng = random.Random(7)
    for _ in range(300):
        n = rng.getrandbits(rng.choice((0, 1, 8, 9, 2048, 4096)))
        for length in (-1, 0, 1, 256, 512):
            assert dkimjob._int2str(n, length) == original_int2str(n, length), (n, length)
        data = n.to_bytes(600, "big")
        assert dkimjob._str2int(data) == original_str2int(data)
