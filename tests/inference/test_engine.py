"""The engine on a real event loop with real onnxruntime: events, backpressure, swap."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

import inference
from inference.config import InferenceConfig
from inference.engine import AnomalyEvent, InferenceEngine, ModelRefused

from .conftest import binding, drain, engine_for, rows, save, score_model

S = 10**9


class Sink:
    """Collects what the engine reports."""

    def __init__(self) -> None:
        self.events: list[AnomalyEvent] = []
        self.scores: list[tuple[str, float, int]] = []

    async def on_event(self, e: AnomalyEvent) -> None:
        self.events.append(e)

    def on_score(self, model: str, score: float, end_ns: int) -> None:
        self.scores.append((model, score, end_ns))


def start(engine: InferenceEngine, sink: Sink) -> asyncio.Task[None]:
    return asyncio.create_task(engine.run(sink.on_event, sink.on_score))


async def stop(task: asyncio.Task[None], engine: InferenceEngine) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    engine.close()


def test_windows_are_scored_and_anomalies_start_and_end(
    tmp_path: Path, score_file: tuple[Path, str]
) -> None:
    """score = mean of the window (window 4); level 1, then 20 for four rows, then 1:
    the means cross enter (10) on the way up and fall under exit (5) after."""
    path, sha = score_file
    levels = [1.0] * 6 + [20.0] * 4 + [1.0] * 6

    async def main() -> tuple[Sink, dict[str, Any], dict[str, Any]]:
        engine = engine_for(binding(path, sha, publish_scores=True), tmp=tmp_path)
        sink = Sink()
        task = start(engine, sink)
        for batch in rows([(v, v) for v in levels]):
            engine.observe(batch)
        await drain(engine)
        await stop(task, engine)
        return sink, engine.stats, engine.model_stats()

    sink, stats, per_model = asyncio.run(main())
    # rows 0..14 close (the 16th reading opens row 15); windows end after rows 3..14
    means = [sum(levels[k - 3 : k + 1]) / 4 for k in range(3, 15)]
    assert [s for _, s, _ in sink.scores] == means
    assert [end for _, _, end in sink.scores] == [(1000 + k + 1) * S for k in range(3, 15)]
    assert [(e.kind, e.ts_ns // S - 1000, e.score, e.peak) for e in sink.events] == [
        ("start", 8, 10.5, 10.5),  # the window of rows 4..7: 1, 1, 20, 20
        ("end", 14, 1.0, 20.0),  # rows 10..13, all 1 (rows 9..12 gave 5.75: not < 5)
    ]
    assert sink.events[0].inputs == ("d/a", "d/b")
    assert stats["windows_cut"] == stats["windows_scored"] == 12
    assert stats["windows_skipped"] == 0 and stats["queue_depth"] == 0
    assert stats["score.m"] == 1.0 and stats["anomalous.m"] == 0
    assert per_model == {
        "m": {
            "score": 1.0,
            "threshold": 10.0,
            "anomalous": False,
            "inferences": 12,
            "events": 2,
            "windows_skipped": 0,
            "windows_failed": 0,
            "last_window_end_ns": 1015 * S,
        }
    }


def test_scores_are_only_published_when_asked_and_unbound_tags_cost_nothing(
    tmp_path: Path, score_file: tuple[Path, str]
) -> None:
    path, sha = score_file

    async def main() -> tuple[Sink, dict[str, Any]]:
        engine = engine_for(binding(path, sha), tmp=tmp_path)
        sink = Sink()
        task = start(engine, sink)
        engine.observe([("other/tag", 0, 1.0, 0)] * 100)  # no model reads it
        for batch in rows([(1.0, 2.0)] * 8):
            engine.observe(batch)
        await drain(engine)
        await stop(task, engine)
        return sink, engine.stats

    sink, stats = asyncio.run(main())
    assert sink.scores == [] and sink.events == []
    assert stats["windows_scored"] == 4


def test_a_slow_model_never_stalls_the_loop(tmp_path: Path) -> None:
    """A model taking ~0.25 s per call, windows cut every 5 ms, queue of 4: the loop
    keeps its 5 ms heartbeat, the queue never holds more than 4, and the windows dropped
    to make room are counted (every window is scored, dropped or still pending)."""
    path = tmp_path / "slow.onnx"
    sha = save(score_model(4, 2, slow=100), path)

    async def main() -> tuple[float, int, dict[str, Any], float]:
        engine = engine_for(binding(path, sha), tmp=tmp_path, queue_windows=4)
        sink = Sink()
        task = start(engine, sink)
        loop = asyncio.get_running_loop()
        worst_lag, deepest = 0.0, 0
        t_end = loop.time() + 1.2
        k = 0
        while loop.time() < t_end:
            before = loop.time()
            engine.observe([("d/a", (1000 + k) * S, 1.0, 0), ("d/b", (1000 + k) * S, 1.0, 0)])
            deepest = max(deepest, int(engine.stats["queue_depth"]))
            await asyncio.sleep(0.005)
            worst_lag = max(worst_lag, loop.time() - before - 0.005)
            k += 1
        stats = engine.stats
        t0 = time.perf_counter()
        await stop(task, engine)
        return worst_lag, deepest, stats, time.perf_counter() - t0

    worst_lag, deepest, stats, stop_s = asyncio.run(main())
    # on the loop, each call would stall it ~250 ms; the margin is for a busy machine
    assert worst_lag < 0.15, f"the loop stalled {worst_lag * 1e3:.1f} ms"
    assert deepest <= 4
    assert stats["windows_cut"] > 100
    assert stats["windows_skipped_queue_full"] > 50
    assert 1 <= stats["windows_scored"] <= stats["windows_cut"] // 4
    assert stats["infer_ms_p50"] > 100  # it really was slow
    accounted = stats["windows_scored"] + stats["windows_skipped_queue_full"]
    assert accounted + stats["queue_depth"] + stats["in_flight"] == stats["windows_cut"]
    assert stop_s < 0.2  # cancelling does not wait for the ~0.25 s call in progress


def test_swap_keeps_windows_in_flight_and_the_partial_window(tmp_path: Path) -> None:
    """Windows being scored by the old (slow) model when the config is swapped are scored
    by it and delivered; the partial window carries over to the new model, so the
    windows' ends run on without a gap."""
    old_path, new_path = tmp_path / "old.onnx", tmp_path / "new.onnx"
    old_sha = save(score_model(4, 2, slow=100), old_path)  # score = mean, ~0.25 s a call
    new_sha = save(score_model(4, 2, factor=2.0), new_path)  # score = 2 * mean
    batches = rows([(float(k), float(k)) for k in range(10)])

    async def main() -> tuple[Sink, int, dict[str, Any]]:
        engine = engine_for(binding(old_path, old_sha, publish_scores=True), tmp=tmp_path)
        sink = Sink()
        task = start(engine, sink)
        for b in batches[:7]:  # rows 0..5: windows ending after rows 3, 4, 5
            engine.observe(b)
        while engine.stats["in_flight"] < 3:  # run() has taken them to the worker
            await asyncio.sleep(0.001)
        new = InferenceConfig(models=[binding(new_path, new_sha, publish_scores=True)])
        swap = asyncio.create_task(engine.swap(new))
        await asyncio.sleep(0)
        in_flight = engine.stats["in_flight"]  # swap has started, the call has not ended
        await swap
        for b in batches[7:]:  # rows 6..8, cut with rows 3..5 from before the swap
            engine.observe(b)
        await drain(engine)
        await stop(task, engine)
        return sink, int(in_flight), engine.stats

    sink, in_flight, stats = asyncio.run(main())
    assert in_flight == 3
    means = [k + 1.5 for k in range(6)]  # windows [0..3] .. [5..8]
    assert [s for _, s, _ in sink.scores] == means[:3] + [2 * m for m in means[3:]]
    assert [end // S - 1000 for _, _, end in sink.scores] == [4, 5, 6, 7, 8, 9]
    assert stats["windows_scored"] == 6 and stats["windows_skipped"] == 0


def test_a_refused_swap_changes_nothing_and_other_rows_restart_the_window(
    tmp_path: Path, score_file: tuple[Path, str]
) -> None:
    path, sha = score_file
    batches = rows([(1.0, 1.0)] * 12)

    async def main() -> tuple[Sink, InferenceEngine, list[int]]:
        engine = engine_for(binding(path, sha, publish_scores=True), tmp=tmp_path)
        sink = Sink()
        task = start(engine, sink)
        for b in batches[:6]:  # rows 0..4: two windows, rows 2..4 pending
            engine.observe(b)
        before = engine.config
        with pytest.raises(ModelRefused, match="but the config pins"):
            await engine.swap(InferenceConfig(models=[binding(path, "0" * 64)]))
        assert engine.config is before
        # window 3 instead of 4: other rows, so the partial window starts over
        sha3 = save(score_model(3, 2), path)
        changed = binding(path, sha3, window=3, publish_scores=True)
        await engine.swap(InferenceConfig(models=[changed]))
        for b in batches[6:]:  # rows 5..10
            engine.observe(b)
        await drain(engine)
        counts = [len(sink.scores)]
        await engine.swap(InferenceConfig())  # no models: observe does nothing
        engine.observe(batches[-1])
        counts.append(int(engine.stats["models"]))
        await stop(task, engine)
        return sink, engine, counts

    sink, engine, counts = asyncio.run(main())
    ends = [end // S - 1000 for _, _, end in sink.scores]
    # the first reading after the swap (second 6) anchors the new grid, whose rows 6..8
    # make its first window of 3
    assert ends == [4, 5, 9, 10, 11]
    assert counts == [5, 0]
    assert engine.stats["windows_cut"] == 5


def test_a_model_that_fails_at_run_time_is_counted_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "inv.onnx"
    sha = save(score_model(4, 2, invert=True), path)  # 1 / mean: inf for zeros
    batches = rows([(0.0, 0.0)] * 7 + [(2.0, 2.0)] * 5)

    async def main() -> dict[str, Any]:
        engine = engine_for(binding(path, sha, publish_scores=True), tmp=tmp_path)
        sink = Sink()
        task = start(engine, sink)
        for b in batches:
            engine.observe(b)
        await drain(engine)
        await stop(task, engine)
        return engine.stats

    with caplog.at_level(logging.WARNING, logger="edgegw.inference"):
        stats = asyncio.run(main())
    assert stats["windows_failed"] == 4  # rows 0..6 are zeros: 4 windows of only zeros
    assert stats["windows_scored"] == 4
    assert [r.getMessage() for r in caplog.records] == ["model m: window not scored: score is inf"]


def test_the_package_exports_the_engine_lazily() -> None:
    assert inference.InferenceEngine is InferenceEngine
    assert inference.ModelRefused is ModelRefused
    assert inference.AnomalyEvent is AnomalyEvent
    with pytest.raises(AttributeError):
        inference.__getattr__("nothing")


def test_a_failed_delivery_is_kept_and_the_restarted_run_goes_on_in_order(
    tmp_path: Path, score_file: tuple[Path, str]
) -> None:
    """on_event fails once (the outbox refused the event): under the daemon's supervisor
    the run starts again; the event it held goes first, the windows it had not judged
    are judged after, so the events are the same as without the failure, each once."""
    from gateway.supervisor import Supervisor

    path, sha = score_file
    levels = [1.0] * 6 + [20.0] * 4 + [1.0] * 6

    async def main() -> tuple[list[AnomalyEvent], int, int]:
        engine = engine_for(binding(path, sha, publish_scores=True), tmp=tmp_path)
        sink = Sink()
        failed: list[AnomalyEvent] = []

        async def on_event(e: AnomalyEvent) -> None:
            if not failed:
                failed.append(e)
                raise OSError("injected: the outbox refused the event")
            await sink.on_event(e)

        sup = Supervisor(first_s=0.01, cap_s=0.02)
        sup.start("inference", lambda: engine.run(on_event, sink.on_score))
        for batch in rows([(v, v) for v in levels]):
            engine.observe(batch)
        await drain(engine)
        deadline = time.monotonic() + 10  # a bound only
        while len(sink.events) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await sup.stop()
        engine.close()
        return sink.events, sup.health["inference"].restarts, len(sink.scores)

    events, restarts, scores = asyncio.run(main())
    assert restarts == 1
    assert [(e.kind, e.ts_ns // S - 1000) for e in events] == [("start", 8), ("end", 14)]
    assert scores == 12  # every window scored once: none judged twice, none skipped
