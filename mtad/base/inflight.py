"""The bound on message bytes held in memory by all SMTP sessions and API sends together.

``ByteBudget(limit)`` is shared; each message being received takes a ``Hold`` and grows it as its bytes
arrive (``take``), not once the whole message is in. A ``take`` that would pass the limit fails: the
holder drops what it kept, reads the rest without keeping it and answers ``452 4.3.1``. ``release``
gives back everything the hold took; callers call it on every path (``with`` does), so success, refusal,
error and a client gone mid-DATA all return their bytes.

A message is held more than once while it is committed: the cleaned copy ingress makes and the record the
store builds for the write exist beside the received bytes for a moment. So before the commit a holder also
takes ``COMMIT_COPIES`` times the message's size (``take_for_commit``): the budget then bounds what the
messages really cost in memory, not only what was read (measured: 30 concurrent 24 MB messages under the
512 MB default peaked at ~1.26 GB of RSS when only the received bytes were counted).

Single-threaded (the event loop's); no locks.
"""

from __future__ import annotations

COMMIT_COPIES = 2  # the cleaned copy and the store's record, beside the received bytes, while committing


class ByteBudget:
    """Bytes reserved against ``limit``; ``refused`` counts the holds that could not grow (one per message)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self.peak = 0
        self.refused = 0

    def reserve(self, n: int) -> bool:
        if self.used + n > self.limit:
            self.refused += 1
            return False
        self.used += n
        if self.used > self.peak:
            self.peak = self.used
        return True

    def release(self, n: int) -> None:
        self.used -= n

    def hold(self) -> "Hold":
        return Hold(self)


class Hold:
    """One message's share of the budget."""

    def __init__(self, budget: ByteBudget):
        self.budget = budget
        self.held = 0

    def take(self, n: int) -> bool:
        """Reserve ``n`` more bytes; False (nothing taken) when the budget has no room."""
        if not self.budget.reserve(n):
            return False
        self.held += n
        return True

    def take_for_commit(self, size: int) -> bool:
        """Reserve the copies a commit of a ``size``-byte message makes (``COMMIT_COPIES``); False if no room."""
        return self.take(COMMIT_COPIES * size)

    def release(self) -> None:
        """Give back everything taken; idempotent."""
        if self.held:
            self.budget.release(self.held)
            self.held = 0

    def __enter__(self) -> "Hold":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
