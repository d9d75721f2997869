"""Seq reservation after a crash on a full disk (buffer/seqs.py ``_skip_reserved``): the
reopened outbox must record the skipped block even when SQLite answers SQLITE_FULL to
the first try, and must refuse to open, clearly, when it cannot record it at all: it
never hands out a seq of the skipped block. Mutation testing (``make mutate``) showed
no test reached this path. A real SQLite file on a real full filesystem (a small tmpfs),
and a crash that is a real SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from buffer import Outbox, OutboxFull
from buffer.seqs import SEQ_BLOCK

REPO = Path(__file__).resolve().parents[2]
SMALL = 10  # small messages before the big one: seqs 1..10, the big one is 11


def crash_with_a_big_last_message(path: Path, *, reader: bool) -> None:
    """A process appends SMALL messages and a 1.5 MB one, then dies by SIGKILL. Its WAL
    still holds the big one's frames, so the first write after the reopen must grow the
    WAL. With ``reader``, another connection holds a read transaction meanwhile, so
    those frames were never copied into the database file either: checkpointing them
    then needs room too."""
    code = (
        "import os, signal, sqlite3, sys\n"
        "from buffer import Outbox\n"
        "ob = Outbox(sys.argv[1])\n"
        f"for _ in range({SMALL}):\n"
        "    ob.append('t', lambda s: os.urandom(3000))\n"
        f"if {reader!r}:\n"
        "    r = sqlite3.connect(sys.argv[1])\n"
        "    r.execute('BEGIN')\n"
        "    r.execute('SELECT count(*) FROM outbox').fetchone()\n"
        "ob.append('t', lambda s: os.urandom(1_500_000))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    p = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, timeout=60)
    assert p.returncode == -signal.SIGKILL


def fill(path: Path) -> None:
    """Write zeros until the filesystem says ENOSPC: not one page is left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == 28, exc
    finally:
        os.close(fd)


def spent_reserve_and_full_disk(fs: Path, *, reader: bool) -> Path:
    """The crash above, on a disk whose reserve file was already spent (the gateway gives
    it back on SQLITE_FULL), then filled by another program."""
    db = fs / "o.db"
    crash_with_a_big_last_message(db, reader=reader)
    Path(f"{db}.ballast").unlink()
    fill(fs / "other-program")
    return db


def drops(ob: Outbox) -> list[tuple[int | None, int | None, str]]:
    return [(d.first_seq, d.last_seq, d.reason) for d in ob.pending_drops()]


SKIPPED = (SMALL + 2, SEQ_BLOCK + 1, "unclean_stop")  # seq 11 (the big one) was committed


def test_a_crash_on_a_full_disk_still_records_the_skipped_block(small_fs: Path) -> None:
    """The first write (recording the skipped seqs) fails with SQLITE_FULL: the WAL must
    grow. Restarting the WAL and freeing the reserved pages makes room, and the second
    try records it: the outbox opens, says which seqs were skipped, once, and never
    hands them out."""
    db = spent_reserve_and_full_disk(small_fs, reader=False)
    with Outbox(db) as ob:
        assert drops(ob) == [SKIPPED]
        # seqs skipped, not messages lost: no rows, points or bytes are counted
        assert [(d.rows, d.points, d.bytes) for d in ob.pending_drops()] == [(0, 0, 0)]
        assert ob.stats().rows == SMALL + 1  # nothing committed was lost
    (small_fs / "other-program").unlink()
    with Outbox(db) as ob:
        assert drops(ob) == [SKIPPED]  # recorded once, not again at a clean reopen
        assert ob.append("t", lambda s: b"next") == SEQ_BLOCK + 2


def test_a_disk_too_full_to_record_the_skip_refuses_to_open_until_freed(
    small_fs: Path,
) -> None:
    """Not even the second try has room (the frames to checkpoint need it too): opening
    fails with a clear disk_full error rather than open without recording the skip
    (which would hand out seqs 12..SEQ_BLOCK+1 a second time). Once space is freed it
    opens with the skip recorded exactly once."""
    db = spent_reserve_and_full_disk(small_fs, reader=True)
    with pytest.raises(OutboxFull) as err:
        Outbox(db)
    assert err.value.reason == "disk_full"
    assert str(db) in str(err.value) and "Free some space" in str(err.value)
    (small_fs / "other-program").unlink()
    with Outbox(db) as ob:
        assert drops(ob) == [SKIPPED]
        assert ob.stats().rows == SMALL + 1
        assert ob.append("t", lambda s: b"next") == SEQ_BLOCK + 2
