"""mtad.outbound.signer: signatures from worker processes equal in-process ones, verify, and survive a worker's death."""

from __future__ import annotations

import asyncio
import os
import signal

import dkim as dkimpy
import nacl  # noqa: F401  # dkimpy verifies Ed25519 with PyNaCl (a test dependency)
import pytest

from mtad.mail import dkim
from mtad.outbound.signer import DkimSigner

RSA = dkim.load_key("example.com", "rsa1", dkim.generate_key("rsa", bits=2048))
ED = dkim.load_key("example.com", "ed1", dkim.generate_key("ed25519"))
RECORDS = {f"{k.selector}._domainkey.example.com.".encode(): dkim.dns_record(k)[1].encode() for k in (RSA, ED)}


def message(i: int) -> bytes:
    return (f"From: a@example.com\r\nTo: b{i}@example.net\r\nSubject: pool {i}\r\n\r\n"
            f"body {i}\r\n.leading dot\r\n").encode()


def verifies(signed: bytes) -> bool:
    d = dkimpy.DKIM(signed)
    count = signed.count(b"DKIM-Signature:")
    return count > 0 and all(d.verify(idx=i, dnsfunc=lambda name, timeout=5: RECORDS[name]) for i in range(count))


@pytest.mark.parametrize("workers", [0, 1, 2])
async def test_signatures_verify_and_match_the_in_process_ones(workers):
    signer = DkimSigner(workers)
    try:
        signed = await asyncio.gather(*(signer.sign(message(i), [RSA, ED]) for i in range(70)))  # > 2 batches
        assert len(signer.pids) == workers
    finally:
        await signer.close()
    for i, out in enumerate(signed):
        assert out.endswith(message(i)) and verifies(out)
        head = out[:-len(message(i))]
        assert head.count(b"a=rsa-sha256") == 1 and head.count(b"a=ed25519-sha256") == 1
    assert await signer.sign(message(0), []) == message(0)  # no keys: untouched (even closed)


async def test_refusals_are_value_errors_and_the_worker_stays():
    signer = DkimSigner(1)
    try:
        with pytest.raises(ValueError, match="From"):
            await signer.sign(b"To: b@example.net\r\n\r\nno From\r\n", [RSA])
        pids = signer.pids
        assert verifies(await signer.sign(message(1), [RSA]))
        assert signer.pids == pids
    finally:
        await signer.close()


async def test_a_killed_worker_loses_nothing_and_is_replaced(monkeypatch):
    monkeypatch.setattr("mtad.workers.pool.RESTART_DELAY", 0.05)
    signer = DkimSigner(1)
    try:
        assert verifies(await signer.sign(message(0), [RSA]))
        (pid,) = signer.pids
        pending = [asyncio.ensure_future(signer.sign(message(i), [RSA])) for i in range(100)]
        await asyncio.sleep(0)  # the batches are written
        os.kill(pid, signal.SIGKILL)
        done = await asyncio.gather(*pending)  # signed in-process meanwhile
        assert all(out.endswith(message(i)) for i, out in enumerate(done)) and verifies(done[-1])
        for _ in range(100):
            if signer.pids:
                break
            await asyncio.sleep(0.05)
        assert signer.pids and signer.pids[0] != pid
        assert verifies(await signer.sign(message(2), [RSA]))  # the new worker is sent the key again
    finally:
        await signer.close()


async def test_close_ends_the_workers():
    signer = DkimSigner(2)
    await signer.sign(message(0), [ED])
    procs = [c.proc for c in signer.pool._children]
    await signer.close()
    assert all(p.returncode == 0 for p in procs)
    assert verifies(await signer.sign(message(1), [ED]))  # after close: in-process


def test_workers_exit_when_the_parent_dies(tmp_path):
    """SIGKILL-safety: a worker whose parent died (its stdin reaches EOF) exits by itself."""
    import subprocess
    import time
    from mtad.outbound import signer
    from mtad.workers.pool import child_argv
    worker = subprocess.Popen(child_argv(signer._Signing.target), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE)
    worker.stdin.close()  # what the kernel does when the parent dies
    deadline = time.monotonic() + 10
    while worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker.returncode == 0
    worker.stdout.close()
