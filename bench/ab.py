"""Before/after in one run: one tree against its base, measured in the same rounds (drain.py, inbound_bench.py,
summarize_ingress.py all judge a pair of runs lists with ``compare``).

A pair is "slower by more than the spread" when the ratio of the medians is below 1 - the larger run-to-run
spread ((max - min) / median) of the two: the difference is then bigger than what repeats of the same tree
show on this machine.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass


def spread(rates: list[float]) -> float:
    """(max - min) / median of one tree's runs; 0 for a single run."""
    median = statistics.median(rates) if rates else 0
    return (max(rates) - min(rates)) / median if len(rates) > 1 and median else 0.0


@dataclass(frozen=True)
class Comparison:
    ratio: float  # median(new) / median(base)
    per_round: list[float]  # run i of each, driven minutes apart at most
    spread: float
    status: str  # "slower" | "faster" | "within" | "single"

    @property
    def verdict(self) -> str:
        return {"slower": f"SLOWER by more than the spread ({1 - self.ratio:.0%} > {self.spread:.0%})",
                "faster": "faster beyond the spread", "within": "within the spread"}.get(self.status, "")

    def spread_text(self) -> str:
        return f"±{self.spread:.0%}" if len(self.per_round) > 1 else "—"


def compare(new: list[float], base: list[float]) -> Comparison:
    ratio = statistics.median(new) / statistics.median(base)
    per_round = [x / y for x, y in zip(new, base) if y]
    sp = max(spread(new), spread(base))
    if len(per_round) < 2:
        status = "single"
    elif ratio < 1 - sp:
        status = "slower"
    elif ratio > 1 + sp:
        status = "faster"
    else:
        status = "within"
    return Comparison(ratio, per_round, sp, status)


def runs_text(rates: list[float]) -> str:
    return f"{statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"
