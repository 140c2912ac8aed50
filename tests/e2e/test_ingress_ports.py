"""Port 0: mtad binds free ports itself and reports where it listens (``STATE/ports``, the log), so nothing can
take a port between choosing and binding it. The API's links carry the real port.
"""

from __future__ import annotations

import base64
import json
import smtplib
import subprocess
import sys
import time
import urllib.request

import yaml

from tests.e2e.conftest import ingress_only
from tests.support.daemon import API_KEY, base_config


def test_port_zero_listeners_and_api_report_their_real_ports(tmp_path, certs):
    cfg = ingress_only(base_config(tmp_path, certs))  # every listener and the API at 127.0.0.1:0
    assert {listener["address"] for listener in cfg["listeners"]} == {"127.0.0.1:0"}
    assert cfg["api"]["address"] == "127.0.0.1:0"
    config = tmp_path / "mtad.yaml"
    config.write_text(yaml.safe_dump(cfg))
    log = tmp_path / "mtad.log"
    ports_file = tmp_path / "state" / "ports"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mtad", "run", "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while not ports_file.exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no ports file:\n" + log.read_text()
            time.sleep(0.05)
        found = json.loads(ports_file.read_text())
        assert found["pid"] == proc.pid
        assert [(b["name"], b["role"]) for b in found["listeners"]] == [
            ("mx", "mx"), ("submission", "submission"), ("submissions", "submission")]
        ports = [int(b["address"].rsplit(":", 1)[1]) for b in found["listeners"]]
        api_port = int(found["api"].rsplit(":", 1)[1])
        assert 0 not in ports and api_port != 0 and len({*ports, api_port}) == 4

        for b, port in zip(found["listeners"], ports):  # each answers where the file says, as its role
            assert f"listening on 127.0.0.1:{port} ({b['role']}" in log.read_text()
            if b["name"] != "submissions":
                with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                    assert s.ehlo("client.test")[0] == 250
                    assert s.has_extn("starttls")
        with smtplib.SMTP_SSL("127.0.0.1", ports[2], timeout=10, context=certs.client_context()) as s:
            assert s.ehlo("client.test")[0] == 250

        # links the API hands out point at the real port, not at :0
        request = urllib.request.Request(f"http://127.0.0.1:{api_port}/v3/example.com/events", headers={
            "Authorization": "Basic " + base64.b64encode(f"api:{API_KEY}".encode()).decode()})
        with urllib.request.urlopen(request, timeout=10) as answer:
            paging = json.load(answer)["paging"]
        assert paging["next"].startswith(f"http://127.0.0.1:{api_port}/v3/example.com/events/"), paging
    finally:
        proc.terminate()
        assert proc.wait(20) == 0
    assert not ports_file.exists(), "a clean stop removes the ports file"
    assert "Traceback" not in log.read_text()
