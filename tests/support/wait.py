"""Waiting for something the daemon does in its own time: the suite's one polling loop, in two faces.

``wait_until(predicate)`` blocks (for synchronous tests); ``await wait_for(check)`` sleeps on the event loop
(for async tests; ``check`` may be sync or async). Both poll until the value is truthy and return it, or
fail the test with ``what`` after ``timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

INTERVAL = 0.02  # seconds between polls


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition",
               interval: float = INTERVAL) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def wait_for(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition",
                   interval: float = INTERVAL) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)
