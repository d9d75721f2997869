"""Hostile devices on raw sockets (tests/drivers/modbus/hostile.py) beside good ones, in
the real gateway process: wrong function codes, accept-then-close, truncated and
oversized frames, a wrong transaction id, a drip. Not one of their readings reaches the
platform as GOOD, each says why, the gateway neither dies nor restarts a task, and the
good devices keep their period with every point delivered."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from gateway.status import read_status
from tests.drivers.modbus.hostile import HostileDevice

from .harness import Rig, report, scale

MODES = ("wrong_function", "accept_then_close", "truncated", "oversized", "wrong_tid", "drip")


class HostilePeers:
    """The hostile devices, served by an event loop in a thread of the test process."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.devices = {
            m: asyncio.run_coroutine_threadsafe(HostileDevice(m).start(), self.loop).result(10)
            for m in MODES
        }

    def close(self) -> None:
        for d in self.devices.values():
            asyncio.run_coroutine_threadsafe(d.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_hostile_devices_beside_good_ones(tmp_path: Path) -> None:
    run_s = scale(8, 60)
    peers = HostilePeers()
    extra = "".join(
        f"  - name: bad-{m.replace('_', '-')}\n"
        "    protocol: modbus_tcp\n    host: 127.0.0.1\n"
        f"    port: {d.port}\n    timeout_ms: 500\n    poll_interval_ms: 200\n"
        "    tags:\n      - {name: a, address: 0}\n      - {name: b, address: 1}\n"
        for m, d in peers.devices.items()
    )
    rig = Rig(tmp_path, devices=3, tags=20, interval_ms=100, extra_devices=extra).start()
    try:
        rig.start_gateway()
        time.sleep(run_s)
        st = read_status(rig.state) or {}
        assert rig.gw is not None and rig.gw.poll() is None, rig.log()[-2000:]
        assert rig.stop_gateway(60) == 0, rig.log()[-2000:]
        assert rig.wait_delivered(60), rig.delivery()
    finally:
        rig.stop()
        peers.close()
    c = rig.counts()
    q = rig.sink.qualities
    hostile = [f"bad-{m.replace('_', '-')}" for m in MODES]
    good = [f"plc{d}" for d in range(3)]
    # not one hostile reading is GOOD; each hostile device did report (bad, with why)
    assert all(q.get(h, {}).get(0, 0) == 0 for h in hostile), {h: q.get(h) for h in hostile}
    assert all(sum(q.get(h, {}).values()) > 0 for h in hostile), q
    reasons = {h: sorted(rig.sink.reasons.get(h, {})) for h in hostile}
    assert all(reasons[h] for h in hostile), reasons
    # the good devices: all GOOD, every period read (a generous bound: half), all delivered
    devs = st.get("devices") or {}
    for g in good:
        assert set(q[g]) == {0}, (g, q[g])
        assert devs[g]["reads"] >= 0.5 * run_s * 1000 / rig.interval_ms, devs[g]
    health = st.get("task_health") or {}
    assert all(h["restarts"] == 0 for h in health.values()), health
    assert c["points_verified"] == rig.polled and c["gaps"] == 0, (c, rig.polled)
    report(
        "hostile devices beside good ones (wrong function, accept-then-close, truncated, "
        "oversized, wrong tid, drip)",
        points_polled=rig.polled,
        delivered=c["points_verified"],
        lost=0,
        good_from_hostile=0,
        bad_from_hostile=sum(sum(q[h].values()) for h in hostile),
    )
