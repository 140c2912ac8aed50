"""The retry rule of HTTP work (route forwards, ``store()`` notifications, event webhooks): one table of policy
data and one function, so the three agree.

After attempt ``n`` (1-based) of a POST, the first rule of ``RULES`` whose status range holds the answer's status
decides; an answer no rule holds (another status, or none: timeout, refused connection) is retried after
``schedule[n-1]``, unless the schedule is used up (``n > len(schedule)``) or the work is POSTed only once
(``retry=False``: a webhook of a ``delivered`` event), then it fails.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

# (lowest status, highest status, state): 2xx completes the work; 406 Not Acceptable means the application refuses
# it, so it is not retried.
RULES: tuple[tuple[int, int, str], ...] = ((200, 299, "done"), (406, 406, "failed"))


class Decision(NamedTuple):
    state: str  # done | deferred | failed
    retry_at: float | None  # when a deferred attempt is due again; None otherwise


def decide(status: int | None, attempt: int, schedule: Sequence[float], now: float, *,
           retry: bool = True) -> Decision:
    """The state of HTTP work after attempt ``attempt`` answered ``status`` (None: no answer) at ``now``."""
    if status is not None:
        for low, high, state in RULES:
            if low <= status <= high:
                return Decision(state, None)
    if not retry or attempt > len(schedule):
        return Decision("failed", None)
    return Decision("deferred", now + schedule[attempt - 1])
