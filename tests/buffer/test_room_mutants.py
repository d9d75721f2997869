"""Survivors of the mutation run over buffer/room.py that mattered. A real SQLite file
throughout; SQLITE_FULL comes from SQLite itself (``PRAGMA max_page_count`` caps the file
where it is: the error a full disk gives), free space from the I/O seam (``FakeDisk``).

What they pin: new data that meets SQLITE_FULL evicts the oldest telemetry (drop_oldest,
recorded) or is refused with nothing lost (stop_acquisition); a notice or an ack on a full
file spends the reserve and proceeds; a start on a disk full to the last byte spends the
reserve to open; a disk that fills up evicts 1% of the backlog at a time; an eviction that
cannot free enough evicts nothing; a refusal is merged only into a drop not yet told; rows
set aside are moved, counted and recorded; new data is refused before it takes the reserve
(owed while it is missing, no longer once it is back) and stops where the disk ends; the
edges (byte cap, free pages, WAL room, 1% eviction, pool, start) hold to the byte."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

import pytest

from buffer import URGENT, Outbox, OutboxFull
from buffer.room import BALLAST, POOL, WAL_ROOM, Disk
from tests.buffer.test_outbox_room import FakeDisk, big, body, outbox


def cap_file(ob: Outbox) -> None:
    """The file may not grow by one page more: SQLite answers SQLITE_FULL."""
    c = ob._db()
    c.execute(f"PRAGMA max_page_count = {c.execute('PRAGMA page_count').fetchone()[0]}")


def test_new_data_on_a_full_file_evicts_the_oldest_and_says_so(tmp_path: Path) -> None:
    ob, _ = outbox(tmp_path)
    with ob:
        seqs = [ob.append("t", big, points=2) for _ in range(100)]
        cap_file(ob)
        new = [ob.append("t", big, points=2) for _ in range(3)]
        drops = [(d.first_seq, d.last_seq, d.rows, d.points, d.reason) for d in ob.pending_drops()]
        assert drops == [(s, s, 1, 2, "disk_full") for s in seqs[:3]]  # 1% of 2 MB: a row
        kept = [r.seq for r in ob.pending(limit=1000)]
        assert kept == seqs[3:] + new
        assert ob.drop_totals() == {"disk_full": (3, 6)}


def test_a_full_file_under_stop_acquisition_refuses_and_loses_nothing(tmp_path: Path) -> None:
    ob, _ = outbox(tmp_path, policy="stop_acquisition")
    with ob:
        seqs = [ob.append("t", big, points=2) for _ in range(100)]
        cap_file(ob)
        with pytest.raises(OutboxFull) as err:
            ob.append("t", big, points=2)
        assert err.value.reason == "disk_full" and "the disk is full" in str(err.value)
        assert [r.seq for r in ob.pending(limit=1000)] == seqs
        assert ob.pending_drops() == []


def test_a_notice_and_acks_on_a_full_file_spend_the_reserve(tmp_path: Path) -> None:
    ob, disk = outbox(tmp_path)
    with ob:
        seqs = [ob.append("t", big, points=2) for _ in range(100)]
        cap_file(ob)
        ob.record_drop(5, "refused_disk_full")  # must proceed
        [d] = ob.pending_drops()
        seq = ob.append("t/notice", big, priority=URGENT, essential=True, notifies=[d.id])
        assert [r.seq for r in ob.pending(urgent=True)] == [seq]
        assert ob.pending_drops() == []  # told, in the same transaction
        assert disk.releases == 1 and not (tmp_path / "o.db.ballast").exists()
        assert ob._db().execute("SELECT count(*) FROM pad").fetchone()[0] == 0  # pool spent
        assert ob.ack(seqs) == 100
        assert ob.stats().rows == 1


def test_drop_records_on_a_full_file_spend_the_reserve_and_are_all_kept(tmp_path: Path) -> None:
    ob, disk = outbox(tmp_path)
    with ob:
        for _ in range(100):
            ob.append("t", big, points=2)
        cap_file(ob)
        reasons = ("refused_disk_full", "refused_outbox_full")
        for i in range(300):  # alternating: 300 records, pages more than the file has
            ob.record_drop(1, reasons[i % 2])
        assert len(ob.pending_drops()) == 300
        assert ob.drop_totals() == {r: (0, 150) for r in reasons}
        assert disk.releases == 1  # the reserve was spent for them
        assert ob._db().execute("SELECT count(*) FROM pad").fetchone()[0] == 0


def test_a_start_on_a_disk_full_to_the_last_byte_spends_the_reserve_to_open(
    tmp_path: Path,
) -> None:
    disk = FakeDisk(tmp_path / "o.db")
    with Outbox(tmp_path / "o.db", disk=disk) as ob:  # type: ignore[arg-type]
        seqs = [ob.append("t", body, points=1) for _ in range(20)]
    with Outbox(tmp_path / "o.db", disk=disk) as ob:  # type: ignore[arg-type]
        assert disk.releases == 0  # room enough: the reserve stays
    disk.full()
    with Outbox(tmp_path / "o.db", disk=disk) as ob:  # type: ignore[arg-type]
        assert disk.releases == 1 and not (tmp_path / "o.db.ballast").exists()
        assert [r.seq for r in ob.pending(limit=100)] == seqs  # it can still send
        assert ob.ack(seqs) == 20  # and delete


def test_the_reserve_is_made_again_exactly_when_it_fits_with_an_eighth_to_spare(
    tmp_path: Path,
) -> None:
    ob, disk = outbox(tmp_path)
    ballast = tmp_path / "o.db.ballast"
    with ob:
        ob.append("t", body)
        ob._on_disk_full()
        ob._give_back_free_pages()  # the pool's freed pages leave the file
        disk.full(BALLAST + BALLAST // 8 - 1)
        assert not ob._ensure_ballast() and not ballast.exists()
        disk.full(BALLAST + BALLAST // 8)
        assert ob._ensure_ballast() and ballast.exists()


def test_a_filling_disk_evicts_one_percent_of_the_backlog_at_a_time(tmp_path: Path) -> None:
    """Not one row per message: freed pages are reused, so the file stops growing."""
    ob, disk = outbox(tmp_path)
    with ob:
        seqs = [ob.append("t", body, points=1) for _ in range(500)]  # 500 kB of bodies
        disk.full()
        before = time.time_ns()
        ob.append("t", body, points=1)
        [d] = ob.pending_drops()
        assert (d.first_seq, d.last_seq, d.rows, d.bytes) == (seqs[0], seqs[4], 5, 5000)
        assert before <= d.at_ns <= time.time_ns()  # when it was lost: the notice says


def test_an_eviction_that_cannot_free_enough_evicts_nothing(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_bytes=3000) as ob:
        seqs = [ob.append("t", body, points=1) for _ in range(3)]
        with pytest.raises(OutboxFull) as err:
            ob.append("t", lambda s: bytes(5000))  # 5000 over the cap: only 3000 to evict
        assert err.value.reason == "outbox_full"
        assert str(err.value).endswith(
            "outbox full (outbox.max_mib) and nothing left to evict (only urgent messages remain)"
        )
        assert [r.seq for r in ob.pending(limit=10)] == seqs and ob.pending_drops() == []


def test_a_refusal_message_names_the_policy(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_bytes=2000, policy="stop_acquisition") as ob:
        ob.append("t", body)
        ob.append("t", body)
        with pytest.raises(OutboxFull) as err:
            ob.append("t", body)
        assert str(err.value).endswith(
            "outbox full (outbox.max_mib): new data refused (policy stop_acquisition)"
        )


def test_refusals_merge_only_into_a_drop_not_yet_told(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as ob:
        ob.record_drop(2, "refused_disk_full")
        ob.record_drop(3, "refused_disk_full")  # the same refusal going on: one drop
        [d] = ob.pending_drops()
        assert (d.first_seq, d.rows, d.points, d.reason) == (None, 0, 5, "refused_disk_full")
        ob.append("t/notice", body, priority=URGENT, notifies=[d.id])
        ob.record_drop(4, "refused_disk_full")  # after the notice: a new drop to tell
        ob.record_drop(1, "refused_outbox_full")  # another reason: another drop
        ob.record_drop(6, "refused_disk_full")  # the newest is of another reason: new too
        got = [(d.points, d.reason) for d in ob.pending_drops()]
        assert got == [
            (4, "refused_disk_full"),
            (1, "refused_outbox_full"),
            (6, "refused_disk_full"),
        ]
        assert ob.drop_totals() == {"refused_disk_full": (0, 15), "refused_outbox_full": (0, 1)}


def test_a_refusal_does_not_merge_into_an_eviction(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_bytes=2000) as ob:
        first = ob.append("t", body, points=7)
        ob.append("t", body, points=1)
        ob.append("t", body, points=1)  # evicts the first
        ob.record_drop(3, "outbox_full")
        got = [(d.first_seq, d.rows, d.points) for d in ob.pending_drops()]
        assert got == [(first, 1, 7), (None, 0, 3)]


def test_rows_set_aside_are_moved_counted_and_recorded(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as ob:
        seqs = [ob.append("t", body, points=4) for _ in range(4)]
        moved = [seqs[1], seqs[2]]
        assert ob.set_aside([*moved, 999], "refused_by_broker") == 2  # unknown seqs ignored
        assert ob.set_aside([], "refused_by_broker") == 0
        assert [r.seq for r in ob.pending(limit=10)] == [seqs[0], seqs[3]]
        got = [(d.first_seq, d.last_seq, d.rows, d.points, d.bytes, d.reason)
               for d in ob.pending_drops()]  # fmt: skip
        assert got == [(s, s, 1, 4, 1000, "refused_by_broker") for s in moved]
        assert ob.quarantined == 2
        assert ob.drop_totals() == {"refused_by_broker": (2, 8)}
        assert ob.set_aside([seqs[3]], "refused_by_broker") == 1
        assert ob.quarantined == 3  # counted over every call
    with sqlite3.connect(tmp_path / "o.db") as c:
        assert c.execute("SELECT seq, topic, body FROM quarantine ORDER BY seq").fetchall() == [
            (s, "t", body(s)) for s in [*moved, seqs[3]]
        ]


def test_new_data_is_refused_before_it_takes_the_reserve(tmp_path: Path) -> None:
    """Between two looks at the disk new data may take half of what was free; at any pace
    of appends it is refused before the reserve (file and pool) is touched, and an ack
    still proceeds."""
    ob, disk = outbox(tmp_path, policy="stop_acquisition")
    with ob:
        first = ob.append("t", big)
        disk.full(WAL_ROOM + 40 * 20_000)
        with pytest.raises(OutboxFull) as err:
            for _ in range(200):  # 4 MB: far more than the disk has
                ob.append("t", big)
        assert err.value.reason == "disk_full"
        assert ob.stats().rows < 150
        assert disk.releases == 0 and (tmp_path / "o.db.ballast").exists()
        assert ob._db().execute("SELECT count(*) FROM pad").fetchone()[0] == 1
        assert ob.ack([first]) == 1


def test_new_data_leaves_room_for_the_pool_while_it_is_missing(tmp_path: Path) -> None:
    ob, disk = outbox(tmp_path, policy="stop_acquisition")
    with ob:
        ob.append("t", body)
        ob._release_pool()  # spent by a write that had to proceed
        ob._give_back_free_pages()
        ob._db().execute("PRAGMA wal_checkpoint(TRUNCATE)")  # no WAL space to count on
        disk.full(WAL_ROOM + 1000 + POOL // 2)  # room for the data, not for the pool too
        with pytest.raises(OutboxFull) as err:
            ob.append("t", body)
        assert err.value.reason == "disk_full"
        disk.full(WAL_ROOM + 1000 + POOL + 100_000)
        ob.append("t", body)


def test_new_data_leaves_room_for_the_reserve_file_and_the_wal(tmp_path: Path) -> None:
    ob, disk = outbox(tmp_path, policy="stop_acquisition")
    ballast = tmp_path / "o.db.ballast"
    with ob:
        ob.append("t", body)
        disk.release(ballast)  # spent by a write that had to proceed
        ob._reserve_ok = False
        ob._reserve_retry = time.monotonic() + 60  # just tried to make it again: not yet
        ob._db().execute("PRAGMA wal_checkpoint(TRUNCATE)")  # no WAL space to count on
        disk.full(WAL_ROOM + 1000 + BALLAST // 2)  # room for the data, not for the reserve
        with pytest.raises(OutboxFull):
            ob.append("t", body)
        assert not ballast.exists()
        ob._reserve_retry = 0.0
        disk.full(WAL_ROOM + BALLAST)  # the reserve is made again first...
        with pytest.raises(OutboxFull):  # ...and what is left is the WAL's: refused
            ob.append("t", body)
        assert ballast.exists()


def test_a_reserve_that_could_not_be_made_is_still_owed(tmp_path: Path) -> None:
    """The reserve was spent and the disk had no room to make it again: until it is made,
    new data leaves room for it (then it is made, and data is taken again)."""
    ob, disk = outbox(tmp_path, policy="stop_acquisition")
    ballast = tmp_path / "o.db.ballast"
    with ob:
        ob.append("t", body)
        ob._on_disk_full()  # a write that had to proceed spent the reserve
        ob._give_back_free_pages()
        ob._db().execute("PRAGMA wal_checkpoint(TRUNCATE)")  # no WAL space to count on
        disk.full()
        ob._reserve_retry = 0.0
        with pytest.raises(OutboxFull):  # tries to make the reserve again: no room
            ob.append("t", body)
        assert not ballast.exists() and disk.allocations == 1  # the one made at open
        ob._reserve_retry = time.monotonic() + 3600  # just tried: not again yet
        disk.full(WAL_ROOM + POOL + 1000 + BALLAST // 2)  # room for data, not the reserve
        with pytest.raises(OutboxFull) as err:
            ob.append("t", body)
        assert err.value.reason == "disk_full" and ob.stats().rows == 1
        ob._reserve_retry = 0.0
        disk.full(BALLAST + POOL + WAL_ROOM + 4 * POOL)
        ob.append("t", body)  # the reserve (file and pool) is made first, then the data
        assert ballast.exists() and disk.allocations == 2 and ob.stats().rows == 2
        assert ob._db().execute("SELECT count(*) FROM pad").fetchone()[0] == 1


def test_a_reserve_just_spent_is_owed_before_it_is_tried_again(tmp_path: Path) -> None:
    """Right after SQLITE_FULL spent the reserve, new data may not take its room."""
    ob, disk = outbox(tmp_path, policy="stop_acquisition")
    ballast = tmp_path / "o.db.ballast"
    with ob:
        ob.append("t", body)
        ob._on_disk_full()
        ob._give_back_free_pages()
        ob._db().execute("PRAGMA wal_checkpoint(TRUNCATE)")  # no WAL space to count on
        ob._reserve_retry = time.monotonic() + 3600  # just tried: not again yet
        disk.full(WAL_ROOM + POOL + 1000 + BALLAST // 2)  # room for data, not the reserve
        with pytest.raises(OutboxFull) as err:
            ob.append("t", body)
        assert err.value.reason == "disk_full" and not ballast.exists()
        assert ob.stats().rows == 1 and disk.releases == 1


def test_a_refusal_is_recorded_with_no_rows_and_no_bytes(tmp_path: Path) -> None:
    """Refused data never had a seq nor a body: the drop says points only."""
    with Outbox(tmp_path / "o.db") as ob:
        ob.record_drop(7, "refused_disk_full")
        [d] = ob.pending_drops()
        assert (d.first_seq, d.last_seq, d.rows, d.points, d.bytes) == (None, None, 0, 7, 0)
        assert ob.drop_totals() == {"refused_disk_full": (0, 7)}


def test_free_pages_in_the_file_count_to_the_byte(tmp_path: Path) -> None:
    """New data that fits the disk's free bytes plus the file's free pages exactly is
    taken; one byte less, refused (the WAL's room is owed throughout)."""
    ob, disk = outbox(tmp_path, policy="stop_acquisition")
    with ob:
        seqs = [ob.append("t", body) for _ in range(20)]
        assert ob.ack(seqs) == 20  # their pages stay in the file, free
        c = ob._db()
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # no WAL space to count on
        freed = c.execute("PRAGMA freelist_count").fetchone()[0]
        freed *= c.execute("PRAGMA page_size").fetchone()[0]
        assert 0 < freed < WAL_ROOM
        disk.full(WAL_ROOM + 1000 - freed - 1)
        with pytest.raises(OutboxFull) as err:
            ob.append("t", body)
        assert err.value.reason == "disk_full"
        disk.full(WAL_ROOM + 1000 - freed)
        ob.append("t", body)
        assert ob.stats().rows == 1


def test_new_data_between_looks_takes_no_more_than_the_disk_had(tmp_path: Path) -> None:
    """Between two looks at the disk new data takes at most half of what was free beyond
    what is owed, so it stops where the disk ends, and it gets nearly all of that room."""
    ob, disk = outbox(tmp_path, policy="stop_acquisition")
    with ob:
        ob.append("t", big)
        ob._db().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        disk.full(WAL_ROOM + 40 * 20_000)  # the WAL may grow to its cap, and 800 kB more
        taken = 0
        with pytest.raises(OutboxFull) as err:
            for _ in range(100):
                ob.append("t", big)
                taken += 1
        assert err.value.reason == "disk_full"
        # the WAL's bytes count once reused, so the data gets more than 40 bodies' room
        assert taken >= 40, taken
        # sizes are counted as body bytes, not pages (about 3% more for 20 kB bodies): a
        # little over the quota, never a budget's worth (twice the budget: ~500 kB over)
        assert disk.used() - disk.quota < 64 * 1024, disk.used() - disk.quota
        assert (tmp_path / "o.db.ballast").exists() and disk.releases == 0
        assert ob._db().execute("SELECT count(*) FROM pad").fetchone()[0] == 1


@pytest.mark.parametrize(("slack", "kept"), [(WAL_ROOM, True), (WAL_ROOM - 1, False)])
def test_a_start_keeps_the_reserve_while_the_wal_has_its_room(
    tmp_path: Path, slack: int, kept: bool
) -> None:
    """A start spends the reserve only when the WAL could not get its room otherwise."""
    disk = FakeDisk(tmp_path / "o.db")
    with Outbox(tmp_path / "o.db", disk=disk) as ob:  # type: ignore[arg-type]
        ob.append("t", body)
    disk.full(slack)
    with Outbox(tmp_path / "o.db", disk=disk):  # type: ignore[arg-type]
        # spent to open, then made again at once (the WAL's room is what it gave back)
        assert disk.releases == (0 if kept else 1)
        assert disk.allocations == (1 if kept else 2)


def test_the_pool_is_made_again_only_with_room_for_it_the_reserve_and_the_wal(
    tmp_path: Path,
) -> None:
    ob, disk = outbox(tmp_path)
    pad = "SELECT count(*) FROM pad"
    with ob:
        ob.append("t", body)
        ob._release_pool()  # spent by a write that had to proceed
        ob._give_back_free_pages()
        ob._db().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        # the reserve file is in place (counted as used): free must hold it again too
        disk.full(POOL + BALLAST + WAL_ROOM - 1)
        assert ob._ensure_ballast() and ob._db().execute(pad).fetchone()[0] == 0
        disk.full(POOL + BALLAST + WAL_ROOM)
        assert ob._ensure_ballast() and ob._db().execute(pad).fetchone()[0] == 1


def test_spending_the_reserve_forgets_the_room_known_from_the_last_look(
    tmp_path: Path,
) -> None:
    """A roomy look lets new data go on without looking for a while; SQLITE_FULL in a
    write that must proceed says that room is gone: the next new data looks again."""
    ob, disk = outbox(tmp_path, policy="stop_acquisition")
    with ob:
        ob.append("t", body)  # looked: a 1 GB disk, half of it new data may take
        ob._on_disk_full()
        ob._give_back_free_pages()
        ob._db().execute("PRAGMA wal_checkpoint(TRUNCATE)")  # no WAL space to count on
        ob._reserve_retry = time.monotonic() + 3600  # just tried: not again yet
        # another program filled the disk (this disk's generation does not change)
        disk.quota = disk.used() + WAL_ROOM + POOL + 1000 + BALLAST // 2
        with pytest.raises(OutboxFull) as err:
            ob.append("t", body)
        assert err.value.reason == "disk_full" and ob.stats().rows == 1


def test_a_wal_grown_past_its_room_counts_only_its_room(tmp_path: Path) -> None:
    """A reader kept the WAL from restarting, so it grew past WAL_ROOM. On a full disk its
    bytes beyond that are not room for new data: the file it is copied into must grow."""
    ob, disk = outbox(tmp_path, policy="stop_acquisition")
    with ob:
        ob.append("t", body)
        with contextlib.closing(sqlite3.connect(tmp_path / "o.db")) as reader:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM outbox").fetchone()  # holds a snapshot
            for _ in range(150):
                ob.append("t", big)
            reader.execute("COMMIT")
        wal = Path(f"{tmp_path / 'o.db'}-wal").stat().st_size
        assert wal > WAL_ROOM + 1000, wal
        disk.full()
        with pytest.raises(OutboxFull) as err:
            ob.append("t", body)
        assert err.value.reason == "disk_full" and ob.stats().rows == 151


def test_a_filling_disk_evicts_one_percent_to_the_byte(tmp_path: Path) -> None:
    """1% of 500 100 bytes is 5 001: five rows of 1 000 are not enough, six are evicted."""
    ob, disk = outbox(tmp_path)
    with ob:
        seqs = [ob.append("t", body, points=1) for _ in range(500)]
        ob.append("t", lambda s: bytes(100), points=1)
        disk.full()
        ob.append("t", body, points=1)
        [d] = ob.pending_drops()
        assert (d.first_seq, d.last_seq, d.rows, d.bytes) == (seqs[0], seqs[5], 6, 6000)


def test_sqlite_full_evicts_one_percent_to_the_byte(tmp_path: Path) -> None:
    """After SQLITE_FULL: 1% of 2 000 100 bytes is 20 001, more than one 20 kB row."""
    ob, _ = outbox(tmp_path)
    with ob:
        seqs = [ob.append("t", big, points=2) for _ in range(100)]
        ob.append("t", lambda s: bytes(100), points=1)
        cap_file(ob)
        ob.append("t", big, points=2)
        drops = [(d.first_seq, d.last_seq, d.rows, d.bytes) for d in ob.pending_drops()]
        assert drops == [(seqs[0], seqs[1], 2, 40_000)]


def test_a_reserve_made_again_is_no_longer_owed(tmp_path: Path) -> None:
    """Once the reserve file is back, new data may have the rest (the pool, still missing
    for want of room, stays owed)."""
    ob, disk = outbox(tmp_path, policy="stop_acquisition")
    with ob:
        ob.append("t", body)
        ob._on_disk_full()
        ob._give_back_free_pages()
        ob._db().execute("PRAGMA wal_checkpoint(TRUNCATE)")  # no WAL space to count on
        ob._reserve_retry = 0.0
        # room for the reserve file, then for the data while the pool stays owed (and
        # not for the pool itself, which needs room for a second reserve file beside it)
        disk.full(BALLAST + WAL_ROOM + POOL + 1000 + BALLAST // 2)
        ob.append("t", body)
        assert (tmp_path / "o.db.ballast").exists() and disk.allocations == 2
        assert ob._db().execute("SELECT count(*) FROM pad").fetchone()[0] == 0
        assert ob.stats().rows == 2


def test_the_byte_cap_holds_to_the_byte(tmp_path: Path) -> None:
    """Bodies filling the cap exactly are all kept; one byte more evicts the oldest."""
    with Outbox(tmp_path / "o.db", max_bytes=3000) as ob:
        seqs = [ob.append("t", body, points=1) for _ in range(3)]
        assert ob.pending_drops() == [] and ob.stats().bytes == 3000
        last = ob.append("t", lambda s: b"x", points=1)
        [d] = ob.pending_drops()
        assert (d.first_seq, d.last_seq, d.rows, d.bytes) == (seqs[0], seqs[0], 1, 1000)
        assert [r.seq for r in ob.pending(limit=10)] == [*seqs[1:], last]


def test_a_reserve_the_filesystem_cannot_hold_leaves_no_file(tmp_path: Path) -> None:
    """The real seam on the real filesystem: half a reserve is none, so a failed
    allocation leaves nothing behind (a later start would take it for the reserve)."""
    path = tmp_path / "o.db.ballast"
    with pytest.raises(OSError):
        Disk().allocate(path, 1 << 62)  # more than any filesystem here holds
    assert not path.exists()
    Disk().allocate(path, 4096)
    assert path.stat().st_size == 4096 and path.stat().st_mode & 0o777 == 0o600
    Disk().release(path)
    Disk().release(path)  # already gone: nothing to do
    assert not path.exists()
