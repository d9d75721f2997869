"""The outbox's bounds: byte cap, free-disk reserve, eviction, drop records, the
ballast released on ENOSPC, and quarantine of damaged rows. A mixin of Outbox."""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .model import Drop, OutboxError, OutboxFull, OutboxParts, is_full
from .schema import URGENT

T = TypeVar("T")

_BY = "dropped_by:"  # meta keys of the per-reason totals: dropped_by:rows:<reason>
_ROWS_BY = _BY + "rows:"
_POINTS_BY = _BY + "points:"

_REASON_TEXT = {
    "outbox_full": "outbox full (outbox.max_mib)",
    "disk_full": "disk full (the filesystem of the outbox, keeping outbox.min_free_mib and "
    "the reserve free)",
}

# The reserve, in two parts, spent only by writes that must proceed on a full disk
# (deletes of acknowledged rows, drop records and their notices, checkpoints, the boot
# counter), never by new data, and made again as soon as there is room:
# - a file beside the outbox (BALLAST bytes), given back to the filesystem so the WAL
#   can grow and the database can be opened;
# - pages inside the outbox file (POOL bytes, held by a blob in table ``pad``, which new
#   data cannot take the way it takes free pages), freed on SQLITE_FULL so those writes
#   never need the file to grow, nor the checkpoint that copies them into it (a
#   checkpoint that cannot grow the file on a full disk never finishes, and then the
#   WAL can never restart).
# Pages that deletes free go back to the filesystem (incremental vacuum).
BALLAST = 1 << 20
POOL = 1 << 20
# Room the WAL may need before the next automatic checkpoint (256 pages) restarts it.
WAL_ROOM = 1 << 20 | 1 << 18


class Disk:
    """What the outbox asks of its filesystem, in one place: a seam for tests, which
    pass one whose free space they choose (the real full disk is in tests/faults)."""

    generation = 0
    """A fake disk bumps it when it changes its free space: looked at again at once."""

    def free(self, path: Path) -> int:
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize

    def allocate(self, path: Path, size: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)  # half a reserve is none: do not leave it
            raise
        os.close(fd)

    def release(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


class RoomMixin(OutboxParts):
    disk: Disk
    _reserve_ok: bool
    _pool_ok: bool = False
    _room_budget: int = 0  # bytes new data may take before the disk is looked at again
    quarantined: int
    _room_until: float = 0.0
    _room_generation = 0
    # PRAGMA data_version when pending_drops() last found none, if no drop was recorded
    # through this object since: then none is pending while no other connection commits.
    _no_drops_at: int | None = None

    @property
    def _ballast(self) -> Path:
        return self.path.with_name(self.path.name + ".ballast")

    @functools.cached_property
    def _ballast_file(self) -> str:
        # looked at after every delete: os.path.exists on a str costs a third of Path's
        return str(self._ballast)

    def _ensure_ballast(self) -> bool:
        """Keep the reserve (BALLAST bytes beside the outbox): made again as soon as the
        filesystem has room for it, after giving back the free pages of the file if it
        has none. True when the reserve is in place."""
        if os.path.exists(self._ballast_file):
            self._reserve_ok = True
            self._ensure_pool()
            return True
        try:
            if self._free_disk() < BALLAST + BALLAST // 8:
                self._give_back_free_pages()
            if self._free_disk() >= BALLAST + BALLAST // 8:
                self.disk.allocate(self._ballast, BALLAST)
                self._reserve_ok = True
                self._ensure_pool()
                return True
        except OSError:
            pass
        self._reserve_ok = False
        return False

    def _open_room(self) -> None:
        """Before opening: on a filesystem full to the last bytes, SQLite cannot even map
        its shared-memory file or start a WAL. A start must run (it can still send and
        delete), so the reserve is spent on that; it is made again once there is room."""
        with contextlib.suppress(OSError):
            if self._ballast.exists() and self._free_disk() < WAL_ROOM:
                self.disk.release(self._ballast)

    def _give_back_free_pages(self) -> None:
        """Incremental vacuum (outboxes created with auto_vacuum INCREMENTAL): the free
        pages beyond the pool leave the file at the next checkpoint. Best effort."""
        conn = self._db()
        with contextlib.suppress(sqlite3.Error):
            if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
                # executescript steps it to the end (execute() would free one page)
                conn.executescript("PRAGMA incremental_vacuum")
                conn.execute("PRAGMA wal_checkpoint(RESTART)")  # not TRUNCATE: see _shrink_wal

    def _ensure_pool(self) -> None:
        """Hold POOL bytes of pages inside the file (a blob in table ``pad``) while the
        filesystem has room for it and the reserve file. Best effort."""
        if self._pool_ok:
            return
        conn = self._db()
        with contextlib.suppress(sqlite3.Error, OutboxError, OSError):
            held = (
                conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'pad'").fetchone()[0]
                and conn.execute("SELECT count(*) FROM pad").fetchone()[0]
            )
            if not held:
                if self._free_disk() < POOL + BALLAST + WAL_ROOM:
                    return
                with self._write("reserve pages"):
                    conn.execute("CREATE TABLE IF NOT EXISTS pad (b BLOB)")
                    conn.execute("INSERT INTO pad VALUES (zeroblob(?))", (POOL,))
            self._pool_ok = True

    def _release_pool(self) -> None:
        """Free the pages the pool holds, for the write that must proceed. Best effort:
        the delete itself needs little (the reserve file was released first)."""
        self._pool_ok = False
        with (
            contextlib.suppress(sqlite3.Error, OutboxError),
            self._write("release reserved pages") as txn,
        ):
            has_pad = "SELECT count(*) FROM sqlite_master WHERE name = 'pad'"
            if txn.conn.execute(has_pad).fetchone()[0]:
                txn.conn.execute("DELETE FROM pad")

    def _on_disk_full(self) -> None:
        """SQLITE_FULL in a write that must proceed: give the reserve back so it (and the
        checkpoint it needs) can be written, then restart the WAL."""
        with contextlib.suppress(OSError):
            self.disk.release(self._ballast)
        self._reserve_ok = False
        self._room_budget = 0
        self._shrink_wal()
        self._release_pool()

    def _shrink_wal(self) -> None:
        """Checkpoint and restart the WAL: the file shrinks to ``journal_size_limit`` and
        that space is reused, so even deletes (which need WAL space) work on a disk that
        is otherwise full. Not TRUNCATE: a zero-length WAL on a full disk cannot grow.
        Best effort: a full disk may refuse even this."""
        with contextlib.suppress(sqlite3.Error):
            self._db().execute("PRAGMA wal_checkpoint(RESTART)")

    def _free_disk(self) -> int:
        return self.disk.free(self._dir)

    def _essential(self, doing: str, write: Callable[[], T]) -> T:
        """A write that must proceed on a full disk: on SQLITE_FULL, spend the reserve
        and try once more."""
        try:
            return write()
        except OutboxError as exc:
            if not is_full(exc):
                raise
            self._on_disk_full()
            return write()

    def _room_for_data(self, conn: sqlite3.Connection, size: int) -> bool:
        """May new data of ``size`` bytes be written without spending the reserve, the
        configured free-disk reserve (``min_free_bytes``) or the WAL's room? Free pages
        inside the file count: new rows reuse them without growing it."""
        now = time.monotonic()
        if (
            size <= self._room_budget
            and now < self._room_until
            and self.disk.generation == self._room_generation
        ):
            self._room_budget -= size  # room known from the last look, a second ago at most
            return True
        owed = self.min_free_bytes + WAL_ROOM
        owed += (0 if self._reserve_ok else BALLAST) + (0 if self._pool_ok else POOL)
        free = self._free_disk()
        if free >= owed + size:
            # Half of what is left may be written before looking again (a statvfs per
            # message is a fifth of an append); another program filling the disk in
            # between meets SQLITE_FULL, which is handled as well.
            self._room_budget, self._room_until = (free - owed - size) // 2, now + 1.0
            self._room_generation = self.disk.generation
            return True
        self._room_budget = 0
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        freelist = conn.execute("PRAGMA freelist_count").fetchone()[0] * page
        wal = self._wal_bytes()  # already allocated: reused after the next checkpoint
        return free + freelist + min(wal, WAL_ROOM) >= owed + size

    def _wal_bytes(self) -> int:
        try:
            return os.stat(f"{self.path}-wal").st_size
        except OSError:
            return 0

    def _make_room(
        self, conn: sqlite3.Connection, size: int, priority: int, used: int | None = None
    ) -> None:
        """Inside the append transaction: evict or refuse when the message does not fit
        under the byte cap (telemetry), or on the disk without spending the reserves
        (any message: urgent ones evict telemetry, never the other way round). ``used``:
        the bytes held, if already read in this transaction."""
        over = 0
        reason = ""
        if self.max_bytes is not None and priority != URGENT:
            if used is None:
                used = conn.execute("SELECT value FROM meta WHERE key = 'bytes'").fetchone()[0]
            over = used + size - self.max_bytes
            reason = "outbox_full"
        if over <= 0 and not self._room_for_data(conn, size):
            # Freed pages are reused by SQLite, so evicting a little more than the new
            # message keeps the file from growing; 1% at a time avoids evicting per message.
            used = conn.execute("SELECT value FROM meta WHERE key = 'bytes'").fetchone()[0]
            over, reason = max(size, used // 100), "disk_full"
        if over <= 0:
            return
        if self.policy == "stop_acquisition":
            raise OutboxFull(
                f"{self._where}: {_REASON_TEXT[reason]}: new data refused "
                f"(policy stop_acquisition)",
                reason,
            )
        if not self._evict(conn, over, reason):
            raise OutboxFull(
                f"{self._where}: {_REASON_TEXT[reason]} and nothing left to "
                f"evict (only urgent messages remain)",
                reason,
            )

    def _evict(self, conn: sqlite3.Connection, need: int, reason: str) -> bool:
        """Delete the oldest telemetry rows totalling at least ``need`` bytes; record
        them as drops, one per run of consecutive seqs: a notice never names a seq that
        was kept (an urgent row between evicted ones) or sent."""
        freed = 0
        evicted: list[tuple[int, int, int]] = []  # (seq, bytes, points)
        for seq, size, n in conn.execute(
            "SELECT seq, length(body), points FROM outbox WHERE priority != ? ORDER BY seq",
            (URGENT,),
        ):
            evicted.append((seq, size, n))
            freed += size
            if freed >= need:
                break
        if freed < need or not evicted:
            return False
        last = evicted[-1][0]
        first = evicted[0][0]
        conn.execute(
            "DELETE FROM outbox WHERE seq BETWEEN ? AND ? AND priority != ?", (first, last, URGENT)
        )
        run: list[tuple[int, int, int]] = []
        for row in evicted:
            if run and row[0] != run[-1][0] + 1:
                self._record_run(conn, run, reason)
                run = []
            run.append(row)
        self._record_run(conn, run, reason)
        return True

    def _record_run(
        self, conn: sqlite3.Connection, run: list[tuple[int, int, int]], reason: str
    ) -> None:
        self._record(
            conn,
            run[0][0],
            run[-1][0],
            len(run),
            sum(r[2] for r in run),
            sum(r[1] for r in run),
            reason,
        )

    def _evict_some(self) -> bool:
        """After ENOSPC: free 1% of the backlog (at least one row) in its own transaction."""
        with self._write("evict") as txn:
            used = txn.conn.execute("SELECT value FROM meta WHERE key = 'bytes'").fetchone()[0]
            return self._evict(txn.conn, max(1, used // 100), "disk_full")

    def _record(
        self,
        conn: sqlite3.Connection,
        first: int | None,
        last: int | None,
        rows: int,
        points: int,
        nbytes: int,
        reason: str,
    ) -> None:
        self._no_drops_at = None
        conn.execute(
            "INSERT INTO drops (first_seq, last_seq, rows, points, bytes, reason, at_ns)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (first, last, rows, points, nbytes, reason, time.time_ns()),
        )
        self._count(conn, rows, points, reason)

    def _count(self, conn: sqlite3.Connection, rows: int, points: int, reason: str) -> None:
        """The running totals of losses, overall and by reason (same transaction)."""
        conn.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped_rows'", (rows,))
        conn.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped_points'", (points,))
        # per reason too, in the same transaction: what metrics show survives restarts
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
            ((f"{_ROWS_BY}{reason}", rows), (f"{_POINTS_BY}{reason}", points)),
        )

    def record_drop(self, points: int, reason: str) -> None:
        """Record points lost before they got a seq (e.g. refused under stop_acquisition).
        Proceeds on a full disk (spends the reserve): a loss is never unrecorded. Added to
        the newest drop of the same reason not yet notified, if there is one, so a long
        refusal is one drop (and one notice), not one per window."""

        def write() -> None:
            self._no_drops_at = None
            with self._write("record_drop") as txn:
                c = txn.conn
                row = c.execute(  # the newest drop only: its rowid, no scan
                    "SELECT id, reason, first_seq, notified FROM drops ORDER BY id DESC LIMIT 1"
                ).fetchone()
                if row is not None and row[1:] == (reason, None, 0):
                    c.execute("UPDATE drops SET points = points + ? WHERE id = ?", (points, row[0]))
                    self._count(c, 0, points, reason)
                else:
                    self._record(c, None, None, 0, points, 0, reason)

        with self._lock:
            self._essential("record_drop", write)

    def drop_totals(self) -> dict[str, tuple[int, int]]:
        """Every loss ever recorded in this outbox, by reason: (messages, points).
        Kept in the meta table by the transaction that records each drop; an outbox
        from before these totals gets them from its drop records once, at open."""
        with self._lock:
            conn = self._db()
            try:
                rows = conn.execute(
                    "SELECT key, value FROM meta WHERE key >= ? AND key < ?",
                    (_BY, _BY[:-1] + chr(ord(_BY[-1]) + 1)),
                ).fetchall()
            except sqlite3.Error as exc:
                self._fail(conn, exc, "drop_totals")
        out: dict[str, list[int]] = {}
        for key, value in rows:
            what, reason = key[len(_BY) :].split(":", 1)
            out.setdefault(reason, [0, 0])[0 if what == "rows" else 1] = value
        return {r: (v[0], v[1]) for r, v in sorted(out.items())}

    def _migrate_drop_totals(self, conn: sqlite3.Connection) -> None:
        """At open: an outbox written before per-reason totals gets them from its drop
        records (which are kept after their notice)."""
        if conn.execute("SELECT 1 FROM meta WHERE key = 'drop_totals'").fetchone():
            return
        with self._write("drop totals"):
            for reason, rows, points in conn.execute(
                "SELECT reason, sum(rows), sum(points) FROM drops GROUP BY reason"
            ).fetchall():
                conn.executemany(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                    ((f"{_ROWS_BY}{reason}", rows), (f"{_POINTS_BY}{reason}", points)),
                )
            conn.execute("INSERT INTO meta (key, value) VALUES ('drop_totals', 1)")

    def pending_drops(self) -> list[Drop]:
        """Drops the platform has not been told about yet (see ``append(notifies=...)``).

        Asked after every sealed message: when none were pending at the last look, no
        drop was recorded here since and no other connection committed anything (PRAGMA
        data_version), the answer is known without reading the drops table (which keeps
        every drop ever recorded, so reading it grows with the gateway's age)."""
        with self._lock:
            conn = self._db()
            try:
                version = conn.execute("PRAGMA data_version").fetchone()[0]
                if version == self._no_drops_at:
                    return []
                rows = conn.execute(
                    "SELECT id, first_seq, last_seq, rows, points, bytes, reason, at_ns"
                    " FROM drops WHERE notified = 0 ORDER BY id"
                ).fetchall()
            except sqlite3.Error as exc:
                self._fail(conn, exc, "pending_drops")
            self._no_drops_at = None if rows else version
        return [Drop(*r) for r in rows]

    # -- reading, acknowledging -----------------------------------------------------------

    def set_aside(self, seqs: list[int], reason: str) -> int:
        """Move these rows out of the outbox (to the quarantine table, kept for
        inspection) and record each as a drop with ``reason``, e.g. a message the broker
        refuses for good. Returns how many rows were moved; unknown seqs are ignored."""
        with self._lock:
            conn = self._db()
            try:
                rows = conn.execute(
                    "SELECT seq, topic, body, priority, created_ns, points FROM outbox"
                    f" WHERE seq IN ({','.join('?' * len(seqs))})",
                    list(seqs),
                ).fetchall()
            except sqlite3.Error as exc:
                self._fail(conn, exc, "set_aside")
            if rows:
                self._quarantine(rows, reason)
        return len(rows)

    def _quarantine(self, rows: list[tuple], reason: str = "corrupt_at_rest") -> None:  # type: ignore[type-arg]
        self._essential("quarantine", lambda: self._quarantine_txn(rows, reason))
        self.quarantined += len(rows)

    def _quarantine_txn(self, rows: list[tuple], reason: str) -> None:  # type: ignore[type-arg]
        now = time.time_ns()
        with self._write("quarantine") as txn:
            for r in rows:
                txn.conn.execute(
                    "INSERT OR REPLACE INTO quarantine (seq, topic, body, found_ns)"
                    " VALUES (?, ?, ?, ?)",
                    (r[0], r[1], r[2], now),
                )
                txn.conn.execute("DELETE FROM outbox WHERE seq = ?", (r[0],))
                self._record(txn.conn, r[0], r[0], 1, r[5], len(r[2]), reason)
