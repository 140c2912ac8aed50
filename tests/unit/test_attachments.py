import os
from email import policy
from email.message import EmailMessage

from mtad.mail.attachments import listing


def test_parts_with_a_disposition_or_a_name_are_listed_with_their_decoded_size():
    msg = EmailMessage()
    msg["From"], msg["Subject"] = "a@example.com", "files"
    msg.set_content("body text")
    msg.add_alternative("<p>body</p>", subtype="html")
    for n in (1, 2, 3, 1000):
        msg.add_attachment(os.urandom(n), maintype="application", subtype="octet-stream", filename=f"f{n}.bin")
    msg.add_attachment("Grüße\n" * 5, subtype="plain", filename="grüße.txt", cte="quoted-printable")
    inner = EmailMessage()
    inner["Subject"] = "inner"
    inner.set_content("x")
    msg.add_attachment(inner, filename="fwd.eml")
    got = listing(msg.as_bytes(policy=policy.SMTP))
    assert [(a["filename"], a["size"]) for a in got[:4]] == [("f1.bin", 1), ("f2.bin", 2), ("f3.bin", 3),
                                                             ("f1000.bin", 1000)]
    assert got[4] == {"filename": "grüße.txt", "content-type": "text/plain", "size": len(("Grüße\r\n" * 5).encode())}
    assert got[5]["filename"] == "fwd.eml" and got[5]["content-type"] == "message/rfc822"


def test_plain_and_odd_messages():
    assert listing(b"From: a@example.com\r\nSubject: hi\r\n\r\nno files\r\n") == []
    assert listing(b"Content-Type: application/pdf; name=\"=?utf-8?q?r=C3=A9sum=C3=A9.pdf?=\"\r\n"
                   b"Content-Transfer-Encoding: base64\r\n\r\nQUJD\r\nREVG\r\n") == [
        {"filename": "résumé.pdf", "content-type": "application/pdf", "size": 6}]
    unclosed = (b"Content-Type: multipart/mixed; boundary=zz\r\n\r\npreamble\r\n--zz\r\n\r\nbody\r\n--zz\r\n"
                b"Content-Disposition: attachment\r\n\r\nabc")
    assert listing(unclosed) == [{"filename": "", "content-type": "text/plain", "size": 3}]
    assert listing(b"Content-Type: multipart/mixed\r\n\r\n--x\r\n\r\nno boundary parameter\r\n") == []


def test_a_name_in_another_header_is_no_file_name_but_a_name_parameter_is():
    traced = (b"Authentication-Results: mx.test; spf=temperror (no nameserver answered) smtp.mailfrom=a.test\r\n"
              b"Received: from hostname.test\r\nSubject: the name of the game\r\n\r\nbody\r\n")
    assert listing(traced) == []
    for param in (b'Content-Type: text/plain; name="a.txt"', b"Content-Type: text/plain; name = a.txt",
                  b"Content-Disposition: inline; filename*=utf-8''a.txt", b'Content-Type: text/plain; name*0="a.txt"'):
        head = param + b"\r\n\r\nabc\r\n"
        assert [a["filename"] for a in listing(head)] == ["a.txt"], param
