"""Value types for policy numbers written in config: rates, durations and sizes.

``Rate.parse("100/s")``, ``Duration.parse("5m")``, ``Size.parse("25MB")``; ``str()`` gives the
canonical spelling back. Parsing errors raise ``ValueError`` with a message fit for a config error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNIT_SECONDS = {
    "ms": 0.001,
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
    "w": 604800.0, "week": 604800.0, "weeks": 604800.0,
}
_CANONICAL = [("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)]
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]+)?\s*$")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.I)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "ki": 1024, "kib": 1024, "m": 1000**2, "mb": 1000**2,
               "mi": 1024**2, "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gi": 1024**3, "gib": 1024**3}


@dataclass(frozen=True, order=True)
class Duration:
    """A length of time in seconds. Accepts ``30``, ``30s``, ``5m``, ``1.5h``, ``3d``, ``250ms``."""

    seconds: float

    @classmethod
    def parse(cls, value: object) -> "Duration":
        if isinstance(value, Duration):
            return value
        if isinstance(value, bool):
            raise ValueError(f"expected a duration like '30s' or '5m', got {value!r}")
        if isinstance(value, (int, float)):
            if value < 0:
                raise ValueError(f"duration must not be negative, got {value!r}")
            return cls(float(value))
        m = _DURATION.match(str(value).lower())
        if not m or (m.group(2) and m.group(2) not in _UNIT_SECONDS):
            raise ValueError(f"expected a duration like '30s' or '5m', got {value!r}")
        return cls(float(m.group(1)) * _UNIT_SECONDS[m.group(2) or "s"])

    def __str__(self) -> str:
        for unit, secs in _CANONICAL:
            if self.seconds >= secs and (self.seconds / secs).is_integer():
                return f"{int(self.seconds / secs)}{unit}"
        if self.seconds == 0:
            return "0s"
        return f"{self.seconds:g}s"


@dataclass(frozen=True)
class Rate:
    """A number of events per period: ``100/s``, ``2000/h``, ``10/5m``. ``per_second`` is the refill rate."""

    count: float
    period: float  # seconds

    @classmethod
    def parse(cls, value: object) -> "Rate":
        if isinstance(value, Rate):
            return value
        m = _RATE.match(str(value).lower())
        if not m or m.group(3) not in _UNIT_SECONDS:
            raise ValueError(f"expected N/unit like '100/s' or '2000/h', got {value!r}")
        count = float(m.group(1))
        if count <= 0:
            raise ValueError(f"rate must be positive, got {value!r}")
        mult = float(m.group(2)) if m.group(2) else 1.0
        return cls(count, mult * _UNIT_SECONDS[m.group(3)])

    @property
    def per_second(self) -> float:
        return self.count / self.period

    def __str__(self) -> str:
        count = int(self.count) if self.count.is_integer() else self.count
        for unit, secs in _CANONICAL:
            if self.period == secs:
                return f"{count}/{unit}"
        return f"{count}/{Duration(self.period)}"


@dataclass(frozen=True, order=True)
class Size:
    """A number of bytes. Accepts ``1000``, ``64KB``, ``25MB``, ``1MiB``."""

    bytes: int

    @classmethod
    def parse(cls, value: object) -> "Size":
        if isinstance(value, Size):
            return value
        if isinstance(value, bool):
            raise ValueError(f"expected a size like '25MB', got {value!r}")
        if isinstance(value, int):
            if value < 0:
                raise ValueError(f"size must not be negative, got {value!r}")
            return cls(value)
        m = _SIZE.match(str(value))
        if not m:
            raise ValueError(f"expected a size like '25MB' or '64KiB', got {value!r}")
        return cls(int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()]))

    def __int__(self) -> int:
        return self.bytes

    def __str__(self) -> str:
        for unit, mult in (("GB", 1000**3), ("MB", 1000**2), ("KB", 1000)):
            if self.bytes >= mult and self.bytes % mult == 0:
                return f"{self.bytes // mult}{unit}"
        return str(self.bytes)
