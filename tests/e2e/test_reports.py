"""Reports about sent mail, end to end: late bounces (DSNs a real Postfix makes after it accepted a message from
mtad) and complaints (ARF reports as feedback loops send them), and what they light up: events, the bounce and
complaint lists, webhooks (JSON and legacy, signed, retried), stats. Then the guards: a forged return path is
refused at RCPT, a report shares no transaction with other mail, and malformed reports or reports about unknown
messages are kept and logged without an event, never routed, never a crash.

The arrangement (``events_support.World``, all on loopback): mtad delivers ``late.test`` mail to a private Postfix
(its MX in the loopback DNS) that accepts it, relays it to a next hop which refuses the recipient (550 5.1.1), and
so bounces it, as a large provider's gateway does, to the envelope sender mtad gave it: the message's return
path ``bounce+TOKEN@example.com``, delivered to mtad's MX listener (Postfix's transport for example.com).
example.com is also a receiving domain with a catch-all route, so a report that were routed would show as a POST.

Runs on both store backends (``store_backend``: SQLite and PostgreSQL).
"""

from __future__ import annotations

import email
import asyncio
import json
import re
import signal
import smtplib
import threading

import pytest

from mtad.base.keys import derive
from mtad.mail import returnpath
from tests.e2e.engagement_support import FBL, arf, mx_send  # noqa: F401 (FBL, arf and mx_send: test_unsubmail too)
from tests.e2e.events_support import SIGNING_KEY, World, events, running_world, seed_verify
from tests.support.api import api
from tests.support.postfix import maillog, private_postfix, unavailable as postfix_unavailable
from tests.support.sink import by_local_part
from tests.support.wait import wait_for, wait_until
from tests.support.stores import both_backends as store_backend  # noqa: F401,E402 (fixture: on both backends)

RETURN_PATH = re.compile(r"bounce\+([0-9a-f]{19})(?:\.[a-z2-7]{6})?-[a-z2-7]{10}@example\.com")


def configure(cfg: dict, world: World) -> None:
    cfg["receiving_domains"] = ["inbound.test", "example.com"]
    cfg["routing"]["routes"].append({"expression": 'match_recipient(".*@example.com")',
                                     "actions": [f'forward("{world.receiver.url("route-example")}")'], "priority": 2})
    cfg["feedback"] = {"addresses": [FBL]}
    cfg["sending_domains"]["other.org"]["return_path"] = "sender"  # its mail keeps its own envelope sender
    cfg["webhooks"]["domains"] = {
        "example.com": {"complained": {"urls": [world.receiver.url("fail-once/complained")]},  # retried once
                        "permanent_fail": {"urls": [world.receiver.url("hook-bounced")], "format": "legacy"}},
        "other.org": {"complained": {"urls": [world.receiver.url("hook-complained-legacy")], "format": "legacy"}},
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory, certs, daemons_store):
    with running_world(tmp_path_factory, certs, "reports", configure) as w:
        yield w


# --- a private Postfix that accepts late.test mail, then bounces it to the return path ------------------------

# late.test is a relay domain (any recipient accepted, as a gateway does), relayed to the next hop; bounces for
# example.com go to mtad's MX listener. Its smtpd listens on a loopback address of its own.
MAIN_CF = """\
myhostname = gw.late.test
mydomain = late.test
myorigin = late.test
default_transport = error:no other destination
relay_domains = late.test
transport_maps = inline:{{ {{ late.test = smtp:[{next_ip}]:{port} }}, {{ example.com = smtp:[127.0.0.1]:{mx} }} }}
smtp_tls_security_level = none
"""


@pytest.fixture(scope="module")
def postfix(world):
    reason = postfix_unavailable()
    if reason:
        pytest.skip(reason)
    ip = world.farm.address()  # a loopback address of its own, on the port mtad delivers to
    next_hop = world.farm.add("next.late.test")
    next_hop.rcpt_reply = by_local_part  # bad* -> 550 5.1.1 after Postfix said 250 to mtad
    world.dns.set_records("gw.late.test", "A", [ip])
    world.dns.set_records("late.test", "MX", [(10, "gw.late.test")])
    with private_postfix("mtad-postfix-late-", f"{ip}:{world.farm.port}", MAIN_CF, next_ip=next_hop.ip,
                         port=world.farm.port, mx=world.mtad.mx) as folder:
        yield folder


# --- helpers ------------------------------------------------------------------------------------------------------

async def one_event(world: World, domain: str, kind: str, recipient: str, timeout: float = 15.0,
                    diagnostics=lambda: "") -> dict:
    """The one ``kind`` event of ``recipient`` in ``domain``'s log, once it is there."""
    try:
        got = await wait_for(lambda: events(world, domain, event=kind, recipient=recipient), timeout,
                             f"the {kind} event of {recipient}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnostics()}") from None
    assert len(got) == 1, got
    return got[0]


async def failed_with(world: World, domain: str, recipient: str, reason: str) -> list[dict]:
    async def check() -> list[dict]:
        return [e for e in await events(world, domain, event="failed", recipient=recipient) if e["reason"] == reason]
    return await wait_for(check, 10, f"a failed event of {recipient} with reason {reason}")


def rcpt_reply(world: World, rcpts: list[str]) -> list[tuple[int, str]]:
    with smtplib.SMTP("127.0.0.1", world.mtad.mx, local_hostname="isp.test", timeout=10) as s:
        s.ehlo()
        s.mail("")
        replies = []
        for r in rcpts:
            code, text = s.rcpt(r)
            replies.append((code, text.decode()))
        s.rset()
    return replies


def report_outcome(world: World, qid: str) -> str:
    """The log line of report ``qid`` (``QID: accepted report ...: OUTCOME``)."""
    def line() -> str | None:
        return next((x for x in world.mtad.log().splitlines() if f"{qid}: accepted report" in x), None)
    return wait_until(line, 5, f"the log line of report {qid}")


def delivered_copy(world: World, rcpt: str) -> bytes:
    """What the receiving MX got for ``rcpt`` (the sink of dest.test)."""
    return world.sink.to(rcpt)[-1].data


def without(original: bytes, *names: str) -> bytes:
    """The original with the named header fields removed (what some feedback loops redact)."""
    msg = email.message_from_bytes(original)
    for name in names:
        del msg[name]
    return msg.as_bytes()


# --- late bounces -----------------------------------------------------------------------------------------------

async def test_a_late_bounce_from_postfix_is_a_delayed_bounce_event_and_a_bounce_list_entry(world, postfix):
    # Sanity: ordinary mail to example.com is routed (so a report that were routed would show as a POST).
    world.receive("info@example.com", "routed")
    await wait_for(lambda: world.receiver.to("route-example"), what="the catch-all route's POST")

    qid = world.send(["bad-late@late.test"], "Late bounce", tags=("late",), variables={"order": "42"})
    delivered = await one_event(world, "example.com", "delivered", "bad-late@late.test",
                                diagnostics=lambda: maillog(postfix))
    assert delivered["delivery-status"]["code"] == 250  # Postfix accepted it: a bounce now can only come later
    failed = await one_event(world, "example.com", "failed", "bad-late@late.test", timeout=30,
                             diagnostics=lambda: maillog(postfix) + "\n" + world.mtad.log()[-3000:])
    status = failed["delivery-status"]
    assert (failed["severity"], failed["reason"], failed["flags"]["is-delayed-bounce"]) == (
        "permanent", "delayed-bounce", True)
    assert (status["is-delayed-bounce"], status["code"], status["enhanced-code"]) == (True, 550, "5.1.1")
    assert "User unknown" in status["message"] and status["mx-host"]  # the next hop's reply, named by Postfix
    assert failed["storage"]["key"] == qid and failed["tags"] == ["late"]
    assert failed["user-variables"] == {"order": "42"}
    assert failed["message"]["headers"]["subject"] == "Late bounce"

    # The address is on the bounce list, and the next message to it is not sent.
    entry = await api(world, "GET", "/v3/example.com/bounces/bad-late@late.test")
    assert entry["code"] == "550" and "User unknown" in entry["error"]
    world.send(["bad-late@late.test"], "Again")
    await failed_with(world, "example.com", "bad-late@late.test", "suppress-bounce")

    # The DSN was kept (an inbound message with no work), never routed: the route got only the sanity message.
    rows = world.mtad.query("SELECT id, sender, recipients, direction FROM messages WHERE recipients LIKE ?",
                            ("%bounce+%",))
    assert len(rows) == 1 and rows[0][1] == "" and rows[0][3] == "inbound"
    assert RETURN_PATH.fullmatch(json.loads(rows[0][2])[0]).group(1) == qid.lower()
    assert not world.mtad.query("SELECT 1 FROM forwards WHERE message = ?", (rows[0][0],))
    assert not world.mtad.query("SELECT 1 FROM deliveries WHERE message = ?", (rows[0][0],))
    assert all(p.get("recipient") == "info@example.com" for p in world.receiver.to("route-example"))

    # The permanent_fail webhook in the legacy format: a bounce, signed.
    [hook] = await wait_for(lambda: [p for p in world.receiver.to("hook-bounced")
                                     if p.get("recipient") == "bad-late@late.test"
                                     and "Late bounce" in p.get("message-headers")], what="the legacy webhook")
    assert (hook.get("event"), hook.get("code")) == ("bounced", "5.1.1")
    assert seed_verify(SIGNING_KEY, hook.get("token"), hook.get("timestamp"), hook.get("signature"))

    # Stats count it as a delayed bounce.
    stats = await api(world, "GET", "/v3/example.com/stats/total",
                      params=[("event", "failed"), ("duration", "1d"), ("resolution", "day")])
    assert sum(s["failed"]["permanent"]["delayed-bounce"] for s in stats["stats"]) == 1


async def test_a_delayed_report_is_recorded_but_suppresses_nothing(world):
    qid = world.send(["slow@dest.test"], "Delayed")
    await one_event(world, "example.com", "delivered", "slow@dest.test")
    return_path = world.sink.to("slow@dest.test")[-1].mail_from
    assert RETURN_PATH.fullmatch(return_path).group(1) == qid.lower()
    status = ("Reporting-MTA: dns; gw.dest.test\r\n\r\nFinal-Recipient: rfc822; slow@dest.test\r\nAction: delayed\r\n"
              "Status: 4.4.1\r\nRemote-MTA: dns; inner.dest.test\r\n"
              "Diagnostic-Code: smtp; 451 4.4.1 connection timed out\r\n")
    code, _ = mx_send(world, "", [return_path], dsn_message(status, b"Message-ID: <whatever@x>\r\n"))
    assert code == 250
    event = await one_event(world, "example.com", "failed", "slow@dest.test")
    assert (event["severity"], event["reason"], event["flags"]["is-delayed-bounce"]) == ("temporary", "generic", True)
    assert (event["delivery-status"]["code"], event["delivery-status"]["mx-host"]) == (451, "inner.dest.test")
    await api(world, "GET", "/v3/example.com/bounces/slow@dest.test", expect=404)


async def test_a_bounce_arriving_before_its_delivery_is_committed_is_still_a_failed_event(world):
    """A receiver that bounces at once after its 250 can send the DSN before mtad has committed that delivery's
    outcome: the authentic return path is looked up again for a few seconds instead of "not found"."""
    world.sink.data_gate = gate = threading.Event()  # the delivery's DATA is held: no delivered event yet
    try:
        qid = world.send(["racing@dest.test"], "Racing")
        return_path = returnpath.address(derive(SIGNING_KEY, returnpath.PURPOSE), qid, "example.com",
                                         "racing@dest.test")
        wait_until(lambda: any("racing@dest.test" in a.rcpt_tos for a in world.sink.data_attempts), timeout=15)
        status = ("Reporting-MTA: dns; gw.dest.test\r\n\r\nFinal-Recipient: rfc822; racing@dest.test\r\n"
                  "Action: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user\r\n")
        sending = asyncio.ensure_future(asyncio.to_thread(
            mx_send, world, "", [return_path], dsn_message(status, b"Message-ID: <racing@x>\r\n")))
        await asyncio.sleep(1.0)
        assert not sending.done()  # the report waits for the delivery it is about ...
        gate.set()  # ... which the receiver now takes (250): mtad commits it as delivered
        code, text = await sending
        assert code == 250, text
    finally:
        world.sink.data_gate = None
        gate.set()
    event = await one_event(world, "example.com", "failed", "racing@dest.test")
    assert (event["severity"], event["flags"]["is-delayed-bounce"]) == ("permanent", True)


def dsn_message(status: str, original_headers: bytes, boundary: str = "B1") -> bytes:
    return (f"From: MAILER-DAEMON@gw.dest.test\r\nTo: bounce@example.com\r\nSubject: Delivery Status\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary={boundary}"
            f"\r\n\r\n--{boundary}\r\nContent-Type: text/plain\r\n\r\nStill trying.\r\n--{boundary}\r\n"
            f"Content-Type: message/delivery-status\r\n\r\n{status}\r\n--{boundary}\r\n"
            f"Content-Type: text/rfc822-headers\r\n\r\n").encode() + original_headers + f"\r\n--{boundary}--\r\n".encode()


# --- complaints ---------------------------------------------------------------------------------------------------

async def test_an_arf_report_is_a_complaint_on_the_list_with_a_signed_retried_webhook(world):
    qid = world.send(["fan@dest.test"], "Weekly news", tags=("news",))
    await one_event(world, "example.com", "delivered", "fan@dest.test")
    original = delivered_copy(world, "fan@dest.test")
    assert b"\r\nX-Mtad-Sid: " in original  # the header that names the message, signed by DKIM or not
    code, _ = mx_send(world, "fbl@isp.test", [FBL], arf(original))  # Original-Rcpt-To redacted: not given
    assert code == 250
    event = await one_event(world, "example.com", "complained", "fan@dest.test")
    assert event["storage"]["key"] == qid and event["tags"] == ["news"] and event["log-level"] == "warn"
    assert event["message"]["headers"]["subject"] == "Weekly news"
    entry = await api(world, "GET", "/v3/example.com/complaints/fan@dest.test")
    assert entry["address"] == "fan@dest.test"

    # The JSON webhook: refused once (500), retried, signed; the same event both times.
    def fan_posts() -> list:
        return [p for p in world.receiver.to("fail-once/complained")
                if p.json()["event-data"]["recipient"] == "fan@dest.test"]
    posts = await wait_for(lambda: len(fan_posts()) >= 2 and fan_posts(), 20, what="the webhook and its retry")
    assert [p.status for p in posts] == [500, 200]
    assert {p.json()["event-data"]["id"] for p in posts} == {event["id"]}
    sig = posts[1].json()["signature"]
    assert seed_verify(SIGNING_KEY, sig["token"], sig["timestamp"], sig["signature"])

    stats = await api(world, "GET", "/v3/example.com/stats/total",
                      params=[("event", "complained"), ("duration", "1d"), ("resolution", "day")])
    assert sum(s["complained"]["total"] for s in stats["stats"]) >= 1
    # The next message to the address is suppressed as a complaint.
    world.send(["fan@dest.test"], "More news")
    await failed_with(world, "example.com", "fan@dest.test", "suppress-complaint")


async def test_a_complaint_matched_by_message_id_names_its_recipient(world):
    qid = world.send(["fan-a@dest.test", "fan-b@dest.test"], "Two readers")
    for rcpt in ("fan-a@dest.test", "fan-b@dest.test"):
        await one_event(world, "example.com", "delivered", rcpt)
    original = without(delivered_copy(world, "fan-b@dest.test"), "X-Mtad-Sid")  # only the Message-ID is left
    code, _ = mx_send(world, "fbl@isp.test", [FBL], arf(original, rcpt_to="fan-b@dest.test"))
    assert code == 250
    event = await one_event(world, "example.com", "complained", "fan-b@dest.test")
    assert event["storage"]["key"] == qid
    assert await events(world, "example.com", event="complained", recipient="fan-a@dest.test") == []
    await api(world, "GET", "/v3/example.com/complaints/fan-a@dest.test", expect=404)


async def test_a_complaint_sent_to_the_return_path_and_a_legacy_complained_webhook(world):
    # Sent to the return path itself, the original stripped of everything that names it: the token tells.
    world.send(["fan-c@dest.test"], "Return path")
    await one_event(world, "example.com", "delivered", "fan-c@dest.test")
    got = world.sink.to("fan-c@dest.test")[-1]
    original = without(got.data, "X-Mtad-Sid", "Message-ID")
    code, _ = mx_send(world, "fbl@isp.test", [got.mail_from], arf(original, rcpt_to="redacted@dest.test"))
    assert code == 250
    await one_event(world, "example.com", "complained", "fan-c@dest.test")

    # other.org keeps its own envelope sender (return_path: sender); its complaint is matched by Message-ID, and
    # its complained webhook is in the legacy format.
    world.send(["fan-d@dest.test"], "From other.org", sender="app@other.org", login="app@other.org")
    await one_event(world, "other.org", "delivered", "fan-d@dest.test")
    got = world.sink.to("fan-d@dest.test")[-1]
    assert got.mail_from == "app@other.org"
    code, _ = mx_send(world, "fbl@isp.test", [FBL], arf(without(got.data, "X-Mtad-Sid")))
    assert code == 250
    await one_event(world, "other.org", "complained", "fan-d@dest.test")
    [hook] = await wait_for(lambda: [p for p in world.receiver.to("hook-complained-legacy")
                                     if p.get("recipient") == "fan-d@dest.test"], what="the legacy webhook")
    assert (hook.get("event"), hook.get("domain")) == ("complained", "other.org")
    assert seed_verify(SIGNING_KEY, hook.get("token"), hook.get("timestamp"), hook.get("signature"))


# --- guards and bad input ---------------------------------------------------------------------------------------

def test_a_forged_or_altered_return_path_is_refused_at_rcpt(world):
    key = derive(SIGNING_KEY, returnpath.PURPOSE)
    real = returnpath.address(key, "018F0000000ABCDEF12", "example.com", "x@dest.test")
    altered = real[:-len("@example.com") - 1] + ("a" if real[-len("@example.com") - 1] != "a" else "b") + "@example.com"
    forged_key = returnpath.address(derive("key-guessed", returnpath.PURPOSE), "018F0000000ABCDEF12", "example.com")
    replies = rcpt_reply(world, [altered, "bounce+nonsense@example.com", forged_key, "bounce+x-y@other.org"])
    for code, text in replies:
        assert (code, text.split(" ")[0]) == (550, "5.1.1") and "invalid return path" in text, (code, text)
    # a valid token on a domain that is not one of mtad's sending domains is no return path of ours
    assert rcpt_reply(world, [real.replace("@example.com", "@elsewhere.test")])[0][0] == 554
    # reports and other mail do not share a transaction: the client sends the rest again (452)
    assert [c for c, _ in rcpt_reply(world, [real, "info@example.com", FBL])] == [250, 452, 250]
    assert [c for c, _ in rcpt_reply(world, ["info@example.com", real])] == [250, 452]


@pytest.mark.parametrize("what, make_body, outcome", [
    ("not a report", lambda: b"From: reader@dest.test\r\nSubject: Out of office\r\n\r\nI am away.\r\n",
     "not a DSN or feedback report"),
    ("a DSN without its status part", lambda: dsn_message("x", b"").replace(b"message/delivery-status", b"text/plain"),
     "malformed report"),
    ("a DSN without a recipient block", lambda: dsn_message("Reporting-MTA: dns; x.test\r\n", b""), "malformed report"),
    ("a truncated multipart", lambda: dsn_message("Reporting-MTA: dns; x\r\n", b"")[:180], "malformed report"),
])
def test_malformed_reports_at_a_return_path_are_kept_and_logged_without_an_event(world, what, make_body, outcome):
    key = derive(SIGNING_KEY, returnpath.PURPOSE)
    rcpt = returnpath.address(key, "018F0000000ABCDEF12", "example.com")
    code, text = mx_send(world, "", [rcpt], make_body())
    assert code == 250, text
    qid = text.rsplit(" ", 1)[-1]
    assert world.mtad.query("SELECT direction, stored_until IS NOT NULL FROM messages WHERE id = ?", (qid,)) == [
        ("inbound", 1)]
    assert not world.mtad.query("SELECT 1 FROM forwards WHERE message = ?", (qid,))
    assert not world.mtad.query("SELECT 1 FROM events WHERE queue_id = ? OR data LIKE ?", (qid, f"%{qid}%"))
    assert outcome in report_outcome(world, qid)


async def test_reports_about_unknown_messages_are_kept_and_logged_without_an_event(world):
    key = derive(SIGNING_KEY, returnpath.PURPOSE)
    unknown = returnpath.address(key, "018F0000000ABCDEF12", "example.com", "ghost@dest.test")
    status = "Reporting-MTA: dns; x.test\r\n\r\nFinal-Recipient: rfc822; ghost@dest.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
    for rcpts, body, outcome in (
            ([unknown], dsn_message(status, b""), "about a message not found (return path of 018F0000000ABCDEF12)"),
            ([FBL], arf(b"Message-ID: <never-sent@example.com>\r\nSubject: x\r\n\r\nhi\r\n"),
             "about a message not found (Message-ID)"),
            ([FBL], arf(b"Subject: nothing names it\r\n\r\nhi\r\n"), "names no message of ours"),
            ([FBL], arf(b"Message-ID: <x@example.com>\r\n\r\nhi\r\n", feedback_type="not-spam"), "not a complaint")):
        code, text = mx_send(world, "", rcpts, body)
        assert code == 250, text
        qid = text.rsplit(" ", 1)[-1]
        assert world.mtad.query("SELECT 1 FROM messages WHERE id = ?", (qid,))  # kept
        assert outcome in report_outcome(world, qid)
    assert await events(world, "example.com", recipient="ghost@dest.test") == []
    await api(world, "GET", "/v3/example.com/bounces/ghost@dest.test", expect=404)


def test_feedback_addresses_change_on_reload(world):
    assert rcpt_reply(world, ["abuse-reports@feedback2.test"])[0][0] == 554  # not a feedback address: no relay
    world.mtad.cfg["feedback"] = {"addresses": [FBL, "abuse-reports@feedback2.test"]}
    world.mtad.write_config()
    world.mtad.signal(signal.SIGHUP)
    wait_until(lambda: rcpt_reply(world, ["abuse-reports@feedback2.test"])[0][0] == 250, 10, "the new address")
    world.mtad.cfg["feedback"] = {"addresses": [FBL]}
    world.mtad.write_config()
    world.mtad.signal(signal.SIGHUP)
    wait_until(lambda: rcpt_reply(world, ["abuse-reports@feedback2.test"])[0][0] == 554, 10, "the address removed")
