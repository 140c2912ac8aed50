"""Reading DSNs (RFC 3464) and ARF feedback reports (RFC 5965) with ``mail.reports.parse``: what each field becomes,
what is not a report, and malformed or hostile reports (``ReportError``, never anything else)."""

from __future__ import annotations

import email.utils
from email.mime.base import MIMEBase
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import pytest

from mtad.mail import reports

ORIGINAL = (b"Received: from client.test by mtad.test with ESMTPSA id 1;\r\n\tdate\r\n"
            b"X-Mtad-Sid: 018f2a3b4c5d6e7f8a9-abcdefghij\r\nFrom: News <news@example.com>\r\n"
            b"To: Bob <bob@dest.test>\r\nSubject: Hello\r\nMessage-ID: <m1@example.com>\r\n\r\nHello.\r\n")


def dsn(status_part: str, *, headers_part: bytes = ORIGINAL, report_type: str = "delivery-status",
        status_type: str = "message/delivery-status", cte: str = "") -> bytes:
    return (b"From: MAILER-DAEMON@pf.test (Mail Delivery System)\r\nTo: bounce+x@example.com\r\n"
            b"Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/report; report-type=" + report_type.encode() + b";\r\n\tboundary=\"B1\"\r\n\r\n"
            b"--B1\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you...\r\n"
            b"--B1\r\nContent-Type: " + status_type.encode() + b"\r\n" + cte.encode() + b"\r\n"
            + status_part.encode() + b"\r\n--B1\r\nContent-Type: text/rfc822-headers\r\n\r\n" + headers_part
            + b"\r\n--B1--\r\n")


POSTFIX_STATUS = ("Reporting-MTA: dns; pf.test\r\nX-Postfix-Queue-ID: 4Xyz\r\nArrival-Date: Mon, 1 Jan 2024\r\n\r\n"
                  "Final-Recipient: rfc822; bob@dest.test\r\nOriginal-Recipient: rfc822;bob@dest.test\r\n"
                  "Action: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; next.dest.test\r\n"
                  "Diagnostic-Code: smtp; 550 5.1.1 <bob@dest.test>: Recipient address rejected:\r\n"
                  "    User unknown in virtual mailbox table\r\n")


def test_a_postfix_dsn():
    report = reports.parse(dsn(POSTFIX_STATUS))
    assert isinstance(report, reports.DeliveryReport) and report.reporting_mta == "pf.test"
    [rcpt] = report.recipients
    assert (rcpt.final_recipient, rcpt.action, rcpt.status, rcpt.code, rcpt.remote_mta, rcpt.permanent) == (
        "bob@dest.test", "failed", "5.1.1", 550, "next.dest.test", True)
    assert rcpt.diagnostic == "550 5.1.1 <bob@dest.test>: Recipient address rejected: User unknown in virtual mailbox table"
    assert report.original.message_id == "m1@example.com" and report.original.to == ("bob@dest.test",)
    assert report.original.get("x-mtad-sid") == "018f2a3b4c5d6e7f8a9-abcdefghij"


def test_delayed_and_non_smtp_diagnostics_and_the_original_as_a_message():
    status = ("Reporting-MTA: dns; exim.test\r\n\r\nFinal-Recipient: rfc822;a@dest.test\r\nAction: delayed\r\n"
              "Status: 4.4.1\r\nDiagnostic-Code: X-Postfix; connect to next.dest.test: Connection refused\r\n\r\n"
              "Final-Recipient: rfc822;c@dest.test\r\nAction: failed\r\nStatus: 5.2.2\r\n"
              "Diagnostic-Code: X-Postfix; mailbox full\r\n\r\nFinal-Recipient: rfc822;d@dest.test\r\n"
              "Action: relayed\r\nStatus: 2.0.0\r\n")
    raw = dsn(status).replace(b"text/rfc822-headers", b"message/rfc822")
    report = reports.parse(raw)
    assert [(r.final_recipient, r.action, r.code, r.permanent) for r in report.recipients] == [
        ("a@dest.test", "delayed", 450, False), ("c@dest.test", "failed", 550, True), ("d@dest.test", "relayed", 250, False)]
    assert report.original.message_id == "m1@example.com"


def test_a_global_dsn_and_a_base64_status_part():
    report = reports.parse(dsn(POSTFIX_STATUS, report_type="global-delivery-status",
                               status_type="message/global-delivery-status"))
    assert report.recipients[0].final_recipient == "bob@dest.test"
    import base64  # RFC 3464 status parts are 7bit: an encoded one is not read, and says so
    encoded = base64.encodebytes(POSTFIX_STATUS.encode()).decode()
    with pytest.raises(reports.ReportError, match="without a per-recipient block"):
        reports.parse(dsn(encoded, cte="Content-Transfer-Encoding: base64\r\n"))


def arf(feedback_type: str = "abuse", original: bytes = ORIGINAL) -> bytes:
    """An ARF report as a feedback loop builds one (RFC 5965 section 3), with the email package."""
    msg = MIMEMultipart("report", report_type="feedback-report")
    msg["From"] = "feedback@isp.test"
    msg["To"] = "fbl@example.com"
    msg["Subject"] = "FW: Hello"
    msg["Date"] = email.utils.formatdate()
    msg.attach(MIMEText("This is an email abuse report for an email message received from IP 127.0.0.1.\r\n"))
    report = MIMEBase("message", "feedback-report")
    report.set_payload(f"Feedback-Type: {feedback_type}\r\nUser-Agent: SomeGenerator/1.0\r\nVersion: 1\r\n"
                       "Original-Mail-From: <bounce+x@example.com>\r\nOriginal-Rcpt-To: <bob@dest.test>\r\n"
                       "Arrival-Date: Thu, 8 Mar 2005 14:00:00 EDT\r\nSource-IP: 127.0.0.1\r\n"
                       "Reported-Domain: Example.com\r\n")
    msg.attach(report)
    msg.attach(MIMEMessage(email.message_from_bytes(original)))
    return msg.as_bytes()


def test_an_arf_report():
    report = reports.parse(arf())
    assert isinstance(report, reports.FeedbackReport) and report.is_complaint
    assert (report.feedback_type, report.user_agent, report.original_mail_from, report.original_rcpt_to,
            report.source_ip, report.reported_domain) == ("abuse", "SomeGenerator/1.0", "bounce+x@example.com",
                                                          ("bob@dest.test",), "127.0.0.1", "example.com")
    assert report.original.message_id == "m1@example.com"
    assert not reports.parse(arf("not-spam")).is_complaint


def test_what_is_not_a_report():
    assert reports.parse(b"From: a@b\r\nSubject: Out of office\r\n\r\nI am away.\r\n") is None
    assert reports.parse(dsn(POSTFIX_STATUS, report_type="disposition-notification")) is None  # a read receipt
    assert reports.parse(b"") is None
    assert reports.parse(bytes(range(256)) * 10) is None


@pytest.mark.parametrize("raw, problem", [
    (dsn(POSTFIX_STATUS, status_type="text/plain"), "without a message/delivery-status part"),
    (dsn("Reporting-MTA: dns; pf.test\r\n"), "without a per-recipient block"),
    (dsn("Reporting-MTA: dns; pf.test\r\n\r\nAction: failed\r\nStatus: 5.1.1\r\n"), "without Final-Recipient"),
    (dsn("Reporting-MTA: dns; pf.test\r\n\r\nFinal-Recipient: rfc822; a@b\r\nAction: exploded\r\n"), "unknown Action"),
    (arf().replace(b"Feedback-Type: abuse", b"X-Type: abuse"), "without Feedback-Type"),
    (arf().replace(b"message/feedback-report", b"text/plain"), "without a message/feedback-report part"),
])
def test_malformed_reports_say_why(raw, problem):
    with pytest.raises(reports.ReportError, match=problem):
        reports.parse(raw)


def test_hostile_sizes_are_bounded():
    blocks = "".join(f"Final-Recipient: rfc822; u{i}@dest.test\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
                     for i in range(3000))
    report = reports.parse(dsn("Reporting-MTA: dns; pf.test\r\n\r\n" + blocks))
    assert len(report.recipients) == reports.MAX_BLOCKS
    long = dsn(POSTFIX_STATUS.replace("User unknown", "x" * 100_000))
    assert len(reports.parse(long).recipients[0].diagnostic) <= reports.MAX_VALUE
    # a missing Status gets the action's class; no status at all in a block is still read
    report = reports.parse(dsn("Reporting-MTA: dns; x\r\n\r\nFinal-Recipient: rfc822; a@b\r\nAction: failed\r\n"))
    assert (report.recipients[0].status, report.recipients[0].code) == ("5.0.0", 550)
