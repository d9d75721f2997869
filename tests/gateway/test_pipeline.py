"""The pipeline on a real outbox file, judged by a real receiver: windows (time and
size), one message per window, refusals recorded and notified, a held window sealed
after a restart, deterministic seal failures isolated to the reading, transient outbox
errors retried with the same data, and drop notices that name exactly what was dropped
(a kept urgent message arriving after the notice is still new at the platform)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from buffer import URGENT, OutboxError
from drivers.contract import Batch, Quality
from gateway.outbox_thread import OutboxThread
from gateway.pipeline import Pipeline
from gateway.receiver import Outcome, Payload, Receiver
from security import DeviceKey

GW = "gw-p"
TOPIC = f"edgegw/{GW}/telemetry"


class Collect:
    def __init__(self) -> None:
        self.payloads: list[Payload] = []

    def write(self, p: Payload, kid: bytes, received_ns: int) -> None:
        self.payloads.append(p)

    def close(self) -> None:
        pass


EVENT = {
    "inputs": ["d/t0"],
    "kind": "start",
    "model": "m",
    "peak": 1.0,
    "score": 1.0,
    "ts_ns": 1,
    "window_end_ns": 1,
}


def batch(n: int, start: int = 0, dev: str = "d") -> Batch:
    return Batch(dev, [(f"{dev}/t{i}", 10**18 + start + i, float(start + i), 0) for i in range(n)])


class Rig:
    def __init__(self, tmp: Path, **kw: Any) -> None:
        self.key, _ = DeviceKey.load_or_create(tmp)
        limits = {k: kw.pop(k) for k in ("max_bytes", "policy", "min_free_bytes") if k in kw}
        self.ob = OutboxThread(tmp / "outbox.db", **limits)
        self.kw = kw
        self.sink = Collect()
        self.rx = Receiver({GW: self.key.public_key}, "edgegw", self.sink)

    async def __aenter__(self) -> Rig:
        await self.ob.open()
        self.pipe = Pipeline(
            gw_id=GW,
            boot=1,
            topic=TOPIC,
            notice_topic=f"edgegw/{GW}/notice",
            key=self.key,
            outbox=self.ob,
            **{"flush_window_s": 0.05, "max_points": 1000, **self.kw},
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ob.close()

    def deliver(self) -> list[tuple[int, Outcome]]:
        """Every row of the outbox to the receiver, in seq order; acked afterwards."""
        ob = self.ob.outbox
        assert ob is not None
        rows = ob.pending(limit=100_000)
        out = [(r.seq, self.rx.handle(r.topic, r.body)) for r in rows]
        ob.ack([r.seq for r in rows])
        return out

    def readings(self) -> list[tuple[Any, ...]]:
        return [r for p in self.sink.payloads for r in p.readings]


def test_a_window_is_sealed_once_by_time_and_by_size(tmp_path: Path) -> None:
    async def main() -> tuple[list[int], list[int]]:
        async with Rig(tmp_path, max_points=25) as rig:
            task = asyncio.create_task(rig.pipe.run())
            for i in range(3):
                await rig.pipe.put(batch(10, 10 * i))  # 30 points: 25 + 5, by size
            await asyncio.sleep(0.2)  # the window of the last 5 closes by time
            await rig.pipe.put(batch(7, 100))
            await rig.pipe.close()
            await asyncio.wait_for(task, 10)
            rig.deliver()
            return [len(p.readings) for p in rig.sink.payloads], [int(r[2]) for r in rig.readings()]

    sizes, values = asyncio.run(main())
    assert sizes == [30, 7]  # a window closes once it holds max_points (whole batches)
    assert values == [*range(30), *range(100, 107)]


def test_a_refused_window_is_recorded_and_notified(tmp_path: Path) -> None:
    async def main() -> tuple[Any, Any]:
        async with Rig(tmp_path, max_bytes=3000, policy="stop_acquisition") as rig:
            task = asyncio.create_task(rig.pipe.run())
            for i in range(20):
                await rig.pipe.put(batch(20, 100 * i))
                await asyncio.sleep(0.07)
            await rig.pipe.close()
            await asyncio.wait_for(task, 10)
            rig.deliver()
            return rig.pipe.stats, rig.rx.stats

    st, rx = asyncio.run(main())
    assert st.points_refused > 0 and st.notices >= 1
    assert rx.dropped_points == st.points_refused  # every refused point told, once
    assert rx.points_verified + rx.dropped_points == st.points_polled == 400


def test_a_window_held_when_run_failed_is_sealed_by_the_next_run(tmp_path: Path) -> None:
    async def main() -> tuple[list[float], int]:
        async with Rig(tmp_path) as rig:
            real = rig.pipe._seal_sync
            calls = 0

            def failing(*a: Any, **kw: Any) -> Any:
                nonlocal calls
                calls += 1
                if calls == 1:
                    raise RuntimeError("injected")
                return real(*a, **kw)

            rig.pipe._seal_sync = failing  # type: ignore[method-assign]
            await rig.pipe.put(batch(5))
            with pytest.raises(RuntimeError):
                await asyncio.wait_for(rig.pipe.run(), 10)
            assert len(rig.pipe._held[0]) == 5
            await rig.pipe.put(batch(3, 50))
            await rig.pipe.close()
            await asyncio.wait_for(rig.pipe.run(), 10)  # the restart
            rig.deliver()
            return [r[2] for r in rig.readings()], len(rig.sink.payloads)

    values, messages = asyncio.run(main())
    assert values == [0, 1, 2, 3, 4, 50, 51, 52] and messages == 2  # each once, in order


def test_a_transient_outbox_error_is_retried_with_the_same_data(tmp_path: Path) -> None:
    async def main() -> tuple[list[float], int]:
        async with Rig(tmp_path) as rig:
            real = rig.pipe._seal_sync
            calls = 0

            def flaky(*a: Any, **kw: Any) -> Any:
                nonlocal calls
                calls += 1
                if calls <= 2:
                    raise OutboxError("disk I/O error (injected)")
                return real(*a, **kw)

            rig.pipe._seal_sync = flaky  # type: ignore[method-assign]
            task = asyncio.create_task(rig.pipe.run())
            await rig.pipe.put(batch(4))
            await rig.pipe.close()
            await asyncio.wait_for(task, 30)
            rig.deliver()
            return [r[2] for r in rig.readings()], rig.pipe.stats.seal_errors

    values, errors = asyncio.run(main())
    assert values == [0, 1, 2, 3] and errors == 2


def test_an_unsealable_reading_becomes_a_bad_reading_and_its_neighbours_go(tmp_path: Path) -> None:
    """A value the encoder cannot take (a bug upstream): only that reading is replaced,
    by a bad one that says why; the other readings of the window are sealed."""

    async def main() -> tuple[list[tuple[Any, ...]], Any]:
        async with Rig(tmp_path) as rig:
            task = asyncio.create_task(rig.pipe.run())
            b = batch(9)
            b.readings[4] = ("d/t4", b.readings[4][1], object(), 0)  # not encodable
            await rig.pipe.put(b)
            await rig.pipe.close()
            await asyncio.wait_for(task, 10)
            rig.deliver()
            return rig.readings(), rig.pipe.stats

    readings, st = asyncio.run(main())
    assert [r[0] for r in readings] == [f"d/t{i}" for i in range(9)]
    assert [r[3] for r in readings] == [0] * 4 + [int(Quality.BAD_CONFIG)] + [0] * 4
    assert readings[4][2] is None and readings[4][4].startswith("cannot be sealed: ")
    assert st.readings_unsealable == 1 and st.seal_failures == 0
    assert st.points_sealed == 9


def test_what_cannot_be_sealed_at_all_is_dropped_with_a_notice(tmp_path: Path) -> None:
    """The key fails (not the data): the window is dropped, counted, and a notice sealed
    once the key works again; acquisition goes on."""

    async def main() -> tuple[Any, Any]:
        async with Rig(tmp_path) as rig:
            key = rig.key

            class Broken:
                kid = key.kid
                broken = True

                def sign(self, data: bytes) -> bytes:
                    if self.broken:
                        raise ValueError("the key is unusable (injected)")
                    return key.sign(data)

            signer = Broken()
            rig.pipe.key = signer  # type: ignore[assignment]
            task = asyncio.create_task(rig.pipe.run())
            await rig.pipe.put(batch(6))
            await asyncio.sleep(0.3)
            signer.broken = False
            await rig.pipe.put(batch(2, 10))
            await rig.pipe.close()
            await asyncio.wait_for(task, 10)
            rig.deliver()
            return rig.pipe.stats, rig.rx.stats

    st, rx = asyncio.run(main())
    assert st.seal_failures == 1
    assert (rx.points_verified, rx.dropped_points, rx.notices) == (2, 6, 1)


def test_a_drop_notice_names_only_what_was_dropped(tmp_path: Path) -> None:
    """Eviction across a kept urgent message: the notice names two runs around it; the
    urgent message arriving after the notice is new at the platform, not a duplicate,
    and every seq is received or explained."""
    sink_payloads: list[Payload] = []

    async def main() -> tuple[list[tuple[int, Outcome]], int, list[tuple[int, int]], Any]:
        # a cap the small windows fill (payload version 2: ~200 B a 5-point message)
        async with Rig(tmp_path, max_bytes=2000) as rig:
            task = asyncio.create_task(rig.pipe.run())
            await rig.pipe.put(batch(5, 0))
            await asyncio.sleep(0.1)
            ev = await rig.pipe.seal_message("event", f"edgegw/{GW}/event", {"event": EVENT})
            for i in range(1, 8):  # small windows up to the cap
                await rig.pipe.put(batch(5, 100 * i))
                await asyncio.sleep(0.08)
            await rig.pipe.put(batch(60, 1000))  # one large window: evicts several at once
            await rig.pipe.close()
            await asyncio.wait_for(task, 10)
            ob = rig.ob.outbox
            assert ob is not None
            rows = ob.pending(limit=1000)
            st = ob._db().execute("SELECT min(first_seq), max(last_seq) FROM drops")
            drops = [tuple(st.fetchone())]
            notices = [r for r in rows if r.topic.endswith("/notice")]
            others = [r for r in rows if not r.topic.endswith("/notice")]
            # the platform gets the notices first, then the rest (the event among them)
            out = [(r.seq, rig.rx.handle(r.topic, r.body)) for r in notices + others]
            sink_payloads.extend(rig.sink.payloads)
            return out, ev, rig.rx.received(GW), drops

    out, ev, received, drops = asyncio.run(main())
    assert any(lo < ev < hi for lo, hi in drops), drops  # an eviction spanned the event
    named = [
        (d.first_seq, d.last_seq) for p in sink_payloads for d in p.drops if d.first_seq is not None
    ]
    assert len(named) >= 2 and not any(lo <= ev <= hi for lo, hi in named), (ev, named)
    assert dict(out)[ev] == Outcome.VALID
    assert all(o == Outcome.VALID for _, o in out)
    assert len(received) == 1 and received[0][0] == 1  # every seq received or explained


def test_urgent_rows_outrank_telemetry_on_eviction(tmp_path: Path) -> None:
    async def main() -> list[int]:
        async with Rig(tmp_path, max_bytes=4000) as rig:
            task = asyncio.create_task(rig.pipe.run())
            ev = await rig.pipe.seal_message("event", f"edgegw/{GW}/event", {"event": EVENT})
            for i in range(10):
                await rig.pipe.put(batch(20, 100 * i))
                await asyncio.sleep(0.07)
            await rig.pipe.close()
            await asyncio.wait_for(task, 10)
            ob = rig.ob.outbox
            assert ob is not None
            assert ev in [r.seq for r in ob.pending(limit=1000, urgent=True)]
            return [r.priority for r in ob.pending(limit=1000)]

    priorities = asyncio.run(main())
    assert priorities.count(URGENT) >= 2  # the event and the notice of the evictions


def test_the_rows_offered_are_the_rows_committed(tmp_path: Path) -> None:
    """What the pipeline offers the forwarder after a commit (``on_rows``) is, row for
    row, what the outbox holds: seq, topic, body, priority and points; a window split
    into several messages offers each, in seq order, once."""

    async def main() -> tuple[list[Any], list[Any]]:
        async with Rig(tmp_path, max_points=1000, body_limit=lambda topic: 600) as rig:
            offered: list[Any] = []
            rig.pipe.on_rows = offered.extend
            task = asyncio.create_task(rig.pipe.run())
            await rig.pipe.put(batch(40))  # too large for one 600-byte message: split
            await asyncio.sleep(0.2)
            await rig.pipe.put(batch(3, 100))
            await rig.pipe.close()
            await asyncio.wait_for(task, 10)
            assert rig.ob.outbox is not None
            held = rig.ob.outbox.pending(limit=1000)
            return offered, held

    offered, held = asyncio.run(main())
    assert len(held) > 2  # the split happened
    fields = ("seq", "topic", "body", "priority", "points")
    assert [tuple(getattr(r, f) for f in fields) for r in offered] == [
        tuple(getattr(r, f) for f in fields) for r in held
    ]
