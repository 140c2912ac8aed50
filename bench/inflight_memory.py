"""Peak memory of mtad under large messages: N concurrent messages of SIZE bytes to the MX listener (issue 10
item 2's case: 30 x 24 MB), the daemon's peak RSS (its process tree, sampled every 20 ms) and the replies.

    .venv/bin/python bench/inflight_memory.py [--budget 512MB] [--clients 30] [--size 24000000]

Loopback only; the daemon runs from this checkout on ephemeral ports in a temporary folder, removed at the end.
"""
import argparse, shutil, socket, subprocess, sys, tempfile, threading, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import trustme
from tests.support.daemon import Mtad, base_config

ap = argparse.ArgumentParser()
ap.add_argument("--budget", help="limits.max_inflight_bytes (default: mtad's default)")
ap.add_argument("--clients", type=int, default=30)
ap.add_argument("--size", type=int, default=24_000_000)
args = ap.parse_args()
tmp = Path(tempfile.mkdtemp(prefix="mtad-inflight-"))
ca = trustme.CA(); cert = ca.issue_cert("mtad.test")
cert.private_key_and_cert_chain_pem.write_to_path(tmp / "both.pem")
class C: pass
certs = C(); certs.cert = tmp / "both.pem"; certs.key = tmp / "both.pem"
cfg = base_config(tmp, certs)
cfg["routing"] = {"routes": [{"expression": "catch_all()", "actions": ["stop()"], "priority": 1}]}
cfg["log"] = {"level": "warning"}
cfg["limits"] = {"max_connections_per_ip": max(100, args.clients)}
if args.budget:
    cfg["limits"]["max_inflight_bytes"] = args.budget
d = Mtad(tmp, cfg); d.start()
port = d.port("mx")
pid = d.proc.pid
peak = 0; stop = False
def rss_tree():
    total = 0
    for p in [pid] + [int(x) for x in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"): total += int(line.split()[1]) * 1024
        except OSError: pass
    return total
def sampler():
    global peak
    while not stop:
        peak = max(peak, rss_tree()); time.sleep(0.02)
base = rss_tree()
t = threading.Thread(target=sampler); t.start()
line = b"X" * 998 + b"\r\n"
body = b"From: a@example.net\r\nTo: b@inbound.test\r\nSubject: big\r\n\r\n" + line * (args.size // 1000) + b".\r\n"
replies = []
def send(i):
    s = socket.create_connection(("127.0.0.1", port)); f = s.makefile("rb")
    def cmd(c):
        if c: s.sendall(c)
        r = f.readline()
        while r[3:4] == b"-": r = f.readline()
        return r
    cmd(None); cmd(b"EHLO c.test\r\n"); cmd(b"MAIL FROM:<a@example.net>\r\n"); cmd(b"RCPT TO:<b@inbound.test>\r\n")
    cmd(b"DATA\r\n")
    view = memoryview(body)
    for off in range(0, len(body), 1 << 20):
        s.sendall(view[off:off + (1 << 20)]); time.sleep(0.01)
    replies.append(f.readline().decode().strip()[:40]); s.close()
ths = [threading.Thread(target=send, args=(i,)) for i in range(args.clients)]
start = time.time()
[x.start() for x in ths]; [x.join() for x in ths]
stop = True; t.join()
codes = {}
for r in replies: codes[r[:3]] = codes.get(r[:3], 0) + 1
print(f"{args.clients} x {args.size / 1e6:.0f} MB, max_inflight_bytes={cfg['limits'].get('max_inflight_bytes', 'default 512MB')}: base RSS {base/1e6:.0f} MB, peak RSS {peak/1e6:.0f} MB, replies {codes}, {time.time()-start:.1f}s")
d.stop()
shutil.rmtree(tmp, ignore_errors=True)
