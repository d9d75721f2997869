"""Forwarder against a real mosquitto on [::1]: in order, deleted on PUBACK, and nothing
lost when the broker goes away and comes back."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from gateway.config import UplinkConfig
from gateway.forwarder import Forwarder
from gateway.mosquitto import Mosquitto
from gateway.outbox_thread import OutboxThread
from gateway.receiver import MqttReceiver, Receiver
from gateway.wire import encode_payload
from security import DeviceKey, sign1
from tests.linkproxy import LinkProxy

TOPIC = "edgegw/gw1/telemetry"


def seal_for(key: DeviceKey, n_points: int = 3):  # type: ignore[no-untyped-def]
    def seal(seq: int) -> bytes:
        readings = [(f"plc/t{i}", 1_000 + seq, float(seq * 10 + i), 0) for i in range(n_points)]
        payload = encode_payload(
            gw="gw1", seq=seq, boot=1, kind="telemetry", t_ns=seq, readings=readings
        )
        return sign1(payload, key, TOPIC.encode())

    return seal


class SeqOrder:
    """A receiver's store that keeps only the seqs, in the order the platform got them."""

    def __init__(self, order: list[int]) -> None:
        self.order = order

    def write(self, p: Any, kid: bytes, received_ns: int) -> None:
        self.order.append(p.seq)

    def close(self) -> None:
        pass


async def wait_until(cond, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def test_publishes_in_order_and_acks(tmp_path: Path, broker: Mosquitto) -> None:
    key, _ = DeviceKey.load_or_create(tmp_path)
    order: list[int] = []  # seqs in the order the platform got them

    rx = Receiver({"gw1": key.public_key}, "edgegw", SeqOrder(order))
    mr = MqttReceiver(rx, "::1", broker.port).start()

    async def main() -> None:
        ot = OutboxThread(tmp_path / "outbox.db")
        ob = await ot.open()
        for _ in range(500):
            await ot.run(ob.append, TOPIC, seal_for(key))
        fwd = Forwarder(UplinkConfig(host="::1", port=broker.port, max_inflight=16), "t1", ot)
        task = asyncio.create_task(fwd.run())
        assert await fwd.drain(30), "outbox did not drain"
        assert await wait_until(lambda: rx.stats.messages_verified == 500, 10)
        st = await ot.run(ob.stats)
        assert st.rows == 0 and st.last_seq == 500
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await ot.close()

    try:
        asyncio.run(main())
    finally:
        mr.stop()
    assert rx.stats.points_verified == 1500
    assert rx.stats.gaps == 0 and rx.stats.duplicates == 0
    assert rx.received("gw1") == [(1, 500)]
    assert order == list(range(1, 501))  # one stream, no reconnect: strictly in seq order


def test_link_cut_and_broker_restart_lose_nothing(tmp_path: Path) -> None:
    """Cut the link while messages flow, keep appending, restart the broker, then
    restore the link: every seq arrives verified, in one contiguous run."""
    key, _ = DeviceKey.load_or_create(tmp_path)
    b = Mosquitto(host="::1", workdir=tmp_path / "broker").start()
    proxy = LinkProxy(("::1", b.port))
    rx = Receiver({"gw1": key.public_key}, "edgegw")
    total = 0

    async def append(ot: OutboxThread, fwd: Forwarder, n: int) -> None:
        nonlocal total
        assert ot.outbox is not None
        for _ in range(n):
            await ot.run(ot.outbox.append, TOPIC, seal_for(key))
            fwd.wake()
            total += 1

    async def main() -> None:
        ot = OutboxThread(tmp_path / "outbox.db")
        await ot.open()
        assert ot.outbox is not None
        mr = MqttReceiver(rx, "::1", b.port).start()
        fwd = Forwarder(UplinkConfig(host="::1", port=proxy.port, max_inflight=8), "t2", ot)
        task = asyncio.create_task(fwd.run())
        await append(ot, fwd, 200)
        proxy.cut()  # mid-stream: some messages are in flight
        await append(ot, fwd, 300)
        assert await wait_until(lambda: not fwd.stats.link_up, 10)
        assert (await ot.run(ot.outbox.stats)).rows >= 300
        mr.stop()
        b.stop()
        b.start()  # same port, empty broker
        mr2 = MqttReceiver(rx, "::1", b.port).start()
        proxy.restore()
        assert await fwd.drain(60), "backlog did not drain after the link came back"
        assert await wait_until(lambda: rx.received("gw1") == [(1, total)], 15)
        mr2.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await ot.close()

    try:
        asyncio.run(main())
    finally:
        proxy.close()
        b.stop()
    assert total == 500 and rx.received("gw1") == [(1, 500)]
    assert rx.stats.messages_verified == 500
    assert rx.stats.signature_failures == 0 and rx.stats.conflicts == 0


def test_rows_offered_by_the_pipeline_go_out_without_a_fetch(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """Rows the pipeline has just committed and offers are sent as they are when they are
    exactly the rows waiting (no trip to the outbox thread to read them back); an offer
    that is not (a row committed between, not offered) is left to the fetch, which keeps
    the order: the urgent row first. Nothing is sent twice, nothing skipped."""
    from buffer import NORMAL, URGENT, OutboxRow

    key, _ = DeviceKey.load_or_create(tmp_path)
    order: list[int] = []

    rx = Receiver({"gw1": key.public_key}, "edgegw", SeqOrder(order))
    mr = MqttReceiver(rx, "::1", broker.port).start()
    trips: list[int] = []

    async def main() -> None:
        ot = OutboxThread(tmp_path / "outbox.db")
        ob = await ot.open()
        fwd = Forwarder(UplinkConfig(host="::1", port=broker.port), "t1", ot)
        exchange = fwd._exchange_sync

        def counted(acks: list[int], room: int) -> Any:
            trips.append(room)
            return exchange(acks, room)

        fwd._exchange_sync = counted  # type: ignore[method-assign]
        seal = seal_for(key)

        async def commit(priority: int = NORMAL) -> OutboxRow:
            bodies: list[bytes] = []

            def keep(seq: int) -> bytes:
                bodies.append(seal(seq))
                return bodies[-1]

            seq = await ot.run(ob.append, TOPIC, keep, priority=priority, points=3)
            return OutboxRow(seq, TOPIC, bodies[-1], priority, 0, 3)

        task = asyncio.create_task(fwd.run())
        try:
            assert await wait_until(lambda: fwd.stats.link_up and fwd._fetched_upto == 0, 10)
            before = len(trips)
            for i in range(1, 11):
                fwd.offer([await commit()])
                assert await wait_until(lambda i=i: rx.stats.messages_verified == i, 10)
            assert len(trips) == before, "offered rows were fetched back"

            # in one trip: a telemetry row and an urgent one (not offered), then a
            # telemetry row offered: not the rows waiting, so the fetch takes all three,
            # the urgent one first
            def three() -> OutboxRow:
                ob.append(TOPIC, seal, points=3)
                ob.append(TOPIC, seal, priority=URGENT, points=3)
                body = seal(13)
                assert ob.append(TOPIC, lambda seq: body, points=3) == 13
                return OutboxRow(13, TOPIC, body, NORMAL, 0, 3)

            fwd.offer([await ot.run(three)])
            assert await wait_until(lambda: rx.stats.messages_verified == 13, 10)
            assert len(trips) > before  # the fetch took them

            # an offered row with an urgent one committed after it: the fetch again
            def two() -> OutboxRow:
                body = seal(14)
                assert ob.append(TOPIC, lambda seq: body, points=3) == 14
                ob.append(TOPIC, seal, priority=URGENT, points=3)
                return OutboxRow(14, TOPIC, body, NORMAL, 0, 3)

            fwd.offer([await ot.run(two)])
            assert await wait_until(lambda: rx.stats.messages_verified == 15, 10)
            assert await fwd.drain(10)
            assert (await ot.run(ob.stats)).rows == 0
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await ot.close()

    try:
        asyncio.run(main())
    finally:
        mr.stop()
    assert order == [*range(1, 11), 12, 11, 13, 15, 14]
    assert rx.stats.duplicates == 0 and rx.stats.gaps == 0


def test_offered_rows_are_held_only_while_a_session_can_take_them(tmp_path: Path) -> None:
    """No session (or a fetch pending): an offer is let go at once; a session that does
    not take them (its window full) holds at most OFFER_MAX rows and OFFER_MAX_BYTES."""
    from buffer import NORMAL, OutboxRow
    from gateway import forwarder as fw

    def row(seq: int, size: int = 100) -> OutboxRow:
        return OutboxRow(seq, TOPIC, b"x" * size, NORMAL, 0, 1)

    fwd = Forwarder(UplinkConfig(host="::1", port=1), "t1", OutboxThread(tmp_path / "o.db"))
    fwd.offer([row(1)])
    assert fwd._offered == []  # no session
    fwd._fetched_upto = 0
    fwd.offer([row(q) for q in range(1, fw.OFFER_MAX + 1)])
    assert len(fwd._offered) == fw.OFFER_MAX
    fwd.offer([row(fw.OFFER_MAX + 1)])
    assert fwd._offered == []  # one more than it may hold: all let go
    half = fw.OFFER_MAX_BYTES // 2
    fwd.offer([row(1, half), row(2, half)])
    assert len(fwd._offered) == 2
    fwd.offer([row(3, 1)])
    assert fwd._offered == []
