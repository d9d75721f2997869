"""Bounded outbox: the byte cap, both policies, urgent rows, drop records and notices,
CRC quarantine, priority reads, and the seq reservation across an unclean stop."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from buffer import URGENT, Outbox, OutboxFull


def body(n: int) -> bytes:
    return bytes([n % 251]) * 100


def fill(ob: Outbox, count: int, points: int = 10) -> list[int]:
    return [ob.append("t/telemetry", body, points=points) for _ in range(count)]


def test_drop_oldest_evicts_exactly_enough_and_records_it(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_bytes=1000) as ob:
        seqs = fill(ob, 10)  # 10 x 100 bytes: exactly at the cap
        assert ob.stats().bytes == 1000 and ob.pending_drops() == []
        new = fill(ob, 3)
        st = ob.stats()
        assert st.bytes == 1000 and st.rows == 10
        assert [r.seq for r in ob.pending(limit=100)] == seqs[3:] + new
        drops = ob.pending_drops()
        assert [(d.first_seq, d.last_seq, d.rows, d.points, d.bytes, d.reason) for d in drops] == [
            (s, s, 1, 10, 100, "outbox_full") for s in seqs[:3]
        ]
        assert (st.dropped_rows, st.dropped_points) == (3, 30)


def test_stop_acquisition_refuses_and_commits_nothing(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_bytes=500, policy="stop_acquisition") as ob:
        seqs = fill(ob, 5)
        with pytest.raises(OutboxFull) as err:
            ob.append("t/telemetry", body, points=10)
        assert err.value.reason == "outbox_full"
        assert "stop_acquisition" in str(err.value)
        assert [r.seq for r in ob.pending()] == seqs  # the oldest data is kept
        ob.record_drop(10, "not_acquired")
        (d,) = ob.pending_drops()
        assert (d.first_seq, d.points, d.reason) == (None, 10, "not_acquired")
        ob.ack(seqs[:2])
        assert ob.append("t/telemetry", body) == seqs[-1] + 1  # room again, no seq skipped


def test_urgent_rows_are_never_evicted_and_go_first(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_bytes=1000) as ob:
        fill(ob, 5)
        urgent = ob.append("t/event", body, priority=URGENT)
        fill(ob, 12)  # forces evictions: telemetry only
        rows = ob.pending(limit=100)
        assert urgent in [r.seq for r in rows]
        assert [r.seq for r in ob.pending(urgent=True)] == [urgent]
        assert urgent not in [r.seq for r in ob.pending(urgent=False, limit=100)]
        # only urgent rows left and still over the cap: refuse rather than evict them
        ob.ack([r.seq for r in rows if r.seq != urgent])
    with Outbox(tmp_path / "o2.db", max_bytes=150) as ob:
        ob.append("t/event", body, priority=URGENT)
        ob.append("t/event", body, priority=URGENT)  # urgent may exceed the cap
        with pytest.raises(OutboxFull, match="nothing left to evict"):
            ob.append("t/telemetry", body)


def test_notices_mark_drops_in_the_same_transaction(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_bytes=300) as ob:
        fill(ob, 5)
        ids = [d.id for d in ob.pending_drops()]
        assert len(ids) == 2
        ob.append("t/notice", lambda s: b"notice", priority=URGENT, notifies=ids)
        assert ob.pending_drops() == []

        def broken(seq: int) -> bytes:
            raise RuntimeError("signing failed")

        fill(ob, 1)
        left = [d.id for d in ob.pending_drops()]
        with pytest.raises(RuntimeError):
            ob.append("t/notice", broken, priority=URGENT, notifies=left)
        assert [d.id for d in ob.pending_drops()] == left  # still to be told


def test_a_body_damaged_at_rest_is_quarantined_not_sent(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path) as ob:
        seqs = fill(ob, 5)
    # damage one body behind the outbox's back (bit rot, a bad SD card)
    con = sqlite3.connect(path)
    con.execute("UPDATE outbox SET body = ? WHERE seq = ?", (b"x" * 100, seqs[2]))
    con.commit()
    con.close()
    with Outbox(path) as ob:
        rows = ob.pending()
        assert [r.seq for r in rows] == seqs[:2] + seqs[3:]
        assert all(r.body == body(r.seq) for r in rows)
        (d,) = [d for d in ob.pending_drops() if d.reason == "corrupt_at_rest"]
        assert (d.first_seq, d.last_seq, d.points) == (seqs[2], seqs[2], 10)
        assert ob.stats().rows == 4


def test_unclean_stop_skips_reserved_seqs_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    ob = Outbox(path)  # NORMAL: seqs are reserved in blocks
    seqs = fill(ob, 3)
    assert ob._conn is not None
    ob._conn.close()  # the process dies: no clean close, the reservation stays
    ob._conn = None
    with Outbox(path) as ob2:
        (d,) = ob2.pending_drops()
        assert d.reason == "unclean_stop" and d.first_seq == seqs[-1] + 1
        assert d.rows == 0 and d.points == 0
        nxt = ob2.append("t/telemetry", body)
        assert nxt == d.last_seq + 1 > seqs[-1]
    # a clean close gives the unused seqs back: no skip, no drop
    with Outbox(path) as ob3:
        assert ob3.pending_drops() == [d]
        assert ob3.append("t/telemetry", body) == nxt + 1


def test_full_mode_needs_no_reservation(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    ob = Outbox(path, synchronous="FULL")
    seqs = fill(ob, 3)
    assert ob._conn is not None
    ob._conn.close()
    ob._conn = None
    with Outbox(path, synchronous="FULL") as ob2:
        assert ob2.pending_drops() == []
        assert ob2.append("t/telemetry", body) == seqs[-1] + 1
