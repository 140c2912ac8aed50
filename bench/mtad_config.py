#!/usr/bin/env python3
"""Write the mtad config the benchmarks use, valid for every mtad revision being measured.

  python mtad_config.py OUT.yaml STATE_DIR [PORT] [--api-port P] [--src DIR ...]

One MX listener on 127.0.0.1:PORT (default 2527) with ``tls: none``; ``example.net`` (smtp-source's
recipient domain) is a receiving domain; a ``catch_all()`` route with only ``stop()`` keeps every
recipient and creates no forward work, so an accepted message is durably stored and nothing more —
the counterpart of Postfix's hold queue. ``--store-dsn DSN`` puts the store on PostgreSQL (mtad-pg, bench/ingress.sh
--pg) and ``--node-id`` names the node (several nodes on one database). ``max_connections_per_ip`` is raised because all load comes
from 127.0.0.1 (Postfix exempts ``mynetworks`` likewise). Everything else is mtad's default (the HTTP
API listener included, where the revision has one; ``--api-port`` moves it off its default 2580 so
that two mtads can run side by side).

The file is checked with ``python -m mtad check-config`` by each ``--src DIR`` (a folder holding an
``mtad/`` package; default: the mtad on PYTHONPATH); blocks one of them does not know (``routing``
before routes existed) are dropped, so a before/after comparison (bench/ingress.sh --base-rev) gives
both trees the same configuration, in the older revision's schema.
"""
import argparse
import json
import os
import subprocess
import sys

BASE = """\
# mtad for the ingress benchmark (written by bench/mtad_config.py)
hostname: bench.localdomain
state_dir: {state}
listeners:
  - {{address: "127.0.0.1:{port}", role: mx, tls: none, name: mx}}
receiving_domains: [example.net]
limits:
  max_connections_per_ip: 1000   # all load comes from 127.0.0.1
log: {{level: warning}}
"""
OPTIONAL = {
    "routing": """\
routing:
  routes:
    - {{expression: 'catch_all()', actions: ['stop()'], description: "bench: keep every recipient, no work"}}
""",
    "api": """\
api: {{address: "127.0.0.1:{api_port}"}}
""",
}


def check(path: str, src: str | None) -> str:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = os.pathsep.join([src] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    p = subprocess.run([sys.executable, "-m", "mtad", "check-config", path], capture_output=True, text=True,
                       env=env)
    return "" if p.returncode == 0 else (p.stderr or p.stdout).strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("state")
    ap.add_argument("port", nargs="?", default="2527")
    ap.add_argument("--api-port", help="the HTTP API's port (default: mtad's default, 2580)")
    ap.add_argument("--store-dsn", help="store: {backend: postgresql, dsn: ...} (mtad-pg) instead of SQLite")
    ap.add_argument("--node-id", help="node_id: this node's name among several on one database (--pg-nodes)")
    ap.add_argument("--src", action="append", default=[],
                    help="a folder holding the mtad/ package that must accept the file (repeat for each tree)")
    a = ap.parse_args()
    blocks = dict(OPTIONAL)
    if not a.api_port:
        del blocks["api"]
    if a.store_dsn:  # json quoting is valid YAML and keeps the DSN's characters literal
        blocks["store"] = "store: {{backend: postgresql, dsn: " + json.dumps(a.store_dsn).replace("{", "{{").replace(
            "}", "}}") + "}}\n"
    if a.node_id:
        blocks["node_id"] = "node_id: " + json.dumps(a.node_id) + "\n"
    while True:
        with open(a.out, "w") as f:
            f.write(BASE.format(state=a.state, port=a.port)
                    + "".join(b.format(api_port=a.api_port) for b in blocks.values()))
        errors = [(src, err) for src in (a.src or [None]) if (err := check(a.out, src))]
        if not errors:
            return 0
        unknown = [k for k in blocks if any(f"{k}: unknown key" in err for _, err in errors)]
        if not unknown:
            src, err = errors[0]
            print(f"mtad_config.py: mtad{' in ' + src if src else ''} refuses the bench config: {err}",
                  file=sys.stderr)
            return 1
        for k in unknown:
            del blocks[k]


if __name__ == "__main__":
    sys.exit(main())
