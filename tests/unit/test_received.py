"""mtad.mail.headers.received: the one Received: builder gives, for each caller's arguments, the bytes the three
builders of the previous release gave (ingress, the send API, the stored-message resend)."""

from __future__ import annotations

from mtad.mail import headers


def test_an_smtp_session_with_one_recipient():
    protocol = headers.smtp_protocol(extended=True, tls=True, authenticated=True)
    assert protocol == "ESMTPSA"
    assert headers.received("mx.example", "client.test", "127.0.0.1", protocol, "Q1", ["a@b.test"], 0) == (
        b"Received: from client.test ([127.0.0.1])\r\n\tby mx.example (mtad) with ESMTPSA id Q1\r\n"
        b"\tfor <a@b.test>;\r\n\tThu, 01 Jan 1970 00:00:00 -0000\r\n")


def test_no_helo_several_recipients_and_a_hostile_helo():
    assert headers.smtp_protocol(False, False, False) == "SMTP" and headers.smtp_protocol(True, False, False) == "ESMTP"
    assert headers.received("mx.example", "", "::1", "SMTP", "Q2", ["a@x.test", "b@x.test"], 1700000000.7) == (
        b"Received: from unknown ([::1])\r\n\tby mx.example (mtad) with SMTP id Q2;\r\n"
        b"\tTue, 14 Nov 2023 22:13:20 -0000\r\n")
    assert headers.received("mx.example", "bad helo\x00\u00e9", "10.0.0.1", "ESMTP", "Q3", (), 1700000000) == (
        b"Received: from bad?helo?? ([10.0.0.1])\r\n\tby mx.example (mtad) with ESMTP id Q3;\r\n"
        b"\tTue, 14 Nov 2023 22:13:20 -0000\r\n")
    assert b"from " + b"h" * 255 + b" (" in headers.received("m", "h" * 300, "1.2.3.4", "SMTP", "Q", (), 0)


def test_the_api_paths():
    assert headers.received("mx.example", "api", "127.0.0.1", "HTTPS", "Q4", ("x@y.test",), 1700000000) == (
        b"Received: from api ([127.0.0.1])\r\n\tby mx.example (mtad) with HTTPS id Q4\r\n"
        b"\tfor <x@y.test>;\r\n\tTue, 14 Nov 2023 22:13:20 -0000\r\n")
    assert headers.received("mx.example", "api", "", "HTTP", "Q5", ("x@y.test", "z@y.test"), 1700000000) == (
        b"Received: from api ([])\r\n\tby mx.example (mtad) with HTTP id Q5;\r\n\tTue, 14 Nov 2023 22:13:20 -0000\r\n")
