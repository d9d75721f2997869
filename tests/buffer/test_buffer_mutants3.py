"""Survivors of the session-6 mutation run over buffer/ that mattered. Real SQLite files
on a real full filesystem (a small tmpfs), filled by "another program".

What they pin, on a disk full to the last page: new data is refused as OutboxFull
(``disk_full``) when even the eviction finds no room; an ack spends the reserve and
deletes; a clean close still closes; making the reserve again (the pool of pages, the
free pages given back) is best effort and never fails an open. And the pool is held
once, not added again at every open.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from buffer import Outbox, OutboxFull
from buffer.room import POOL, Disk
from buffer.seqs import SEQ_BLOCK
from tests.buffer.test_seqs_mutants import fill


def test_new_data_is_refused_as_full_when_even_the_eviction_finds_no_room(
    small_fs: Path,
) -> None:
    """The class decides what the pipeline does (gateway/pipeline.py ``_seal``):
    OutboxFull refuses the window's points and records them as a drop (a signed notice
    follows); OutboxError is taken for a passing I/O fault and the same batch is retried
    for ever with backoff while acquisition waits behind it, the gap never explained."""
    db = small_fs / "o.db"
    with Outbox(db) as ob:
        seqs = [ob.append("t", lambda s: os.urandom(3000), points=1) for _ in range(50)]
    other = small_fs / "other-program"
    fill(other)  # the open gives the reserve file back to start at all...
    with Outbox(db) as ob:
        assert not ob._reserve_ok  # ...and there is no room to make it again
        fill(other)  # and another program takes what the open left
        with pytest.raises(OutboxFull) as err:  # a bare OutboxError would be the bug
            ob.append("t", lambda s: os.urandom(3000), points=1)
        assert err.value.reason == "disk_full" and "the disk is full" in str(err.value)
        # Nothing committed was lost: no row was evicted (the eviction failed whole).
        assert [r.seq for r in ob.pending(limit=100)] == seqs
        assert ob.pending_drops() == []
        other.unlink()  # room again: the next message is taken, with the next seq
        assert ob.append("t", lambda s: os.urandom(3000), points=1) == seqs[-1] + 1


def test_an_ack_on_a_full_disk_spends_the_reserve_and_deletes(small_fs: Path) -> None:
    """An ack of a few rows is one DELETE on its own (autocommit); on a disk full to the
    last page its WAL cannot grow (SQLITE_FULL): the reserve file is given back and the
    delete goes through. Were the error not recognised as a full disk, acknowledged rows
    could never be deleted while the disk stays full, and the disk would stay full."""
    db = small_fs / "o.db"
    with Outbox(db) as ob:
        seqs = [ob.append("t", lambda s: os.urandom(3000), points=1) for _ in range(50)]
    with Outbox(db) as ob:  # the WAL starts empty: the first write must grow it
        assert ob._reserve_ok
        fill(small_fs / "other-program")
        assert ob.ack(seqs[:10]) == 10
        assert not Path(f"{db}.ballast").exists()  # spent for it
        assert [r.seq for r in ob.pending(limit=100)] == seqs[10:]
        assert ob.stats().rows == 40
    with Outbox(db) as ob:  # and it is durable
        assert [r.seq for r in ob.pending(limit=100)] == seqs[10:]


def test_a_clean_close_on_a_full_disk_still_closes(small_fs: Path) -> None:
    """close() gives the unused seqs of the reserved block back in a write of its own;
    on a disk full to the last page that write fails. The close must still close (it
    runs at every stop: raising there would leave the outbox thread running and the
    file open), and the next open skips the block instead, as after a crash."""
    db = small_fs / "o.db"
    with Outbox(db) as ob:
        seqs = [ob.append("t", lambda s: os.urandom(3000), points=1)]
    ob = Outbox(db)  # the WAL starts empty: every write from here on must grow it
    seqs += [ob.append("t", lambda s: os.urandom(3000), points=1) for _ in range(2)]
    fill(small_fs / "other-program")
    ob.close()
    assert "closed" in repr(ob)
    (small_fs / "other-program").unlink()
    with Outbox(db) as ob:
        assert [r.seq for r in ob.pending(limit=10)] == seqs  # nothing lost
        # the block was not given back (the disk was full): skipped, and said so
        skipped = [(d.first_seq, d.last_seq, d.reason) for d in ob.pending_drops()]
        assert skipped == [(seqs[-1] + 1, SEQ_BLOCK + 2, "unclean_stop")]
        assert ob.append("t", lambda s: b"x") == SEQ_BLOCK + 3


def test_the_pool_is_held_once_not_added_again_at_every_open(tmp_path: Path) -> None:
    """The pool of reserved pages inside the file (one POOL-byte blob in table pad) is
    made once and found again at the next open: were it not found, every start of the
    daemon would add another POOL bytes to the file, until the disk fills with them and
    telemetry is evicted for room that the pool took."""
    path = tmp_path / "o.db"
    for _ in range(4):
        with Outbox(path) as ob:
            ob.append("t", lambda s: os.urandom(3000), points=1)
            held = ob._db().execute("SELECT count(*), sum(length(b)) FROM pad").fetchone()
            assert held == (1, POOL)


class _FilledMeanwhile(Disk):
    """The filesystem as the outbox looked at it a moment before another program took
    the rest: plenty of room by statvfs, none for the write that follows."""

    def free(self, path: Path) -> int:
        return 1 << 30


def test_an_open_whose_pool_cannot_be_made_still_opens(small_fs: Path) -> None:
    """Making the pool again is best effort: on a disk that another program filled
    between the look and the write, SQLITE_FULL (an OutboxError) leaves it owed, and the
    open (or the ack, or the append that tried) goes on; it is made at a later look."""
    db = small_fs / "o.db"
    with Outbox(db) as ob:
        seqs = [ob.append("t", lambda s: os.urandom(3000), points=1) for _ in range(5)]
        ob._release_pool()  # spent on an earlier full disk
    other, slack = small_fs / "other-program", small_fs / "slack"
    slack.write_bytes(bytes(256 << 10))
    fill(other)
    slack.unlink()  # 256 KiB left: room to open, not for the pool's 1 MiB
    with Outbox(db, disk=_FilledMeanwhile()) as ob:
        assert not ob._pool_ok  # owed: its write found no room
        assert ob._db().execute("SELECT count(*) FROM pad").fetchone()[0] == 0
        assert [r.seq for r in ob.pending(limit=10)] == seqs
    other.unlink()
    with Outbox(db) as ob:  # room again: made at the next open
        assert ob._pool_ok
        assert ob._db().execute("SELECT count(*), sum(length(b)) FROM pad").fetchone() == (1, POOL)


def test_giving_free_pages_back_on_a_full_disk_is_best_effort(small_fs: Path) -> None:
    """With the reserve spent and the disk nearly full, making it again first gives the
    file's free pages back (incremental vacuum, a write of its own). When even that finds
    no room (SQLITE_FULL), the open goes on with the reserve owed: nothing here may fail
    a start, an append or an ack."""
    db = small_fs / "o.db"
    with Outbox(db) as ob:
        seqs = [ob.append("t", lambda s: os.urandom(3000), points=1) for _ in range(200)]
        ob.ack(seqs[:100])  # their pages are free in the file
        ob._on_disk_full()  # the reserve (file and pool) was spent on an earlier full disk
    other, slack = small_fs / "other-program", small_fs / "slack"
    slack.write_bytes(bytes(64 << 10))
    fill(other)
    slack.unlink()  # 64 KiB left: room to open, not to move the free pages out
    with Outbox(db) as ob:
        assert not ob._reserve_ok
        assert [r.seq for r in ob.pending(limit=200)] == seqs[100:]
