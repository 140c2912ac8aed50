#!/usr/bin/env python3
"""CPU cost of the inbound verdicts of one message, piece by piece, in process (issue 15's benchmark, profiled).

    python bench/verdict_cost.py [--n 2000] [--size 2048] [--profile verify|check]

The message, keys and records are auth_bench.py's (one RSA-2048 relaxed/relaxed signature, SPF ip4 pass, DMARC
p=reject), served by the test suite's DNS server on 127.0.0.1; every record is in mtad's resolver cache after the
first message, as on a busy MX. Printed, as process CPU µs per message (``time.process_time``; run it from a base
tree with ``cd BASE && python /path/to/verdict_cost.py`` to compare, as the tree's mtad/ comes first):
- ``dkim verify``: ``dkimjob.verify`` (what the worker child does per message: dkimpy with mtad's replacements);
- ``checks without dkim``: ``Verifier.check`` with the worker's answer ready (SPF, key and DMARC lookups from the
  cache, DMARC, the Authentication-Results lines, the fields handed back): the event loop's own share;
- ``workers=1 main`` / ``workers=1 child``: ``Verifier.check`` with one worker process, one message at a time (the
  child's figure includes its start, ~0.3 s, spread over ``--n``).
``--profile`` prints cProfile's top functions of ``verify`` or of ``check`` (workers=0) instead.
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import os
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from auth_bench import signed_message  # noqa: E402  (puts this work tree first on sys.path)

from tests.support.dns_server import DnsServer  # noqa: E402

sys.path.insert(0, os.getcwd())  # the tree measured: the current folder's mtad/ first


async def main_async(args: argparse.Namespace) -> None:
    from mtad.config.schema import AuthenticationConfig
    from mtad.inbound.verdicts import dkimjob
    from mtad.inbound.verdicts.check import Verifier
    from mtad.mail import headers
    from mtad.net.resolver import Resolver

    path = Path(tempfile.mkdtemp(prefix="mtad-verdict-cost-")) / "message.eml"
    dns = DnsServer(ttl=3600).start()
    pub = signed_message(path, args.size)
    dns.add_txt("example.com", "v=spf1 ip4:127.0.0.1 -all")
    dns.add_txt("bench._domainkey.example.com", f"v=DKIM1; k=rsa; p={pub}")
    dns.add_txt("_dmarc.example.com", "v=DMARC1; p=reject")
    message = path.read_bytes().replace(b"\n", b"\r\n")
    fields, _ = headers.parse_block(message, 1000, len(message))
    keys = {"bench._domainkey.example.com": f"v=DKIM1; k=rsa; p={pub}"}
    n = args.n

    def verifier(workers: int) -> Verifier:
        config = dataclasses.replace(AuthenticationConfig(), enabled=True, workers=workers)
        return Verifier(config, "bench.localdomain", Resolver(["127.0.0.1"], dns.port, 2.0))

    async def check(v: Verifier):
        return await v.check(message, fields, client_ip="127.0.0.1", helo="client.example.com",
                             sender="sender@example.com", domains=["example.net"])

    try:
        v = verifier(0)
        first = await check(v)
        assert first.verdicts["dkim"] == "pass" and first.verdicts["dmarc"] == "pass", first.verdicts
        if args.profile:
            profile = cProfile.Profile(time.process_time)
            profile.enable()
            for _ in range(n):
                dkimjob.verify(message, keys, 5) if args.profile == "verify" else await check(v)
            profile.disable()
            pstats.Stats(profile).sort_stats("cumulative").print_stats(30)
            return
        import mtad
        print(f"# {Path(mtad.__file__).parent}: {n} messages of {len(message)} bytes, process CPU µs per message")
        t = time.process_time()
        for _ in range(n):
            dkimjob.verify(message, keys, 5)
        print(f"dkim verify          {1e6 * (time.process_time() - t) / n:7.0f}")
        answer = await v.pool.run((message, keys, 5))

        async def ready(item):
            return answer
        v.pool.run = ready
        t = time.process_time()
        for _ in range(n):
            await check(v)
        print(f"checks without dkim  {1e6 * (time.process_time() - t) / n:7.0f}")
        v = verifier(1)
        await check(v)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.process_time()
        for _ in range(n):
            await check(v)
        main = time.process_time() - t
        await v.close()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        child = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
        print(f"workers=1 main       {1e6 * main / n:7.0f}")
        print(f"workers=1 child      {1e6 * child / n:7.0f}")
    finally:
        dns.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=2048, help="body bytes of the signed message")
    ap.add_argument("--profile", choices=("verify", "check"))
    args = ap.parse_args()
    import uvloop
    uvloop.run(main_async(args))


if __name__ == "__main__":
    main()
