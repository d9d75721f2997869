"""Forwarder rules that mutation testing (``make mutate``) showed no test judged: each test
here fails with at least one mutant of gateway/forwarder.py that the other forwarder
tests let through. Against the scripted broker of tests/mqttscript.py (it decides PUBACK
codes and timing) or a real mosquitto."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import UplinkConfig
from gateway.forwarder import SET_ASIDE_REASON, STRIKES, Forwarder
from gateway.mosquitto import Mosquitto
from gateway.outbox_thread import OutboxThread
from tests.gateway.test_forwarder_rules import Rig, wait_until
from tests.mqttscript import ScriptedBroker

T = "edgegw/gw1/telemetry"
U = "edgegw/gw1/event"


def padded(size: int):  # type: ignore[no-untyped-def]
    """A body of ``size`` bytes that the scripted broker reads as its seq."""

    def seal(seq: int) -> bytes:
        return str(seq).zfill(size).encode()

    return seal


def test_max_bytes_per_s_paces_publishing_and_a_large_message_still_goes(tmp_path: Path) -> None:
    """12 messages of 512 bytes, then one of 3000 (larger than the one-second burst), at
    2048 bytes/s: all arrive, in order, and the first 12 alone cannot have taken less than
    (6144 - 2048 burst) / 2048 = 2 s."""

    async def main() -> tuple[list[int], float, list[int]]:
        broker = ScriptedBroker()
        async with Rig(tmp_path, broker, max_bytes_per_s=2048, max_inflight=64) as rig:
            for _ in range(12):
                await rig.ot.run(rig.ob.append, T, padded(512))
            await rig.ot.run(rig.ob.append, T, padded(3000))
            t0 = time.monotonic()
            rig.run()
            assert await wait_until(lambda: len(broker.received) >= 12, 30)
            elapsed = time.monotonic() - t0
            assert await rig.fwd.drain(30), "the message larger than the burst never went"
            return broker.seqs(), elapsed, await rig.rows()

    seqs, elapsed, left = asyncio.run(main())
    assert seqs == list(range(1, 14)) and left == []
    # A lower bound: load only makes it slower, so this cannot fail on a busy machine.
    assert elapsed >= 1.5, f"12 x 512 bytes at 2048 B/s took {elapsed:.2f} s: not paced"


class Inlet:
    """A command inlet (gateway/downlink/'s side of the forwarder) that records what it
    is handed and acknowledges a message only when the test says."""

    topic = "edgegw/gw1/command"
    enabled = True
    session_expiry_s = 3600

    def __init__(self) -> None:
        self.offers: list[tuple[str, bytes]] = []
        self.acks: list[Callable[[], None]] = []
        self.subs: list[tuple[bool, str | None]] = []

    def offer(self, topic: str, payload: bytes, ack: Callable[[], None]) -> None:
        self.offers.append((topic, payload))
        self.acks.append(ack)

    def subscribed(self, ok: bool, why: str | None) -> None:
        self.subs.append((ok, why))


def publish_command(port: int, payload: bytes) -> None:
    """What the platform does: one QoS 1 message on the gateway's command topic."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="platform", protocol=mqtt.MQTTv5)
    c.connect("::1", port)
    c.loop_start()
    try:
        c.publish(Inlet.topic, payload, qos=1).wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()


def test_a_command_is_handed_over_untouched_and_redelivered_until_the_inlet_acks_it(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """A command the inlet has not acknowledged when the connection ends comes again on
    the next one (the broker keeps the session); once acknowledged it never comes again."""
    inlet = Inlet()
    first, second = b"\x00cmd-1\xff", b"cmd-2"

    async def main() -> None:
        ot = OutboxThread(tmp_path / "outbox.db")
        await ot.open()
        up = UplinkConfig(host="::1", port=broker.port, reconnect_max_s=1)
        fwd = Forwarder(up, "edgegw-gw1", ot, commands=inlet)

        async def session(subs: int, offers: int) -> None:
            task = asyncio.create_task(fwd.run())
            try:
                assert await wait_until(lambda: len(inlet.subs) >= subs)
                if offers == 1:  # the first session: the platform sends a command
                    await asyncio.to_thread(publish_command, broker.port, first)
                if offers == 3:  # the third: a new command after the acknowledged one
                    await asyncio.to_thread(publish_command, broker.port, second)
                assert await wait_until(lambda: len(inlet.offers) >= offers), inlet.offers
                if offers == 2:
                    inlet.acks[-1]()  # recorded: acknowledge it now
                    await asyncio.sleep(0.5)  # the PUBACK on its way before the disconnect
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        try:
            await session(1, 1)  # handed over, never acknowledged
            await session(2, 2)  # so it comes again; acknowledged this time
            await session(3, 3)  # only the new command comes
        finally:
            await ot.close()

    asyncio.run(main())
    topic = Inlet.topic
    assert inlet.offers == [(topic, first), (topic, first), (topic, second)]
    assert inlet.subs == [(True, None)] * 3


def test_a_refused_command_subscription_is_reported_to_the_inlet(tmp_path: Path) -> None:
    """The broker refuses the subscription (SUBACK 0x87, not authorized): the inlet hears
    that it failed, and why, while telemetry still flows."""
    inlet = Inlet()

    async def main() -> tuple[list[int], list[int], bool]:
        broker = ScriptedBroker(suback=0x87)
        async with Rig(tmp_path, broker) as rig:
            rig.fwd.commands = inlet
            sent = await rig.add(3)
            rig.run()
            assert await wait_until(lambda: bool(inlet.subs))
            drained = await rig.fwd.drain(15)
            return sent, await rig.rows(), drained

    sent, left, drained = asyncio.run(main())
    assert drained and left == [] and sent == [1, 2, 3]
    [(ok, why)] = inlet.subs
    assert ok is False and why is not None and Inlet.topic in why and "refused" in why


def test_what_the_uplink_stats_count_after_refused_pubacks(tmp_path: Path) -> None:
    """The broker refuses seq 5 twice (0x80): ten publishes (seq 5 three times), two
    rejected, eight acknowledged, ten bytes, ten PUBACK latencies (each a sane value), and
    the link went down twice (saying which message the broker rejected, and why) and up
    three times."""

    downs: list[str | None] = []

    async def main() -> Forwarder:
        broker = ScriptedBroker(puback=lambda seq, n: 0x80 if seq == 5 and n <= 2 else 0)
        async with Rig(tmp_path, broker, max_inflight=1) as rig:
            rig.fwd.on_link = lambda up, why: None if up else downs.append(why)
            await rig.add(8)
            rig.run()
            assert await rig.fwd.drain(30)
            assert await rig.rows() == []
            return rig.fwd

    st = asyncio.run(main()).stats
    assert (st.published, st.rejected, st.acked, st.bytes_published) == (10, 2, 8, 10)
    assert (st.connects, st.disconnects, st.link_up) == (3, 2, True)
    # what the journal and `edgegw status` say about each drop of the link
    assert downs == ["broker rejected seq 5: Unspecified error (0x80)"] * 2, downs
    lat = st.puback_latency
    assert lat.count == 10 and sum(lat.counts) == 10
    # a bound that only catches nonsense (a wall clock, a negative time), not slowness
    assert 0 <= lat.sum < 60 * lat.count, lat.sum


def test_refusals_before_any_ack_are_no_evidence_against_a_message(tmp_path: Path) -> None:
    """A message is set aside (dropped, with a notice) only when the broker refuses it
    while it takes others. The only message, refused (0x80) each time before the broker
    acknowledged anything, is kept and sent until it goes (here the fifth time), and
    the messages sealed after it follow in order."""

    async def main() -> tuple[list[int], list[int], int]:
        broker = ScriptedBroker(puback=lambda seq, n: 0x80 if seq == 1 and n <= 4 else 0)
        async with Rig(tmp_path, broker, max_inflight=1, reconnect_max_s=1) as rig:
            await rig.add(1)
            rig.run()
            assert await wait_until(lambda: broker.seqs().count(1) == 5, 60), broker.seqs()
            await rig.add(3)
            assert await rig.fwd.drain(60), broker.seqs()
            return broker.seqs(), await rig.rows(), rig.fwd.stats.set_aside

    seqs, left, set_aside = asyncio.run(main())
    assert set_aside == 0 and left == []
    assert seqs == [1, 1, 1, 1, 1, 2, 3, 4]


def test_a_message_the_broker_refuses_while_it_takes_others_is_set_aside(
    tmp_path: Path,
) -> None:
    """The broker refuses seq 3 every time (0x80) and takes every other message. Its first
    refusal may come before any ack on that connection (no evidence yet: it goes alone,
    after the others, next time); from then on acks of other messages are the evidence,
    on any connection. So it goes STRIKES times, or once more, then it is set aside with a
    drop record naming it, and does not block the messages behind it. (It was resent on
    every new connection without end, ~2.6 connections a second, once it was the only
    message left: the refusal always came before any ack on its own connection.)"""

    async def main() -> tuple[list[int], list[int], int, list[tuple[int | None, str]]]:
        broker = ScriptedBroker(puback=lambda seq, n: 0x80 if seq == 3 else 0)
        async with Rig(tmp_path, broker, max_inflight=2, reconnect_max_s=1) as rig:
            await rig.add(12)
            rig.run()
            assert await rig.fwd.drain(60), broker.seqs()
            drops = [(d.first_seq, d.reason) for d in await rig.ot.run(rig.ob.pending_drops)]
            return broker.seqs(), await rig.rows(), rig.fwd.stats.set_aside, drops

    seqs, left, set_aside, drops = asyncio.run(main())
    assert STRIKES <= seqs.count(3) <= STRIKES + 1, seqs
    assert set_aside == 1 and left == [] and drops == [(3, SET_ASIDE_REASON)]
    others = [s for s in seqs if s != 3]
    assert set(others) == set(range(1, 13)) - {3}


def test_a_broker_that_refuses_everything_is_not_stormed(tmp_path: Path) -> None:
    """A broker that refuses every message gives no evidence against any one: nothing is
    set aside, and a connection that only had a message refused does not reset the
    backoff. With jitter the waits are at least 0.25, 0.5, 1, 2 s: at most 4 connections
    in 3 s (it reconnected every 0.25-0.5 s, 6 or more)."""

    async def main() -> tuple[int, list[int], int]:
        broker = ScriptedBroker(puback=lambda seq, n: 0x80)
        async with Rig(tmp_path, broker, max_inflight=2, reconnect_max_s=4) as rig:
            await rig.add(3)
            rig.run()
            await asyncio.sleep(3.0)
            first = broker.connects[0]
            return (
                sum(t - first < 3.0 for t in broker.connects),
                await rig.rows(),
                (rig.fwd.stats.set_aside),
            )

    connects, left, set_aside = asyncio.run(main())
    assert 2 <= connects <= 4, connects
    assert left == [1, 2, 3] and set_aside == 0


def test_urgent_and_live_rows_keep_to_the_brokers_receive_maximum_too(tmp_path: Path) -> None:
    """A backlog of urgent rows (events, audit records), then rows sealed while
    connected (live): never more in flight than the broker's Receive Maximum (3, below
    max_inflight 8), and all of them arrive in order."""

    async def main() -> tuple[list[int], list[int], list[int], list[int]]:
        broker = ScriptedBroker(hold=True, receive_maximum=3)
        async with Rig(tmp_path, broker, max_inflight=8) as rig:
            sent = []
            urgent = await rig.add(30, U, urgent=True)
            rig.run()
            assert await wait_until(lambda: len(broker.received) == 3)
            await asyncio.sleep(1.0)  # give it every chance to send more than allowed
            sent.append(broker.max_unacked)
            broker.release()
            assert await rig.fwd.drain(30)
            broker.hold, broker.max_unacked = True, 0
            live = await rig.add(30)
            assert await wait_until(lambda: len(broker.received) == 33)
            await asyncio.sleep(1.0)
            sent.append(broker.max_unacked)
            broker.release()
            assert await rig.fwd.drain(30)
            return sent, broker.seqs(), urgent, live

    sent, seqs, urgent, live = asyncio.run(main())
    assert sent == [3, 3]
    assert seqs == urgent + live


def test_no_message_goes_twice_on_one_connection(tmp_path: Path) -> None:
    """The three streams (urgent, live, backlog) never overlap: with PUBACKs held, an
    urgent row among the backlog, and live rows sealed while the backlog's last row is
    still to go, each message is published once."""

    async def urgent_inside_the_backlog() -> list[int]:
        broker = ScriptedBroker(hold=True)
        async with Rig(tmp_path / "u", broker, max_inflight=16) as rig:
            await rig.add(5)
            await rig.add(2, U, urgent=True)
            rig.run()
            assert await wait_until(lambda: len(broker.received) >= 7)
            await asyncio.sleep(0.5)  # time for a second copy, if one were coming
            seqs = broker.seqs()
            broker.release()
            assert await rig.fwd.drain(15)
            return seqs

    async def live_behind_the_backlog() -> list[int]:
        broker = ScriptedBroker(hold=True)
        async with Rig(tmp_path / "l", broker, max_inflight=4) as rig:
            await rig.add(5)
            rig.run()
            assert await wait_until(lambda: len(broker.received) == 4)
            await rig.add(2)  # live: 6, 7
            broker.release()
            broker.hold = True  # the next window stays in flight
            assert await wait_until(lambda: len(broker.received) >= 7)
            await asyncio.sleep(0.5)
            seqs = broker.seqs()
            broker.release()
            assert await rig.fwd.drain(15)
            return seqs

    assert asyncio.run(urgent_inside_the_backlog()) == [6, 7, 1, 2, 3, 4, 5]
    assert asyncio.run(live_behind_the_backlog()) == [1, 2, 3, 4, 6, 7, 5]


def test_a_window_filled_by_urgent_rows_does_not_skip_the_backlog(tmp_path: Path) -> None:
    """Ten backlog rows and eight urgent ones, a window of 4: the urgent rows fill the
    first windows; the backlog is not passed over, and drain() is True only once every
    row went (not while backlog rows wait in the outbox)."""

    async def main() -> tuple[list[int], list[int], bool]:
        broker = ScriptedBroker()
        async with Rig(tmp_path, broker, max_inflight=4) as rig:
            await rig.add(10)
            await rig.add(8, U, urgent=True)
            rig.run()
            drained = await rig.fwd.drain(15)
            return broker.seqs(), await rig.rows(), drained

    seqs, left, drained = asyncio.run(main())
    assert drained and left == []
    assert seqs == list(range(11, 19)) + list(range(1, 11))


def test_an_outbox_that_fails_while_fetching_is_an_error_not_a_silent_spin(
    tmp_path: Path,
) -> None:
    """The outbox fails under the forwarder (here: closed) just as it fetches the next
    rows: the error is reported (the link goes down with it, as `edgegw status` shows),
    and the forwarder retries with backoff instead of spinning without a word."""

    async def main() -> tuple[str | None, bool]:
        broker = ScriptedBroker(hold=True)
        async with Rig(tmp_path, broker, max_inflight=2) as rig:
            await rig.add(5)
            rig.run()
            assert await wait_until(lambda: len(broker.received) == 2)
            await rig.ot.run(rig.ob.close)
            broker.release()  # the PUBACKs make room: the next fetch meets the failure
            await wait_until(lambda: not rig.fwd.stats.link_up, 10)
            return rig.fwd.stats.last_error, rig.fwd.stats.link_up

    why, up = asyncio.run(main())
    assert not up and why is not None and "outbox error" in why and "closed" in why, why


@pytest.mark.parametrize(
    ("window", "sent_first"),
    [(8, 5), (2, 2)],
    ids=["all-in-flight", "more-to-fetch"],  # the deletes go alone, or with the next fetch
)
def test_acknowledged_rows_that_cannot_be_deleted_yet_are_kept_and_deleted_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, window: int, sent_first: int
) -> None:
    """Another program holds the outbox's write lock (as a full disk would, the deletes
    fail) when the broker acknowledges messages: the failure is logged, nothing counts
    as acknowledged yet, and once the lock is gone the rows are deleted, without
    sending anything twice."""
    caplog.set_level(logging.ERROR, logger="edgegw.forwarder")

    async def main() -> tuple[list[int], list[int], int, int, bool]:
        broker = ScriptedBroker(hold=True)
        async with Rig(tmp_path, broker, max_inflight=window) as rig:
            await rig.add(5)
            rig.run()
            assert await wait_until(lambda: len(broker.received) == sent_first)
            locker = sqlite3.connect(tmp_path / "outbox.db", isolation_level=None)
            locker.execute("BEGIN IMMEDIATE")  # the write lock; readers go on (WAL)
            try:
                broker.release()
                said = "cannot delete"  # "... N acknowledged rows yet: ... database is locked"
                assert await wait_until(lambda: said in caplog.text, 60), caplog.text
                acked_while_locked = rig.fwd.stats.acked
            finally:
                locker.execute("ROLLBACK")
                locker.close()
            drained = await rig.fwd.drain(60)
            return broker.seqs(), await rig.rows(), acked_while_locked, rig.fwd.stats.acked, drained

    seqs, left, acked_while_locked, acked, drained = asyncio.run(main())
    assert acked_while_locked == 0 and acked == 5
    assert drained and left == [] and seqs == [1, 2, 3, 4, 5]


def test_an_old_refusal_of_another_message_is_no_evidence(tmp_path: Path) -> None:
    """Evidence against a message is counted from ITS first refusal. Seq 1 is refused
    once (2 goes first), then taken: two acks. After the connection drops, seq 3 (the only
    message) is refused four times, each before any ack on its connection: those acks
    of 1 and 2 came before its first refusal, so they are no evidence against it. It is
    kept and goes the fifth time, nothing is set aside, and 4 (sealed later) follows."""

    async def main() -> tuple[list[int], list[int], int]:
        broker = ScriptedBroker(
            puback=lambda seq, n: 0x80 if (seq == 1 and n == 1) or (seq == 3 and n <= 4) else 0
        )
        async with Rig(tmp_path, broker, max_inflight=1, reconnect_max_s=1) as rig:
            await rig.add(2)
            rig.run()
            assert await rig.fwd.drain(30), broker.seqs()
            connects = len(broker.connects)
            broker.kick()  # seq 3 will be the first message on a new connection
            assert await wait_until(lambda: len(broker.connects) > connects, 30)
            await rig.add(1)
            assert await wait_until(lambda: broker.seqs().count(3) == 5, 60), broker.seqs()
            await rig.add(1)
            assert await rig.fwd.drain(60), broker.seqs()
            return broker.seqs(), await rig.rows(), rig.fwd.stats.set_aside

    seqs, left, set_aside = asyncio.run(main())
    assert set_aside == 0 and left == []
    assert seqs == [1, 2, 1, 3, 3, 3, 3, 3, 4], seqs  # 2 goes first: 1 waits behind it


def test_a_message_refused_before_any_ack_waits_behind_the_others(tmp_path: Path) -> None:
    """Seq 1 is refused once (0x80), before the broker acknowledged anything on the
    connection: no evidence against it, but it must not hold up the stream. On the new
    connection the others go first (5 and 6, never sent yet, included), and 1 goes
    alone, last; nothing is set aside or left."""

    async def main() -> tuple[list[int], list[int], int]:
        broker = ScriptedBroker(puback=lambda seq, n: 0x80 if seq == 1 and n == 1 else 0)
        async with Rig(tmp_path, broker, max_inflight=4, reconnect_max_s=1) as rig:
            await rig.add(6)
            rig.run()
            assert await rig.fwd.drain(30), broker.seqs()
            return broker.seqs(), await rig.rows(), rig.fwd.stats.set_aside

    seqs, left, set_aside = asyncio.run(main())
    assert set_aside == 0 and left == []
    assert seqs[0] == 1 and seqs.count(1) == 2 and seqs[-1] == 1, seqs
    assert set(seqs) == set(range(1, 7)), seqs


def test_a_message_refused_first_without_evidence_then_with_it_is_set_aside(
    tmp_path: Path,
) -> None:
    """Seq 1 is refused every time: first before any ack (no evidence: it waits behind
    the others), then after the others were taken (evidence). Its strikes count from
    there: it is set aside with a drop record after exactly STRIKES more sends, and
    every other message is delivered."""

    async def main() -> tuple[list[int], list[int], int, list[tuple[int | None, str]]]:
        broker = ScriptedBroker(puback=lambda seq, n: 0x80 if seq == 1 else 0)
        async with Rig(tmp_path, broker, max_inflight=2, reconnect_max_s=1) as rig:
            await rig.add(4)
            rig.run()
            assert await rig.fwd.drain(60), broker.seqs()
            drops = [(d.first_seq, d.reason) for d in await rig.ot.run(rig.ob.pending_drops)]
            return broker.seqs(), await rig.rows(), rig.fwd.stats.set_aside, drops

    seqs, left, set_aside, drops = asyncio.run(main())
    # its first refusal always comes first (PUBACKs go in order): no evidence; then
    # exactly STRIKES refusals with evidence
    assert seqs[0] == 1 and seqs.count(1) == STRIKES + 1, seqs
    assert set_aside == 1 and left == [] and drops == [(1, SET_ASIDE_REASON)]
    assert {2, 3, 4} <= set(seqs)


def test_a_refusal_after_acks_on_the_same_connection_is_the_first_strike(
    tmp_path: Path,
) -> None:
    """One message in flight at a time (max_inflight 1, or a broker's Receive Maximum
    of 1): 1 and 2 are taken, then 3 is refused on the same connection. Those acks are
    evidence at once: 3 is set aside after exactly STRIKES sends, and the messages
    behind it go first, not after it. (They waited behind it for ever: with room for
    one message, the suspect went alone at once on every new connection, was refused
    before any ack, so no evidence ever came, and nothing behind it was sent.)"""

    async def main() -> tuple[list[int], list[int], int]:
        broker = ScriptedBroker(puback=lambda seq, n: 0x80 if seq == 3 else 0)
        async with Rig(tmp_path, broker, max_inflight=1, reconnect_max_s=1) as rig:
            await rig.add(6)
            rig.run()
            assert await rig.fwd.drain(60), broker.seqs()
            return broker.seqs(), await rig.rows(), rig.fwd.stats.set_aside

    seqs, left, set_aside = asyncio.run(main())
    assert seqs[:3] == [1, 2, 3] and seqs.count(3) == STRIKES, seqs
    assert set_aside == 1 and left == [] and set(seqs) == set(range(1, 7))
