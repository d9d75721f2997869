"""Forwarder rules that the third mutation pass (session 6, docs/mutation/forwarder.md)
showed no test judged: how a session learns that its connection ended, and what it is
told. paho reports the end of a connection twice (its on_disconnect, then the end of the
network thread); each test here fails with mutants of gateway/forwarder.py that the other
forwarder tests let through, because one report covered for the other. Against the
scripted broker of tests/mqttscript.py or a plain TCP server, real SQLite files."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

from gateway.config import UplinkConfig
from gateway.forwarder import SET_ASIDE_REASON, Forwarder
from gateway.outbox_thread import OutboxThread
from tests.gateway.test_forwarder_mutants2 import uplink_to_plain_server
from tests.gateway.test_forwarder_rules import Rig, body, wait_until
from tests.mqttscript import ScriptedBroker, props
from tests.tlscerts import make_pki

T = "edgegw/gw1/telemetry"
CMD = "edgegw/gw1/cmd"


def padded(extra: int) -> Callable[[int], bytes]:
    """A body the scripted broker still reads as its seq, ``extra`` bytes longer."""
    return lambda seq: str(seq).encode() + b" " * extra


def test_a_broker_that_hangs_up_before_connack_gets_the_hint(tmp_path: Path) -> None:
    """A server that reads CONNECT and closes the connection (a TLS port spoken to in
    plain TCP, or a broker that does not speak MQTT 5): each attempt fails at once with
    the error that says what usually causes it, and with how the connection ended, as
    paho's on_disconnect said it (its reason stands). The uplink keeps trying and the
    row stays. (With the connect future resolved with nothing, the attempt failed as an
    internal error; with no reason, the error said "None".)"""
    accepted = 0

    async def hang_up(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        with contextlib.suppress(Exception):
            await r.read(100)  # the CONNECT
        w.close()

    async def main() -> tuple[str | None, list[int], bool]:
        async with uplink_to_plain_server(tmp_path, hang_up) as (fwd, ot, task):
            assert await wait_until(lambda: accepted >= 3 or task.done(), 30), accepted
            return (
                fwd.stats.last_error,
                [r.seq for r in await ot.run(ot.outbox.pending)],
                task.done(),
            )

    why, left, ended = asyncio.run(main())
    assert not ended and left == [1]
    assert why is not None
    assert why.startswith("the broker closed the connection before answering CONNECT ("), why
    assert "(disconnected: " in why, why  # paho's on_disconnect, not "None"
    assert "set uplink.tls" in why and "uplink.protocol: mqtt311" in why, why


def test_a_disconnect_0x95_while_a_suspect_is_alone_sets_it_aside_at_once(
    tmp_path: Path,
) -> None:
    """The broker takes small messages and answers a 2 kB one with DISCONNECT 0x95
    (Packet too large), as a broker with a packet limit it did not announce does. The
    first time seq 2 went with others: it becomes a suspect. The second time it goes
    alone, and the broker says 0x95 again: that is the broker's verdict on this message,
    so it is set aside at once with a notice (not after STRIKES lone sends: each of those
    costs a connection), and the link-down reason names the broker's code. Seqs 1 and 3
    arrive; nothing is left."""
    links: list[tuple[bool, str | None]] = []
    problems: list[tuple[str, str]] = []

    async def main() -> tuple[list[int], list[int], int, list[tuple[int | None, str]]]:
        broker = ScriptedBroker(disconnect=lambda seq, n: 0x95 if seq == 2 else None)
        async with Rig(tmp_path, broker, max_inflight=4, reconnect_max_s=1) as rig:
            rig.fwd.on_link = lambda up, why: links.append((up, why))
            rig.fwd.on_problem = lambda kind, why: problems.append((kind, why))
            for extra in (0, 2000, 0):
                await rig.ot.run(rig.ob.append, T, padded(extra), priority=1)
            rig.run()
            assert await wait_until(lambda: rig.fwd.stats.set_aside == 1, 40), broker.seqs()
            assert await rig.fwd.drain(15)
            drops = [(d.first_seq, d.reason) for d in await rig.ot.run(rig.ob.pending_drops)]
            return broker.seqs(), await rig.rows(), rig.fwd.stats.set_aside, drops

    seqs, left, set_aside, drops = asyncio.run(main())
    assert left == [] and set_aside == 1 and drops == [(2, SET_ASIDE_REASON)]
    assert seqs.count(2) == 2, seqs  # with others, then alone once: set aside
    assert 1 in seqs and 3 in seqs, seqs
    assert problems == [("message_set_aside", f"seq 2: {SET_ASIDE_REASON}")]
    downs = [why or "" for up, why in links if not up]
    assert any("broker disconnected us" in w and "(0x95)" in w for w in downs), downs


class Inlet:
    """The command inlet's side (gateway/downlink/ in the daemon): what it was given."""

    topic = CMD

    def __init__(self, enabled: bool = True) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.subscribed_ok: list[bool] = []
        self._enabled = enabled

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def session_expiry_s(self) -> int:
        return 60

    def offer(self, topic: str, payload: bytes, ack: Callable[[], None]) -> None:
        self.got.append((topic, payload))
        ack()

    def subscribed(self, ok: bool, why: str | None) -> None:
        self.subscribed_ok.append(ok)


def test_a_command_on_a_topic_that_is_not_utf8_is_acknowledged_and_dropped(
    tmp_path: Path,
) -> None:
    """The broker delivers a command whose topic is not UTF-8 (MQTT forbids it; not
    every broker checks). paho raises when the topic is read: the message is dropped
    with an error and acknowledged (else the broker delivers it again on every
    connection, each ending the same way); the link stays up and rows still go."""
    links: list[tuple[bool, str | None]] = []
    inlet = Inlet()

    async def main() -> tuple[bool, list[int], list[int], int, list[tuple[int, int]]]:
        broker = ScriptedBroker()
        async with Rig(tmp_path, broker, max_inflight=4, reconnect_max_s=1) as rig:
            rig.fwd.commands = inlet
            rig.fwd.on_link = lambda up, why: links.append((up, why))
            await rig.add(2)
            rig.run()
            assert await rig.fwd.drain(15)
            assert await wait_until(lambda: inlet.subscribed_ok == [True])
            broker.deliver_raw(CMD.encode() + b"/\xff", b"x", 7)
            assert await wait_until(lambda: (1, 7) in broker.pubacks, 10), broker.pubacks
            await rig.add(2)
            drained = await rig.fwd.drain(15)
            return drained, await rig.rows(), broker.seqs(), len(broker.connects), links

    drained, left, seqs, connects, ups = asyncio.run(main())
    assert drained and left == [] and connects == 1
    assert seqs == [1, 2, 3, 4], seqs
    assert inlet.got == []  # it never reached the inlet
    assert [up for up, _ in ups] == [True], ups


class _FailingInlet(Inlet):
    """An inlet whose topic cannot be read once subscribed: the broker's refusal of the
    subscription makes on_subscribe (in paho's network thread) raise, an unexpected
    error that ends the thread without on_disconnect."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    @property  # type: ignore[override]
    def topic(self) -> str:
        self.reads += 1
        if self.reads > 1:
            raise RuntimeError("injected: the inlet's topic cannot be read")
        return CMD


def test_a_network_thread_that_dies_without_on_disconnect_ends_the_session(
    tmp_path: Path,
) -> None:
    """paho's network thread dies of an unexpected error (injected: in on_subscribe)
    without calling on_disconnect: only the end of the thread tells the session. The
    session must end (the reason names the thread's failure) and the next connection
    deliver what was committed after: with the end not reported, the rows went into a
    client nobody ran, and the uplink waited forever."""
    links: list[tuple[bool, str | None]] = []
    inlet = _FailingInlet()

    async def main() -> tuple[bool, list[int], list[int], int]:
        broker = ScriptedBroker(suback=0x87)  # the subscription refused: on_subscribe reads
        async with Rig(tmp_path, broker, max_inflight=4, reconnect_max_s=1) as rig:
            rig.fwd.commands = inlet
            rig.fwd.on_link = lambda up, why: links.append((up, why))
            await rig.add(2)
            rig.run()
            assert await wait_until(lambda: any(not up for up, _ in links), 10), links
            inlet.reads = -100  # the topic reads again: the next sessions stay up
            await rig.add(2)
            drained = await rig.fwd.drain(15)
            return drained, await rig.rows(), broker.seqs(), len(broker.connects)

    drained, left, seqs, connects = asyncio.run(main())
    assert drained and left == [] and connects >= 2
    assert sorted(set(seqs)) == [1, 2, 3, 4], seqs
    downs = [why or "" for up, why in links if not up]
    assert "network thread failed" in downs[0], downs
    assert "injected" in downs[0], downs


def test_a_lone_suspect_whose_connections_end_is_set_aside_after_strikes_lone_sends(
    tmp_path: Path,
) -> None:
    """As above, but the broker ends the connection with a code that says nothing about
    the message (0x89 Server busy) each time the 2 kB seq 2 arrives. With the others it
    becomes a suspect (larger than anything acknowledged); then each lone send that ends
    the connection is one strike, and after STRIKES (3) it is set aside with a notice:
    seq 2 reaches the broker exactly 1 + 3 times. (Sooner would drop a message over a
    flaky link; never would reconnect forever, the suspect never isolated.)"""

    async def main() -> tuple[list[int], list[int], int]:
        broker = ScriptedBroker(disconnect=lambda seq, n: 0x89 if seq == 2 else None)
        async with Rig(tmp_path, broker, max_inflight=4, reconnect_max_s=1) as rig:
            for extra in (0, 2000, 0):
                await rig.ot.run(rig.ob.append, T, padded(extra), priority=1)
            rig.run()
            assert await wait_until(lambda: rig.fwd.stats.set_aside == 1, 60), broker.seqs()
            assert await rig.fwd.drain(15)
            await asyncio.sleep(0.3)  # time for another send of seq 2, if one were coming
            return broker.seqs(), await rig.rows(), rig.fwd.stats.set_aside

    seqs, left, set_aside = asyncio.run(main())
    assert left == [] and set_aside == 1
    assert seqs.count(2) == 4, seqs
    assert 1 in seqs and 3 in seqs, seqs


def test_a_lone_suspect_without_evidence_against_it_is_never_set_aside(
    tmp_path: Path,
) -> None:
    """Seq 1 (100 bytes) is refused (0x80) by a broker that has acknowledged nothing:
    held back and sent alone next time, though nothing shows the message is at fault.
    Then three connections end (0x89) while it is in flight, the first with it alone:
    with no acknowledged message to compare it with, those are no strikes. The fifth
    send is acknowledged: nothing set aside, the uplink still running. (Counting them set
    seq 1 aside; a failure to forget its strikes ended run() with a KeyError.)"""

    async def main() -> tuple[list[int], list[int], int, bool]:
        broker = ScriptedBroker(
            puback=lambda seq, n: 0x80 if n == 1 else 0,
            disconnect=lambda seq, n: 0x89 if n in (2, 3, 4) else None,
        )
        async with Rig(tmp_path, broker, max_inflight=4, reconnect_max_s=1) as rig:
            await rig.ot.run(rig.ob.append, T, padded(100), priority=1)
            rig.run()
            assert await wait_until(lambda: rig.fwd.stats.acked == 1 or rig.task.done(), 40)
            assert await rig.fwd.drain(15)
            return broker.seqs(), await rig.rows(), rig.fwd.stats.set_aside, rig.task.done()

    seqs, left, set_aside, ended = asyncio.run(main())
    assert not ended and left == [] and set_aside == 0
    assert seqs == [1, 1, 1, 1, 1], seqs


def test_a_lone_suspect_no_larger_than_an_acknowledged_message_gets_no_strike(
    tmp_path: Path,
) -> None:
    """Seq 1 is acknowledged; seq 2, of the same size, is refused once (0x80) after
    that ack: a suspect, sent alone next time. Two connections then end (0x89) while
    seq 2 is in flight, the first with it alone. A message no larger than one the broker
    acknowledged is not what it refuses: no strikes, and the fourth send is acknowledged
    (counting them set seq 2 aside after its second lone send)."""

    async def main() -> tuple[list[int], list[int], int]:
        broker = ScriptedBroker(
            puback=lambda seq, n: 0x80 if seq == 2 and n == 1 else 0,
            disconnect=lambda seq, n: 0x89 if seq == 2 and n in (2, 3) else None,
        )
        async with Rig(tmp_path, broker, max_inflight=4, reconnect_max_s=1) as rig:
            await rig.add(2)
            rig.run()
            assert await wait_until(lambda: rig.fwd.stats.acked == 2, 40), broker.seqs()
            assert await rig.fwd.drain(15)
            return broker.seqs(), await rig.rows(), rig.fwd.stats.set_aside

    seqs, left, set_aside = asyncio.run(main())
    assert left == [] and set_aside == 0
    assert seqs == [1, 2, 2, 2, 2], seqs


def test_a_message_of_exactly_the_body_limit_is_sent_not_set_aside(tmp_path: Path) -> None:
    """The broker announces a Maximum Packet Size of 1024 bytes; once connected, rows
    are sealed to ``body_limit`` as the pipeline does. A row of exactly that size fits
    and is sent (set aside, every full-size window would be dropped); a row clearly
    larger (10 bytes more than the limit) is set aside, and so is a second one later:
    the uplink's count of set-aside messages says 2."""

    def sized(n: int) -> Callable[[int], bytes]:
        return lambda seq: str(seq).zfill(n).encode()

    async def main() -> tuple[list[int], list[int], int, int]:
        broker = ScriptedBroker(connack_props=props(max_packet_size=1024))
        async with Rig(tmp_path, broker) as rig:
            rig.run()
            assert await wait_until(lambda: rig.fwd.stats.link_up)
            limit = rig.fwd.body_limit(T)
            for n in (limit, limit + 10, limit):
                await rig.ot.run(rig.ob.append, T, sized(n), priority=1)
            rig.fwd.wake()
            assert await rig.fwd.drain(15)
            first = rig.fwd.stats.set_aside
            await rig.ot.run(rig.ob.append, T, sized(limit + 10), priority=1)
            rig.fwd.wake()
            assert await rig.fwd.drain(15)
            return broker.seqs(), await rig.rows(), [first, rig.fwd.stats.set_aside], limit

    seqs, left, set_aside, limit = asyncio.run(main())
    assert limit < 1024 - 20  # the broker's limit applies (topic and headers included)
    assert seqs == [1, 3] and left == [] and set_aside == [1, 2]


def test_a_disabled_command_inlet_gets_no_subscription_and_no_session(tmp_path: Path) -> None:
    """The daemon always hands the forwarder its downlink; with commands off (not
    configured, or their state file unusable) ``enabled`` is False. Then the connection
    starts clean and subscribes to nothing: no command reaches a gateway whose commands
    are off, and the broker keeps no session for it."""
    inlet = Inlet(enabled=False)

    async def main() -> tuple[list[str], bool, list[int]]:
        broker = ScriptedBroker()
        async with Rig(tmp_path, broker) as rig:
            rig.fwd.commands = inlet
            await rig.add(1)
            rig.run()
            assert await rig.fwd.drain(15)
            await asyncio.sleep(0.3)  # time for a SUBSCRIBE, if one were coming
            return broker.subscriptions, broker.connect_packets[0].clean_start, broker.seqs()

    subscriptions, clean, seqs = asyncio.run(main())
    assert subscriptions == [] and clean and seqs == [1]
    assert inlet.subscribed_ok == []


def test_a_stop_while_acknowledged_rows_are_being_deleted_stops_the_uplink(
    tmp_path: Path,
) -> None:
    """The uplink task is cancelled (the daemon stops) while the pump waits for the
    outbox thread to delete an acknowledged row (held up here by a slow call before it,
    as a loaded SD card holds it up). run() must end, cancelled, and the row be deleted
    all the same; it swallowed the cancellation when keeping the acks for later failed,
    and went on reconnecting: a stop that never ends."""

    async def main() -> tuple[bool, bool, list[int]]:
        broker = ScriptedBroker(hold=True)
        async with Rig(tmp_path, broker, max_inflight=4) as rig:
            await rig.add(1)
            rig.run()
            assert await wait_until(lambda: len(broker.received) == 1)
            gate = threading.Event()
            blocker = asyncio.create_task(rig.ot.run(gate.wait, 30))
            await asyncio.sleep(0.1)  # the outbox thread is now in gate.wait
            broker.release()  # the PUBACK: the pump asks the outbox thread to delete seq 1
            assert await wait_until(lambda: not rig.fwd._inflight)
            await asyncio.sleep(0.3)  # the pump is waiting for the delete
            rig.task.cancel()
            await asyncio.sleep(0.1)
            gate.set()
            await blocker
            await asyncio.wait({rig.task}, timeout=10)  # a bound, not a timing
            done, cancelled = rig.task.done(), rig.task.cancelled()
            return done, cancelled, await rig.rows()

    done, cancelled, left = asyncio.run(main())
    assert done and cancelled
    assert left == []


def test_a_certificate_the_uplink_does_not_trust_is_not_blamed_on_a_plain_port(
    tmp_path: Path,
) -> None:
    """The broker's TLS port presents a certificate from a CA the gateway does not trust
    (uplink.tls names another CA). Each failed handshake is a ``tls_failure`` for the
    audit log whose reason is the verification failure; it must not say that the port
    does not speak TLS and to remove uplink.tls (that hint is for a plain port only: here
    it would advise turning TLS off over a certificate problem)."""
    pki = make_pki(tmp_path / "pki")
    problems: list[tuple[str, str]] = []

    async def tls_port(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await r.read(100)
        w.close()

    async def main() -> list[int]:
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(pki.server_cert, pki.server_key)
        server = await asyncio.start_server(tls_port, "::1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        ot = OutboxThread(tmp_path / "outbox.db")
        ob = await ot.open()
        up = UplinkConfig(host="::1", port=port, reconnect_max_s=1)
        tls = ssl.create_default_context(cafile=str(pki.rogue_ca))
        fwd = Forwarder(up, "gw1", ot, tls, on_problem=lambda k, w: problems.append((k, w)))
        await ot.run(ob.append, T, body, priority=1)
        task = asyncio.create_task(fwd.run())
        try:
            assert await wait_until(lambda: len(problems) >= 2, 15), problems
            return [r.seq for r in await ot.run(ob.pending, 0, 10)]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await ot.close()
            server.close()

    left = asyncio.run(main())
    assert left == [1]
    assert {kind for kind, _ in problems} == {"tls_failure"}, problems
    why = problems[0][1]
    assert "CERTIFICATE_VERIFY_FAILED" in why.upper(), why
    assert "does not speak TLS" not in why and "remove uplink.tls" not in why, why


def test_two_messages_the_broker_keeps_refusing_are_both_set_aside(tmp_path: Path) -> None:
    """The broker refuses seqs 3 and 6 every time (0x80) and takes the others. Each is
    set aside after its strikes, one after the other, each with its drop record; the
    rest arrive and the outbox empties. (Once the first was set aside, the list of
    condemned messages was gone: the second refusal raised in the PUBACK callback, the
    message stayed in the outbox unsent, and drain() said True all the same.)"""

    async def main() -> tuple[list[int], list[int], int, list[int | None]]:
        broker = ScriptedBroker(puback=lambda seq, n: 0x80 if seq in (3, 6) else 0)
        async with Rig(tmp_path, broker, max_inflight=2, reconnect_max_s=1) as rig:
            await rig.add(8)
            rig.run()
            assert await wait_until(lambda: rig.fwd.stats.set_aside == 2, 60), broker.seqs()
            assert await rig.fwd.drain(15)
            drops = [d.first_seq for d in await rig.ot.run(rig.ob.pending_drops)]
            return broker.seqs(), await rig.rows(), rig.fwd.stats.set_aside, drops

    seqs, left, set_aside, drops = asyncio.run(main())
    assert left == [] and set_aside == 2 and sorted(drops) == [3, 6], drops
    assert set(seqs) - {3, 6} == {1, 2, 4, 5, 7, 8}, seqs


def test_a_broker_that_allows_qos_1_at_most_gets_everything(tmp_path: Path) -> None:
    """The broker announces Maximum QoS 1 in CONNACK (as AWS IoT Core and others do):
    QoS 1 is all the forwarder needs, so everything is sent and acknowledged. Only a
    broker that allows QoS 0 alone is refused."""
    problems: list[tuple[str, str]] = []

    async def main() -> tuple[list[int], list[int], bool]:
        broker = ScriptedBroker(connack_props=props(max_qos=1))
        async with Rig(tmp_path, broker) as rig:
            rig.fwd.on_problem = lambda kind, why: problems.append((kind, why))
            await rig.add(3)
            rig.run()
            drained = await rig.fwd.drain(15)
            return broker.seqs(), await rig.rows(), drained

    seqs, left, drained = asyncio.run(main())
    assert drained and seqs == [1, 2, 3] and left == [] and problems == []
