"""A flapping link says so once, then counts: two gateways that share a client id (a
copied config) take the session from each other on a real mosquitto, over and over.
The journal gets the first "uplink up", "uplink down" and failure of each, then one
summary each per interval (README, "The audit log records state changes, not noise"),
never a line per flap; the audit side (the daemon's digest) is
tests/gateway/test_uplink_audit.py."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from gateway.config import UplinkConfig
from gateway.forwarder import Forwarder
from gateway.mosquitto import Mosquitto
from gateway.outbox_thread import OutboxThread


def test_two_gateways_sharing_a_client_id_log_a_bounded_number_of_lines(
    tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgegw.forwarder")
    up = UplinkConfig(host="::1", port=broker.port, reconnect_max_s=1)

    async def main() -> list[Forwarder]:
        fwds, ots, tasks = [], [], []
        for name in ("a", "b"):
            ot = OutboxThread(tmp_path / f"{name}.db")
            await ot.open()
            ots.append(ot)
            fwds.append(Forwarder(up, "edgegw-copied", ot))  # the same client id
        tasks = [asyncio.create_task(f.run()) for f in fwds]
        deadline = time.monotonic() + 60  # a bound only: it flaps every second or so
        while min(f.stats.connects for f in fwds) < 6 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # the digests are flushed
        for ot in ots:
            await ot.close()
        return fwds

    fwds = asyncio.run(main())
    flaps = [f.stats.connects for f in fwds]
    assert min(flaps) >= 6, flaps  # each was taken over at least 5 times
    lines = [r.getMessage() for r in caplog.records if r.name == "edgegw.forwarder"]
    ups = [m for m in lines if m.startswith("uplink up")]
    downs = [m for m in lines if m.startswith("uplink down")]
    failures = [m for m in lines if m.startswith("uplink [")]
    # the first of each, per gateway; the rest counted (3 lines per flap before)
    assert len(ups) == 2 and len(downs) == 2 and len(failures) == 2, lines
    # the flush at the end (the task cancelled) summarises what was counted, exactly
    went_up = [m for m in lines if m.startswith("uplink: went up")]
    assert sum(int(m.split()[3]) for m in went_up) == sum(flaps) - 2, (flaps, went_up)
    assert len(lines) <= 2 * (1 + 3 + 3), lines  # limits once, 3 firsts, 3 summaries each
