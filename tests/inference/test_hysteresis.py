"""Enter and exit thresholds, minimum duration, no flapping, gaps."""

from __future__ import annotations

import pytest

from inference.hysteresis import AnomalyEvent, Hysteresis

S = 10**9


def run(
    scores: list[float], *, enter: float = 10, exit: float = 5, min_ms: int = 0, step_s: int = 1
) -> list[tuple[str, int, float, float, int]]:
    """Feed one score per ``step_s``; events as (kind, onset s, score, peak, confirm s)."""
    h = Hysteresis(
        "m", ("d/a",), enter=enter, exit=exit, min_duration_ms=min_ms, max_gap_ns=2 * step_s * S
    )
    out: list[tuple[str, int, float, float, int]] = []
    for k, score in enumerate(scores):
        e = h.update(score, k * step_s * S)
        if e is not None:
            out.append((e.kind, e.ts_ns // S, e.score, e.peak, e.window_end_ns // S))
    return out


def test_enter_starts_and_exit_ends() -> None:
    assert run([1, 12, 11, 6, 4, 3]) == [
        ("start", 1, 12, 12, 1),
        ("end", 4, 4, 12, 4),
    ]


def test_scores_between_exit_and_enter_neither_start_nor_end() -> None:
    assert run([9, 9.9, 6, 5, 9.99]) == []  # never reached enter
    # once anomalous, scores >= exit keep it so, however often they cross enter
    assert run([11, 6, 10.5, 5, 9, 5.5, 4.9]) == [
        ("start", 0, 11, 11, 0),
        ("end", 6, 4.9, 11, 6),
    ]


def test_a_score_hovering_around_one_threshold_does_not_flap() -> None:
    """A score oscillating around enter (9.5/10.5) and later around exit (5.5/4.5): the
    band alone gives exactly one start and one end, not a string of them."""
    around_enter, around_exit = [9.5, 10.5] * 10, [5.5, 4.5] * 10
    assert [e[0] for e in run(around_enter + around_exit)] == ["start", "end"]
    # with a minimum duration the oscillation never holds long enough on either side
    assert run(around_enter + around_exit, min_ms=1500) == []
    events = run(around_enter + [11] * 3 + around_exit + [1] * 3, min_ms=1500)
    assert [e[0] for e in events] == ["start", "end"]


def test_min_duration_needs_every_window_over_enter_for_that_long() -> None:
    # stride 1 s, min 2 s: the third consecutive window over enter confirms
    assert run([11, 11, 3, 11, 11, 11, 11], min_ms=2000) == [("start", 3, 11, 11, 5)]
    # and the end needs 2 s under exit
    events = run([11, 11, 11, 4, 4, 12, 4, 4, 4, 4], min_ms=2000)
    assert events == [("start", 0, 11, 11, 2), ("end", 6, 4, 12, 8)]


def test_peak_covers_the_whole_anomaly() -> None:
    events = run([11, 30, 20, 12, 1], min_ms=0)
    assert events[0][3] == 11 and events[1][3] == 30


def test_a_gap_breaks_a_pending_run_but_not_an_anomaly() -> None:
    h = Hysteresis("m", ("d/a",), enter=10, exit=5, min_duration_ms=3000, max_gap_ns=2 * S)
    assert h.update(11, 0) is None
    assert h.update(11, 1 * S) is None
    # an hour of missing data: two windows an hour apart do not add up to 3 s
    assert h.update(11, 3600 * S) is None
    assert h.update(11, 3601 * S) is None
    assert h.update(11, 3602 * S) is None
    e = h.update(11, 3603 * S)
    assert e is not None and e.kind == "start" and e.ts_ns == 3600 * S
    assert h.update(1, 7200 * S) is None  # a gap does not end it; scores do
    assert h.active


def test_configure_keeps_the_state_and_refuses_an_inverted_band() -> None:
    h = Hysteresis("m", ("d/a",), enter=10, exit=5, min_duration_ms=0, max_gap_ns=2 * S)
    assert h.update(11, 0) is not None
    h.configure(enter=100, exit=50, min_duration_ms=0, max_gap_ns=2 * S)
    assert h.active
    e = h.update(40, S)
    assert e is not None and e.kind == "end"
    with pytest.raises(ValueError, match="exit 6 is above enter 5"):
        h.configure(enter=5, exit=6, min_duration_ms=0, max_gap_ns=S)


def test_events_carry_model_inputs_and_serialise() -> None:
    h = Hysteresis("boiler", ("b/t", "b/p"), enter=1, exit=1, min_duration_ms=0, max_gap_ns=S)
    e = h.update(2.5, 42)
    assert e == AnomalyEvent("boiler", "start", 42, 2.5, 2.5, 42, ("b/t", "b/p"))
    assert e.as_dict() == {
        "model": "boiler",
        "kind": "start",
        "ts_ns": 42,
        "score": 2.5,
        "peak": 2.5,
        "window_end_ns": 42,
        "inputs": ["b/t", "b/p"],
    }
    assert h.events == 1


def test_the_thresholds_themselves() -> None:
    """A score equal to enter enters (>= enter); one equal to exit does not end (< exit);
    the minimum duration is reached exactly at min_duration_ms."""
    assert run([1, 10]) == [("start", 1, 10, 10, 1)]
    assert run([1, 9.999999]) == []
    assert run([12, 5, 5, 4.999]) == [("start", 0, 12, 12, 0), ("end", 3, 4.999, 12, 3)]
    # min 2 s: windows over enter at 1, 2, 3 s: confirmed at 3 s (3 - 1 = 2 s), not 2 s
    assert run([1, 12, 12, 12, 12], min_ms=2000) == [("start", 1, 12, 12, 3)]
