"""Repeated events, told once and then counted: the first occurrence of an event goes
out at once; repeats within the following interval are counted and go out as one
summary at its end. The interval doubles while the repeats go on (from ``first_s`` up
to ``max_s``) and starts again from ``first_s`` after a quiet interval.

So a link that flaps every second for a day, or a broker that refuses every login,
adds a bounded number of audit records and log lines (about 30 per event per day with
the defaults), and a state change after a quiet spell is still recorded at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("edgegw.digest")

MAX_REASONS = 5  # distinct reasons kept per summary; the rest are counted as "other"


@dataclass(slots=True)
class _State:
    interval: float
    quiet_until: float
    count: int = 0
    since: float = 0.0
    reasons: Counter[str] = field(default_factory=Counter)
    timer: asyncio.TimerHandle | None = None


class Digest:
    """``note(event, reason)``; ``emit(event, detail)`` receives the first occurrence
    (``{"reason": ...}``) and the summaries (``{"repeated": n, "over_s": s,
    "reasons": {reason: n}}``)."""

    def __init__(
        self,
        emit: Callable[[str, dict[str, Any]], None],
        first_s: float = 60.0,
        max_s: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.emit = emit
        self.first_s, self.max_s = first_s, max_s
        self.clock = clock
        self._states: dict[str, _State] = {}

    def note(self, event: str, reason: str | None = None) -> None:
        now = self.clock()
        st = self._states.get(event)
        if st is not None and st.count and now >= st.quiet_until:
            self._summarize(event)  # its timer did not run (no event loop)
        if st is None or (st.count == 0 and now >= st.quiet_until):
            self._states[event] = _State(interval=self.first_s, quiet_until=now + self.first_s)
            self._emit(event, {"reason": reason})
            return
        if st.count == 0:
            st.since = now
        st.count += 1
        key = reason or ""
        if key in st.reasons or len(st.reasons) < MAX_REASONS:
            st.reasons[key] += 1
        else:
            st.reasons["other"] += 1
        if st.timer is None:
            self._schedule(event, st, max(0.0, st.quiet_until - now))

    def flush(self) -> None:
        """Emit every pending summary now (e.g. before the digest is dropped)."""
        for event in list(self._states):
            self._summarize(event)

    def restart(self, event: str) -> None:
        """Emit ``event``'s pending summary, and treat its next note as a first occurrence
        (e.g. the problem changed)."""
        self._summarize(event)
        self._states.pop(event, None)

    def pending(self) -> dict[str, int]:
        return {e: s.count for e, s in self._states.items() if s.count}

    def _schedule(self, event: str, st: _State, delay: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a test, a thread): flushed by the next note() or flush()
        st.timer = loop.call_later(delay, self._summarize, event)

    def _summarize(self, event: str) -> None:
        st = self._states.get(event)
        if st is None:
            return
        if st.timer is not None:
            st.timer.cancel()
            st.timer = None
        if not st.count:
            return
        now = min(self.clock(), st.quiet_until)  # late (no event loop): when it was due
        detail = {
            "repeated": st.count,
            "over_s": round(now - st.since, 1),
            "reasons": dict(st.reasons.most_common()),
        }
        st.count, st.reasons = 0, Counter()
        st.interval = min(self.max_s, st.interval * 2)
        st.quiet_until = now + st.interval
        self._emit(event, detail)

    def _emit(self, event: str, detail: dict[str, Any]) -> None:
        try:
            self.emit(event, {k: v for k, v in detail.items() if v is not None})
        except Exception:  # a failing sink must not stop the caller (the forwarder)
            log.exception("cannot report %s", event)
