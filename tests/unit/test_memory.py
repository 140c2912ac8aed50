"""mtad.base.memory: the C library takes the pinned mmap threshold (glibc, as on Debian)."""

import platform

import pytest

from mtad.base.memory import pin_mmap_threshold


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_takes_the_pinned_threshold():
    assert pin_mmap_threshold() is True
