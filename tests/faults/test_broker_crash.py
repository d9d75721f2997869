"""The broker crashes (SIGKILL) while the platform's receiver is away, so messages the
broker acknowledged to the gateway wait in its queue for the receiver's persistent
session. The gateway deleted them at PUBACK: from then on only the broker holds them.

With ``autosave_on_changes true`` and ``autosave_interval 1`` (``save_on_change`` in
gateway/mosquitto.py) the queue survives each crash and nothing is lost. With
mosquitto's default (a save every 1800 s) the queue dies with the broker: the
platform sees the loss as a gap, which is why the README names the settings.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .harness import GW, Rig, report, scale


@pytest.mark.parametrize("saves", ["on_change", "default"])
def test_broker_sigkilled_while_the_receiver_is_away(tmp_path: Path, saves: str) -> None:
    crashes = int(scale(3, 10))
    rig = Rig(tmp_path, devices=5, tags=40, broker_saves_on_change=saves == "on_change")
    rig.start()
    try:
        rig.start_gateway()
        time.sleep(2)
        for _ in range(crashes):
            assert rig.mr is not None
            rig.mr.stop()  # the receiver is away: the broker queues for its session
            time.sleep(1.5)
            rig.broker.kill()
            time.sleep(0.3)
            rig.broker.start()  # same port and files
            rig.connect_receiver()
            time.sleep(1.5)
        assert rig.stop_gateway(60) == 0, rig.log()[-2000:]
        delivered = rig.wait_delivered(30 if saves == "on_change" else 10)
    finally:
        rig.stop()
    c = rig.counts()
    missing = rig.rx.missing().get(GW) or []
    lost = sum(hi - lo + 1 for lo, hi in missing)
    assert (c["conflicts"], c["signature_failures"], c["malformed"]) == (0, 0, 0)
    if saves == "on_change":
        assert delivered, rig.delivery()
        assert lost == 0 and c["points_verified"] == rig.polled, (c, rig.polled)
    else:
        # The default loses what was queued at each crash: a gap the platform sees.
        assert not delivered and lost > 0, rig.delivery()
    report(
        f"broker SIGKILLed x{crashes} while the receiver was away "
        f"({'autosave_on_changes, interval 1' if saves == 'on_change' else 'default autosave'})",
        points_polled=rig.polled,
        delivered=c["points_verified"],
        lost_messages=lost,
        duplicates=c["duplicates"],
    )
