"""The MQTT shell with a real mosquitto: a message is acknowledged only after its store
committed (a store that fails leaves it unacknowledged, and the broker delivers it again),
nothing raised stops reception, and a dead network thread is visible."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.mosquitto import Mosquitto
from gateway.receiver import MqttReceiver, Receiver, SqliteStore, StoreError
from security import DeviceKey
from tests.gateway.test_receiver import msg

TOPIC = "edgegw/gw1/telemetry"


class FailingStore(SqliteStore):
    """A real SQLite store whose commits fail while ``failing`` is set (a full disk, say):
    an I/O seam, as in Vector's disk-buffer tests."""

    failing = False

    @contextlib.contextmanager
    def batch(self) -> Iterator:  # type: ignore[override]
        with super().batch() as b:
            yield b
            if self.failing:
                raise StoreError("disk full (injected)")


def publish_all(port: int, bodies: list[bytes]) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.connect("::1", port)
    c.loop_start()
    try:
        for b in bodies:
            c.publish(TOPIC, b, qos=1).wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()


def wait(cond, timeout: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_nothing_is_acknowledged_before_it_is_stored(tmp_path: Path) -> None:
    key, _ = DeviceKey.load_or_create(tmp_path / "gw")
    store = FailingStore(tmp_path / "rx.db")
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    with Mosquitto(host="::1", workdir=tmp_path / "broker") as broker:
        mr = MqttReceiver(rx, "::1", broker.port, client_id="rx-ack", session_expiry_s=600)
        mr.start()
        try:
            publish_all(broker.port, [msg(key, s) for s in range(1, 11)])
            assert wait(lambda: rx.received("gw1") == [(1, 10)])
            store.failing = True
            publish_all(broker.port, [msg(key, s) for s in range(11, 21)])
            assert wait(lambda: rx.stats.store_errors >= 1)
            time.sleep(0.5)
            assert rx.received("gw1") == [(1, 10)]  # nothing committed while failing
            store.failing = False
            # the shell reconnects, the broker re-delivers what was never acknowledged
            assert wait(lambda: (mr.supervise(), rx.received("gw1"))[1] == [(1, 20)], 30), (
                rx.received("gw1"),
                rx.stats,
            )
            assert rx.stats.messages_verified == 20
            assert mr.health().ok and mr.health().connected
        finally:
            mr.stop()
    store.close()


def test_a_stopped_network_thread_is_visible(tmp_path: Path, broker: Mosquitto) -> None:
    key, _ = DeviceKey.load_or_create(tmp_path / "gw")
    rx = Receiver({"gw1": key.public_key}, "edgegw")
    mr = MqttReceiver(rx, "::1", broker.port).start()
    assert mr.health().ok
    mr.client.loop_stop()  # what an exception escaping into paho's thread used to cause
    assert not mr.health().ok
    mr.stop()
