"""The uplink against brokers as plants run them: a real mosquitto with a password file
and an ACL, with ``max_qos 0``, with ``max_packet_size``; MQTT 3.1.1; and amqtt, a
broker that speaks only MQTT 3.1.1. Pipeline, outbox and forwarder run as the daemon
wires them; the platform's receiver listens on a second, open listener. Every test
counts that nothing committed is lost and that the error says what to fix."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from drivers.contract import Batch
from gateway.commands.status import render
from gateway.config import UplinkConfig
from gateway.forwarder import Forwarder
from gateway.metrics import render_metrics
from gateway.mosquitto import Mosquitto
from gateway.outbox_thread import OutboxThread
from gateway.pipeline import Pipeline
from gateway.receiver import MqttReceiver, Receiver
from security import DeviceKey
from tests.brokers import Amqtt

GW = "gw1"
TOPIC = f"edgegw/{GW}/telemetry"


def make_receiver(key: DeviceKey) -> Receiver:
    """The platform side; the one place this module builds a receiver."""
    return Receiver({GW: key.public_key}, "edgegw")


@dataclass
class Gateway:
    """Pipeline → outbox → forwarder, wired as gateway/daemon.py wires them."""

    tmp: Path
    up: UplinkConfig
    key: DeviceKey
    problems: list[tuple[str, str]] = field(default_factory=list)
    polled: int = 0

    async def start(self) -> Gateway:
        self.ot = OutboxThread(self.tmp / "outbox.db")
        await self.ot.open()
        self.fwd = Forwarder(
            self.up,
            f"edgegw-{GW}",
            self.ot,
            on_problem=lambda kind, why: self.problems.append((kind, why)),
            on_set_aside=lambda: self.pipe.notify_drops(),
        )
        self.pipe = Pipeline(
            gw_id=GW,
            boot=1,
            topic=TOPIC,
            notice_topic=f"edgegw/{GW}/notice",
            key=self.key,
            outbox=self.ot,
            flush_window_s=0.05,
            max_points=100_000,
            on_sealed=self.fwd.wake,
            body_limit=self.fwd.body_limit,
        )
        self.tasks = [asyncio.create_task(self.pipe.run()), asyncio.create_task(self.fwd.run())]
        return self

    async def put(self, n_batches: int, points: int, value: Any = None) -> None:
        for b in range(n_batches):
            ts = time.time_ns()
            rs = [
                (f"plc/t{i}", ts, value if value is not None else float(b), 0)
                for i in range(points)
            ]
            await self.pipe.put(Batch("plc", rs))
            self.polled += points
            await asyncio.sleep(0.06)  # one window each

    async def rows(self) -> int:
        assert self.ot.outbox is not None
        return (await self.ot.run(self.ot.outbox.stats)).rows

    async def stop(self) -> None:
        await self.pipe.close()
        await self.tasks[0]
        self.tasks[1].cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.ot.close()


async def until(cond: Callable[[], bool] | Callable[[], Awaitable[bool]], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return True
        await asyncio.sleep(0.05)
    return False


def password_file(tmp: Path, text: str) -> Path:
    p = tmp / "mqtt-password"
    p.write_text(text + "\n")
    p.chmod(0o600)
    return p


@pytest.fixture
def key(tmp_path: Path) -> DeviceKey:
    return DeviceKey.load_or_create(tmp_path / "keys")[0]


@pytest.fixture
def login_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """mosquitto with a password file and an ACL that lets user gw write edgegw/gw1/#."""
    b = Mosquitto(
        host="::1",
        workdir=tmp_path / "broker",
        users={"gw": "s3cret pass", "other": "x"},
        acl="user gw\ntopic write edgegw/gw1/#\nuser other\ntopic write elsewhere/#\n",
        open_listener=True,
    )
    with b:
        yield b


@pytest.mark.parametrize("protocol", ["mqtt5", "mqtt311"])
def test_login_with_a_password_file_delivers_everything(
    tmp_path: Path, key: DeviceKey, login_broker: Mosquitto, protocol: str
) -> None:
    rx = make_receiver(key)
    assert login_broker.open_port is not None
    mr = MqttReceiver(rx, "::1", login_broker.open_port).start()
    up = UplinkConfig(
        host="::1",
        port=login_broker.port,
        protocol=protocol,
        username="gw",
        password_file=password_file(tmp_path, "s3cret pass"),
    )

    async def main() -> Gateway:
        gw = await Gateway(tmp_path, up, key).start()
        await gw.put(20, 50)
        assert await until(lambda: rx.stats.points_verified == gw.polled, 30), rx.stats
        assert await gw.fwd.drain(10)
        await gw.stop()
        return gw

    try:
        gw = asyncio.run(main())
    finally:
        mr.stop()
    assert gw.polled == 1000 and rx.stats.points_verified == 1000
    assert rx.received(GW) == [(1, rx.stats.messages_verified)]
    assert gw.fwd.stats.set_aside == 0 and gw.problems == []
    assert gw.fwd.stats.limits["protocol"] == protocol
    assert gw.fwd.stats.limits["announced"] is (protocol == "mqtt5")
    # the limits in force show in status and metrics
    snap = {"time_ns": time.time_ns(), "uplink": asdict(gw.fwd.stats)}
    text = render_metrics(lambda: snap).decode()
    assert 'edgegw_uplink_limit{limit="inflight_window"} 64.0' in text
    assert 'edgegw_uplink_limit{limit="max_message_bytes"} 262144.0' in text
    shown = "\n".join(render(snap, now_ns=snap["time_ns"], width=200)[0])
    assert f"limits   {protocol} · window 64" in shown
    assert ("max QoS 2" in shown) is (protocol == "mqtt5")


def test_a_wrong_password_is_one_clear_error_keeps_everything_and_heals(
    tmp_path: Path,
    key: DeviceKey,
    login_broker: Mosquitto,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Refused logins: one log line with the reason code and the fix, a retry pace that
    does not hammer the broker, nothing lost; a corrected password file is read at
    the next attempt, without a restart."""
    rx = make_receiver(key)
    assert login_broker.open_port is not None
    mr = MqttReceiver(rx, "::1", login_broker.open_port).start()
    pw = password_file(tmp_path, "wrong")
    up = UplinkConfig(
        host="::1", port=login_broker.port, username="gw", password_file=pw, reconnect_max_s=1
    )
    caplog.set_level(logging.INFO, logger="edgegw")

    async def main() -> Gateway:
        gw = await Gateway(tmp_path, up, key).start()
        await gw.put(10, 20)
        await asyncio.sleep(8)
        # every window kept (usually 10; two puts can share a window on a loaded machine)
        sealed = gw.pipe.stats.messages_sealed
        assert 8 <= sealed <= 10 and gw.fwd.stats.acked == 0 and await gw.rows() == sealed
        err = gw.fwd.stats.last_error or ""
        # mosquitto says Not authorized (0x87) to a wrong password; others say 0x86
        assert "Not authorized (0x87)" in err, err
        assert "uplink.username ('gw')" in err and str(pw) in err
        # A client that hammered would try ~16 times in 8 s at a 0.5 s pace; the
        # refusal pace (5 s, then 10 s, jittered) allows at most 3. Generous bound.
        attempts = [p for p in gw.problems if p[0] == "auth_failure"]
        assert 1 <= len(attempts) <= 3, attempts
        lines = [r for r in caplog.records if "refused the connection" in r.getMessage()]
        assert len([r for r in lines if r.levelno == logging.WARNING]) == 1, lines
        pw.write_text("s3cret pass\n")
        assert await until(lambda: rx.stats.points_verified == gw.polled, 40), gw.fwd.stats
        await gw.stop()
        return gw

    try:
        gw = asyncio.run(main())
    finally:
        mr.stop()
    assert rx.stats.points_verified == gw.polled == 200
    assert rx.received(GW) == [(1, gw.pipe.stats.messages_sealed)]


def test_an_acl_that_forbids_the_topic_keeps_every_message(
    tmp_path: Path, key: DeviceKey, login_broker: Mosquitto
) -> None:
    """MQTT 5: the broker refuses each publish (PUBACK 0x87). Nothing is deleted or set
    aside (it is the topic, not the message); the error names the ACL."""
    up = UplinkConfig(
        host="::1",
        port=login_broker.port,
        username="other",
        password_file=password_file(tmp_path, "x"),
        reconnect_max_s=1,
    )

    async def main() -> Gateway:
        gw = await Gateway(tmp_path, up, key).start()
        await gw.put(5, 10)
        assert await until(lambda: gw.fwd.stats.rejected > 0, 15)
        await asyncio.sleep(1)
        assert await gw.rows() == gw.pipe.stats.messages_sealed  # every window kept
        await gw.stop()
        return gw

    gw = asyncio.run(main())
    err = gw.fwd.stats.last_error or ""
    assert "Not authorized (0x87)" in err and "(the broker's ACL)" in err, err
    assert "write edgegw/<gateway id>/#" in err
    assert gw.fwd.stats.acked == 0 and gw.fwd.stats.set_aside == 0
    assert ("broker_refusal", err) in gw.problems


def test_a_qos0_only_broker_gets_nothing_and_a_clear_error(tmp_path: Path, key: DeviceKey) -> None:
    """Maximum QoS 0 in CONNACK: delivery could not be acknowledged, so nothing is
    published (mosquitto would disconnect a QoS 1 publish as a malformed packet)."""
    with Mosquitto(host="::1", workdir=tmp_path / "broker", max_qos=0) as b:
        up = UplinkConfig(host="::1", port=b.port, reconnect_max_s=1)

        async def main() -> Gateway:
            gw = await Gateway(tmp_path, up, key).start()
            await gw.put(5, 10)
            assert await until(lambda: bool(gw.problems), 10)
            await asyncio.sleep(1)
            assert await gw.rows() == gw.pipe.stats.messages_sealed  # every window kept
            await gw.stop()
            return gw

        gw = asyncio.run(main())
    assert gw.fwd.stats.published == 0 and gw.fwd.stats.disconnects == 0
    kind, why = gw.problems[0]
    assert kind == "broker_refusal"
    assert "allows only QoS 0" in why and "max_qos 1" in why
    assert gw.fwd.stats.limits["max_qos"] == 0
    log = (tmp_path / "broker" / "mosquitto.log").read_text()
    assert "Malformed" not in log  # we never sent what it forbids


def _seed(tmp: Path, key: DeviceKey, sizes: list[int]) -> int:
    """Messages sealed before any connect, with no size limit (as after a restart):
    one per size, each a single reading whose string value has that many bytes."""

    async def main() -> int:
        ot = OutboxThread(tmp / "outbox.db")
        await ot.open()
        pipe = Pipeline(
            gw_id=GW,
            boot=1,
            topic=TOPIC,
            notice_topic=f"edgegw/{GW}/notice",
            key=key,
            outbox=ot,
            flush_window_s=0.01,
            max_points=1,
        )
        for i, n in enumerate(sizes):
            await pipe._seal([(f"plc/s{i}", time.time_ns(), "v" * n, 0)])
        await ot.close()
        return len(sizes)

    return asyncio.run(main())


@pytest.mark.parametrize("protocol", ["mqtt5", "mqtt311"])
def test_a_broker_packet_limit_never_wedges_the_link(
    tmp_path: Path, key: DeviceKey, protocol: str
) -> None:
    """mosquitto max_packet_size 8192. A stored 20 KB message is set aside with a signed
    notice naming its seq (MQTT 5: at once, from CONNACK; MQTT 3.1.1: after it alone
    made the broker hang up 3 times while it takes smaller ones); the messages behind
    it arrive; new windows larger than the limit are split; a single reading too large
    for any message arrives as a bad reading saying so."""
    seeded = _seed(tmp_path, key, [100, 20_000, 100])
    with Mosquitto(
        host="::1", workdir=tmp_path / "broker", max_packet_size=8192, open_listener=True
    ) as b:
        rx = make_receiver(key)
        assert b.open_port is not None
        mr = MqttReceiver(rx, "::1", b.open_port).start()
        up = UplinkConfig(host="::1", port=b.port, protocol=protocol, reconnect_max_s=1)
        if protocol == "mqtt311":
            up = up.model_copy(update={"max_message_bytes": 7000})  # the broker cannot say

        async def main() -> Gateway:
            gw = await Gateway(tmp_path, up, key).start()
            await gw.put(3, 2000)  # ~12 KB per window (payload version 2): split in 2 or more
            await gw.pipe.put(Batch("plc", [("plc/blob", time.time_ns(), "z" * 50_000, 0)]))
            gw.polled += 1
            assert await until(lambda: rx.stats.points_verified == seeded - 1 + gw.polled, 60), (
                rx.stats,
                gw.fwd.stats,
            )
            assert await until(lambda: rx.stats.dropped_seqs == 1, 10)
            await gw.stop()
            return gw

        try:
            gw = asyncio.run(main())
        finally:
            mr.stop()
    assert gw.fwd.stats.set_aside == 1
    assert rx.stats.dropped_points == 1  # the one reading in seq 2, named in the notice
    received = rx.received(GW)
    assert len(received) == 1 and received[0][0] == 1  # no unexplained gap
    assert rx.stats.gaps == 0 and rx.stats.signature_failures == 0
    assert gw.pipe.stats.messages_sealed > 3 + 1  # windows were split
    assert gw.pipe.stats.points_sealed == gw.polled


def test_amqtt_speaks_only_311(tmp_path: Path, key: DeviceKey) -> None:
    """amqtt (a broker from PyPI) refuses MQTT 5: one clear error naming the fix; with
    uplink.protocol mqtt311 everything arrives, in order, deleted on PUBACK."""
    with Amqtt(tmp_path) as broker:
        rx = make_receiver(key)
        sub = Subscriber311(rx, broker.port).start()

        async def main(protocol: str) -> Gateway:
            up = UplinkConfig(host="::1", port=broker.port, protocol=protocol, reconnect_max_s=1)
            gw = await Gateway(tmp_path / protocol, up, key).start()
            await gw.put(10, 30)
            if protocol == "mqtt5":
                assert await until(lambda: bool(gw.problems), 10)
            else:
                assert await until(lambda: rx.stats.points_verified == gw.polled, 30)
                assert await gw.fwd.drain(10)
            await gw.stop()
            return gw

        try:
            (tmp_path / "mqtt5").mkdir()
            (tmp_path / "mqtt311").mkdir()
            five = asyncio.run(main("mqtt5"))
            eleven = asyncio.run(main("mqtt311"))
        finally:
            sub.stop()
    kind, why = five.problems[0]
    assert kind == "broker_refusal" and "Unsupported protocol version (0x84)" in why
    assert "set uplink.protocol: mqtt311" in why
    assert five.fwd.stats.published == 0
    assert rx.stats.points_verified == eleven.polled == 300
    assert eleven.fwd.stats.acked == 10


class Subscriber311:
    """The platform's side on a 3.1.1-only broker: paho in MQTT 3.1.1 feeding the receiver."""

    def __init__(self, rx: Receiver, port: int) -> None:
        self.rx, self.port = rx, port
        self.ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("edgegw/+/+", qos=1)
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_message = lambda c, u, m: self.rx.handle(m.topic, m.payload)

    def start(self) -> Subscriber311:
        self.client.connect("::1", self.port)
        self.client.loop_start()
        assert self.ready.wait(10), "no SUBACK from amqtt"
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
