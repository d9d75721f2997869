"""Scores in, anomaly events out: two thresholds and a minimum duration, so a score
hovering around one threshold does not flap.

Normal -> anomalous: every window scores ``>= enter`` for at least ``min_duration_ms``
(from the end of the first such window to the end of the current one). The ``start``
event's ``ts_ns`` is the first window's end (the onset), ``window_end_ns`` the window
that confirmed it.

Anomalous -> normal: every window scores ``< exit`` for at least ``min_duration_ms``;
``ts_ns`` of the ``end`` event is the end of the first window below ``exit``.

Scores between ``exit`` and ``enter`` change nothing: they neither start nor end an
anomaly, and they break a run of windows on its way to starting or ending one. A gap of
more than ``max_gap_ns`` between two scored windows (missing data, dropped windows) also
breaks such a run, so two windows an hour apart never add up to a duration. An anomaly in
progress is not ended by a gap: it ends on scores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["AnomalyEvent", "Hysteresis"]


@dataclass(frozen=True, slots=True)
class AnomalyEvent:
    """The start or the end of an anomaly reported by one model."""

    model: str
    kind: Literal["start", "end"]
    ts_ns: int
    """When it began (start) or cleared (end): the end of the first window that said so."""
    score: float
    """Score of the window that confirmed the event."""
    peak: float
    """Highest score so far in this anomaly (for ``end``: over the whole anomaly)."""
    window_end_ns: int
    """End of the window that confirmed the event."""
    inputs: tuple[str, ...]
    """The model's inputs."""

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["inputs"] = list(self.inputs)
        return d


class Hysteresis:
    """Per-model state machine; feed it scores in window order."""

    __slots__ = (
        "_clear_since",
        "_last_end",
        "_pending_since",
        "active",
        "enter",
        "events",
        "exit",
        "inputs",
        "max_gap_ns",
        "min_duration_ns",
        "model",
        "peak",
    )

    def __init__(
        self,
        model: str,
        inputs: tuple[str, ...],
        *,
        enter: float,
        exit: float,
        min_duration_ms: int,
        max_gap_ns: int,
    ) -> None:
        self.model = model
        self.inputs = inputs
        self.active = False
        self.peak = 0.0
        self.events = 0
        self._pending_since: int | None = None  # first window >= enter, while normal
        self._clear_since: int | None = None  # first window < exit, while anomalous
        self._last_end: int | None = None
        self.configure(
            enter=enter, exit=exit, min_duration_ms=min_duration_ms, max_gap_ns=max_gap_ns
        )

    def configure(
        self, *, enter: float, exit: float, min_duration_ms: int, max_gap_ns: int
    ) -> None:
        """New thresholds (config reload); the state is kept."""
        if exit > enter:
            raise ValueError(f"exit {exit} is above enter {enter}")
        self.enter, self.exit = enter, exit
        self.min_duration_ns = min_duration_ms * 1_000_000
        self.max_gap_ns = max_gap_ns

    def update(self, score: float, window_end_ns: int) -> AnomalyEvent | None:
        """Feed one window's score; returns the event it causes, if any."""
        end = window_end_ns
        if self._last_end is not None and end - self._last_end > self.max_gap_ns:
            self._pending_since = self._clear_since = None
        self._last_end = end
        if not self.active:
            if score < self.enter:
                self._pending_since = None
                return None
            if self._pending_since is None:
                self._pending_since, self.peak = end, score
            self.peak = max(self.peak, score)
            if end - self._pending_since < self.min_duration_ns:
                return None
            self.active = True
            onset, self._pending_since = self._pending_since, None
            return self._event("start", onset, score, end)
        self.peak = max(self.peak, score)
        if score >= self.exit:
            self._clear_since = None
            return None
        if self._clear_since is None:
            self._clear_since = end
        if end - self._clear_since < self.min_duration_ns:
            return None
        self.active = False
        cleared, self._clear_since = self._clear_since, None
        event = self._event("end", cleared, score, end)
        self.peak = 0.0
        return event

    def _event(
        self, kind: Literal["start", "end"], ts: int, score: float, end: int
    ) -> AnomalyEvent:
        self.events += 1
        return AnomalyEvent(self.model, kind, ts, score, self.peak, end, self.inputs)
