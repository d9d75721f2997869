"""A compact latency histogram: fixed bucket bounds, one list of counts, cheap to observe
(one ``bisect`` and three additions) and to copy into the status snapshot (``asdict``)."""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

__all__ = ["LATENCY_BOUNDS_S", "Histogram"]

LATENCY_BOUNDS_S: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Upper bounds, in seconds, from a fast local PLC (1 ms) to a timeout (10 s)."""


@dataclass(slots=True)
class Histogram:
    """Observations by bucket: ``counts[i]`` holds values ``<= bounds[i]`` (and greater
    than the bound before); the last count is above every bound (Prometheus's +Inf)."""

    bounds: tuple[float, ...] = LATENCY_BOUNDS_S
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1
