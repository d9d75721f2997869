"""Rows on the sample grid, windows and stride, and the missing-data policies."""

from __future__ import annotations

import random
from typing import Any

import pytest

from inference.window import Window, WindowCutter

S = 10**9  # one second in ns


def cutter(
    window: int, stride: int, n: int = 1, max_age_s: float | None = None
) -> tuple[WindowCutter, list[Window]]:
    out: list[Window] = []
    max_age = None if max_age_s is None else int(max_age_s * S)
    c = WindowCutter(
        n, period_ns=S, window=window, stride=stride, max_age_ns=max_age, emit=out.append
    )
    return c, out


def feed(c: WindowCutter, readings: list[tuple[Any, ...]]) -> None:
    for r in readings:
        c.put(r[0], r)  # in these tests the tag slot carries the input index


def firsts(out: list[Window]) -> list[float]:
    return [w.rows[0][0] for w in out]


def test_window_4_stride_2_gives_exactly_the_expected_windows() -> None:
    """Values 0..10, one per second: rows 0..9 close (10 opens the next period), and
    window 4 / stride 2 cuts [0..3], [2..5], [4..7], [6..9], ending after rows 3, 5, 7, 9."""
    c, out = cutter(4, 2)
    feed(c, [(0, 100 * S + k * S + 1, float(k), 0) for k in range(11)])
    assert [[r[0] for r in w.rows] for w in out] == [
        [0.0, 1.0, 2.0, 3.0],
        [2.0, 3.0, 4.0, 5.0],
        [4.0, 5.0, 6.0, 7.0],
        [6.0, 7.0, 8.0, 9.0],
    ]
    assert [w.end_ns for w in out] == [104 * S, 106 * S, 108 * S, 110 * S]
    assert (c.rows, c.cut, c.skipped) == (10, 4, 0)


@pytest.mark.parametrize(("window", "stride"), [(1, 1), (3, 1), (3, 3), (5, 2), (8, 3)])
def test_every_window_and_stride_cuts_the_sliding_windows(window: int, stride: int) -> None:
    c, out = cutter(window, stride)
    feed(c, [(0, k * S, float(k), 0) for k in range(31)])
    expected = [[float(i) for i in range(s, s + window)] for s in range(0, 30 - window + 1, stride)]
    assert [[r[0] for r in w.rows] for w in out] == expected


def test_a_row_holds_each_inputs_last_value_and_a_boundary_reading_opens_the_next() -> None:
    c, out = cutter(1, 1, n=2, max_age_s=2)
    feed(
        c,
        [
            (0, 10 * S + 100, 1.0, 0),
            (1, 10 * S + 200, 2.0, 0),
            (0, 10 * S + 900_000_000, 3.0, 0),  # later in the same period: it wins
            (1, 11 * S, 4.0, 0),  # exactly on the boundary: belongs to the next period
            (0, 12 * S, 5.0, 0),
        ],
    )
    assert [(w.rows, w.end_ns) for w in out] == [([[3.0, 2.0]], 11 * S), ([[3.0, 4.0]], 12 * S)]


def _gappy(bad: int = 4, absent: int = 7) -> list[tuple[Any, ...]]:
    """Values 0..10 once a second; row ``bad`` is a bad reading, row ``absent`` has none."""
    out: list[tuple[Any, ...]] = []
    for k in range(11):
        if k == absent:
            continue
        out.append((0, k * S + 5, None, 1, "timeout") if k == bad else (0, k * S + 5, float(k), 0))
    return out


def test_skip_drops_every_window_holding_a_bad_or_missing_row_and_counts_it() -> None:
    """Rows 0 1 2 3 _ 5 6 _ 8 9, windows of 3: only [0..2] and [1..3] have no hole."""
    c, out = cutter(3, 1)
    feed(c, _gappy())
    assert firsts(out) == [0.0, 1.0]
    assert (c.cut, c.skipped) == (2, 6)


def test_hold_last_fills_within_max_age_and_not_beyond() -> None:
    c, out = cutter(3, 1, max_age_s=2)  # the held value is ~2 s old at the row's end
    feed(c, _gappy())
    assert [[r[0] for r in w.rows] for w in out][2:5] == [
        [2.0, 3.0, 3.0],  # row 4 (bad reading) holds row 3's value
        [3.0, 3.0, 5.0],
        [3.0, 5.0, 6.0],
    ]
    assert (c.cut, c.skipped) == (8, 0)
    c, out = cutter(3, 1, max_age_s=1.5)
    feed(c, _gappy())
    assert (c.cut, c.skipped) == (2, 6)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "text", None, 10**400])
def test_non_numbers_and_non_finite_values_are_bad(value: Any) -> None:
    c, out = cutter(1, 1)
    feed(c, [(0, 0, value, 0), (0, S, 1.0, 0), (0, 2 * S, 2.0, 0)])
    assert firsts(out) == [1.0]
    assert c.skipped == 1


def test_bools_and_ints_count_as_numbers_and_uncertain_counts_as_bad() -> None:
    c, out = cutter(1, 1, n=3)
    feed(c, [(0, 0, True, 0), (1, 0, 7, 0), (2, 0, 1.5, 0), (0, S, 0.0, 0)])
    assert out[0].rows == [[1.0, 7.0, 1.5]]
    c, out = cutter(1, 1)
    feed(c, [(0, 0, 1.0, 4), (0, S, 1.0, 0)])  # 4 = UNCERTAIN
    assert out == [] and c.skipped == 1


def test_a_late_reading_counts_in_the_open_period_and_never_replaces_a_newer_one() -> None:
    c, out = cutter(1, 1, n=2)
    feed(
        c,
        [
            (0, 10 * S, 1.0, 0),
            (1, 10 * S + 5, 2.0, 0),
            (0, 11 * S + 200, 3.0, 0),  # closes row 10
            (1, 10 * S + 900, 4.0, 0),  # late (another device's batch): counts in row 11
            (0, 12 * S + 100, 5.0, 0),  # closes row 11
            (1, 12 * S + 500, 6.0, 0),
            (1, 12 * S + 400, 9.0, 0),  # older than the value already held: ignored
            (0, 13 * S, 7.0, 0),
        ],
    )
    assert [w.rows for w in out] == [[[1.0, 2.0]], [[3.0, 4.0]], [[5.0, 6.0]]]


def test_a_long_gap_counts_its_windows_without_making_each_row() -> None:
    """Rows 0..5, then no reading for ~11.6 days (999,994 hole rows), then 7 rows: the
    windows over the gap are counted as skipped, arithmetically, not made one by one."""
    c, out = cutter(3, 2)
    feed(c, [(0, k * S, float(k), 0) for k in range(6)])
    feed(c, [(0, (10**6 + k) * S, float(k), 0) for k in range(8)])
    assert c.rows == 6 + 999_994 + 7
    assert firsts(out) == [0.0, 2.0, 0.0, 2.0, 4.0]
    assert (c.cut, c.skipped) == (5, (c.rows - 3) // 2 + 1 - 5)


def test_a_clock_step_back_reanchors_the_grid() -> None:
    c, out = cutter(2, 1)
    feed(c, [(0, (1000 + k) * S, float(k), 0) for k in range(5)])
    assert c.cut == 3
    feed(c, [(0, k * S, 100.0 + k, 0) for k in range(4)])  # one hour earlier
    assert c.reanchors == 1
    assert firsts(out)[3:] == [100.0, 101.0]


def reference(
    readings: list[tuple[int, int, float | None, int]],
    n: int,
    window: int,
    stride: int,
    max_age: int | None,
) -> tuple[list[list[list[float]]], int]:
    """The policy written the slow, obvious way: every period's row, then slide."""
    first_end = (readings[0][1] // S + 1) * S
    last_end = (readings[-1][1] // S) * S  # the last period that closed
    rows: list[list[float] | None] = []
    for end in range(first_end, last_end + 1, S):
        row: list[float] | None = []
        for i in range(n):
            mine = [r for r in readings if r[0] == i and r[1] < end]
            good = [r for r in mine if r[3] == 0]
            if max_age is None:
                inside = [r for r in mine if r[1] >= end - S]
                ok = bool(inside) and inside[-1][3] == 0
            else:
                ok = bool(good) and end - good[-1][1] <= max_age
            if not ok or row is None:
                row = None
            else:
                row.append(good[-1][2])  # type: ignore[arg-type]
        rows.append(row)
    windows, skipped = [], 0
    for k in range(window - 1, len(rows)):
        if (k + 1 - window) % stride:
            continue
        w = rows[k - window + 1 : k + 1]
        if any(r is None for r in w):
            skipped += 1
        else:
            windows.append(w)
    return windows, skipped  # type: ignore[return-value]


@pytest.mark.parametrize("seed", range(40))
def test_the_cutter_matches_a_slow_reference(seed: int) -> None:
    """Random readings (two inputs, sometimes bad or absent, sometimes long gaps) give
    exactly the windows and skip counts of the obvious implementation."""
    rng = random.Random(seed)
    n, window, stride = 2, rng.randint(1, 5), 1
    stride = rng.randint(1, window)
    max_age = rng.choice([None, S, 3 * S // 2, 3 * S])
    readings, t = [], 50 * S + rng.randrange(S)
    for _ in range(rng.randint(5, 120)):
        t += rng.choice([rng.randrange(S // 3), rng.randrange(2 * S), rng.randrange(20 * S)])
        i = rng.randrange(n)
        bad = rng.random() < 0.1
        readings.append((i, t, None if bad else float(rng.randrange(100)), 1 if bad else 0))
    c, out = cutter(window, stride, n=n, max_age_s=None if max_age is None else max_age / S)
    feed(c, readings)
    expected, skipped = reference(readings, n, window, stride, max_age)
    assert [w.rows for w in out] == expected
    assert c.skipped == skipped
