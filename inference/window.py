"""Readings in, windows out: the sample grid, the missing-data policy, window and stride.

Pure Python, no numpy: ``put`` runs on the event loop for every reading of a bound tag,
so it only stores the value; work per row (once per ``sample_ms``) and per window is
small, and turning windows into arrays happens later, off the loop.

The sample grid
    Time is cut into periods of ``sample_ms`` aligned to the Unix epoch (so two models
    with the same rate agree on their rows). A period ``[E - P, E)`` becomes one row when
    the first reading at or after ``E`` arrives (any bound input's reading will do); the
    row holds each input's last value at that moment. Rows are therefore driven by the
    readings' own timestamps, never by the wall clock: replaying data gives the same
    windows, and a silent plant produces no rows at all (not a stream of holes).

Missing and bad values
    A reading is good when its quality is 0 (GOOD) and its value is a finite number
    (bools count as 0/1). ``skip``: an input must have had a new good reading since the
    previous row, and its last reading must be good, or the row is a hole. ``hold_last``:
    the last good value stands in while it is at most ``max_age`` old at the row's end;
    bad readings are ignored (the held value ages out instead). A window containing a hole
    is not scored; it is counted in ``skipped``.

Window and stride
    After ``window`` rows the first window is cut, then one every ``stride`` rows: rows
    r0..r9 with window 4 and stride 2 give [r0..r3], [r2..r5], [r4..r7], [r6..r9].

Late readings and clock steps
    A reading older than the open period (another device's batch arriving late) still
    updates its input unless a newer one is already there; it counts in the open period.
    A reading older than ``max(window + 1 periods, 10 s)`` before the open period means
    the clock stepped back: the grid is re-anchored and the partial window dropped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

__all__ = ["GOOD", "Reading", "Window", "WindowCutter"]

Reading: TypeAlias = tuple[Any, ...]
"""``(tag, ts_ns, value, quality[, reason])``, as every driver produces them."""

GOOD = 0
"""The quality of a good reading (the drivers' ``Quality.GOOD``)."""

_NEVER = -(1 << 62)  # the timestamp of "no good value yet": older than any max_age
_REWIND_MIN_NS = 10_000_000_000


@dataclass(frozen=True, slots=True)
class Window:
    """``window`` rows of one value per input, oldest first, ending at ``end_ns``."""

    rows: list[list[float]]
    end_ns: int
    """End of the last row's sample period (exclusive)."""


class WindowCutter:
    """One model binding's rows and windows; ``emit`` receives each complete window."""

    __slots__ = (
        "_end",
        "_fresh",
        "_holes",
        "_max_age",
        "_n",
        "_period",
        "_rewind",
        "_ring",
        "_stride",
        "_ts",
        "_val",
        "_window",
        "cut",
        "emit",
        "reanchors",
        "rows",
        "skipped",
    )

    def __init__(
        self,
        n_inputs: int,
        *,
        period_ns: int,
        window: int,
        stride: int,
        max_age_ns: int | None,
        emit: Callable[[Window], None],
    ) -> None:
        if not (n_inputs >= 1 and period_ns >= 1 and 1 <= stride <= window):
            raise ValueError(f"bad geometry: {n_inputs=} {period_ns=} {window=} {stride=}")
        self._n = n_inputs
        self._period = period_ns
        self._window = window
        self._stride = stride
        self._max_age = max_age_ns  # None: the skip policy
        self.emit = emit
        self._val = [0.0] * n_inputs
        self._ts = [_NEVER] * n_inputs
        self._fresh = [False] * n_inputs
        self._ring: deque[list[float] | None] = deque(maxlen=window)
        self._holes = 0  # holes in the ring, so a window's check is one comparison
        self._end = -1  # end of the open period; -1: the first reading anchors the grid
        self._rewind = -1
        self.rows = 0
        """Rows made since the grid was anchored."""
        self.cut = 0
        """Windows emitted."""
        self.skipped = 0
        """Windows not emitted because they held a hole."""
        self.reanchors = 0

    def put(self, i: int, reading: Reading) -> None:
        """Take one reading of input ``i``; may close rows and emit windows first."""
        ts = reading[1]
        if ts >= self._end:
            self._advance(ts)
        elif ts < self._rewind:
            self._reanchor(ts)
        value = reading[2]
        if reading[3] == GOOD and value is not None and value.__class__ is not str:
            try:
                v = float(value)
            except (TypeError, ValueError, OverflowError):
                v = float("nan")
            if v - v == 0.0:  # finite: inf - inf and nan - nan are nan
                if ts >= self._ts[i]:  # an older reading never replaces a newer one
                    self._val[i] = v
                    self._ts[i] = ts
                    self._fresh[i] = True
                return
        if self._max_age is None:
            self._fresh[i] = False  # skip: the period's last reading must be good

    def _anchor(self, ts: int) -> None:
        p = self._period
        self._end = (ts // p + 1) * p
        self._rewind = self._end - max((self._window + 1) * p, _REWIND_MIN_NS)

    def _advance(self, ts: int) -> None:
        if self._end < 0:
            self._anchor(ts)
            return
        p = self._period
        n = (ts - self._end) // p + 1  # periods that end at or before ts
        while n > 0:
            end = self._end
            row = self._snapshot(end)
            self._end = end + p
            n -= 1
            self._push(row, end)
            if row is None and n:
                # No reading arrives inside the gap, so every further row is a hole too.
                self._push_holes(n)
                self._end += n * p
                n = 0
        self._rewind = self._end - max((self._window + 1) * p, _REWIND_MIN_NS)

    def _snapshot(self, end: int) -> list[float] | None:
        if self._max_age is not None:
            return self._val[:] if min(self._ts) >= end - self._max_age else None
        row = self._val[:] if all(self._fresh) else None
        self._fresh = [False] * self._n
        return row

    def _push(self, row: list[float] | None, end: int) -> None:
        ring = self._ring
        if len(ring) == self._window and ring[0] is None:
            self._holes -= 1  # (append evicts it)
        ring.append(row)
        if row is None:
            self._holes += 1
        k = self.rows = self.rows + 1
        if k >= self._window and (k - self._window) % self._stride == 0:
            if self._holes:
                self.skipped += 1
            else:
                self.cut += 1
                self.emit(Window(list(ring), end))  # type: ignore[arg-type]  # no holes

    def _cuts_upto(self, k: int) -> int:
        return 0 if k < self._window else (k - self._window) // self._stride + 1

    def _push_holes(self, n: int) -> None:
        first = min(n, self._window)
        for _ in range(first):
            self._push(None, 0)
        # The ring is all holes now: the rest only move the stride's phase on.
        rest = n - first
        self.skipped += self._cuts_upto(self.rows + rest) - self._cuts_upto(self.rows)
        self.rows += rest

    def _reanchor(self, ts: int) -> None:
        self.reanchors += 1
        self._ring.clear()
        self._holes = 0
        self.rows = 0
        self._ts = [_NEVER] * self._n
        self._fresh = [False] * self._n
        self._anchor(ts)

    @property
    def pending_rows(self) -> int:
        """Rows held towards the next window (kept across a config swap)."""
        return len(self._ring)
