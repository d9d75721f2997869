"""Every limit a broker states in CONNACK is shown where an operator looks (`edgegw
status`, metrics), and an Assigned Client Identifier is kept for the reconnects, so a
persistent session resumes; with a persistent session the gateway also says what a
restart would lose and how to keep it. The broker is the scripted MQTT 5 peer
(tests/mqttscript.py), since mosquitto states only some of these properties."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pytest

from gateway.commands.status import render
from gateway.config import UplinkConfig
from gateway.forwarder import Forwarder
from gateway.metrics import render_metrics
from gateway.outbox_thread import OutboxThread
from tests.mqttscript import ScriptedBroker, props

ASSIGNED = "srv-7f3a9c"


class Inlet:
    """A command inlet that subscribes (persistent session) and records nothing more."""

    topic = "edgegw/gw1/command"
    enabled = True
    session_expiry_s = 3600

    def __init__(self) -> None:
        self.subscribed_ok: list[bool] = []

    def offer(self, topic: str, payload: bytes, ack: Callable[[], None]) -> None:
        ack()

    def subscribed(self, ok: bool, why: str | None) -> None:
        self.subscribed_ok.append(ok)


async def until(cond: Callable[[], bool], timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout  # a bound only
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


@pytest.mark.parametrize("persistent", [True, False])
def test_connack_limits_are_shown_and_an_assigned_client_id_is_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, persistent: bool
) -> None:
    caplog.set_level(logging.INFO, logger="edgegw.forwarder")
    broker = ScriptedBroker(
        receive_maximum=20,
        connack_props=props(
            topic_alias_maximum=5,
            retain_available=False,
            server_keepalive=7,
            assigned_client_id=ASSIGNED,
            wildcard_available=False,
            shared_available=False,
            max_packet_size=100_000,
        ),
    )
    inlet = Inlet()

    async def main() -> Forwarder:
        await broker.start()
        ot = OutboxThread(tmp_path / "outbox.db")
        await ot.open()
        up = UplinkConfig(host="::1", port=broker.port, keepalive_s=30, reconnect_max_s=1)
        fwd = Forwarder(up, "edgegw-gw1", ot, commands=inlet if persistent else None)
        task = asyncio.create_task(fwd.run())
        try:
            assert await until(lambda: fwd.stats.link_up)
            broker.kick()  # the link drops: the next CONNECT must use the assigned id
            assert await until(lambda: len(broker.connect_packets) >= 2 and fwd.stats.link_up)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await ot.close()
            await broker.stop()
        return fwd

    fwd = asyncio.run(main())
    first, second = broker.connect_packets[:2]
    assert first.client_id == "edgegw-gw1" and first.keepalive == 30
    assert second.client_id == ASSIGNED  # the broker's name for the session
    assert second.clean_start is (not persistent)  # persistent: the session resumes
    if persistent:
        assert broker.subscriptions == ["edgegw/gw1/command"] * 2 and all(inlet.subscribed_ok)

    lim = fwd.stats.limits
    assert lim["client_id"] == ASSIGNED and lim["assigned_client_id"] == ASSIGNED
    assert (lim["server_keepalive_s"], lim["keepalive_s"]) == (7, 7)  # the broker's, in force
    assert lim["topic_alias_maximum"] == 5 and lim["retain_available"] is False
    assert lim["wildcard_subscription_available"] is False
    assert lim["shared_subscription_available"] is False
    assert (lim["receive_maximum"], lim["inflight_window"]) == (20, 20)

    # edgegw status: the limits and broker lines
    snap = {"time_ns": time.time_ns(), "uplink": asdict(fwd.stats)}
    shown = "\n".join(render(snap, now_ns=snap["time_ns"], width=200)[0])
    for part in (
        "keep-alive 7 s (the broker's)",
        "receive max 20",
        "packet ≤ 97.7 KiB",
        "topic aliases 5, retain no (both unused)",
        "wildcards no",
        "shared subscriptions no",
        f"client id '{ASSIGNED}' (assigned by the broker)",
    ):
        assert part in shown, (part, shown)

    # metrics
    text = render_metrics(lambda: snap).decode()
    for name, value in (
        ("keepalive_s", 7),
        ("server_keepalive_s", 7),
        ("topic_alias_maximum", 5),
        ("retain_available", 0),
        ("wildcard_subscription_available", 0),
        ("shared_subscription_available", 0),
        ("receive_maximum", 20),
        ("max_packet_size", 100_000),
    ):
        assert f'edgegw_uplink_limit{{limit="{name}"}} {float(value)}' in text, name
    assert f'edgegw_uplink_client_info{{assigned="true",client_id="{ASSIGNED}"}} 1.0' in text

    # what the gateway says about it: once, and with a persistent session, how to keep it
    said = [r for r in caplog.records if "assigned client id" in r.getMessage()]
    assert len(said) == 1, said
    if persistent:
        assert said[0].levelno == logging.WARNING
        assert f"set uplink.client_id: {ASSIGNED} to keep the session" in said[0].getMessage()
    else:
        assert said[0].levelno == logging.INFO
