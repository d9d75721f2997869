"""The filesystem under the outbox fills up (a few MiB tmpfs under the state directory)
while the uplink is cut: no crash, no corruption, a clear log line, and every point is
accounted for: delivered, or named in a signed drop notice.

``reserve``: the configured free-disk reserve (64 MiB by default) triggers drop_oldest
before the disk is full: handled exactly like a full cap. ``enospc``: no reserve, so
SQLite itself hits ENOSPC; on a 100% full disk it cannot even write the deletes that
make room, so the gateway keeps running, refuses and counts new data, logs why, and
resumes once space is freed (here: the tmpfs is grown, as a technician would free
space); then too every point is accounted for.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from gateway.status import read_status

from .harness import Rig, report, scale

SIZE_MIB = int(scale(4, 16))


@pytest.fixture
def small_fs(tmp_path: Path):  # type: ignore[no-untyped-def]
    spool = tmp_path / "state" / "spool"
    spool.mkdir(parents=True)
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("mounting a tmpfs needs root (CI runs as root and always runs this)")
    size = f"{SIZE_MIB}m"
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(spool)], check=True)
    try:
        yield spool
    finally:
        subprocess.run(["umount", "-l", str(spool)], check=False)


@pytest.mark.parametrize("mode", ["reserve", "enospc"])
def test_disk_fills_up(tmp_path: Path, small_fs: Path, mode: str) -> None:
    reserve = "1" if mode == "reserve" else "0"
    rig = Rig(
        tmp_path,
        devices=10,
        tags=100,
        proxy=True,
        outbox_file="spool/outbox.db",
        outbox=f"outbox:\n  path: spool/outbox.db\n  max_mib: 1000\n  min_free_mib: {reserve}",
    ).start()
    try:
        assert rig.link is not None
        rig.link.cut()  # nothing drains: the outbox grows until the disk is full
        rig.start_gateway()
        deadline = time.monotonic() + 120
        dropped = 0
        while time.monotonic() < deadline and dropped == 0:
            time.sleep(0.5)
            st = read_status(rig.state) or {}
            dropped = (st.get("outbox") or {}).get("dropped_rows", 0) + (
                st.get("pipeline") or {}
            ).get("points_refused", 0)
        assert dropped, "the disk never filled: " + rig.log()[-1500:]
        time.sleep(3)  # keep acquiring on a full disk
        assert rig.gw is not None and rig.gw.poll() is None, (
            "the gateway died: " + rig.log()[-2000:]
        )
        if mode == "enospc":  # a technician frees space
            subprocess.run(
                ["mount", "-o", f"remount,size={4 * SIZE_MIB}m", str(small_fs)], check=True
            )
        rig.link.restore()
        time.sleep(3)  # back to normal operation
        assert rig.stop_gateway(120) == 0, rig.log()[-2000:]
        assert rig.wait_delivered(120), rig.delivery()
    finally:
        rig.stop()
    log = rig.log()
    assert "data dropped: " in log and "disk_full" in log, log[-2000:]
    assert rig.outbox_check() == ("ok", 0)  # not corrupted, and everything was sent
    c = rig.counts()
    assert (c["conflicts"], c["signature_failures"], c["malformed"], c["gaps"]) == (0, 0, 0, 0)
    assert c["dropped_points"] > 0
    # every point polled is either verified or named in a signed drop notice (a message
    # evicted while its publish was in flight can be both: counted once)
    both = rig.delivered_and_dropped()
    assert rig.polled == c["points_verified"] + c["dropped_points"] - both, (rig.polled, both, c)
    report(
        f"disk full ({mode})",
        points_polled=rig.polled,
        delivered=c["points_verified"],
        lost=0,
        dropped_notified=c["dropped_points"],
        delivered_and_notified=both,
        duplicates=c["duplicates"],
    )
