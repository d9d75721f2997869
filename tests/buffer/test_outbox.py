"""Outbox behaviour on real SQLite files."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from buffer import URGENT, Outbox, OutboxCorrupt, OutboxError, OutboxRow, OutboxStats


def body_for(seq: int) -> bytes:
    return b"msg-%d-" % seq + bytes([seq % 251]) * (seq % 97)


def seal(seq: int) -> bytes:
    return body_for(seq)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "outbox.db"


@pytest.fixture
def ob(path: Path) -> Iterator[Outbox]:
    with Outbox(path) as outbox:
        yield outbox


# -- sequence numbers and the boot counter ---------------------------------------------


def test_creates_parent_directory_and_schema(path: Path) -> None:
    assert not path.parent.exists()
    with Outbox(os.fspath(path)) as ob:
        assert ob.path == path
        assert ob.stats() == OutboxStats(0, 0, None, 0, None)
        assert ob.pending() == []
    assert path.is_file()


def test_seq_starts_at_one_and_is_monotonic(ob: Outbox) -> None:
    seqs = [ob.append("t", seal) for _ in range(50)]
    assert seqs == list(range(1, 51))


def test_seal_receives_the_seq_it_is_stored_under(ob: Outbox) -> None:
    seen: list[int] = []

    def recording_seal(seq: int) -> bytes:
        seen.append(seq)
        return body_for(seq)

    seqs = [ob.append("t", recording_seal) for _ in range(5)]
    assert seen == seqs
    assert [(r.seq, r.body) for r in ob.pending()] == [(s, body_for(s)) for s in seqs]


def test_seq_persists_across_reopen(path: Path) -> None:
    with Outbox(path) as ob:
        assert [ob.append("t", seal) for _ in range(3)] == [1, 2, 3]
    with Outbox(path) as ob:
        assert ob.append("t", seal) == 4
        assert [r.seq for r in ob.pending()] == [1, 2, 3, 4]


def test_seq_not_reused_after_acking_everything_and_reopening(path: Path) -> None:
    with Outbox(path) as ob:
        seqs = [ob.append("t", seal) for _ in range(10)]
        assert ob.ack(seqs) == 10
        assert ob.stats() == OutboxStats(0, 0, None, 10, None)
    with Outbox(path) as ob:
        assert ob.stats().last_seq == 10
        assert ob.append("t", seal) == 11
        ob.ack([11])
    with Outbox(path) as ob:
        assert ob.stats() == OutboxStats(0, 0, None, 11, None)
        assert ob.append("t", seal) == 12


def test_boot_counter_persists_and_increments(path: Path) -> None:
    with Outbox(path) as ob:
        assert ob.next_boot() == 1
        assert ob.next_boot() == 2
        ob.append("t", seal)  # the boot counter is independent of seqs
    with Outbox(path) as ob:
        assert ob.next_boot() == 3
    with Outbox(path, synchronous="FULL") as ob:
        assert ob.next_boot() == 4
        assert ob.append("t", seal) == 2


# -- pending / ack -----------------------------------------------------------------------


def test_pending_order_after_seq_and_limit(ob: Outbox) -> None:
    for i in range(10):
        ob.append(f"topic/{i}", seal, priority=i % 3)
    rows = ob.pending()
    assert [r.seq for r in rows] == list(range(1, 11))
    assert rows[3] == OutboxRow(4, "topic/3", body_for(4), 0, rows[3].created_ns)
    assert [r.seq for r in ob.pending(after_seq=4, limit=3)] == [5, 6, 7]
    assert [r.seq for r in ob.pending(after_seq=8)] == [9, 10]
    assert ob.pending(after_seq=10) == []
    assert ob.pending(limit=0) == []
    assert [r.seq for r in ob.pending(after_seq=-5, limit=1)] == [1]
    with pytest.raises(ValueError):
        ob.pending(limit=-1)
    # Paging over gaps left by acks.
    ob.ack([2, 3, 6])
    assert [r.seq for r in ob.pending(after_seq=1, limit=3)] == [4, 5, 7]


def test_pending_rows_are_exact(ob: Outbox) -> None:
    before = time.time_ns()
    ob.append("a/b", lambda s: b"\x00\xff" * 3000, priority=0)
    ob.append("c", lambda s: b"", priority=7)
    after = time.time_ns()
    first, second = ob.pending()
    assert (first.seq, first.topic, first.body, first.priority) == (1, "a/b", b"\x00\xff" * 3000, 0)
    assert (second.seq, second.topic, second.body, second.priority) == (2, "c", b"", 7)
    assert type(first.body) is bytes
    assert before <= first.created_ns <= second.created_ns <= after


def test_ack_idempotent_partial_and_unknown(ob: Outbox) -> None:
    for _ in range(6):
        ob.append("t", seal)
    assert ob.ack([]) == 0
    assert ob.ack([2, 4, 4, 99, -1]) == 2
    assert ob.ack([2, 4]) == 0
    assert ob.ack(iter([1, 5])) == 2
    assert [r.seq for r in ob.pending()] == [3, 6]
    assert ob.ack(range(100)) == 2
    assert ob.pending() == []
    assert ob.append("t", seal) == 7


def test_ack_rejects_non_integers(ob: Outbox) -> None:
    ob.append("t", seal)
    with pytest.raises(TypeError):
        ob.ack([1.0])  # type: ignore[list-item]
    assert ob.stats().rows == 1


# -- stats -------------------------------------------------------------------------------


def test_stats_exact(path: Path) -> None:
    with Outbox(path) as ob:
        assert ob.stats() == OutboxStats(
            rows=0, bytes=0, first_seq=None, last_seq=0, oldest_created_ns=None
        )
        sizes = {}
        for _ in range(20):
            seq = ob.append("t", seal)
            sizes[seq] = len(body_for(seq))
        rows = {r.seq: r for r in ob.pending()}
        assert ob.stats() == OutboxStats(20, sum(sizes.values()), 1, 20, rows[1].created_ns)
        ob.ack([1, 2, 3, 10])
        for s in (1, 2, 3, 10):
            del sizes[s]
        expected = OutboxStats(16, sum(sizes.values()), 4, 20, rows[4].created_ns)
        assert ob.stats() == expected
    with Outbox(path) as ob:
        assert ob.stats() == expected
        ob.ack(list(sizes))
        assert ob.stats() == OutboxStats(0, 0, None, 20, None)


def test_stats_totals_follow_deletes_made_outside_the_api(path: Path) -> None:
    # An operator purging rows with the sqlite3 shell must not leave stats() wrong.
    with Outbox(path) as ob:
        for _ in range(10):
            ob.append("t", seal)
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM outbox WHERE seq <= 5")
    conn.close()
    with Outbox(path) as ob:
        st = ob.stats()
        assert (st.rows, st.bytes, st.first_seq, st.last_seq) == (
            5,
            sum(len(body_for(s)) for s in range(6, 11)),
            6,
            10,
        )


# -- seal failures -----------------------------------------------------------------------


def test_seal_raising_commits_nothing_and_outbox_stays_usable(path: Path) -> None:
    class Boom(Exception):
        pass

    def failing(seq: int) -> bytes:
        raise Boom(seq)

    with Outbox(path) as ob:
        ob.append("t", seal)
        before = ob.stats()
        with pytest.raises(Boom) as info:
            ob.append("t", failing)
        assert info.value.args == (2,)
        assert ob.stats() == before
        assert [r.seq for r in ob.pending()] == [1]
        # Nothing was committed under 2, so it is still the next seq.
        assert ob.append("t", seal) == 2
    with Outbox(path) as ob:
        assert [r.seq for r in ob.pending()] == [1, 2]


def test_seal_errors_propagate_unchanged_even_sqlite_ones(ob: Outbox) -> None:
    original = sqlite3.OperationalError("raised by seal, not by the outbox")

    def failing(seq: int) -> bytes:
        try:
            raise KeyError(seq)
        except KeyError as cause:
            raise original from cause

    with pytest.raises(sqlite3.OperationalError) as info:
        ob.append("t", failing)
    assert info.value is original
    assert isinstance(info.value.__cause__, KeyError)

    def interrupted(seq: int) -> bytes:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ob.append("t", interrupted)
    assert ob.stats().rows == 0
    assert ob.append("t", seal) == 1  # no transaction was left open


def test_sqlite_error_during_append_rolls_back_and_is_an_outbox_error(ob: Outbox) -> None:
    ob.append("t", seal)
    # White box: shrink SQLite's blob limit on our connection to provoke "too big".
    assert ob._conn is not None
    ob._conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1000)
    with pytest.raises(OutboxError, match="append failed") as info:
        ob.append("t", lambda s: b"x" * 5000)
    assert str(ob.path) in str(info.value)
    assert not isinstance(info.value, OutboxCorrupt)
    assert isinstance(info.value.__cause__, sqlite3.Error)
    assert ob.stats().rows == 1
    assert ob.append("t", seal) == 2


def test_seal_must_return_bytes(ob: Outbox) -> None:
    with pytest.raises(TypeError, match="bytes"):
        ob.append("t", lambda s: "text")  # type: ignore[arg-type,return-value]
    assert ob.stats().rows == 0
    assert ob.append("t", lambda s: bytearray(b"ok")) == 1
    assert ob.pending()[0].body == b"ok"
    with pytest.raises(TypeError):
        ob.append(b"topic", seal)  # type: ignore[arg-type]


def test_seal_may_read_stats_without_deadlock(ob: Outbox) -> None:
    def nosy(seq: int) -> bytes:
        return b"%d" % ob.stats().rows

    ob.append("t", seal)
    ob.append("t", nosy)
    assert ob.pending()[1].body == b"1"


# -- modes, threads, lifecycle -----------------------------------------------------------


def test_synchronous_full(path: Path) -> None:
    with Outbox(path, synchronous="FULL") as ob:
        seqs = [ob.append("t", seal) for _ in range(5)]
        assert ob.ack(seqs[:2]) == 2
        with sqlite3.connect(path) as probe:
            assert probe.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        probe.close()
    with Outbox(path) as ob:
        assert [(r.seq, r.body) for r in ob.pending()] == [(s, body_for(s)) for s in seqs[2:]]


def test_rejects_unknown_synchronous_mode(path: Path) -> None:
    with pytest.raises(ValueError):
        Outbox(path, synchronous="OFF")  # type: ignore[arg-type]


def test_pending_is_a_primary_key_range_search(ob: Outbox) -> None:
    with sqlite3.connect(ob.path) as probe:
        plan = probe.execute(
            "EXPLAIN QUERY PLAN SELECT seq, topic, body, priority, created_ns FROM outbox"
            " WHERE seq > ? ORDER BY seq LIMIT ?",
            (0, 256),
        ).fetchall()
    probe.close()
    details = " ".join(row[-1] for row in plan)
    assert "USING INTEGER PRIMARY KEY" in details
    assert "TEMP B-TREE" not in details  # no sort step


def test_used_from_a_thread_other_than_its_creator(path: Path) -> None:
    ob = Outbox(path)
    results: list[object] = []

    def work() -> None:
        try:
            results.append(ob.append("t", seal))
            results.append(ob.pending()[0].seq)
            results.append(ob.ack([1]))
            ob.close()
        except BaseException as exc:
            results.append(exc)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert results == [1, 1, 1]


def test_concurrent_appends_get_unique_seqs(path: Path) -> None:
    # One instance shared by threads, and a second connection to the same file.
    with Outbox(path) as ob, Outbox(path) as other:
        got: list[list[int]] = [[], [], []]

        def run(outbox: Outbox, out: list[int]) -> None:
            for _ in range(100):
                out.append(outbox.append("t", seal))

        threads = [
            threading.Thread(target=run, args=(ob, got[0])),
            threading.Thread(target=run, args=(ob, got[1])),
            threading.Thread(target=run, args=(other, got[2])),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        everything = sorted(got[0] + got[1] + got[2])
        assert everything == list(range(1, 301))
        for out in got:
            assert out == sorted(out)
        assert [(r.seq, r.body) for r in ob.pending(limit=1000)] == [
            (s, body_for(s)) for s in everything
        ]


def test_close_is_idempotent_and_closed_outbox_refuses_work(path: Path) -> None:
    ob = Outbox(path)
    ob.append("t", seal)
    ob.close()
    ob.close()
    for call in (
        lambda: ob.append("t", seal),
        ob.pending,
        lambda: ob.ack([1]),
        ob.stats,
        ob.next_boot,
    ):
        with pytest.raises(OutboxError, match="closed"):
            call()
    with Outbox(path) as again:
        assert again.stats().rows == 1
    assert "closed" in repr(again)


def test_empty_file_becomes_a_new_outbox(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.touch()
    with Outbox(path) as ob:
        assert ob.append("t", seal) == 1


def test_directory_instead_of_file(path: Path) -> None:
    path.mkdir(parents=True)
    with pytest.raises(OutboxError, match="directory") as info:
        Outbox(path)
    assert not isinstance(info.value, OutboxCorrupt)


# -- corrupt and foreign files -----------------------------------------------------------


def _filled(path: Path, rows: int = 3000) -> int:
    """A closed outbox with many small rows (every page a B-tree page); returns its size."""
    with Outbox(path) as ob:
        for _ in range(rows):
            ob.append("telemetry/line-1", lambda s: b"%08d" % s * 20)
    assert not Path(f"{path}-wal").exists()  # checkpointed into the main file on close
    return path.stat().st_size


def _expect_corrupt(path: Path, what: str) -> OutboxCorrupt:
    with pytest.raises(OutboxCorrupt) as info:
        Outbox(path)
    message = str(info.value)
    assert str(path) in message
    assert what in message
    assert "move" in message  # says what to do
    return info.value


def test_garbage_file_is_corrupt(path: Path) -> None:
    path.parent.mkdir(parents=True)
    content = b"this is not a database\n" * 500
    path.write_bytes(content)
    _expect_corrupt(path, "not a SQLite database")
    assert path.read_bytes() == content  # untouched


def test_sqlite_header_without_database_is_corrupt(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"SQLite format 3\x00" + b"\x01" * 50)
    _expect_corrupt(path, "not a database")


def test_truncated_file_is_corrupt(path: Path) -> None:
    size = _filled(path)
    os.truncate(path, size // 2)
    _expect_corrupt(path, "malformed")


@pytest.mark.parametrize("fill", [b"\xff", b"\x00", b"\x5a"], ids=["ff", "00", "5a"])
def test_overwritten_pages_in_the_middle_are_corrupt(path: Path, fill: bytes) -> None:
    size = _filled(path)
    page = 4096
    start = (size // 2) // page * page
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(fill * (4 * page))
    _expect_corrupt(path, "")


def test_flipped_bytes_in_a_page_header_are_corrupt(path: Path) -> None:
    size = _filled(path)
    start = (size // 2) // 4096 * 4096  # a B-tree page header: flipping it breaks structure
    with open(path, "r+b") as f:
        f.seek(start)
        data = bytearray(f.read(64))
        f.seek(start)
        f.write(bytes(b ^ 0xFF for b in data))
    _expect_corrupt(path, "")


def test_foreign_sqlite_schema_is_corrupt_and_left_untouched(path: Path) -> None:
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO users (name) VALUES ('ada')")
    conn.close()
    before = path.read_bytes()
    _expect_corrupt(path, "another program's SQLite database")
    assert path.read_bytes() == before  # not switched to WAL, nothing created
    assert not Path(f"{path}-wal").exists()


def test_foreign_schema_even_with_a_table_named_outbox(path: Path) -> None:
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE outbox (id INTEGER PRIMARY KEY, payload TEXT)")
    conn.close()
    _expect_corrupt(path, "another program's")


def test_missing_part_of_schema_is_corrupt(path: Path) -> None:
    _filled(path, rows=5)
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TRIGGER outbox_totals_delete")
    conn.close()
    _expect_corrupt(path, "outbox_totals_delete")


def test_newer_schema_version_is_refused_but_not_called_corrupt(path: Path) -> None:
    _filled(path, rows=5)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = 99 WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(OutboxError, match="newer") as info:
        Outbox(path)
    assert not isinstance(info.value, OutboxCorrupt)


def test_pending_drops_answered_from_memory_still_sees_every_new_drop(path: Path) -> None:
    # pending_drops() skips the drops table while nothing can have changed it: a drop
    # recorded here, or committed by another connection, must still be seen at once.
    with Outbox(path) as ob, Outbox(path) as other:
        assert ob.pending_drops() == []
        assert ob.pending_drops() == []  # (answered from memory)
        other.record_drop(5, "disk_full")
        drops = ob.pending_drops()
        assert [(d.points, d.reason) for d in drops] == [(5, "disk_full")]
        ob.append("n", seal, priority=URGENT, notifies=[d.id for d in drops], essential=True)
        assert ob.pending_drops() == [] and other.pending_drops() == []
        ob.record_drop(3, "outbox_full")
        assert [(d.points, d.reason) for d in ob.pending_drops()] == [(3, "outbox_full")]
        assert [(d.points, d.reason) for d in other.pending_drops()] == [(3, "outbox_full")]


def test_ack_of_many_rows_deletes_them_all_and_ignores_unknown_seqs(path: Path) -> None:
    # up to 500 seqs are one DELETE statement, more are one transaction of single deletes
    with Outbox(path) as ob:
        seqs = [ob.append("t", seal) for _ in range(1300)]
        assert ob.ack([*seqs[:3], 10**6]) == 3
        assert ob.ack([*seqs[3:503], 10**6 + 1]) == 500  # 501 keys: the other way
        assert ob.ack(seqs[503:1003]) == 500  # 500 keys: one statement
        assert [r.seq for r in ob.pending(limit=10**6)] == seqs[1003:]
        st = ob.stats()
        assert (st.rows, st.bytes) == (297, sum(len(body_for(s)) for s in seqs[1003:]))
