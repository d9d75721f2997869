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
import sys
import time
from pathlib import Path

import pytest

from gateway.status import read_status

from .harness import REPO, Rig, report, scale

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


def _fill(path: Path) -> None:
    """Write until the filesystem is full (another program's file)."""
    chunk = b"\0" * 4096
    with open(path, "wb", buffering=0) as f:  # unbuffered: close() has nothing left to write
        try:
            while True:
                f.write(chunk)
        except OSError:
            pass
    st = os.statvfs(path.parent)
    assert st.f_bavail * st.f_frsize < 65536


def _wait_refusing(rig: Rig, seconds: float = 120) -> int:
    deadline = time.monotonic() + seconds
    dropped = 0
    while time.monotonic() < deadline and dropped == 0:
        time.sleep(0.5)
        st = read_status(rig.state) or {}
        dropped = (st.get("outbox") or {}).get("dropped_rows", 0) + (st.get("pipeline") or {}).get(
            "points_refused", 0
        )
    return dropped


@pytest.mark.parametrize("policy", ["drop_oldest", "stop_acquisition"])
def test_a_disk_that_stays_full_without_a_reserve(
    tmp_path: Path, small_fs: Path, policy: str
) -> None:
    """min_free_mib 0 and nobody frees space: once the link is back, acknowledged rows
    are deleted (the reserve beside the outbox lets deletes and drop records through) and
    new data goes into the pages they freed; SIGTERM drains and exits 0; a start on a
    disk filled to the last byte runs; every point polled is delivered or named in a
    signed notice."""
    rig = Rig(
        tmp_path,
        devices=10,
        tags=100,
        proxy=True,
        outbox_file="spool/outbox.db",
        outbox=(
            f"outbox:\n  path: spool/outbox.db\n  max_mib: 1000\n  min_free_mib: 0\n"
            f"  when_full: {policy}"
        ),
    ).start()
    try:
        assert rig.link is not None
        rig.link.cut()
        rig.start_gateway()
        assert _wait_refusing(rig), "the disk never filled: " + rig.log()[-1500:]
        time.sleep(3)  # keep acquiring on the full disk
        assert rig.gw is not None and rig.gw.poll() is None, rig.log()[-2000:]
        rig.link.restore()  # the disk stays full: nobody frees space
        time.sleep(5)
        assert rig.stop_gateway(120) == 0, rig.log()[-3000:]
        # Deleted rows gave their pages back (the reserve is made again from them);
        # now something else fills the partition to the last byte before the next start.
        _fill(small_fs / "filler")
        rig.start_gateway()  # a start on a full disk runs
        time.sleep(4)
        assert rig.gw is not None and rig.gw.poll() is None, rig.log()[-2000:]
        assert rig.stop_gateway(120) == 0, rig.log()[-3000:]
        assert rig.wait_delivered(120), rig.delivery()
    finally:
        rig.stop()
    log = rig.log()
    assert "the filesystem of the outbox is full" in log  # the warning at the second start
    assert "Traceback" not in log, log[-3000:]
    assert rig.outbox_check() == ("ok", 0)
    c = rig.counts()
    assert (c["conflicts"], c["signature_failures"], c["malformed"], c["gaps"]) == (0, 0, 0, 0)
    assert c["dropped_points"] > 0
    assert rig.polled == c["points_verified"] + c["dropped_points"], (rig.polled, c)
    report(
        f"disk stays full, no reserve configured ({policy})",
        points_polled=rig.polled,
        delivered=c["points_verified"],
        lost=0,
        dropped_notified=c["dropped_points"],
        duplicates=c["duplicates"],
    )


def test_the_default_reserve_on_a_small_partition(tmp_path: Path, small_fs: Path) -> None:
    """The outbox on a partition smaller than the default 64 MiB reserve: validate and
    doctor say so as an error; the daemon says so at start, keeps a tenth of the partition
    free instead and delivers everything (it used to refuse every window)."""
    rig = Rig(
        tmp_path,
        devices=5,
        tags=40,
        outbox_file="spool/outbox.db",
        outbox="outbox:\n  path: spool/outbox.db",  # min_free_mib: 64 by default
    ).start()
    try:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        v = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "validate", str(rig.cfg)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert v.returncode == 2 and "outbox.min_free_mib: 64 MiB is more than" in v.stderr, (
            v.stdout,
            v.stderr,
        )
        rig.start_gateway()
        time.sleep(4)
        assert rig.stop_gateway(60) == 0, rig.log()[-2000:]
        assert rig.wait_delivered(60), rig.delivery()
    finally:
        rig.stop()
    assert "outbox.min_free_mib: 64 MiB is more than the whole filesystem" in rig.log()
    c = rig.counts()
    assert c["points_verified"] == rig.polled > 0 and c["dropped_points"] == 0, c
    report(
        "outbox on a partition smaller than the free-disk reserve",
        points_polled=rig.polled,
        delivered=c["points_verified"],
        lost=0,
        refused=0,
    )
