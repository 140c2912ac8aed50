"""What a daemon spends at start only when it needs it: the system's CA store for verified deliveries, and
ua-parser's rules once some domain tracks (mtad.outbound.delivery.TlsContexts, mtad.outbound.tracking.Tracking)."""

from __future__ import annotations

import ssl

import pytest

from mtad.config.schema import TrackingConfig, TrackingDefaults
from mtad.outbound.delivery import TlsContexts
from mtad.outbound.tracking import Tracking
from mtad.store.engagement import DomainTracking


def test_the_relaxed_context_verifies_nothing_and_the_verifying_one_reads_the_system_cas_when_first_used():
    tls = TlsContexts()
    relaxed = tls.get(verify=False)
    assert relaxed.verify_mode == ssl.CERT_NONE and not relaxed.check_hostname
    assert relaxed.cert_store_stats()["x509_ca"] == 0  # no CA store loaded for a context that never verifies
    assert "verifying" not in vars(tls)  # not made yet
    verifying = tls.get(verify=True)
    assert verifying.verify_mode == ssl.CERT_REQUIRED and verifying.check_hostname
    assert verifying.minimum_version == ssl.TLSVersion.TLSv1_2
    assert tls.get(verify=True) is verifying  # made once
    system = ssl.create_default_context()
    assert verifying.cert_store_stats() == system.cert_store_stats()  # the system's CAs, as before


def test_a_ca_file_is_read_at_once_so_a_bad_one_stops_the_start(tmp_path, private_ca):
    tls = TlsContexts(str(private_ca.ca_path(tmp_path)))
    assert "verifying" in vars(tls) and tls.get(verify=True).cert_store_stats()["x509_ca"] == 1
    with pytest.raises((OSError, ssl.SSLError)):
        TlsContexts(str(tmp_path / "missing.pem"))


@pytest.fixture
def private_ca():
    import trustme

    class Ca:
        ca = trustme.CA()

        def ca_path(self, folder):
            path = folder / "ca.pem"
            self.ca.cert_pem.write_to_path(path)
            return path
    return Ca()


def _tracking(defaults: TrackingDefaults = TrackingDefaults(), **settings: DomainTracking) -> Tracking:
    return Tracking(TrackingConfig(defaults=defaults), "http://127.0.0.1:1", "k" * 32, settings)


def test_tracking_is_in_use_once_the_defaults_or_some_domain_turn_a_kind_on():
    assert not _tracking().in_use()
    assert not _tracking(**{"example.com": DomainTracking()}).in_use()
    assert _tracking(TrackingDefaults(open=True)).in_use()
    assert _tracking(TrackingDefaults(click="htmlonly")).in_use()
    assert _tracking(**{"example.com": DomainTracking(click="yes")}).in_use()
    assert _tracking(**{"example.com": DomainTracking(unsubscribe=True)}).in_use()
    tracking = _tracking()
    tracking.update({"example.com": DomainTracking(open=True)})
    assert tracking.in_use()


def test_routes_test_on_the_command_line_does_not_load_the_daemon(tmp_path):
    import subprocess
    import sys
    config = tmp_path / "mtad.yaml"
    config.write_text(f"hostname: mtad.test\nstate_dir: {tmp_path / 'state'}\nreceiving_domains: [inbound.test]\n"
                      "routing:\n  routes:\n    - {expression: 'match_recipient(\"a@inbound.test\")', actions: [stop()]}\n")
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "mtad", "routes", "test", "--config", str(config),
                          "--recipient", "a@inbound.test"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "stop" in out.stdout, out
    imported = {line.rsplit("|", 1)[1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "mtad.inbound.routing" in imported and "mtad.app" not in imported and "aiohttp" not in imported
