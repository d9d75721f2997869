"""paho's network loop in a thread of our own (gateway/mqttlink.py ``NetworkThread``),
against a real mosquitto on [::1]: it sleeps a quarter of the keep-alive instead of
waking every second, so these check what that must not cost: the keep-alive holds on
an idle link, a session still ends at once however long the keep-alive, and a thread
that ends on its own (here: a callback that raises) is logged and reported."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

import gateway.forwarder as fwd_mod
from gateway.config import UplinkConfig
from gateway.forwarder import Forwarder
from gateway.mosquitto import Mosquitto
from gateway.mqttlink import NetworkThread, select_timeout
from gateway.outbox_thread import OutboxThread


async def until(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout  # a bound only: a loaded machine is slow
    while not cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def test_the_wait_follows_the_keepalive() -> None:
    assert select_timeout(30) == 7.5  # a PINGREQ within 1.25 keep-alives; brokers wait 1.5
    assert select_timeout(5) == 1.25
    assert select_timeout(0) == 3600.0  # no keep-alive: nothing is due without traffic


def test_an_idle_link_stays_up_past_twice_its_keepalive(
    tmp_path: Path, broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep-alive 6 s, nothing to send for 14 s: the link stays up, and paho sent a
    PINGREQ before 1.5 keep-alives had passed without a packet from us (after which a
    broker may close the link; mosquitto 2.0 is more lenient than that, so the gaps are
    read from paho's own log of what it sent)."""
    keepalive = 6
    sent: list[tuple[float, str]] = []  # (time.monotonic(), what paho says it sent)
    made = fwd_mod.new_client

    def logged_client(*args: Any, **kwargs: Any) -> mqtt.Client:
        c = made(*args, **kwargs)
        c.on_log = lambda _c, _u, _lvl, buf: (
            sent.append((time.monotonic(), buf)) if buf.startswith("Sending") else None
        )
        return c

    monkeypatch.setattr(fwd_mod, "new_client", logged_client)

    async def main() -> tuple[int, int, bool, float]:
        ot = OutboxThread(tmp_path / "outbox.db")
        await ot.open()
        up = UplinkConfig(host="::1", port=broker.port, keepalive_s=keepalive)
        fwd = Forwarder(up, "ka1", ot)
        task = asyncio.create_task(fwd.run())
        try:
            await until(lambda: fwd.stats.link_up, 30, "never connected")
            await asyncio.sleep(2 * keepalive + 2)
            return fwd.stats.connects, fwd.stats.disconnects, fwd.stats.link_up, time.monotonic()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await ot.close()

    connects, disconnects, link_up, end = asyncio.run(main())
    assert (connects, disconnects, link_up) == (1, 0, True)
    pings = [t for t, what in sent if what.startswith("Sending PINGREQ")]
    assert len(pings) >= 2, sent
    times = [t for t, _ in sent if t <= end]
    gaps = [b - a for a, b in itertools.pairwise(times)] + [end - times[-1]]
    # the protocol's bound, not a speed: the thread wakes at 1.25 keep-alives at most
    assert max(gaps) < 1.5 * keepalive, (gaps, sent)


def test_a_session_ends_at_once_with_a_long_keepalive(tmp_path: Path, broker: Mosquitto) -> None:
    """Keep-alive one hour: the network thread sleeps 15 minutes at a time, and ending
    the session (a stop, a reload) still wakes it, sends DISCONNECT and ends it."""

    async def main() -> float:
        ot = OutboxThread(tmp_path / "outbox.db")
        await ot.open()
        up = UplinkConfig(host="::1", port=broker.port, keepalive_s=3600)
        fwd = Forwarder(up, "ka2", ot)
        task = asyncio.create_task(fwd.run())
        try:
            await until(lambda: fwd.stats.link_up, 30, "never connected")
            await asyncio.sleep(0.5)  # the thread is asleep in its select now
        finally:
            t0 = time.monotonic()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            took = time.monotonic() - t0
            await ot.close()
        return took

    took = asyncio.run(main())
    # a bound that catches the blow-up only: without the wake it waits 900 s
    assert took < 20, took
    assert not [t for t in threading.enumerate() if t.name == "mqtt_link"]


def test_a_thread_that_fails_is_logged_and_reported(
    broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    """A callback that raises ends paho's loop: the error is logged with its traceback
    and the owner is told (``on_end``), so a session never waits on a dead thread."""
    ended: list[str] = []
    done = threading.Event()

    def on_end(why: str) -> None:
        ended.append(why)
        done.set()

    def on_connect(*_: object) -> None:
        raise RuntimeError("seeded bug in on_connect")

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ka3", protocol=mqtt.MQTTv5)
    c.on_connect = on_connect
    c.connect("::1", broker.port, 30)
    net = NetworkThread(c, on_end)
    with caplog.at_level(logging.ERROR, logger="edgegw.mqttlink"):
        net.start()
        assert done.wait(20), "the failure was not reported"  # a bound only
        net.stop()
    assert len(ended) == 1 and "seeded bug in on_connect" in ended[0], ended
    assert c.socket() is None  # stop() still sent the DISCONNECT, and the link is closed
    failed = [r for r in caplog.records if r.exc_info and "seeded bug" in str(r.exc_info[1])]
    assert len(failed) == 1, caplog.records


def test_stop_is_not_reported_as_an_end(broker: Mosquitto) -> None:
    """``on_end`` is for a thread that ends on its own: a stop the owner asked for sends
    DISCONNECT and is not reported back."""
    ended: list[str] = []
    connected = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ka4", protocol=mqtt.MQTTv5)
    c.on_connect = lambda *_: connected.set()
    c.connect("::1", broker.port, 30)
    net = NetworkThread(c, ended.append)
    net.start()
    assert connected.wait(20)  # a bound only
    net.stop()
    assert ended == [] and c.socket() is None  # closed by the DISCONNECT it sent
