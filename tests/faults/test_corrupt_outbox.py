"""The outbox file is damaged while the gateway is stopped. The gateway refuses a file
that fails SQLite's integrity check (a clear message naming the file and what to do)
and quarantines a message whose bytes rotted inside an intact file (its CRC no longer
matches); either way the platform never receives garbage, and a quarantined message is
named in a signed drop notice."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from .harness import Rig, report


def build_backlog(rig: Rig) -> Path:
    """Run with the uplink cut, then SIGKILL: a backlog is left in the outbox file."""
    assert rig.link is not None
    rig.link.cut()
    rig.start_gateway()
    time.sleep(3)
    rig.kill_gateway()
    db = rig.state / "outbox.db"
    con = sqlite3.connect(db)  # move everything from the WAL into the main file
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return db


def test_garbage_over_the_last_page_is_refused(tmp_path: Path) -> None:
    rig = Rig(tmp_path, devices=5, tags=40, proxy=True).start()
    try:
        db = build_backlog(rig)
        data = bytearray(db.read_bytes())
        data[-4096:] = b"\xff" * 4096
        db.write_bytes(bytes(data))
        assert rig.link is not None
        rig.link.restore()
        rig.start_gateway()
        assert rig.gw is not None
        rc = rig.gw.wait(30)
        time.sleep(1)
    finally:
        rig.stop()
    log = rig.log()
    assert rc == 2, log[-2000:]  # a person must move the file: no restart loop
    assert f"edgegw: refusing to start: {db.absolute()}: not a usable edgegw outbox" in log, log[
        -2000:
    ]
    assert "move" in log and "Traceback" not in log
    c = rig.counts()
    assert (c["signature_failures"], c["malformed"], c["conflicts"]) == (0, 0, 0)
    report(
        "outbox file damaged (last page overwritten)",
        outcome="refused to start, clear message",
        garbage_sent=0,
    )


def test_a_rotted_message_is_quarantined_and_named(tmp_path: Path) -> None:
    rig = Rig(tmp_path, devices=5, tags=40, proxy=True).start()
    try:
        db = build_backlog(rig)
        con = sqlite3.connect(db)
        seq, body = con.execute(
            "SELECT seq, body FROM outbox WHERE priority != 0 ORDER BY seq LIMIT 1 OFFSET 2"
        ).fetchone()
        points = con.execute("SELECT points FROM outbox WHERE seq = ?", (seq,)).fetchone()[0]
        con.close()
        data = bytearray(db.read_bytes())
        # A large body spans overflow pages: find a slice of it that lies in one page and
        # is in no other message (payload version 2 repeats value columns of unchanged
        # data; the signature at the end is the message's own).
        chunks = (body[i : i + 64] for i in range(len(body) - 64, 0, -16))
        chunk = next((c for c in chunks if data.count(c) == 1), b"")
        at = data.find(chunk) if chunk else -1
        assert at > 0 and data.count(chunk) == 1, "the message bytes were not found once"
        data[at + 32] ^= 0x01  # one flipped bit, as on a worn SD card
        db.write_bytes(bytes(data))
        assert rig.link is not None
        rig.link.restore()
        rig.start_gateway()
        time.sleep(3)
        assert rig.stop_gateway() == 0, rig.log()[-2000:]
        assert rig.wait_delivered(60), rig.delivery()
    finally:
        rig.stop()
    c = rig.counts()
    assert (c["signature_failures"], c["malformed"], c["conflicts"], c["gaps"]) == (0, 0, 0, 0)
    assert c["dropped_points"] == points, c
    assert "corrupt_at_rest" in rig.log()
    report(
        "a stored message rotted (one bit)",
        outcome=f"seq {seq} quarantined and named in a signed notice",
        garbage_sent=0,
        dropped_notified=points,
    )
