"""mtad.api.formdata: multipart bodies as real clients encode them (requests, urllib3, curl-like), and refusals."""

from __future__ import annotations

import pytest
import requests
from urllib3 import encode_multipart_formdata

from mtad.api import formdata
from mtad.api.formdata import FilePart, FormError


def as_requests(data, files) -> tuple[bytes, str]:
    prepared = requests.Request("POST", "http://x.test/", data=data, files=files).prepare()
    return prepared.body, prepared.headers["Content-Type"]


def test_requests_encoding_with_repeated_fields_and_files():
    body, ctype = as_requests([("from", "a@example.com"), ("to", "b@x.test"), ("to", "c@x.test"),
                               ("text", "héllo\r\nworld"), ("o:tag", "t")],
                              [("attachment", ("r.pdf", b"%PDF\r\n--not-a-boundary\r\n\x00\xff", "application/pdf")),
                               ("inline", ("i.png", b"\x89PNG"))])
    parsed = formdata.multipart(body, ctype)
    assert parsed[:5] == [("from", "a@example.com"), ("to", "b@x.test"), ("to", "c@x.test"),
                          ("text", "héllo\r\nworld"), ("o:tag", "t")]
    assert parsed[5] == ("attachment", FilePart("r.pdf", "application/pdf", b"%PDF\r\n--not-a-boundary\r\n\x00\xff"))
    assert parsed[6][0] == "inline" and parsed[6][1].data == b"\x89PNG"


def test_urllib3_encoding_and_quoted_boundary():
    body, ctype = encode_multipart_formdata([("subject", "s"), ("attachment", ("a b.txt", b"x", "text/plain"))],
                                            boundary="b0und;ary")
    parsed = formdata.multipart(body, 'multipart/form-data; boundary="b0und;ary"')
    assert parsed == [("subject", "s"), ("attachment", FilePart("a b.txt", "text/plain", b"x"))]
    assert ctype.startswith("multipart/form-data")


def test_preamble_epilogue_rfc5987_filename_and_charset():
    body = (b"preamble\r\n--XX\r\nContent-Disposition: form-data; name=\"f\"; filename*=UTF-8''r%C3%A9sum%C3%A9.txt\r\n"
            b"\r\nfile\r\n--XX\r\nContent-Disposition: form-data; name=t\r\nContent-Type: text/plain; charset=latin-1\r\n"
            b"\r\ncaf\xe9\r\n--XX--\r\nepilogue")
    assert formdata.multipart(body, "multipart/form-data; boundary=XX") == [
        ("f", FilePart("résumé.txt", "", b"file")), ("t", "café")]


@pytest.mark.parametrize("body, ctype", [
    (b"--XX\r\nContent-Disposition: form-data; name=a\r\n\r\nv\r\n--XX--", "multipart/form-data"),
    (b"no delimiter at all", "multipart/form-data; boundary=XX"),
    (b"--XX\r\nContent-Disposition: form-data; name=a\r\n\r\nunterminated", "multipart/form-data; boundary=XX"),
    (b"--XX\r\nContent-Disposition: form-data\r\n\r\nno name\r\n--XX--", "multipart/form-data; boundary=XX"),
    (b"--XX\r\nContent-Disposition: attachment; name=a\r\n\r\nv\r\n--XX--", "multipart/form-data; boundary=XX"),
    (b"--XX\r\nbroken header\r\n\r\nv\r\n--XX--", "multipart/form-data; boundary=XX"),
    (b"--XX\r\nContent-Disposition: form-data; name=a\r\n\r\n\xff\xfe\r\n--XX--", "multipart/form-data; boundary=XX"),
])
def test_malformed_multipart_raises_form_error(body, ctype):
    with pytest.raises(FormError):
        formdata.multipart(body, ctype)


def test_urlencoded():
    assert formdata.urlencoded(b"to=a%40x.test&to=b%40x.test&text=caf%C3%A9+ok&empty=") == [
        ("to", "a@x.test"), ("to", "b@x.test"), ("text", "café ok"), ("empty", "")]
    with pytest.raises(FormError):
        formdata.urlencoded(b"text=%FF%FE")
