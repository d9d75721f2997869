"""Sets of sequence numbers as sorted, disjoint, non-touching intervals.

A gateway's seqs arrive out of order by design (urgent and live before the backlog), and
a drop notice may name a range of any size: every operation here costs O(log n + k) in the
number of intervals it touches, never anything proportional to the seqs a range covers.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator


class Intervals:
    """Seqs as sorted disjoint intervals ``[lo, hi]`` (inclusive); touching ones merge."""

    __slots__ = ("_his", "_los")

    def __init__(self, pairs: list[tuple[int, int]] | None = None) -> None:
        self._los: list[int] = []
        self._his: list[int] = []
        for lo, hi in pairs or ():
            self.add(lo, hi)

    def __contains__(self, seq: int) -> bool:
        i = bisect.bisect_right(self._los, seq) - 1
        return i >= 0 and self._his[i] >= seq

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self._los, self._his, strict=True)

    def __len__(self) -> int:
        return len(self._los)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Intervals) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"Intervals({list(self)})"

    def pairs(self) -> list[tuple[int, int]]:
        return list(self)

    def covered(self, lo: int, hi: int) -> int:
        """How many seqs of ``lo..hi`` are in the set."""
        if hi < lo:
            return 0
        i = max(bisect.bisect_right(self._los, lo) - 1, 0)
        n = 0
        while i < len(self._los) and self._los[i] <= hi:
            a, b = max(self._los[i], lo), min(self._his[i], hi)
            if a <= b:
                n += b - a + 1
            i += 1
        return n

    def add(self, lo: int, hi: int) -> None:
        """Add ``lo..hi``, merging every interval it overlaps or touches."""
        if hi < lo:
            raise ValueError(f"empty interval {lo}..{hi}")
        los, his = self._los, self._his
        i = bisect.bisect_left(his, lo - 1)  # first interval that may touch from the left
        j = bisect.bisect_right(los, hi + 1)  # past the last one that may touch
        if i < j:
            lo, hi = min(lo, los[i]), max(hi, his[j - 1])
        los[i:j] = [lo]
        his[i:j] = [hi]

    def span(self) -> tuple[int, int] | None:
        return (self._los[0], self._his[-1]) if self._los else None

    def holes(self, limit: int | None = None) -> list[tuple[int, int]]:
        """The missing ranges between the first and the last seq of the set."""
        n = len(self._los) - 1 if limit is None else min(len(self._los) - 1, limit)
        return [(self._his[k] + 1, self._los[k + 1] - 1) for k in range(max(n, 0))]

    def missing(self) -> int:
        """How many seqs the holes hold."""
        if len(self._los) < 2:
            return 0
        return (
            self._his[-1]
            - self._los[0]
            + 1
            - sum(h - lo + 1 for lo, h in zip(self._los, self._his, strict=True))
        )

    def flat(self) -> list[int]:
        """[lo0, hi0, lo1, hi1, ...]: the stored form."""
        return [x for pair in self for x in pair]

    @classmethod
    def from_flat(cls, flat: list[int]) -> Intervals:
        if len(flat) % 2:
            raise ValueError("an odd number of interval bounds")
        return cls([(flat[k], flat[k + 1]) for k in range(0, len(flat), 2)])
