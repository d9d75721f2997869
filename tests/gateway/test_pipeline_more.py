"""More of the pipeline on a real outbox, judged by a real receiver: what each message
carries (batch boundaries kept when a window is split to fit, the payload version, the key
chain, marks), the stats and the audit callback, refusals labelled and counted across
failed recordings, the refusal notice rate, and a window taken off the queue kept across a
cancelled run() (mid-window, mid-retry, or idle)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from buffer import OutboxError, OutboxFull
from drivers.contract import Batch, Quality
from gateway import pipeline as pipeline_mod
from gateway.receiver import Outcome
from gateway.receiver.schema import decode
from security.cose import KEYCHAIN, parse1

from .test_pipeline import EVENT, GW, Rig, batch

LIMIT = 400  # bytes a telemetry message may take: a 60-point window (~1 kB) needs several
SIZES = [("a", 7), ("b", 17), ("c", 13), ("d", 23)]  # batches that parts cut across


def blocks_of(rig: Rig) -> list[list[str]]:
    """The tags of each block (one batch, or the piece of one) of every message."""
    return [list(b.names) for p in rig.sink.payloads for b in p.blocks]


def test_a_split_window_keeps_every_batch_in_blocks_of_its_own(tmp_path: Path) -> None:
    """Batches of different devices (and sizes) in one window larger than a message: each
    message fits the limit, each block holds readings of one batch only, nothing is lost
    or reordered, and the stats count what was committed. The next window is cut from the
    size of the last message: each of its messages is signed once (never a whole window
    sealed only to be thrown away), and not into needlessly many messages."""

    async def main() -> tuple[Rig, list[Any], list[tuple[int, Outcome]], list[int], list[int]]:
        async with Rig(tmp_path, body_limit=lambda topic: LIMIT) as rig:
            key = rig.key
            signed = 0

            class Counting:
                kid = key.kid

                def sign(self, data: bytes) -> bytes:
                    nonlocal signed
                    signed += 1
                    return key.sign(data)

            rig.pipe.key = Counting()  # type: ignore[assignment]
            ob = rig.ob.outbox
            assert ob is not None
            task = asyncio.create_task(rig.pipe.run())
            signs, messages = [], []
            for w in range(2):
                for dev, n in SIZES:
                    await rig.pipe.put(batch(n, 100 * w, dev=dev))
                await asyncio.sleep(0.15)
                signs.append(signed - sum(signs))
                messages.append(len(ob.pending(limit=1000)) - sum(messages))
            await rig.pipe.close()
            await asyncio.wait_for(task, 10)
            rows = ob.pending(limit=1000)
            return rig, rows, rig.deliver(), signs, messages

    rig, rows, out, signs, messages = asyncio.run(main())
    assert all(o == Outcome.VALID for _, o in out)
    assert all(len(r.body) <= LIMIT for r in rows), [len(r.body) for r in rows]
    assert all(not parse1(r.body).unprotected for r in rows)  # no key chain: no header
    total = sum(n for _, n in SIZES)
    sent = [f"{dev}/t{i}" for _ in range(2) for dev, n in SIZES for i in range(n)]
    assert [r[0] for r in rig.readings()] == sent
    assert [r[2] for r in rig.readings()] == [
        float(100 * w + i) for w in range(2) for _, n in SIZES for i in range(n)
    ]
    for tags in blocks_of(rig):  # a block never mixes two batches
        assert len({t.split("/")[0] for t in tags}) == 1, tags
    # ~1 kB a window: a few messages each, not one per point
    assert 2 <= messages[0] <= 6 and 2 <= messages[1] <= 6, messages
    assert signs[1] == messages[1], (signs, messages)  # pre-split: each part signed once
    st = rig.pipe.stats
    assert st.points_sealed == 2 * total and st.messages_sealed == len(rows)
    assert st.last_seq == max(r.seq for r in rows)
    assert all(p.points == len(p.readings) for p in rig.sink.payloads)


def test_a_run_cancelled_mid_window_or_idle_loses_nothing(tmp_path: Path) -> None:
    """A supervisor cancels run() while it collects a window, and again while it waits
    for the next one: each restart seals what was taken off the queue, once, in order."""

    async def main() -> list[list[str]]:
        async with Rig(tmp_path, flush_window_s=30.0) as rig:
            task = asyncio.create_task(rig.pipe.run())
            await rig.pipe.put(batch(3, 0, dev="a"))
            await rig.pipe.put(batch(2, 0, dev="b"))
            await rig.pipe.put(batch(4, 0, dev="e"))
            await asyncio.sleep(0.1)  # taken off the queue, the window still open
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            rig.pipe.window = 0.05
            task = asyncio.create_task(rig.pipe.run())  # the restart seals them first
            await asyncio.sleep(0.2)
            task.cancel()  # idle now: waiting for the first batch of a window
            with pytest.raises(asyncio.CancelledError):
                await task
            await rig.pipe.put(batch(2, 0, dev="c"))
            await rig.pipe.close()
            await asyncio.wait_for(rig.pipe.run(), 10)
            rig.deliver()
            assert [r[0] for r in rig.readings()] == [
                *(f"a/t{i}" for i in range(3)),
                *(f"b/t{i}" for i in range(2)),
                *(f"e/t{i}" for i in range(4)),
                *(f"c/t{i}" for i in range(2)),
            ]
            return blocks_of(rig)

    blocks = asyncio.run(main())
    assert blocks == [
        ["a/t0", "a/t1", "a/t2"],
        ["b/t0", "b/t1"],
        [f"e/t{i}" for i in range(4)],
        ["c/t0", "c/t1"],
    ]


def test_a_run_cancelled_mid_retry_keeps_the_rest_with_its_batch_ends(tmp_path: Path) -> None:
    """The outbox fails after the first messages of a split window were committed, and
    run() is cancelled while it waits to retry: the restart seals only the rest, each
    batch still in blocks of its own; nothing twice, nothing lost."""

    async def main() -> Rig:
        async with Rig(tmp_path, body_limit=lambda topic: LIMIT) as rig:
            ob = rig.ob.outbox
            assert ob is not None
            real = ob.append
            committed, failed = 0, False

            def failing(topic: str, *a: Any, **kw: Any) -> int:
                nonlocal committed, failed
                if topic.endswith("/telemetry") and committed == 1 and not failed:
                    failed = True  # once, after the first message of the window
                    raise OutboxError("disk I/O error (injected)")
                seq = real(topic, *a, **kw)
                committed += 1
                return seq

            ob.append = failing  # type: ignore[method-assign]
            task = asyncio.create_task(rig.pipe.run())
            for dev in "abcd":
                await rig.pipe.put(batch(15, 0, dev=dev))
            for _ in range(200):  # bounded: until the failure (then it sleeps 0.2 s)
                if rig.pipe.stats.seal_errors:
                    break
                await asyncio.sleep(0.01)
            assert rig.pipe.stats.seal_errors == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert 0 < rig.pipe.stats.points_sealed < 60
            assert len(rig.pipe._held[0]) == 60 - rig.pipe.stats.points_sealed
            await rig.pipe.close()
            await asyncio.wait_for(rig.pipe.run(), 10)
            rig.deliver()
            return rig

    rig = asyncio.run(main())
    assert [r[0] for r in rig.readings()] == [f"{d}/t{i}" for d in "abcd" for i in range(15)]
    for tags in blocks_of(rig):
        assert len({t.split("/")[0] for t in tags}) == 1, tags
    assert rig.pipe.stats.points_sealed == 60


def test_a_refusal_whose_notice_fails_is_recorded_once(tmp_path: Path) -> None:
    """The refusal is committed, then sealing its notice fails (an I/O error): the points
    must not be recorded again with the next refusal (they were: the platform was told
    of more dropped points than were polled and not delivered)."""

    async def main() -> tuple[Any, Any]:
        async with Rig(tmp_path, max_bytes=3000, policy="stop_acquisition") as rig:
            real = rig.pipe._notify_sync
            calls = 0

            def notify() -> bool:  # fails once: the first notice after a refusal
                nonlocal calls
                if rig.pipe.stats.points_refused and not calls:
                    calls += 1
                    raise OutboxError("disk I/O error (injected)")
                return real()

            rig.pipe._notify_sync = notify  # type: ignore[method-assign]
            task = asyncio.create_task(rig.pipe.run())
            for n in range(12):  # fills the outbox, then windows are refused
                await rig.pipe.put(batch(20, 100 * n))
                await asyncio.sleep(0.07)
            assert calls >= 1 and rig.pipe.stats.points_refused > 0
            await rig.pipe.close()
            await asyncio.wait_for(task, 10)
            rig.deliver()
            return rig.pipe.stats, rig.rx.stats

    st, rx = asyncio.run(main())
    assert rx.dropped_points == st.points_refused > 0
    assert rx.points_verified + rx.dropped_points == st.points_polled == 20 * 12


def test_refusals_recorded_late_are_all_counted_and_labelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stop_acquisition refuses windows, and recording the refusals fails for a while (a
    full disk): the refused points add up until a recording works, after a window that
    seals, and at close. Every refused point is told once, under a refusal reason; the
    audit callback gets each drop; while refusing, notices stay rare."""
    monkeypatch.setattr(pipeline_mod, "REFUSAL_NOTICE_S", 3600.0)  # one per run, here
    audit: list[dict[str, Any]] = []

    async def main() -> tuple[Any, Any, list[str], int]:
        async with Rig(
            tmp_path, max_bytes=3000, policy="stop_acquisition", on_drop=audit.append
        ) as rig:
            real = rig.pipe._refuse_sync
            failing, failed = True, 0

            def refuse(points: int, reason: str) -> None:
                nonlocal failed
                if failing:
                    failed += 1
                    raise OutboxError("disk full (injected)")
                real(points, reason)

            rig.pipe._refuse_sync = refuse  # type: ignore[method-assign]
            task = asyncio.create_task(rig.pipe.run())
            n = 0

            async def windows(k: int) -> None:
                nonlocal n
                for _ in range(k):
                    await rig.pipe.put(batch(20, 100 * n))
                    n += 1
                    await asyncio.sleep(0.07)

            await windows(12)  # fills the outbox; the refusals are not recorded
            assert failed >= 2 and rig.pipe.stats.points_refused > 0
            refusals = rig.pipe.stats.points_refused
            await rig.ob.run(rig.deliver)  # the platform acks: room again
            failing = False
            await windows(12)  # the first seals and records them; then refused again
            failing = True
            await windows(6)  # refused, not recorded
            failing = False
            await rig.pipe.close()  # what is still unrecorded is recorded at close
            await asyncio.wait_for(task, 10)
            rig.deliver()
            reasons = [d.reason for p in rig.sink.payloads for d in p.drops]
            return rig.pipe.stats, rig.rx.stats, reasons, refusals

    st, rx, reasons, refusals = asyncio.run(main())
    assert st.points_refused > refusals > 0
    assert rx.dropped_points == st.points_refused  # every refused point told, once
    assert rx.points_verified + rx.dropped_points == st.points_polled == 20 * 30
    # refused because the outbox was full: recorded later still under that reason
    assert set(reasons) == {"refused_outbox_full"}, reasons
    assert rx.notices == st.notices <= 5, st.notices  # not one per refused window
    assert sum(d["points"] for d in audit) == st.points_refused
    assert {d["reason"] for d in audit} == set(reasons)
    for d in audit:
        assert set(d) == {"reason", "first_seq", "last_seq", "messages", "points"}


def test_every_kind_carries_the_version_the_key_chain_and_its_marks(tmp_path: Path) -> None:
    """Telemetry, an event and a drop notice of a gateway set to payload version 1 with
    a rotated key: each message is version 1 and carries the certificates in its
    unprotected header; the marks of an urgent message are committed with it."""
    chain = (b"cert: root to intermediate", b"cert: intermediate to gateway")

    async def main() -> list[tuple[str, Any, Any]]:
        async with Rig(tmp_path, payload_version=1, keychain=chain) as rig:
            ob = rig.ob.outbox
            assert ob is not None
            await rig.ob.run(ob.record_drop, 5, "unclean_stop")  # told at the end of run()
            task = asyncio.create_task(rig.pipe.run())
            await rig.pipe.put(batch(3))
            await rig.pipe.seal_message(
                "event", f"edgegw/{GW}/event", {"event": EVENT}, marks={"audit_sent": 7}
            )
            await rig.pipe.close()
            await asyncio.wait_for(task, 10)
            assert await rig.ob.run(ob.mark, "audit_sent") == 7
            out = []
            for r in ob.pending(limit=100):
                env = parse1(r.body)
                out.append((r.topic, env.unprotected.get(KEYCHAIN), decode(env.payload)))
            return out

    got = asyncio.run(main())
    kinds = sorted(p.kind for _, _, p in got)
    assert kinds == ["event", "notice", "telemetry"], kinds
    for topic, keychain, p in got:
        assert keychain == list(chain), topic
        assert p.version == 1, topic


def test_unsealable_readings_each_counted_logged_once_and_kept_by_tag(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two readings the encoder cannot take for the same reason, and one with a timestamp
    that is not an integer: each becomes a bad reading (the last under its repr, now),
    all three are counted, each distinct reason is logged once (no flood), and run()
    goes on."""

    async def main() -> tuple[list[tuple[Any, ...]], Any]:
        async with Rig(tmp_path) as rig:
            task = asyncio.create_task(rig.pipe.run())
            b = batch(8)
            for i in (2, 5):
                b.readings[i] = (f"d/t{i}", b.readings[i][1], object(), 0)
            b.readings[7] = ("d/t7", object(), 1.0, 0)  # type: ignore[call-overload]
            await rig.pipe.put(b)
            await rig.pipe.put(batch(2, 50, dev="e"))
            await rig.pipe.close()
            await asyncio.wait_for(task, 10)
            rig.deliver()
            return rig.readings(), rig.pipe.stats

    with caplog.at_level(logging.ERROR, logger="edgegw.pipeline"):
        readings, st = asyncio.run(main())
    bad = int(Quality.BAD_CONFIG)
    assert [r[3] for r in readings] == [0, 0, bad, 0, 0, bad, 0, bad, 0, 0]
    assert [r[0] for r in readings[:7]] == [f"d/t{i}" for i in range(7)]
    assert readings[7][0].startswith("('d/t7', <object object at ")
    assert [r[0] for r in readings[8:]] == ["e/t0", "e/t1"]
    why = "cannot be sealed: CBOREncodeError: "  # what the encoder said, passed on
    assert readings[2][4].startswith(why) and readings[5][4].startswith(why)
    assert "timestamp is not an integer" in readings[7][4]
    assert st.readings_unsealable == 3 and st.points_sealed == 10
    logged = [r for r in caplog.records if "sent as a bad reading" in r.getMessage()]
    assert len(logged) == 2, [r.getMessage() for r in logged]  # once per distinct reason


def test_a_key_failing_mid_window_drops_exactly_the_rest(tmp_path: Path) -> None:
    """The key fails after the first message of a split window, and for the next window
    too: exactly what was not committed is dropped and told (once the key works again),
    each failed window counted."""

    async def main() -> tuple[Any, Any]:
        async with Rig(tmp_path, body_limit=lambda topic: LIMIT) as rig:
            key = rig.key

            class Failing:
                kid = key.kid
                broken = False

                def sign(self, data: bytes) -> bytes:
                    if self.broken:
                        raise ValueError("the key is unusable (injected)")
                    return key.sign(data)

            signer = Failing()
            rig.pipe.key = signer  # type: ignore[assignment]
            ob = rig.ob.outbox
            assert ob is not None
            real = ob.append

            def append(topic: str, *a: Any, **kw: Any) -> int:
                seq = real(topic, *a, **kw)
                if topic.endswith("/telemetry"):
                    signer.broken = True  # from the first message committed on
                return seq

            ob.append = append  # type: ignore[method-assign]
            task = asyncio.create_task(rig.pipe.run())
            for dev in "abcd":
                await rig.pipe.put(batch(15, 0, dev=dev))
            await asyncio.sleep(0.3)
            await rig.pipe.put(batch(5, 0, dev="e"))
            await asyncio.sleep(0.3)
            ob.append = real  # type: ignore[method-assign]
            signer.broken = False
            await rig.pipe.put(batch(2, 0, dev="f"))
            await rig.pipe.close()
            await asyncio.wait_for(task, 10)
            rig.deliver()
            return rig.pipe.stats, rig.rx.stats

    st, rx = asyncio.run(main())
    assert st.seal_failures == 2
    assert 0 < st.points_sealed - 2 < 60  # the first part of the first window, and f
    assert rx.points_verified == st.points_sealed
    assert rx.dropped_points == 65 - (st.points_sealed - 2)
    assert rx.points_verified + rx.dropped_points == st.points_polled == 67


def test_an_outbox_full_mid_window_refuses_exactly_the_rest(tmp_path: Path) -> None:
    """The outbox refuses after the first message of a split window: exactly the
    uncommitted rest is counted refused and told; the committed part arrives once."""

    async def main() -> tuple[Any, Any]:
        async with Rig(tmp_path, body_limit=lambda topic: LIMIT) as rig:
            ob = rig.ob.outbox
            assert ob is not None
            real = ob.append
            committed = 0

            def append(topic: str, *a: Any, **kw: Any) -> int:
                nonlocal committed
                if topic.endswith("/telemetry") and committed == 1:
                    raise OutboxFull("the outbox is full (injected)", "outbox_full")
                seq = real(topic, *a, **kw)
                committed += topic.endswith("/telemetry")
                return seq

            ob.append = append  # type: ignore[method-assign]
            task = asyncio.create_task(rig.pipe.run())
            for dev in "abcd":
                await rig.pipe.put(batch(15, 0, dev=dev))
            await rig.pipe.close()
            await asyncio.wait_for(task, 10)
            rig.deliver()
            return rig.pipe.stats, rig.rx.stats

    st, rx = asyncio.run(main())
    assert 0 < st.points_sealed < 60 and st.points_refused == 60 - st.points_sealed
    assert (rx.points_verified, rx.dropped_points) == (st.points_sealed, st.points_refused)


def test_a_window_closes_when_it_reaches_max_points_exactly(tmp_path: Path) -> None:
    """Batches arrive faster than the (long) window: a window closes as soon as it holds
    max_points, not one batch later and not only when its time is up."""

    async def main() -> list[int]:
        async with Rig(tmp_path, max_points=25, flush_window_s=30.0) as rig:
            task = asyncio.create_task(rig.pipe.run())
            for i in range(7):
                await rig.pipe.put(batch(5, 10 * i))
            await asyncio.sleep(0.3)
            sealed_before_close = rig.pipe.stats.points_sealed
            await rig.pipe.close()
            await asyncio.wait_for(task, 10)
            rig.deliver()
            assert sealed_before_close == 25  # sealed by size, long before its time
            return [len(p.readings) for p in rig.sink.payloads]

    assert asyncio.run(main()) == [25, 10]


def test_a_refusal_on_a_full_disk_is_still_told(tmp_path: Path) -> None:
    """The disk is below the free space the outbox must keep (min_free_bytes far above
    what any disk has): every window is refused, and the notice saying so is still
    sealed, because a notice may spend the reserve that data may not."""

    async def main() -> tuple[Any, Any, list[str]]:
        async with Rig(tmp_path, policy="stop_acquisition", min_free_bytes=2**60) as rig:
            task = asyncio.create_task(rig.pipe.run())
            await rig.pipe.put(batch(5))
            await asyncio.sleep(0.2)
            await rig.pipe.put(batch(3, 10))
            await rig.pipe.close()
            await asyncio.wait_for(task, 10)
            rig.deliver()
            reasons = [d.reason for p in rig.sink.payloads for d in p.drops]
            return rig.pipe.stats, rig.rx.stats, reasons

    st, rx, reasons = asyncio.run(main())
    assert st.points_refused == 8 and st.points_sealed == 0
    assert rx.notices >= 1 and rx.dropped_points == 8
    assert set(reasons) == {"refused_disk_full"}


def test_a_reading_with_a_timestamp_that_is_not_an_integer_costs_only_itself(
    tmp_path: Path,
) -> None:
    """A driver bug (a timestamp as text) made the platform refuse the whole message:
    the encoder now refuses it, so the pipeline isolates that one reading (sent bad,
    saying why) and its neighbours arrive."""

    async def main() -> Any:
        async with Rig(tmp_path) as rig:
            task = asyncio.create_task(rig.pipe.run())
            ts = time.time_ns()
            good = [(f"plc/t{i}", ts, float(i), 0) for i in range(7)]
            await rig.pipe.put(Batch("plc", [*good, ("plc/bad", "yesterday", 1.0, 0)]))
            await rig.pipe.put(Batch("b", [("b/x", ts, 1.0, 0), ("b/y", ts, 2.0, 0)]))
            await rig.pipe.close()
            await asyncio.wait_for(task, 10)
            rig.deliver()
            return rig.rx.stats, rig.pipe.stats

    rx, st = asyncio.run(main())
    assert rx.points_verified == 10 and rx.malformed == 0, rx
    assert st.readings_unsealable == 1
