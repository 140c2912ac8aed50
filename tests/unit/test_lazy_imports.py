"""Libraries a daemon start does not need are imported at their first use, not at start.

Every e2e test starts the real daemon (tests/support/daemon.py) and every user start pays what importing costs
(bench/startup_cpu.py measures one start): a module-level import of one of these would silently add its cost
back. Checked in a fresh interpreter, as ``python -m mtad run`` imports: the daemon's modules, then the objects
start builds whatever the config (the resolver).
"""

from __future__ import annotations

import json
import subprocess
import sys

# name -> what needs it (at first use)
LAZY = {
    "prometheus_client": "GET /metrics (mtad.api.metrics)",
    "regex": "routes allowed to backtrack (mtad.inbound.router)",
    "dns.resolver": "the first DNS lookup with delivery.dns_nameservers set (mtad.net.resolver, mtad.api.domains)",
    "dns.asyncresolver": "the first DNS lookup with delivery.dns_nameservers set (mtad.net.resolver, mtad.api.domains)",
    "importlib.metadata": "dnspython's optional features, at its import",
    "jinja2": "the web panel (mtad.ui.web)",
    "aiospamc": "a configured spamd (mtad.net.spamd)",
    "ua_parser": "engagement tracking in use (mtad.events.engagement)",
    "dotpromptz_handlebars": "the first stored template compiled (mtad.mail.templating)",
    "mtad.inbound.form.quotes": "the first route forward (mtad.inbound.forward) or t:text=yes (mtad.ingress.templates)",
    "cryptography": "DKIM keys (mtad.mail.dkim), tracking tokens (mtad.mail.tracktoken), a self-signed certificate",
}

_PROGRAM = """
import json, sys
import mtad.cli, mtad.app, mtad.api, mtad.api.features, mtad.api.metrics, mtad.api.domains, mtad.api.server
import mtad.ingress.templates, mtad.inbound.forward, mtad.api.tracking
mtad.api.features.all_features()
from mtad.net.resolver import Resolver
Resolver(["127.0.0.1"], 53, 1.0)  # given nameservers (the system's configuration is read at start, as ever)
from mtad.mail.tracktoken import Sealer
Sealer(bytes(32))
print(json.dumps(sorted(sys.modules)))
"""


def test_start_imports_none_of_the_lazy_libraries() -> None:
    out = subprocess.run([sys.executable, "-c", _PROGRAM], capture_output=True, text=True, check=True).stdout
    loaded = set(json.loads(out))
    early = {name: why for name, why in LAZY.items() if name in loaded}
    assert early == {}, f"imported at start, but only needed at first use: {early}"
