#!/usr/bin/env python3
"""Write the mtad config the benchmarks use, valid for the mtad revision being measured.

  python mtad_config.py OUT.yaml STATE_DIR [PORT]

One MX listener on 127.0.0.1:PORT (default 2527) with ``tls: none``; ``example.net`` (smtp-source's
recipient domain) is a receiving domain; a ``catch_all()`` route with only ``stop()`` keeps every
recipient and creates no forward work, so an accepted message is durably stored and nothing more —
the counterpart of Postfix's hold queue. ``max_connections_per_ip`` is raised because all load comes
from 127.0.0.1 (Postfix exempts ``mynetworks`` likewise). Everything else is mtad's default (the HTTP
API listener included, where the revision has one).

The file is checked with ``python -m mtad check-config`` (the mtad on PYTHONPATH); blocks an older
revision does not know (``routing`` before routes existed) are dropped.
"""
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
    - {expression: 'catch_all()', actions: ['stop()'], description: "bench: keep every recipient, no work"}
""",
}


def check(path: str) -> str:
    p = subprocess.run([sys.executable, "-m", "mtad", "check-config", path], capture_output=True, text=True)
    return "" if p.returncode == 0 else (p.stderr or p.stdout).strip()


def main() -> int:
    out, state = sys.argv[1], sys.argv[2]
    port = sys.argv[3] if len(sys.argv) > 3 else "2527"
    blocks = dict(OPTIONAL)
    while True:
        with open(out, "w") as f:
            f.write(BASE.format(state=state, port=port) + "".join(blocks.values()))
        err = check(out)
        if not err:
            return 0
        unknown = [k for k in blocks if f"{k}: unknown key" in err]
        if not unknown:
            print(f"mtad_config.py: mtad refuses the bench config: {err}", file=sys.stderr)
            return 1
        for k in unknown:
            del blocks[k]


if __name__ == "__main__":
    sys.exit(main())
