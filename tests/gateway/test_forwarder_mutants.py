"""Forwarder rules that mutation testing (``make mutate``) showed no test judged: each test
here fails with at least one mutant of gateway/forwarder.py that the other forwarder
tests let through. Against the scripted broker of tests/mqttscript.py (it decides PUBACK
codes and timing) or a real mosquitto."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.gateway.test_forwarder_rules import Rig, wait_until
from tests.mqttscript import ScriptedBroker

T = "edgegw/gw1/telemetry"


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
