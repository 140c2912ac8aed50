"""The verdicts written into the message: one ``Authentication-Results`` header (RFC 8601) and the fields of
the route POST, and the policy decision. Pure functions.

Headers added to an inbound message (each value is made only of mtad's words and sanitised tokens from the
message, so a hostile signature cannot inject a header):
- ``Authentication-Results: <authserv-id>; spf=... smtp.mailfrom=<domain>; dkim=... header.d=... header.s=...
  header.a=... header.b=...`` (one ``dkim=`` per signature checked, ``dkim=none`` without any)
  ``; dmarc=... (p=...) header.from=<domain>; arc=...``;
- ``X-Mailgun-Spf: Pass|Fail|SoftFail|Neutral|None|TempError|PermError`` (Mailgun's field);
- ``X-Mailgun-Dkim-Check-Result: Pass|Fail`` (Mailgun's field: Pass when a signature verified);
- ``X-Mailgun-Dmarc-Check-Result: Pass|Fail|None|TempError|PermError`` (mtad's, in the same style);
- ``X-Mailgun-Auth-Quarantine: Yes (<conditions>)`` when the domain's policy quarantines (tags) the message.
Any header of these names already in the message, and every ``Authentication-Results`` claiming mtad's
authserv-id, is a forgery and is removed (RFC 8601 §5).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

from mtad.config.schema import AuthPolicyConfig
from mtad.inbound.verdicts.dkimjob import Signature
from mtad.inbound.verdicts.dmarc import DmarcResult
from mtad.inbound.verdicts.spf import SpfResult

VERDICT_HEADERS = ("x-mailgun-spf", "x-mailgun-dkim-check-result", "x-mailgun-dmarc-check-result",
                   "x-mailgun-auth-quarantine")
_STRENGTH = {"ignore": 0, "quarantine": 1, "reject": 2}
_UNSAFE_TOKEN = re.compile(r"[^A-Za-z0-9._+/=-]")
_UNSAFE_COMMENT = re.compile(r"[^ -'*-\[\]-~]")  # printable ASCII without ( ) \\
_MAILGUN_CASE = {"pass": "Pass", "fail": "Fail", "softfail": "SoftFail", "neutral": "Neutral", "none": "None",
                 "temperror": "TempError", "permerror": "PermError"}


@dataclass(frozen=True)
class Verdicts:
    spf: SpfResult
    dkim: tuple[Signature, ...]
    dmarc: DmarcResult
    arc: str
    arc_reason: str = ""

    @property
    def dkim_result(self) -> str:
        """One word for all signatures: pass if any passed, else the first one's result, none without any."""
        if not self.dkim:
            return "none"
        if any(s.result == "pass" for s in self.dkim):
            return "pass"
        return self.dkim[0].result

    def dkim_pass_domains(self) -> list[str]:
        return [s.domain for s in self.dkim if s.result == "pass"]


@dataclass(frozen=True)
class Decision:
    action: str  # accept | quarantine | reject
    reasons: tuple[str, ...] = ()  # the conditions met: dmarc, spf, no-auth
    reply: str = ""  # the SMTP reply of a reject


def decide(verdicts: Verdicts, policies: Iterable[AuthPolicyConfig]) -> Decision:
    """The strictest action the recipients' domains' policies take for these verdicts."""
    best, reasons = "ignore", []
    for policy in policies:
        met = []
        if verdicts.dmarc.result == "fail" and verdicts.dmarc.policy == "reject":
            met.append(("dmarc", policy.dmarc_reject))
        if verdicts.dmarc.result == "fail" and verdicts.dmarc.policy == "quarantine":
            met.append(("dmarc", policy.dmarc_quarantine))
        if verdicts.spf.result == "fail":
            met.append(("spf", policy.spf_fail))
        if verdicts.spf.result != "pass" and verdicts.dkim_result != "pass":
            met.append(("no-auth", policy.no_auth))
        for reason, action in met:
            if action == "ignore":
                continue
            if reason not in reasons:
                reasons.append(reason)
            if _STRENGTH[action] > _STRENGTH[best]:
                best = action
    if best == "reject":
        return Decision("reject", tuple(reasons), _reply(verdicts, reasons))
    return Decision("quarantine" if best == "quarantine" else "accept", tuple(reasons) if best != "ignore" else ())


def _reply(verdicts: Verdicts, reasons: list[str]) -> str:
    if "dmarc" in reasons and verdicts.dmarc.result == "fail":
        domain = _token(verdicts.dmarc.from_domain)
        return (f"550 5.7.1 Message refused: DMARC policy of {domain} ({verdicts.dmarc.policy}) not met: "
                "no aligned SPF or DKIM pass")
    if "spf" in reasons:
        return f"550 5.7.1 Message refused: SPF of {_token(verdicts.spf.domain)} does not allow this sender"
    return "550 5.7.1 Message refused: the sender could not be authenticated (no SPF or DKIM pass)"


def _token(text: str) -> str:
    return _UNSAFE_TOKEN.sub("", text)[:253] or "unknown"


def _comment(text: str) -> str:
    text = _UNSAFE_COMMENT.sub("", text).strip()[:120]
    return f" ({text})" if text else ""


def authentication_results(authserv_id: str, verdicts: Verdicts) -> str:
    """The header field's value (RFC 8601 §2.2), folded one method per line."""
    spf = verdicts.spf
    parts = [f"spf={spf.result}{_comment(spf.reason)} smtp.{spf.identity}={_token(spf.domain)}"]
    for s in verdicts.dkim:
        parts.append(f"dkim={s.result}{_comment(s.reason)} header.d={_token(s.domain)} header.s={_token(s.selector)}"
                     f" header.a={_token(s.algorithm)} header.b={_token(s.b)}")
    if not verdicts.dkim:
        parts.append("dkim=none (no signature)")
    dmarc = verdicts.dmarc
    policy = f" (p={dmarc.policy})" if dmarc.result in ("pass", "fail") else _comment(dmarc.reason)
    parts.append(f"dmarc={dmarc.result}{policy}" + (f" header.from={_token(dmarc.from_domain)}"
                                                    if dmarc.from_domain else ""))
    parts.append(f"arc={verdicts.arc}{_comment(verdicts.arc_reason if verdicts.arc != 'none' else '')}")
    return authserv_id + ";\r\n\t" + ";\r\n\t".join(parts)


def header_fields(authserv_id: str, verdicts: Verdicts, decision: Decision) -> list[tuple[str, str]]:
    """The header fields to add at the top of the message: (name, value folded with CRLF TAB)."""
    fields = [("Authentication-Results", authentication_results(authserv_id, verdicts)),
              ("X-Mailgun-Spf", _MAILGUN_CASE.get(verdicts.spf.result, "None")),
              ("X-Mailgun-Dkim-Check-Result", "Pass" if verdicts.dkim_result == "pass" else "Fail"),
              ("X-Mailgun-Dmarc-Check-Result", _MAILGUN_CASE.get(verdicts.dmarc.result, "None"))]
    if decision.action == "quarantine":
        fields.append(("X-Mailgun-Auth-Quarantine", f"Yes ({', '.join(decision.reasons)})"))
    return fields


def encoded(fields: Iterable[tuple[str, str]]) -> list[tuple[bytes, str]]:
    """Each field of ``header_fields`` as its CRLF-terminated line, with the value that
    ``mail.headers.parse_block`` reads from that line (unfolded, stripped)."""
    out = []
    for name, value in fields:
        line = f"{name}: {value}\r\n".encode("ascii", "replace")
        read = line[len(name) + 1:-2].decode("ascii")
        out.append((line, read.replace("\r\n\t", "\t").replace("\r\n ", " ").strip()))
    return out


def summary(verdicts: Verdicts, decision: Decision) -> Mapping[str, str]:
    """What events and the stored message's envelope keep (``authentication`` in events)."""
    return {"spf": verdicts.spf.result, "dkim": verdicts.dkim_result, "dmarc": verdicts.dmarc.result,
            "arc": verdicts.arc, "action": decision.action}


def forged(fields: Iterable, authserv_id: str) -> list:
    """The header fields to remove: verdict headers, and Authentication-Results claiming ``authserv_id``."""
    ours = authserv_id.lower()
    out = []
    for f in fields:
        name = f.name.lower()
        if name in VERDICT_HEADERS:
            out.append(f)
        elif name == "authentication-results":
            claimed = re.split(r"[;\s(]", f.value.strip(), maxsplit=1)[0].strip().lower()
            if claimed == ours:
                out.append(f)
    return out
