"""The inference engine: readings in (on the event loop), anomaly events out.

``observe`` costs one dict lookup per reading (plus a few list stores for a bound tag);
complete windows go to a bounded queue. ``run`` takes up to ``BATCH_WINDOWS`` windows at
a time and scores them with onnxruntime in the engine's own single worker thread, so a
slow model delays only scoring, never the loop, and never the default executor. When the
queue is full the oldest window is dropped (a fresher one is worth more to a detector)
and counted in ``windows_skipped_queue_full``.

Config reload (``swap``): the new models are loaded and verified in a thread first; if
any is refused, nothing changes. Then, in one step on the loop:

* windows already queued or being scored are scored by the model they were cut for
  (its session lives until they are done) and their events are delivered;
* a binding with the same name and the same rows (inputs, sample_ms, window, stride,
  missing policy) keeps its partial window, so no window is lost at the swap; otherwise
  it starts a fresh one;
* a model with the same name keeps its anomaly state and counters, with the new
  thresholds. A removed model's open anomaly gets no ``end`` event (nothing ended it).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from .hysteresis import AnomalyEvent, Hysteresis
from .model import LoadedModel, ModelRefused, load_model
from .window import Reading, Window, WindowCutter

if TYPE_CHECKING:
    from .config import InferenceConfig, ModelBinding

__all__ = ["BATCH_WINDOWS", "AnomalyEvent", "InferenceEngine", "ModelRefused"]

log = logging.getLogger("edgegw.inference")

BATCH_WINDOWS = 64
"""Most windows scored in one onnxruntime call."""
_LATENCIES = 1024  # recent samples kept for the percentiles

OnEvent = Callable[[AnomalyEvent], Awaitable[None]]
OnScore = Callable[[str, float, int], None]


@dataclass(slots=True)
class _Counts:
    """Per model name; survives a config swap."""

    scored: int = 0
    failed: int = 0
    dropped: int = 0
    skipped_before: int = 0  # missing-data skips of cutters replaced at a swap
    last_score: float | None = None
    last_end_ns: int | None = None
    last_error: str | None = None


@dataclass(slots=True)
class _Slot:
    binding: ModelBinding
    model: LoadedModel
    cutter: WindowCutter
    hyst: Hysteresis
    counts: _Counts


@dataclass(slots=True)
class _Item:
    slot: _Slot
    window: Window
    cut_at: float = field(default_factory=time.perf_counter)


def _rows_key(b: ModelBinding) -> tuple[object, ...]:
    return (tuple(b.inputs), b.sample_ms, b.window, b.stride, b.missing, b.max_age_ms)


def _load_all(cfg: InferenceConfig, base_dir: Path) -> list[LoadedModel]:
    return [load_model(b, base_dir, threads=cfg.threads) for b in cfg.models]


def _pct(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 4)


_Scored = tuple[list[float | None], list[str | None], list[tuple[float, int]]]


def _score(batch: list[_Item]) -> _Scored:
    """In the worker thread: one onnxruntime call per model present in the batch."""
    scores: list[float | None] = [None] * len(batch)
    errors: list[str | None] = [None] * len(batch)
    timings: list[tuple[float, int]] = []
    groups: dict[int, list[int]] = {}
    for i, item in enumerate(batch):
        groups.setdefault(id(item.slot), []).append(i)
    for idx in groups.values():
        model = batch[idx[0]].slot.model
        t0 = time.perf_counter()
        try:
            values = model.score([batch[i].window.rows for i in idx]).tolist()
        except Exception as exc:  # a model that fails at run time must not stop the others
            for i in idx:
                errors[i] = f"{type(exc).__name__}: {exc}"
            continue
        timings.append((time.perf_counter() - t0, len(idx)))
        for i, v in zip(idx, values, strict=True):
            scores[i] = v
    return scores, errors, timings


class InferenceEngine:
    """Scores live windows of bound tags with ONNX models; see the module docstring."""

    def __init__(self, cfg: InferenceConfig, *, base_dir: Path) -> None:
        """Load and verify every model (raises :class:`ModelRefused`). ``base_dir`` is
        the folder relative model paths are taken against (the config file's)."""
        self._base_dir = Path(base_dir)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="edgegw-inference")
        self._queue: deque[_Item] = deque()
        self._wake = asyncio.Event()
        self._slots: dict[str, _Slot] = {}
        self._index: dict[str, tuple[tuple[WindowCutter, int], ...]] = {}
        self._capacity = cfg.queue_windows
        self._in_flight = 0
        self._done = 0  # windows of the batch in hand already judged
        self._events: deque[AnomalyEvent] = deque()  # raised, not yet delivered
        self._retired_cut = 0
        self._retired_skipped = 0
        self._totals = _Counts()
        self._infer_ms: deque[float] = deque(maxlen=_LATENCIES)
        self._infer_window_ms: deque[float] = deque(maxlen=_LATENCIES)
        self._delay_ms: deque[float] = deque(maxlen=_LATENCIES)
        self._install(cfg, _load_all(cfg, self._base_dir))

    @property
    def config(self) -> InferenceConfig:
        return self._cfg

    def observe(self, readings: Sequence[Reading]) -> None:
        """Feed one batch of readings; call it on the event loop. Cheap: readings of tags
        no model reads cost one dict lookup."""
        get = self._index.get
        for r in readings:
            targets = get(r[0])
            if targets is not None:
                for cutter, i in targets:
                    cutter.put(i, r)

    def _enqueue(self, slot: _Slot, window: Window) -> None:
        q = self._queue
        while len(q) >= self._capacity:
            q.popleft().slot.counts.dropped += 1
            self._totals.dropped += 1
        q.append(_Item(slot, window))
        self._wake.set()

    async def run(self, on_event: OnEvent, on_score: OnScore) -> None:
        """Score queued windows until cancelled. ``on_score(model, score, window_end_ns)``
        is called for models with ``publish_scores``; ``on_event`` is awaited for every
        anomaly start and end, in order."""
        loop = asyncio.get_running_loop()
        q = self._queue
        self._wake = asyncio.Event()  # bound to this loop (an engine may outlive one)
        while True:
            while self._events:  # raised before a failure: delivered first, in order
                await on_event(self._events[0])
                self._events.popleft()
            if not q:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [q.popleft() for _ in range(min(len(q), BATCH_WINDOWS))]
            self._in_flight = len(batch)
            self._done = 0
            try:
                scored = await loop.run_in_executor(self._executor, _score, batch)
                await self._deliver(batch, scored, on_event, on_score)
            except BaseException:
                # Restartable (gateway.supervisor): windows not yet judged go back first.
                q.extendleft(reversed(batch[self._done :]))
                raise
            finally:
                self._in_flight = 0

    async def _deliver(
        self, batch: list[_Item], scored: _Scored, on_event: OnEvent, on_score: OnScore
    ) -> None:
        scores, errors, timings = scored
        for seconds, n in timings:
            self._infer_ms.append(seconds * 1e3)
            self._infer_window_ms.append(seconds * 1e3 / n)
        now = time.perf_counter()
        for item, score, error in zip(batch, scores, errors, strict=True):
            slot, end = item.slot, item.window.end_ns
            counts, name = slot.counts, slot.binding.name
            self._delay_ms.append((now - item.cut_at) * 1e3)
            if score is None or not math.isfinite(score):
                error = error or f"score is {score}"
                counts.failed += 1
                self._totals.failed += 1
                if error != counts.last_error:  # once until it changes: no log flood
                    log.warning("model %s: window not scored: %s", name, error)
                counts.last_error = error
                self._done += 1
                continue
            counts.last_error = None
            counts.scored += 1
            self._totals.scored += 1
            counts.last_score, counts.last_end_ns = score, end
            if slot.binding.publish_scores:
                on_score(name, score, end)
            event = slot.hyst.update(score, end)
            self._done += 1
            if event is not None:
                self._events.append(event)  # kept until on_event returns
                await on_event(event)
                self._events.popleft()

    async def swap(self, cfg: InferenceConfig) -> None:
        """Replace the config (reload); raises :class:`ModelRefused` and keeps the old one
        if a new model is refused. See the module docstring for what is kept."""
        models = await asyncio.to_thread(_load_all, cfg, self._base_dir)
        self._install(cfg, models)
        log.info("inference: %d model(s) loaded", len(models))

    def _install(self, cfg: InferenceConfig, models: list[LoadedModel]) -> None:
        old, new = self._slots, {}
        for b, model in zip(cfg.models, models, strict=True):
            prev = old.get(b.name)
            t = b.threshold
            # One skipped window between two scored ones still counts as a run.
            gap = 2 * b.stride * b.period_ns
            if prev is None:
                counts = _Counts()
                hyst = Hysteresis(
                    b.name,
                    tuple(b.inputs),
                    enter=t.enter,
                    exit=t.exit,
                    min_duration_ms=t.min_duration_ms,
                    max_gap_ns=gap,
                )
            else:
                counts, hyst = prev.counts, prev.hyst
                hyst.configure(
                    enter=t.enter, exit=t.exit, min_duration_ms=t.min_duration_ms, max_gap_ns=gap
                )
                hyst.inputs = tuple(b.inputs)
            if prev is not None and _rows_key(prev.binding) == _rows_key(b):
                cutter = prev.cutter
            else:
                if prev is not None:
                    self._retire(prev)
                max_age = None if b.max_age_ms is None else b.max_age_ms * 1_000_000
                cutter = WindowCutter(
                    len(b.inputs),
                    period_ns=b.period_ns,
                    window=b.window,
                    stride=b.stride,
                    max_age_ns=max_age,
                    emit=lambda w: None,
                )
            slot = _Slot(b, model, cutter, hyst, counts)
            cutter.emit = partial(self._enqueue, slot)
            new[b.name] = slot
        for name in old.keys() - new.keys():
            self._retire(old[name])
        index: dict[str, list[tuple[WindowCutter, int]]] = {}
        for slot in new.values():
            for i, tag in enumerate(slot.binding.inputs):
                index.setdefault(tag, []).append((slot.cutter, i))
        self._cfg, self._slots = cfg, new
        self._index = {tag: tuple(t) for tag, t in index.items()}
        self._capacity = cfg.queue_windows
        while len(self._queue) > self._capacity:
            self._queue.popleft().slot.counts.dropped += 1
            self._totals.dropped += 1

    def _retire(self, slot: _Slot) -> None:
        """A cutter leaves: keep its counts in the totals."""
        self._retired_cut += slot.cutter.cut
        self._retired_skipped += slot.cutter.skipped
        slot.counts.skipped_before += slot.cutter.skipped

    @property
    def pending(self) -> int:
        """Windows queued or being scored and delivered."""
        return len(self._queue) + self._in_flight

    def close(self) -> None:
        """Stop the worker thread (after the call it is running, if any)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def stats(self) -> dict[str, int | float]:
        """Engine-wide counters and gauges, plus ``score.<model>`` and
        ``anomalous.<model>``; latencies in milliseconds over the last 1024 samples."""
        cutters = [s.cutter for s in self._slots.values()]
        missing = self._retired_skipped + sum(c.skipped for c in cutters)
        t = self._totals
        out: dict[str, int | float] = {
            "models": len(self._slots),
            "windows_cut": self._retired_cut + sum(c.cut for c in cutters),
            "windows_scored": t.scored,
            "windows_skipped": missing + t.dropped,
            "windows_skipped_missing": missing,
            "windows_skipped_queue_full": t.dropped,
            "windows_failed": t.failed,
            "queue_depth": len(self._queue),
            "queue_capacity": self._capacity,
            "in_flight": self._in_flight,
            "infer_ms_p50": _pct(self._infer_ms, 0.5),
            "infer_ms_p99": _pct(self._infer_ms, 0.99),
            "infer_window_ms_p50": _pct(self._infer_window_ms, 0.5),
            "infer_window_ms_p99": _pct(self._infer_window_ms, 0.99),
            "delay_ms_p50": _pct(self._delay_ms, 0.5),
            "delay_ms_p99": _pct(self._delay_ms, 0.99),
        }
        for name, s in self._slots.items():
            if s.counts.last_score is not None:
                out[f"score.{name}"] = s.counts.last_score
            out[f"anomalous.{name}"] = int(s.hyst.active)
        return out

    def model_stats(self) -> dict[str, dict[str, int | float | bool | None]]:
        """Per model, in the shape of the status snapshot's ``inference`` section."""
        return {
            name: {
                "score": s.counts.last_score,
                "threshold": s.binding.threshold.enter,
                "anomalous": s.hyst.active,
                "inferences": s.counts.scored,
                "events": s.hyst.events,
                "windows_skipped": s.counts.skipped_before + s.cutter.skipped + s.counts.dropped,
                "windows_failed": s.counts.failed,
                "last_window_end_ns": s.counts.last_end_ns,
            }
            for name, s in self._slots.items()
        }
