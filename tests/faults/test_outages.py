"""The uplink goes away: broker stopped, link cut, broker restarted again and again.
Acquisition continues, the outbox grows, and once the link is back everything arrives
in order; after de-duplication the platform has every seq exactly once, and the points
polled equal the points verified."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from gateway.status import read_status

from .harness import Rig, report, scale


def backlog_rows(rig: Rig) -> int:
    return int(((read_status(rig.state) or {}).get("outbox") or {}).get("rows", 0))


def drain(rig: Rig, timeout: float = 120) -> tuple[int, float]:
    """Wait until the outbox is empty; returns (peak rows seen, seconds it took)."""
    t0 = time.monotonic()
    peak = backlog_rows(rig)
    while time.monotonic() - t0 < timeout:
        rows = backlog_rows(rig)
        peak = max(peak, rows)
        if rows == 0:
            break
        time.sleep(0.2)
    return peak, time.monotonic() - t0


def finish(rig: Rig, case: str, **extra: Any) -> None:
    assert rig.stop_gateway() == 0, rig.log()[-2000:]
    assert rig.wait_delivered(90), f"not every committed seq arrived: {rig.delivery()}"
    rig.stop()
    c = rig.counts()
    assert (c["conflicts"], c["signature_failures"], c["malformed"], c["gaps"]) == (0, 0, 0, 0)
    assert c["dropped_points"] == 0
    assert rig.polled > 0 and c["points_verified"] == rig.polled, (rig.polled, c)
    report(
        case,
        points_polled=rig.polled,
        delivered=c["points_verified"],
        lost=rig.polled - c["points_verified"],
        duplicates=c["duplicates"],
        **extra,
    )


def test_broker_stopped_then_started(tmp_path: Path) -> None:
    outage = scale(5, 60)
    rig = Rig(tmp_path, devices=5, tags=40).start()
    try:
        rig.start_gateway()
        time.sleep(2)
        rig.broker.stop()
        time.sleep(outage)
        assert backlog_rows(rig) > 0, "the outbox must grow while the broker is down"
        rig.broker.start()  # same port; its persistence restores the receiver's session
        backlog = backlog_rows(rig) * rig.flush_ms / 1000 * rig.points_per_s
        _peak, took = drain(rig)
        finish(rig, f"broker stopped {outage:.0f} s", drain_points_per_s=round(backlog / took))
    finally:
        rig.stop()


def test_link_cut(tmp_path: Path) -> None:
    cut = scale(10, 300)
    devices, tags = (int(scale(5, 20)), 50)
    rig = Rig(tmp_path, devices=devices, tags=tags, proxy=True).start()
    try:
        rig.start_gateway()
        time.sleep(2)
        assert rig.link is not None
        rig.link.cut()
        time.sleep(cut)
        rows = backlog_rows(rig)
        assert rows > 0
        rig.link.restore()
        _peak, took = drain(rig, timeout=600)
        finish(
            rig,
            f"uplink cut {cut:.0f} s at {rig.points_per_s:.0f} points/s",
            backlog_points=round(rows * rig.flush_ms / 1000 * rig.points_per_s),
            drain_points_per_s=round(rows * rig.flush_ms / 1000 * rig.points_per_s / took),
        )
    finally:
        rig.stop()


def test_broker_restarted_in_quick_succession(tmp_path: Path) -> None:
    restarts = int(scale(4, 10))
    rig = Rig(tmp_path, devices=5, tags=40).start()
    try:
        rig.start_gateway()
        time.sleep(2)
        for _ in range(restarts):
            rig.broker.stop()
            time.sleep(0.3)
            rig.broker.start()
            time.sleep(0.7)
        drain(rig)
        finish(rig, f"broker restarted x{restarts}")
    finally:
        rig.stop()
