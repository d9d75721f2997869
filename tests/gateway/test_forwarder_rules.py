"""The forwarder's rules, against a scripted MQTT 5 broker (tests/mqttscript.py) that
decides PUBACK codes and timing: priority order (urgent, live, then the backlog oldest
first), a failed PUBACK never counts as delivered, the in-flight window and the
broker's Receive Maximum hold, backoff starts over after a good connection, a reconnect
in the middle of a backlog drain resends from the first unacknowledged row, and drain()
is True only once the outbox is empty."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from buffer import URGENT
from gateway.config import UplinkConfig
from gateway.forwarder import Forwarder
from gateway.outbox_thread import OutboxThread
from tests.mqttscript import ScriptedBroker

T = "edgegw/gw1/telemetry"
U = "edgegw/gw1/event"


async def wait_until(cond: Any, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout  # a bound only
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def body(seq: int) -> bytes:
    return str(seq).encode()


class Rig:
    def __init__(self, tmp: Path, broker: ScriptedBroker, **uplink: Any) -> None:
        self.tmp, self.broker, self.uplink = tmp, broker, uplink

    async def __aenter__(self) -> Rig:
        await self.broker.start()
        self.ot = OutboxThread(self.tmp / "outbox.db")
        self.ob = await self.ot.open()
        cfg = UplinkConfig(host="::1", port=self.broker.port, **self.uplink)
        self.fwd = Forwarder(cfg, "gw1", self.ot)
        return self

    def run(self) -> None:
        self.task = asyncio.create_task(self.fwd.run())

    async def add(self, n: int, topic: str = T, urgent: bool = False) -> list[int]:
        prio = URGENT if urgent else 1
        out = [await self.ot.run(self.ob.append, topic, body, priority=prio) for _ in range(n)]
        self.fwd.wake()
        return out

    async def rows(self) -> list[int]:
        return [r.seq for r in await self.ot.run(self.ob.pending, 0, 100_000)]

    async def __aexit__(self, *exc: object) -> None:
        if hasattr(self, "task"):
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.ot.close()
        await self.broker.stop()


def test_urgent_first_then_live_then_the_backlog_oldest_first(tmp_path: Path) -> None:
    async def main() -> tuple[list[int], list[int], list[int], list[int]]:
        broker = ScriptedBroker(hold=True)
        async with Rig(tmp_path, broker, max_inflight=4) as rig:
            backlog = await rig.add(10)
            urgent = await rig.add(1, U, urgent=True)
            rig.run()
            assert await wait_until(lambda: len(broker.received) == 4)
            first = broker.seqs()
            live = await rig.add(2)  # sealed while connected: live
            later = await rig.add(1, U, urgent=True)
            broker.release()
            assert await rig.fwd.drain(15)
            return first, broker.seqs(), backlog + urgent + live + later, await rig.rows()

    first, seqs, all_seqs, left = asyncio.run(main())
    # the first window: the urgent message, then the backlog from its oldest
    assert first == [11, 1, 2, 3]
    # after the window opens: the new urgent message, the live ones, then the backlog
    assert seqs[4:7] == [14, 12, 13] and seqs[7:] == [4, 5, 6, 7, 8, 9, 10]
    assert sorted(seqs) == sorted(all_seqs) and left == []


def test_a_failed_puback_is_never_an_ack(tmp_path: Path) -> None:
    """The broker answers seq 5 with 0x80 (unspecified error) twice: the row stays
    until a PUBACK without error; everything arrives, and seq 5 went three times."""

    async def main() -> tuple[list[int], list[int], bool]:
        broker = ScriptedBroker(puback=lambda seq, n: 0x80 if seq == 5 and n <= 2 else 0)
        async with Rig(tmp_path, broker, max_inflight=1) as rig:
            await rig.add(8)
            rig.run()
            assert await wait_until(lambda: broker._attempts.get(5, 0) >= 1)
            kept = 5 in await rig.rows()
            assert await rig.fwd.drain(30)
            return broker.seqs(), await rig.rows(), kept

    seqs, left, kept = asyncio.run(main())
    assert kept and left == []
    assert seqs.count(5) == 3 and set(seqs) == set(range(1, 9))
    assert seqs.index(5) < seqs.index(6)  # in order: nothing went past the refused one


def test_the_window_and_the_brokers_receive_maximum_hold(tmp_path: Path) -> None:
    async def run(receive_maximum: int | None, inflight: int) -> int:
        broker = ScriptedBroker(hold=True, receive_maximum=receive_maximum)
        async with Rig(tmp_path / f"{receive_maximum}", broker, max_inflight=inflight) as rig:
            await rig.add(40)
            rig.run()
            await asyncio.sleep(1.0)  # give it every chance to send more than allowed
            sent = broker.max_unacked
            broker.release()
            assert await rig.fwd.drain(15)
            return sent

    assert asyncio.run(run(None, 8)) == 8
    assert asyncio.run(run(3, 8)) == 3


def test_backoff_starts_over_after_a_good_connection(tmp_path: Path) -> None:
    """Four refused connections grow the backoff (0.5, 1, 2, 4 s before jitter); after a
    good connection that then drops, the next attempt comes after the first backoff
    again, not after the grown one."""

    async def main() -> float:
        broker = ScriptedBroker(refuse=4)
        async with Rig(tmp_path, broker, reconnect_max_s=30) as rig:
            await rig.add(3)
            rig.run()
            assert await wait_until(lambda: len(broker.received) == 3, 30)
            n = len(broker.connects)
            t = asyncio.get_running_loop().time()
            broker.kick()
            assert await wait_until(lambda: len(broker.connects) > n, 30)
            return broker.connects[n] - t

    gap = asyncio.run(main())
    # Reset: at most 0.5 s plus scheduling; not reset: at least 8 s x 0.5 (jitter) = 4 s.
    assert gap < 3.0, gap


def test_a_reconnect_during_a_backlog_drain_strands_nothing(tmp_path: Path) -> None:
    async def main() -> tuple[list[int], list[int], bool]:
        broker = ScriptedBroker()
        async with Rig(tmp_path, broker, max_inflight=16) as rig:
            await rig.add(300)
            rig.run()
            assert await wait_until(lambda: len(broker.received) >= 60)
            broker.kick()  # in the middle of the backlog
            await asyncio.sleep(0.05)
            live = await rig.add(5)  # sealed while reconnecting
            drained = await rig.fwd.drain(30)
            left = await rig.rows()
            return broker.seqs(), left, drained and bool(live)

    seqs, left, drained = asyncio.run(main())
    assert drained and left == []
    assert set(seqs) == set(range(1, 306))  # every row went, none stranded


def test_drain_is_true_only_once_the_outbox_is_empty(tmp_path: Path) -> None:
    async def main() -> tuple[bool, int, bool, int]:
        broker = ScriptedBroker(hold=True)
        async with Rig(tmp_path, broker, max_inflight=4) as rig:
            await rig.add(10)
            rig.run()
            early = await rig.fwd.drain(1.0)
            rows_then = len(await rig.rows())
            broker.release()
            late = await rig.fwd.drain(15)
            return early, rows_then, late, len(await rig.rows())

    early, rows_then, late, rows_after = asyncio.run(main())
    assert (early, late) == (False, True)
    assert rows_then == 10 and rows_after == 0
