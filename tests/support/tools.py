"""External tools the tests drive, checked by capability (what tests/run.sh installs when it can)."""

from __future__ import annotations

import functools
import shutil
import subprocess

import pytest


@functools.cache
def _perl_has(module: str) -> bool:
    try:
        return subprocess.run(["perl", f"-M{module}", "-e1"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def swaks(*, tls: bool) -> str:
    """The swaks executable, or skip the test saying what is missing (swaks's TLS needs Perl's Net::SSLeay,
    which Debian's swaks only recommends)."""
    path = shutil.which("swaks")
    if path is None:
        pytest.skip("swaks is not installed (Debian package swaks; tests/run.sh installs it)")
    if tls and not _perl_has("Net::SSLeay"):
        pytest.skip("swaks cannot do TLS: Perl's Net::SSLeay is missing (Debian package libnet-ssleay-perl; "
                    "tests/run.sh installs it)")
    return path
