"""Survivors of the session-5 mutation run over gateway/pipeline.py that mattered, on a
real outbox file, judged by a real receiver: a retry after the whole window was committed
seals only the notice, the limit is asked for the telemetry topic (it holds the PUBLISH
overhead), a lasting outbox error backs off, a message of exactly the limit is sealed
whole, a too-large reading says its size and the limit, an empty window then a cancel
while idle, and offer() (the model scores' way in)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from buffer import OutboxError
from drivers.contract import Quality
from gateway.mqttlink import publish_overhead

from .test_pipeline import TOPIC, Rig, batch


def test_a_reading_too_large_says_its_size_and_the_limit(tmp_path: Path) -> None:
    """The bad reading that replaces it names the sealed size (more than the limit) and
    the limit, so the operator can tell which setting to raise."""

    async def main() -> list[tuple[Any, ...]]:
        async with Rig(tmp_path, body_limit=lambda topic: 2000) as rig:
            ts = 10**18
            await rig.pipe._seal(
                [("a/small", ts, 1.0, 0), ("a/blob", ts, "z" * 5000, 0), ("a/next", ts, 2.0, 0)],
                [3],
            )
            rig.deliver()
            return rig.readings()

    got = asyncio.run(main())
    assert [r[0] for r in got] == ["a/small", "a/blob", "a/next"]
    blob = got[1]
    assert blob[1] == 10**18 and blob[2] is None and blob[3] == int(Quality.BAD_CONFIG)
    m = re.fullmatch(
        r"value too large: the reading takes (\d+) bytes sealed, more than one message may "
        r"carry \(2000 bytes: uplink.max_message_bytes, or the broker's limit\)",
        blob[4],
    )
    assert m is not None, blob[4]
    assert 5000 < int(m[1]) < 5300  # the 5000-byte text, its head and the envelope


def test_a_notice_failing_after_the_whole_window_is_committed_is_retried_alone(
    tmp_path: Path,
) -> None:
    """Every reading of the window is committed, then sealing the notice of an earlier
    drop hits an I/O error: the retry seals only the notice (no second, empty telemetry
    message, no crash), and every reading arrives once."""

    async def main() -> tuple[Any, Any, list[str]]:
        async with Rig(tmp_path) as rig:
            ob = rig.ob.outbox
            assert ob is not None
            await rig.ob.run(ob.record_drop, 3, "seal_failed")  # told with the next seal
            real = ob.append
            failed = 0

            def append(topic: str, *a: Any, **kw: Any) -> int:
                nonlocal failed
                if topic.endswith("/notice") and not failed:
                    failed += 1
                    raise OutboxError("disk I/O error (injected)")
                return real(topic, *a, **kw)

            ob.append = append  # type: ignore[method-assign]
            task = asyncio.create_task(rig.pipe.run())
            await rig.pipe.put(batch(6))
            await rig.pipe.close()
            await asyncio.wait_for(task, 10)
            topics = [r.topic for r in ob.pending(limit=100)]
            rig.deliver()
            return rig.pipe.stats, rig.rx.stats, topics

    st, rx, topics = asyncio.run(main())
    assert sorted(t.rsplit("/", 1)[1] for t in topics) == ["notice", "telemetry"], topics
    assert st.seal_errors == 1 and st.messages_sealed == 1 and st.points_sealed == 6
    assert (rx.points_verified, rx.dropped_points, rx.notices) == (6, 3, 1)


def test_the_limit_is_the_one_for_the_telemetry_topic(tmp_path: Path) -> None:
    """The forwarder's limit depends on the topic (a broker's Maximum Packet Size less
    the PUBLISH overhead, which holds the topic): the pipeline asks for its own topic,
    and every message fits the packet."""
    packet = 600
    asked: list[str] = []

    def body_limit(topic: str) -> int:  # as Forwarder.body_limit with a broker's limit
        asked.append(topic)
        return packet - publish_overhead(topic, "mqtt5")

    async def main() -> tuple[list[int], list[tuple[Any, ...]]]:
        async with Rig(tmp_path, body_limit=body_limit) as rig:
            task = asyncio.create_task(rig.pipe.run())
            await rig.pipe.put(batch(40))
            await rig.pipe.close()
            await asyncio.wait_for(task, 10)
            ob = rig.ob.outbox
            assert ob is not None
            sizes = [len(r.body) for r in ob.pending(limit=100)]
            rig.deliver()
            return sizes, rig.readings()

    sizes, readings = asyncio.run(main())
    assert set(asked) == {TOPIC}
    assert len(sizes) >= 2  # 40 points do not fit one 600-byte packet
    assert all(n + publish_overhead(TOPIC, "mqtt5") <= packet for n in sizes), sizes
    assert [r[0] for r in readings] == [f"d/t{i}" for i in range(40)]


def test_a_lasting_outbox_error_is_retried_with_a_growing_delay(tmp_path: Path) -> None:
    """The outbox fails for 1.5 s: retries back off (0.2, 0.4, 0.8 s ...), never a
    busy loop that floods the log. An upper bound only (a loaded machine retries less);
    it catches a delay that shrinks, which retries hundreds of times."""

    async def main() -> tuple[int, list[float]]:
        async with Rig(tmp_path) as rig:
            real = rig.pipe._seal_sync
            loop = asyncio.get_running_loop()
            until: float | None = None  # 1.5 s from the first try

            def flaky(*a: Any, **kw: Any) -> Any:
                nonlocal until
                until = until if until is not None else loop.time() + 1.5
                if loop.time() < until:
                    raise OutboxError("disk I/O error (injected)")
                return real(*a, **kw)

            rig.pipe._seal_sync = flaky  # type: ignore[method-assign]
            task = asyncio.create_task(rig.pipe.run())
            await rig.pipe.put(batch(4))
            await rig.pipe.close()
            await asyncio.wait_for(task, 30)
            rig.deliver()
            return rig.pipe.stats.seal_errors, [r[2] for r in rig.readings()]

    errors, values = asyncio.run(main())
    assert 1 <= errors <= 6, errors  # 0.2 + 0.4 + 0.8 = 1.4 s: about 4 tries
    assert values == [0.0, 1.0, 2.0, 3.0]


def test_an_empty_batch_then_a_cancel_while_idle_loses_nothing(tmp_path: Path) -> None:
    """A batch without readings makes an empty window; run() is cancelled while it waits
    for the next one and started again: it runs on, and seals what comes next."""

    async def main() -> list[str]:
        async with Rig(tmp_path) as rig:
            task = asyncio.create_task(rig.pipe.run())
            await rig.pipe.put(batch(0))
            await asyncio.sleep(0.2)  # the empty window closed; waiting for the next
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            task = asyncio.create_task(rig.pipe.run())
            await rig.pipe.put(batch(2, dev="e"))
            await rig.pipe.close()
            await asyncio.wait_for(task, 10)
            rig.deliver()
            return [r[0] for r in rig.readings()]

    assert asyncio.run(main()) == ["e/t0", "e/t1"]


def test_offer_takes_what_fits_says_when_full_and_counts_only_what_it_took(
    tmp_path: Path,
) -> None:
    """offer() is how the daemon hands in model scores without waiting: a full queue is
    False (the caller counts the score as dropped), and only what was taken is counted
    polled and sealed, in order."""

    async def main() -> tuple[list[bool], int, list[str]]:
        async with Rig(tmp_path, queue_size=2) as rig:
            took = [
                rig.pipe.offer(batch(3, dev="s")),
                rig.pipe.offer(batch(2, dev="u")),
                rig.pipe.offer(batch(4, dev="x")),  # the queue is full
            ]
            polled = rig.pipe.stats.points_polled
            task = asyncio.create_task(rig.pipe.run())
            await rig.pipe.close()
            await asyncio.wait_for(task, 10)
            rig.deliver()
            return took, polled, [r[0] for r in rig.readings()]

    took, polled, tags = asyncio.run(main())
    assert took == [True, True, False]
    assert polled == 5
    assert tags == ["s/t0", "s/t1", "s/t2", "u/t0", "u/t1"]


def test_a_message_of_exactly_the_limit_is_sealed_whole(tmp_path: Path) -> None:
    """uplink.max_message_bytes is the largest body allowed, inclusive: a reading whose
    message takes exactly that many bytes is sent as it is, not replaced as too large."""
    reading = ("a/blob", 10**18, "z" * 1500, 0)

    async def sealed(where: Path, limit: int | None) -> tuple[list[int], list[Any]]:
        where.mkdir()
        async with Rig(where, body_limit=None if limit is None else lambda topic: limit) as rig:
            await rig.pipe._seal([reading], [1])
            ob = rig.ob.outbox
            assert ob is not None
            sizes = [len(r.body) for r in ob.pending(limit=10)]
            rig.deliver()
            return sizes, [r[2] for r in rig.readings()]

    (size,), _ = asyncio.run(sealed(tmp_path / "free", None))  # what it takes, unlimited
    sizes, values = asyncio.run(sealed(tmp_path / "exact", size))
    assert sizes == [size] and values == ["z" * 1500]
    sizes, values = asyncio.run(sealed(tmp_path / "less", size - 1))  # one byte less: too large
    assert values == [None]
