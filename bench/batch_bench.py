"""Peak memory of one API batch send: a single ``POST /v3/{domain}/messages`` to N recipients with
``recipient-variables`` and a body of SIZE bytes (issue 14, item 5). Reports the daemon's peak RSS above its idle
RSS (its process tree, sampled every 10 ms), the time to the 200 answer and the messages stored.

    .venv/bin/python bench/batch_bench.py [--recipients 1000] [--size 50000] [--template] [--src DIR]
    .venv/bin/python bench/batch_bench.py --render [--size 50000]     # template render cost per message, in process

``--template`` sends the same content as a stored template (``template`` + ``t:variables``) instead of ``text``.
``--src DIR`` runs the mtad found in DIR (a tree holding ``mtad/``, e.g. ``git archive REV | tar -x -C DIR``) to
measure before a change. Copies are scheduled a day ahead (``o:deliverytime``): nothing is delivered. Loopback only;
the daemon runs on ephemeral ports in a temporary folder, removed at the end.
"""
import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from email.utils import formatdate
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ap = argparse.ArgumentParser()
ap.add_argument("--recipients", type=int, default=1000)
ap.add_argument("--size", type=int, default=50_000)
ap.add_argument("--template", action="store_true")
ap.add_argument("--render", action="store_true")
ap.add_argument("--src", help="a tree holding the mtad package to run instead of this checkout")
args = ap.parse_args()


def body_text(size: int) -> str:
    line = "Hello %recipient.name%, this line pads the message to its size: " + "x" * 40 + "\n"
    return (line * (size // len(line) + 1))[:size]


def render_cost() -> None:
    from mtad.mail import templating
    source = "<p>Hello {{name}}</p>\n" + "".join(
        f"<tr><td>{{{{#each items}}}}{{{{this.title}}}} {i}{{{{/each}}}}</td></tr>\n" for i in range(3)) \
        + "<p>" + "lorem ipsum dolor sit amet " * (args.size // 27) + "</p>\n"
    variables = {"name": "Zoë <b>", "items": [{"title": f"item {n}"} for n in range(10)]}
    compiled = templating.compile_source(source)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < 2.0:
        templating.render(compiled, variables)
        n += 1
    per = (time.perf_counter() - start) / n
    print(f"render: {len(source)} B template, {n} renders, {per * 1e3:.3f} ms per render "
          f"({len(templating.render(compiled, variables))} B out)")


if args.render:
    render_cost()
    sys.exit(0)

import trustme  # noqa: E402
from tests.support.daemon import API_KEY, Mtad, base_config  # noqa: E402

tmp = Path(tempfile.mkdtemp(prefix="mtad-batch-"))
ca = trustme.CA()
cert = ca.issue_cert("mtad.test")
cert.private_key_and_cert_chain_pem.write_to_path(tmp / "both.pem")


class Certs:
    cert = tmp / "both.pem"
    key = tmp / "both.pem"


cfg = base_config(tmp, Certs)
cfg["log"] = {"level": "warning"}
env = {"PYTHONPATH": str(Path(args.src).resolve())} if args.src else None
os.chdir(tmp)  # python -m puts the working folder first on the path: not this checkout's mtad when --src
d = Mtad(tmp, cfg)
d.start(extra_env=env)
pid = d.proc.pid
auth = "Basic " + base64.b64encode(f"api:{API_KEY}".encode()).decode()


def post(path: str, fields: list[tuple[str, str]]) -> tuple[int, str]:
    req = urllib.request.Request(d.api_url + path, data=urllib.parse.urlencode(fields).encode(), method="POST",
                                 headers={"Authorization": auth})
    try:
        with urllib.request.urlopen(req, timeout=600) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def rss_tree() -> int:
    total = 0
    kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    for p in [pid] + [int(x) for x in kids]:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


text = body_text(args.size)
fields = [("from", "Sender <postmaster@example.com>"), ("subject", "Hi %recipient.name%"),
          ("o:deliverytime", formatdate(time.time() + 86400, usegmt=True))]
fields += [("to", f"User {i} <u{i}@dest{i % 10}.example>") for i in range(args.recipients)]
fields.append(("recipient-variables", json.dumps({f"u{i}@dest{i % 10}.example": {"name": f"N{i}"}
                                                  for i in range(args.recipients)})))
if args.template:
    code, answer = post("/v3/example.com/templates", [("name", "bench"), ("template", text.replace(
        "%recipient.name%", "{{greeting}} %recipient.name%"))])
    assert code == 200, answer
    fields += [("template", "bench"), ("t:variables", json.dumps({"greeting": "Dear"}))]
else:
    fields.append(("text", text))
time.sleep(1.0)
idle = rss_tree()
peak, stop = idle, False


def sampler() -> None:
    global peak
    while not stop:
        peak = max(peak, rss_tree())
        time.sleep(0.01)


t = threading.Thread(target=sampler)
t.start()
start = time.time()
code, answer = post("/v3/example.com/messages", fields)
took = time.time() - start
time.sleep(0.3)
stop = True
t.join()
d.stop()
import sqlite3  # noqa: E402
stored = sqlite3.connect(d.db_path).execute("SELECT count(*) FROM messages").fetchone()[0]
print(f"{args.recipients} recipients x {args.size / 1000:.0f} KB{' (template)' if args.template else ''}"
      f"{' src=' + args.src if args.src else ''}: HTTP {code} in {took:.2f}s, {stored} messages stored,"
      f" idle RSS {idle / 1e6:.0f} MB, peak RSS {peak / 1e6:.0f} MB (+{(peak - idle) / 1e6:.0f} MB)")
if code != 200:
    print(answer[:300])
shutil.rmtree(tmp, ignore_errors=True)
