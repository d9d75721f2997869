"""The outbox on a disk that fills up, through its I/O seam (``buffer.room.Disk``): new
data never spends the reserves (``min_free_bytes``, the reserve file, the WAL's room) and
evicts or is refused instead; deletes, drop records and notices always proceed; the
reserve is made again as soon as there is room; an eviction is recorded exactly (one
drop per run of consecutive seqs, never a kept one). The real full filesystem is in
tests/faults/test_disk_full.py."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from buffer import URGENT, Outbox, OutboxFull
from buffer.room import BALLAST, POOL, WAL_ROOM, Disk


class FakeDisk(Disk):
    """A filesystem of ``quota`` bytes holding only the outbox: the file, its WAL, and the
    reserve (an empty marker file counted as BALLAST bytes). ``full()`` sets the quota to
    what is used now: not one byte free."""

    def __init__(self, db: Path, quota: int = 1 << 30) -> None:
        self.db = db
        self.quota = quota
        self.allocations = 0
        self.releases = 0

    def used(self) -> int:
        n = 0
        for p in (self.db, Path(f"{self.db}-wal")):
            if p.exists():
                n += p.stat().st_size
        if Path(f"{self.db}.ballast").exists():
            n += BALLAST
        return n

    def full(self, slack: int = 0) -> None:
        self.quota = self.used() + slack
        self.generation += 1

    def free(self, path: Path) -> int:
        return max(0, self.quota - self.used())

    def allocate(self, path: Path, size: int) -> None:
        if self.free(path) < size:
            raise OSError(28, "No space left on device")
        path.write_bytes(b"")
        self.allocations += 1

    def release(self, path: Path) -> None:
        if path.exists():
            path.unlink()
            self.releases += 1


def body(n: int) -> bytes:
    return bytes([n % 251]) * 1000


def big(n: int) -> bytes:
    return bytes([n % 251]) * 20_000


def outbox(tmp_path: Path, **kw: object) -> tuple[Outbox, FakeDisk]:
    disk = FakeDisk(tmp_path / "o.db")
    return Outbox(tmp_path / "o.db", disk=disk, **kw), disk  # type: ignore[arg-type]


def test_a_roomy_disk_makes_the_reserve_and_takes_everything(tmp_path: Path) -> None:
    ob, disk = outbox(tmp_path)
    with ob:
        assert disk.allocations == 1 and (tmp_path / "o.db.ballast").exists()
        for _ in range(20):
            ob.append("t", body, points=1)
        assert ob.stats().rows == 20 and ob.pending_drops() == []


def test_new_data_evicts_rather_than_spend_the_reserve(tmp_path: Path) -> None:
    ob, disk = outbox(tmp_path)
    with ob:
        seqs = [ob.append("t", big, points=2) for _ in range(100)]
        disk.full()
        new = ob.append("t", big, points=2)
        drops = ob.pending_drops()
        assert drops and {d.reason for d in drops} == {"disk_full"}
        assert drops[0].first_seq == seqs[0]  # the oldest go first
        assert new in [r.seq for r in ob.pending(limit=1000)]
        assert disk.releases == 0 and (tmp_path / "o.db.ballast").exists()


def test_stop_acquisition_refuses_on_a_full_disk_and_acks_still_work(tmp_path: Path) -> None:
    ob, disk = outbox(tmp_path, policy="stop_acquisition")
    with ob:
        seqs = [ob.append("t", body, points=2) for _ in range(50)]
        disk.full()
        with pytest.raises(OutboxFull) as err:
            ob.append("t", body, points=2)
        assert err.value.reason == "disk_full" and "outbox.min_free_mib" in str(err.value)
        ob.record_drop(2, "refused_disk_full")  # the loss is recorded, durably
        assert [d.points for d in ob.pending_drops()] == [2]
        assert ob.ack(seqs[:10]) == 10
        # a notice may spend the reserves: a loss is always told
        seq = ob.append("t/notice", body, priority=URGENT, essential=True)
        assert seq == seqs[-1] + 1
        assert [r.seq for r in ob.pending(urgent=True)] == [seq]


def test_the_configured_free_reserve_is_kept(tmp_path: Path) -> None:
    reserve = 64 << 20
    ob, disk = outbox(tmp_path, policy="stop_acquisition", min_free_bytes=reserve)
    with ob:
        ob.append("t", body)
        disk.full(reserve)  # the configured reserve free, nothing more
        with pytest.raises(OutboxFull):
            ob.append("t", body)
        disk.full(reserve + WAL_ROOM + 2000)
        ob.append("t", body)


def test_deleted_pages_are_room_for_new_data(tmp_path: Path) -> None:
    """On a full disk, rows deleted after their PUBACK leave free pages in the file:
    new data goes there; nothing is evicted or refused."""
    ob, disk = outbox(tmp_path, policy="stop_acquisition")
    with ob:
        seqs = [ob.append("t", big) for _ in range(200)]  # 4 MB
        disk.full()
        with pytest.raises(OutboxFull):
            ob.append("t", big)
        ob.ack(seqs[:150])
        for _ in range(20):
            ob.append("t", big)
        assert ob.pending_drops() == []


def test_the_reserve_is_spent_only_for_what_must_proceed_and_made_again(tmp_path: Path) -> None:
    ob, disk = outbox(tmp_path)
    ballast = tmp_path / "o.db.ballast"
    with ob:
        seqs = [ob.append("t", big) for _ in range(100)]
        ob._on_disk_full()  # what an ack that met SQLITE_FULL does
        assert disk.releases == 1 and not ballast.exists()
        ob._give_back_free_pages()  # the pool's pages, spent meanwhile (as a write would)
        ob._shrink_wal()
        disk.full(BALLAST // 2)  # less than the reserve owed
        ob._reserve_retry = 0.0
        ob.append("t", big)  # must leave room for the reserve: evicts instead
        assert {d.reason for d in ob.pending_drops()} == {"disk_full"}
        assert not ballast.exists()
        ob.ack(seqs[50:])  # deletes: their pages go back to the filesystem, the reserve too
        assert ballast.exists() and disk.allocations == 2


def test_a_fresh_outbox_can_give_freed_pages_back(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as ob:
        seqs = [ob.append("t", big) for _ in range(100)]
        ob.ack(seqs)
        ob._give_back_free_pages()
    con = sqlite3.connect(tmp_path / "o.db")
    try:
        assert con.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
        assert con.execute("PRAGMA freelist_count").fetchone()[0] == 0
    finally:
        con.close()
    # not the 2 MB the rows took: the pages of the pool (POOL) and the schema
    assert (tmp_path / "o.db").stat().st_size < POOL + 200_000


def test_an_eviction_across_urgent_rows_names_only_what_it_dropped(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_bytes=10 * 1000) as ob:
        t1 = [ob.append("t", body, points=3) for _ in range(3)]
        u = ob.append("t/event", body, priority=URGENT)
        t2 = [ob.append("t", body, points=3) for _ in range(3)]
        acked = ob.append("t", body, points=3)
        ob.ack([acked])
        t3 = [ob.append("t", body, points=3) for _ in range(3)]
        ob.append("t", lambda s: bytes(5000), points=3)  # over the cap: evicts 5 rows
        drops = [(d.first_seq, d.last_seq, d.rows, d.points) for d in ob.pending_drops()]
        assert drops == [(t1[0], t1[-1], 3, 9), (t2[0], t2[1], 2, 6)]
        kept = [r.seq for r in ob.pending(limit=100)]
        assert u in kept and t2[2] in kept and all(s in kept for s in t3)
        assert acked not in kept


def test_drop_totals_by_reason_are_durable_and_counted_once(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_bytes=3000, policy="stop_acquisition") as ob:
        for _ in range(3):
            ob.append("t", body, points=4)
        with pytest.raises(OutboxFull):
            ob.append("t", body, points=4)
        ob.record_drop(4, "refused_outbox_full")  # what the pipeline records: once
        ob.policy = "drop_oldest"
        ob.append("t", body, points=5)  # evicts one
        assert ob.drop_totals() == {"outbox_full": (1, 4), "refused_outbox_full": (0, 4)}
    with Outbox(tmp_path / "o.db") as ob:  # a restart keeps them
        assert ob.drop_totals() == {"outbox_full": (1, 4), "refused_outbox_full": (0, 4)}
        # an outbox from before the totals gets them from its drop records at open
        ob._db().execute("DELETE FROM meta WHERE key LIKE 'dropped_by:%' OR key = 'drop_totals'")
    with Outbox(tmp_path / "o.db") as ob:
        assert ob.drop_totals() == {"outbox_full": (1, 4), "refused_outbox_full": (0, 4)}
