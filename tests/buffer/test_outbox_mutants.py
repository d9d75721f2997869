"""Seq reservation and the outbox's other rules that mutation testing (``make mutate``)
showed no test judged: each test here fails with at least one mutant of buffer/seqs.py,
buffer/outbox.py or buffer/model.py that the other buffer tests let through. Real SQLite
files; a crash is a real SIGKILL of a process that holds the outbox open."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from buffer import URGENT, Outbox, OutboxError
from buffer.model import is_full
from buffer.seqs import SEQ_BLOCK

REPO = Path(__file__).resolve().parents[2]


def body(seq: int) -> bytes:
    return f"m{seq}".encode()


def killed_after_appending(path: Path, n: int, synchronous: str = "NORMAL") -> None:
    """A process appends ``n`` messages, then dies by SIGKILL (no clean close)."""
    code = (
        "import os, signal, sys\n"
        "from buffer import Outbox\n"
        f"ob = Outbox(sys.argv[1], synchronous={synchronous!r})\n"
        f"for _ in range({n}):\n"
        "    ob.append('t', lambda s: f'm{s}'.encode())\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    p = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, timeout=60)
    assert p.returncode == -signal.SIGKILL


def drops(ob: Outbox) -> list[tuple[int | None, int | None, str]]:
    return [(d.first_seq, d.last_seq, d.reason) for d in ob.pending_drops()]


def test_a_clean_close_gives_the_reserved_block_back(tmp_path: Path) -> None:
    """After a clean close nothing was skipped: no drop, and the next seq is the next one
    (not the end of the block reserved at the first append)."""
    path = tmp_path / "o.db"
    with Outbox(path) as ob:
        assert [ob.append("t", body) for _ in range(3)] == [1, 2, 3]
    for _ in range(2):  # twice: a reopen after a clean close is clean too
        with Outbox(path) as ob:
            assert drops(ob) == []
            assert ob.last_seq == ob.stats().last_seq
    with Outbox(path) as ob:
        assert ob.append("t", body) == 4
        assert drops(ob) == []


def test_a_sigkill_skips_the_rest_of_the_block_exactly_once(tmp_path: Path) -> None:
    """Killed after 3 appends (NORMAL): the reopened outbox says seqs 4..SEQ_BLOCK+1 were
    skipped (unclean_stop) and goes on after them; a clean close and reopen after that
    adds no second drop."""
    path = tmp_path / "o.db"
    killed_after_appending(path, 3)
    with Outbox(path) as ob:
        assert ob.last_seq == SEQ_BLOCK + 1  # the last seq of the reserved block
        assert drops(ob) == [(4, SEQ_BLOCK + 1, "unclean_stop")]
        assert [r.body for r in ob.pending()] == [b"m1", b"m2", b"m3"]  # nothing lost
        assert ob.append("t", body) == SEQ_BLOCK + 2
    with Outbox(path) as ob:
        assert len(drops(ob)) == 1
        assert ob.append("t", body) == SEQ_BLOCK + 3


def test_full_durability_reserves_nothing_and_a_sigkill_skips_nothing(tmp_path: Path) -> None:
    """synchronous FULL fsyncs every commit: seqs need no reservation, so a SIGKILL leaves
    no gap and no drop."""
    path = tmp_path / "o.db"
    killed_after_appending(path, 3, "FULL")
    with Outbox(path, synchronous="FULL") as ob:
        assert drops(ob) == []
        assert ob.append("t", body) == 4
    # and the same file in NORMAL mode afterwards reserves from there on
    killed_after_appending(path, 1)
    with Outbox(path) as ob:
        assert drops(ob) == [(6, 5 + SEQ_BLOCK, "unclean_stop")]
        assert ob.append("t", body) == 5 + SEQ_BLOCK + 1


def test_every_seq_handed_out_is_inside_the_durable_reservation(tmp_path: Path) -> None:
    """What makes a power cut safe in NORMAL mode: whatever a reader of the file sees
    (what a power cut could leave, at best), the reserved mark covers every seq handed
    out, across several blocks, and a new block is reserved only when the
    last one is used up (one fsync per SEQ_BLOCK messages)."""
    path = tmp_path / "o.db"
    marks: list[int] = []
    with Outbox(path) as ob:
        reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            for _ in range(2 * SEQ_BLOCK + 5):
                seq = ob.append("t", body)
                (reserved,) = reader.execute(
                    "SELECT value FROM meta WHERE key = 'seq_reserved'"
                ).fetchone()
                assert reserved >= seq, (seq, reserved)
                if not marks or marks[-1] != reserved:
                    marks.append(reserved)
        finally:
            reader.close()
    assert marks == [1 + SEQ_BLOCK, 2 + 2 * SEQ_BLOCK, 3 + 3 * SEQ_BLOCK]


def _raised(conn: sqlite3.Connection, sql: str) -> sqlite3.Error:
    try:
        conn.execute(sql)
    except sqlite3.Error as exc:
        return exc
    raise AssertionError(f"{sql} did not fail")


def test_only_a_full_database_counts_as_a_full_disk(tmp_path: Path) -> None:
    """``is_full`` decides whether the outbox evicts or refuses (a full disk) or reports
    an error: real SQLite errors, SQLITE_FULL (a database at its page limit, as on a full
    disk) and others (a UNIQUE violation has an extended code; a read-only database)."""
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    conn.execute("CREATE TABLE t (b BLOB)")
    conn.execute("CREATE TABLE u (a UNIQUE)")
    conn.execute("INSERT INTO u VALUES (1)")
    conn.execute("PRAGMA max_page_count = 4")
    full = _raised(conn, "INSERT INTO t VALUES (zeroblob(100000))")
    unique = _raised(conn, "INSERT INTO u VALUES (1)")
    conn.close()
    ro = sqlite3.connect(f"file:{tmp_path / 'x.db'}?mode=ro", uri=True)
    readonly = _raised(ro, "INSERT INTO u VALUES (2)")
    ro.close()

    def wrapped(cause: BaseException | None) -> OutboxError:
        try:
            raise OutboxError("append failed") from cause
        except OutboxError as exc:
            return exc

    assert is_full(wrapped(full))
    assert not is_full(wrapped(unique)) and not is_full(wrapped(readonly))
    assert not is_full(wrapped(None)) and not is_full(wrapped(OSError(28, "No space")))


STEPS = ("first", "second", "boot", "third")
STRACE = ["strace", "-f", "-y", "-e", "trace=write,fsync,fdatasync"]


def wal_syncs_per_step(tmp_path: Path, synchronous: str) -> dict[str, int]:
    """A process opens the outbox, appends twice, takes a boot number and appends once
    more, under strace: how many times each step made SQLite fsync (or fdatasync) the
    WAL. (The first write after the open syncs the new WAL's header anyway: the boot
    number is taken after it.)"""
    code = (
        "import os, sys\n"
        "from buffer import Outbox\n"
        f"ob = Outbox(sys.argv[1], synchronous={synchronous!r})\n"
        "def step(name, do):\n"
        "    os.write(1, f'<{name}>'.encode())\n"
        "    do()\n"
        "    os.write(1, f'</{name}>'.encode())\n"
        "step('first', lambda: ob.append('t', lambda s: b'a'))\n"
        "step('second', lambda: ob.append('t', lambda s: b'b'))\n"
        "step('boot', ob.next_boot)\n"
        "step('third', lambda: ob.append('t', lambda s: b'c'))\n"
        "ob.close()\n"
    )
    tmp_path.mkdir()
    trace = tmp_path / "strace.log"
    p = subprocess.run(
        [*STRACE, "-o", str(trace), sys.executable, "-c", code, str(tmp_path / "o.db")],
        cwd=REPO,
        capture_output=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    counts: dict[str, int] = {}
    step = None
    for line in trace.read_text().splitlines():
        for name in STEPS:
            if f'"<{name}>"' in line:
                step, counts[name] = name, 0
            elif f'"</{name}>"' in line:
                step = None
        if step and "sync(" in line and "o.db-wal>" in line:
            counts[step] += 1
    assert set(counts) == set(STEPS), trace.read_text()[-2000:]
    return counts


@pytest.mark.skipif(
    shutil.which("strace") is None and not os.environ.get("CI"),
    reason="needs strace (make deps installs it)",
)
def test_a_boot_number_and_a_block_of_seqs_are_on_disk_before_they_are_handed_out(
    tmp_path: Path,
) -> None:
    """NORMAL durability fsyncs no commit but the two a power cut must not undo: the
    boot counter (a boot number used twice makes two boots' messages look alike) and
    the reservation of a new block of seqs (see test_outbox_crash). Seen from outside,
    with strace: the WAL is synced inside next_boot() and inside the append that
    reserves a block, and not inside the next append (what NORMAL saves). FULL syncs
    every commit."""
    normal = wal_syncs_per_step(tmp_path / "normal", "NORMAL")
    assert normal["first"] >= 1 and normal["boot"] >= 1, normal
    assert normal["second"] == normal["third"] == 0, normal
    full = wal_syncs_per_step(tmp_path / "full", "FULL")
    assert min(full.values()) >= 1, full


def test_an_outbox_in_a_directory_that_does_not_exist_yet_makes_it(tmp_path: Path) -> None:
    """outbox.path may name a directory tree that does not exist yet (a fresh data
    partition): it is made, every level of it."""
    path = tmp_path / "data" / "edgegw" / "spool" / "o.db"
    with Outbox(path) as ob:
        assert ob.append("t", body) == 1
    assert path.is_file()


def test_pending_up_to_a_seq_gives_exactly_the_backlog_rows_in_order(tmp_path: Path) -> None:
    """The forwarder reads the backlog (rows sealed before it connected) with
    ``max_seq``: every row after ``after_seq`` up to and including ``max_seq``, of the
    asked kind, in seq order, at most ``limit``; none after it."""
    with Outbox(tmp_path / "o.db") as ob:
        for s in range(1, 11):
            ob.append("t", body, priority=URGENT if s in (3, 7) else 1)

        def seqs(**kw: object) -> list[int]:
            return [r.seq for r in ob.pending(**kw)]  # type: ignore[arg-type]

        assert seqs(after_seq=1, urgent=False, max_seq=8) == [2, 4, 5, 6, 8]
        assert seqs(after_seq=1, urgent=True, max_seq=6) == [3]
        assert seqs(after_seq=0, max_seq=5) == [1, 2, 3, 4, 5]
        assert seqs(after_seq=0, limit=2, urgent=False, max_seq=8) == [1, 2]
        assert seqs(after_seq=8, urgent=False, max_seq=8) == []
