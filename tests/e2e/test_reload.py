"""SIGHUP reloads what a renewal or a rotation changes on disk: the TLS certificate and key (certbot's
``systemctl reload mtad``), DKIM key files and API keys, for new sessions and requests, without a restart.

The certificate checks look at what a new session is served: STARTTLS on the MX listener and implicit TLS on
the submissions listener, each verified against the CA that issued the expected certificate, and the API's
HTTPS. A file that does
not load keeps the certificate in use and logs one error.
"""

from __future__ import annotations

import os
import signal
import ssl
import time
from pathlib import Path

import pytest
import requests
import trustme
from cryptography import x509

from tests.e2e.outbound_support import serve_domain, submit, wait_final
from tests.e2e.test_outbound_options import dkim_results, keygen
from tests.support.daemon import API_KEY, Mtad
from tests.support.rawsmtp import RawSMTP


def wait_for_log(daemon: Mtad, text: str, count: int = 1, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while daemon.log().count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} not logged {count} times:\n{daemon.log()[-2000:]}"
        time.sleep(0.05)


def reload(daemon: Mtad) -> None:
    """SIGHUP, and wait until the reload is done."""
    done = daemon.log().count("configuration reloaded")
    daemon.signal(signal.SIGHUP)
    wait_for_log(daemon, "configuration reloaded", done + 1)


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def issue(ca: trustme.CA) -> tuple[bytes, bytes]:
    leaf = ca.issue_cert("mtad.test", "localhost", "127.0.0.1")
    return leaf.cert_chain_pems[0].bytes(), leaf.private_key_pem.bytes()


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


def starttls_cert(daemon: Mtad, ca: trustme.CA) -> x509.Certificate:
    """The certificate a new STARTTLS session on the MX listener gets (verified against ``ca``)."""
    with RawSMTP(daemon.mx) as c:
        c.ehlo()
        assert c.starttls(client_context(ca))[0] == 220
        return x509.load_der_x509_certificate(c.sock.getpeercert(binary_form=True))


def api_cert(daemon: Mtad) -> x509.Certificate:
    """The certificate a new HTTPS connection to the API gets."""
    return x509.load_pem_x509_certificate(ssl.get_server_certificate(("127.0.0.1", daemon.api_port)).encode())


def implicit_cert(daemon: Mtad, ca: trustme.CA) -> x509.Certificate:
    """The certificate a new session on the implicit-TLS submissions listener gets (verified against ``ca``)."""
    with RawSMTP(daemon.submissions, tls_context=client_context(ca)) as c:
        assert c.ehlo()[0] == 250
        return x509.load_der_x509_certificate(c.sock.getpeercert(binary_form=True))


@pytest.fixture
def tls_daemon(mtad_factory, ingress_config, certs, tmp_path) -> tuple[Mtad, Path, Path]:
    """A daemon whose certificate and key are files of its own (the suite's shared ones stay untouched)."""
    cert, key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    cert.write_bytes(certs.cert.read_bytes())
    key.write_bytes(certs.key.read_bytes())
    ingress_config["tls"] = {"cert": str(cert), "key": str(key)}
    ingress_config["api"]["tls"] = True  # the API's HTTPS serves the same certificate
    return mtad_factory().start(), cert, key


def test_sighup_serves_a_renewed_certificate_to_new_sessions(tls_daemon, certs):
    daemon, cert, key = tls_daemon
    old = starttls_cert(daemon, certs.ca)
    assert implicit_cert(daemon, certs.ca) == old
    assert api_cert(daemon) == old
    open_session = RawSMTP(daemon.submissions, tls_context=certs.client_context())
    try:
        renewed_ca = trustme.CA()  # a certificate from another CA, with another serial
        new_cert, new_key = issue(renewed_ca)
        write_atomically(key, new_key)
        write_atomically(cert, new_cert)
        reload(daemon)

        new = starttls_cert(daemon, renewed_ca)
        assert new.serial_number != old.serial_number and new.issuer != old.issuer
        assert new == x509.load_pem_x509_certificate(new_cert)
        assert implicit_cert(daemon, renewed_ca) == new
        assert api_cert(daemon) == new
        with pytest.raises(ssl.SSLCertVerificationError):  # the old certificate is no longer served
            starttls_cert(daemon, certs.ca)
        # A session opened before the reload goes on with its own certificate.
        assert open_session.ehlo()[0] == 250
        assert x509.load_der_x509_certificate(open_session.sock.getpeercert(binary_form=True)) == old
    finally:
        open_session.close()
    assert "TLS certificate not changed" not in daemon.log()


@pytest.mark.parametrize("breakage", ["garbage certificate", "key of another certificate", "missing key"])
def test_a_renewed_certificate_that_does_not_load_keeps_the_old_one(tls_daemon, certs, breakage):
    daemon, cert, key = tls_daemon
    old = starttls_cert(daemon, certs.ca)
    if breakage == "garbage certificate":
        write_atomically(cert, b"-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    elif breakage == "key of another certificate":
        new_cert, _ = issue(trustme.CA())
        write_atomically(cert, new_cert)
    else:
        key.unlink()
    reload(daemon)

    assert starttls_cert(daemon, certs.ca) == old
    assert implicit_cert(daemon, certs.ca) == old
    errors = [line for line in daemon.log().splitlines() if "TLS certificate not changed" in line]
    assert len(errors) == 1 and "ERROR" in errors[0], errors
    assert daemon.proc.poll() is None


def test_sighup_replaces_the_api_keys(mtad_factory, ingress_config):
    from mtad.api import hash_key
    daemon = mtad_factory().start()
    url = f"{daemon.api_url}/v3/domains"
    assert requests.get(url, auth=("api", API_KEY), timeout=10).status_code == 200
    new_key = "key-rotated0123456789abcdef012345"
    assert requests.get(url, auth=("api", new_key), timeout=10).status_code == 401

    daemon.cfg["api"]["keys"] = [{"key_hash": hash_key(new_key)}]
    daemon.write_config()
    reload(daemon)

    assert requests.get(url, auth=("api", API_KEY), timeout=10).status_code == 401
    assert requests.get(url, auth=("api", new_key), timeout=10).status_code == 200


def test_sighup_signs_with_a_rotated_dkim_key(outbound_mtad, certs, loopback_dns, mx_farm, tmp_path):
    key_file, name, first_record = keygen(tmp_path / "first", "rot1", "rsa")
    rotated_file, _, rotated_record = keygen(tmp_path / "rotated", "rot1", "rsa")
    loopback_dns.add_txt(name, first_record)
    daemon = outbound_mtad(dkim=[{"selector": "rot1", "key_file": key_file}])
    mx = serve_domain(loopback_dns, mx_farm, "rotate.reload.test")

    sent = submit(daemon, certs, ["ann@rotate.reload.test"])
    assert wait_final(daemon, sent)["ann@rotate.reload.test"]["event"] == "delivered"
    assert dkim_results(mx.messages[-1].data, loopback_dns.port) == [True]

    write_atomically(Path(key_file), Path(rotated_file).read_bytes())
    reload(daemon)
    sent = submit(daemon, certs, ["bob@rotate.reload.test"])
    assert wait_final(daemon, sent)["bob@rotate.reload.test"]["event"] == "delivered"
    signed = mx.messages[-1].data
    assert dkim_results(signed, loopback_dns.port) == [False]  # not the first key any more...
    loopback_dns.zone[name.lower().rstrip(".")]["TXT"][:] = [rotated_record]  # ...the rotated one, now published
    assert dkim_results(signed, loopback_dns.port) == [True]

    # A key file that does not load keeps the rotated key signing, and says so once.
    write_atomically(Path(key_file), b"not a key\n")
    reload(daemon)
    sent = submit(daemon, certs, ["cat@rotate.reload.test"])
    assert wait_final(daemon, sent)["cat@rotate.reload.test"]["event"] == "delivered"
    assert dkim_results(mx.messages[-1].data, loopback_dns.port) == [True]
    assert daemon.log().count("DKIM keys not changed") == 1
