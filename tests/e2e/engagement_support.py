"""What the engagement e2e tests (tracking, reports, campaigns) share: a GeoIP database the test writes, a delivered
copy read as a mail program would (its text parts, its tracking URLs), a tracking URL fetched as a browser, and an
ARF complaint sent to mtad's MX as a feedback loop sends one.

- ``write_geoip(path, places)``: a MaxMind-format ``.mmdb`` (``tracking.geoip_database``) mapping networks to
  (country, region, city); by default 127.0.0.0/8 is "US/TX/San Antonio".
- ``parts(data)``: {subtype: decoded text} of a message's text parts; ``tracked_urls(world, text, kind)``: the
  ``/c/``, ``/o/`` or ``/u/`` URLs of mtad's API listener in a text.
- ``fetch(url, user_agent, method, **kwargs)``: one aiohttp request, redirects not followed: (status, headers, body).
- ``arf(original, rcpt_to=..., ...)``: an RFC 5965 feedback report about ``original``; ``mx_send``: one SMTP
  transaction on mtad's MX listener; ``FBL``: the feedback address the report tests configure.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
import smtplib
from email.mime.base import MIMEBase
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any, Mapping

import aiohttp

CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
          "Safari/537.36")
IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
          "Version/17.4 Mobile/15E148 Safari/604.1")
THUNDERBIRD = "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Thunderbird/115.10.1"

FBL = "fbl@feedback.test"
LOOPBACK_PLACE = {"127.0.0.0/8": ("US", "TX", "San Antonio")}


def write_geoip(path: Path, places: Mapping[str, tuple[str, str, str]] = LOOPBACK_PLACE) -> Path:
    """A GeoIP2-City database at ``path``: each network (CIDR) is (country ISO code, region ISO code, city)."""
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet
    writer = MMDBWriter(ip_version=6, database_type="GeoIP2-City", ipv4_compatible=True)
    for network, (country, region, city) in places.items():
        writer.insert_network(IPSet([network]), {
            "country": {"iso_code": country, "names": {"en": country}},
            "subdivisions": [{"iso_code": region, "names": {"en": region}}], "city": {"names": {"en": city}}})
    writer.to_db_file(str(path))
    return path


def parts(data: bytes) -> dict[str, str]:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    return {p.get_content_subtype(): p.get_content() for p in msg.walk() if p.get_content_maintype() == "text"}


def tracked_urls(world: Any, text: str, kind: str) -> list[str]:
    return re.findall(re.escape(world.api_url) + f"/{kind}/[A-Za-z0-9_-]+", text)


async def fetch(url: str, user_agent: str = CHROME, method: str = "GET", **kwargs) -> tuple[int, dict, bytes]:
    async with aiohttp.ClientSession(headers={"User-Agent": user_agent}) as session:
        async with session.request(method, url, allow_redirects=False, **kwargs) as resp:
            return resp.status, dict(resp.headers), await resp.read()


def mx_send(world: Any, sender: str, rcpts: list[str], body: bytes) -> tuple[int, str]:
    """One transaction on mtad's MX listener (as a remote MTA or a feedback loop); the reply to DATA."""
    with smtplib.SMTP("127.0.0.1", world.mtad.mx, local_hostname="isp.test", timeout=10) as s:
        s.ehlo()
        s.mail(sender)
        for r in rcpts:
            code, text = s.rcpt(r)
            assert code == 250, (r, code, text)
        code, text = s.data(body)
    return code, text.decode()


def arf(original: bytes, *, rcpt_to: str = "", feedback_type: str = "abuse", to: str = FBL) -> bytes:
    """An ARF report (RFC 5965 section 3) as a feedback loop builds one, with the email package: a human part, the
    machine-readable message/feedback-report, and the original message."""
    msg = MIMEMultipart("report", report_type="feedback-report")
    msg["From"] = "Feedback Loop <fbl@isp.test>"
    msg["To"] = to
    msg["Subject"] = "Email Feedback Report for IP 127.0.0.1"
    msg["Date"] = email.utils.formatdate()
    msg["Message-ID"] = email.utils.make_msgid(domain="isp.test")
    msg.attach(MIMEText("This is an email abuse report for an email message received from IP 127.0.0.1.\r\n"))
    report = MIMEBase("message", "feedback-report")
    fields = [f"Feedback-Type: {feedback_type}", "User-Agent: IspFBL/1.0", "Version: 1",
              "Arrival-Date: " + email.utils.formatdate(), "Source-IP: 127.0.0.1", "Reported-Domain: example.com"]
    if rcpt_to:
        fields.append(f"Original-Rcpt-To: <{rcpt_to}>")
    report.set_payload("\r\n".join(fields) + "\r\n")
    msg.attach(report)
    msg.attach(MIMEMessage(email.message_from_bytes(original)))
    return msg.as_bytes()
