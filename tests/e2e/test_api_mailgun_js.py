"""mailgun.js 14 (Mailgun's official Node SDK) pointed at mtad: its domain calls go to ``/v4/domains``, its
credentials' ``destroyAll`` to ``DELETE /v3/domains/{d}/credentials``, the rest to v3. Needs ``node`` and the
package, which tests/run.sh installs into tests/.node with npm; skipped (with the reason) without them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.daemon import API_KEY

DEST = "js.test"
SCRIPT = Path(__file__).parent / "js" / "mailgun_js_calls.mjs"
PACKAGE = Path(__file__).parents[1] / ".node" / "node_modules" / "mailgun.js"

pytestmark = [
    pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed: mailgun.js cannot run"),
    pytest.mark.skipif(not PACKAGE.is_dir(), reason="mailgun.js is not installed in tests/.node (tests/run.sh "
                                                      "installs it with npm when npm is available)"),
]



def test_mailgun_js_14_calls_answer(delivering_env):
    daemon, sink = delivering_env
    run = subprocess.run(["node", str(SCRIPT), daemon.api_url, API_KEY, "example.com", f"js-user@{DEST}"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    failed = {name: r for name, r in got.items() if not r["ok"]}
    assert not failed, failed
    values = {name: r["value"] for name, r in got.items()}
    assert "example.com" in values["domains.list"]
    assert values["domains.get"]["name"] == "example.com" and values["domains.get"]["sending"] >= 1
    assert values["domains.create"] == values["domains.verify"] == "js14.test"
    assert values["credentials.list"] == ["alice@js14.test"] and values["credentials.destroyAll"] == 1
    assert values["domains.destroy"] == "Domain has been deleted"
    assert values["messages.create"] == 200
    assert values["stats.getDomain"] is True
