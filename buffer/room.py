"""The outbox's bounds: byte cap, free-disk reserve, eviction, drop records, the
ballast released on ENOSPC, and quarantine of damaged rows. A mixin of Outbox."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path

from .model import Drop, OutboxFull, OutboxParts
from .schema import URGENT

# Preallocated beside the outbox and released on ENOSPC: on a full disk even the deletes
# that make room, and the WAL checkpoint, need space to be written.
BALLAST = 1 << 20


class RoomMixin(OutboxParts):
    @property
    def _ballast(self) -> Path:
        return self.path.with_name(self.path.name + ".ballast")

    def _ensure_ballast(self) -> None:
        """Keep BALLAST bytes preallocated beside the outbox while the disk has room."""
        with contextlib.suppress(OSError):
            if not self._ballast.exists() and self._free_disk() > 4 * BALLAST + self.min_free_bytes:
                fd = os.open(self._ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    os.posix_fallocate(fd, 0, BALLAST)
                finally:
                    os.close(fd)

    def _on_disk_full(self) -> None:
        """SQLITE_FULL: give the ballast back so a checkpoint and the deletes that make
        room can be written (both need space themselves), then restart the WAL."""
        with contextlib.suppress(OSError):
            self._ballast.unlink()
        self._shrink_wal()

    def _shrink_wal(self) -> None:
        """Checkpoint and restart the WAL: the file shrinks to ``journal_size_limit`` and
        that space is reused, so even deletes (which need WAL space) work on a disk that
        is otherwise full. Not TRUNCATE: a zero-length WAL on a full disk cannot grow.
        Best effort: a full disk may refuse even this."""
        with contextlib.suppress(sqlite3.Error):
            self._db().execute("PRAGMA wal_checkpoint(RESTART)")

    def _free_disk(self) -> int:
        st = os.statvfs(self.path.parent)
        return st.f_bavail * st.f_frsize

    def _make_room(self, conn: sqlite3.Connection, size: int, priority: int) -> None:
        """Inside the append transaction: evict or refuse when the message does not fit."""
        over = 0
        reason = ""
        if self.max_bytes is not None and priority != URGENT:
            used = conn.execute("SELECT value FROM meta WHERE key = 'bytes'").fetchone()[0]
            over = used + size - self.max_bytes
            reason = "outbox_full"
        if over <= 0 and self.min_free_bytes and self._free_disk() < self.min_free_bytes + size:
            # Freed pages are reused by SQLite, so evicting a little more than the new
            # message keeps the file from growing; 1% at a time avoids evicting per message.
            used = conn.execute("SELECT value FROM meta WHERE key = 'bytes'").fetchone()[0]
            over, reason = max(size, used // 100), "disk_full"
            if priority == URGENT:
                return  # urgent messages are tiny; let SQLite tell if the disk is full
        if over <= 0:
            return
        if self.policy == "stop_acquisition":
            raise OutboxFull(
                f"{self._where}: {reason.replace('_', ' ')}: new data refused "
                f"(policy stop_acquisition)",
                reason,
            )
        if not self._evict(conn, over, reason):
            raise OutboxFull(
                f"{self._where}: {reason.replace('_', ' ')} and nothing left to "
                f"evict (only urgent messages remain)",
                reason,
            )

    def _evict(self, conn: sqlite3.Connection, need: int, reason: str) -> bool:
        """Delete the oldest telemetry rows totalling at least ``need`` bytes; record it."""
        freed = rows = pts = 0
        first = last = None
        for seq, size, n in conn.execute(
            "SELECT seq, length(body), points FROM outbox WHERE priority != ? ORDER BY seq",
            (URGENT,),
        ):
            first = seq if first is None else first
            last, freed, rows, pts = seq, freed + size, rows + 1, pts + n
            if freed >= need:
                break
        if freed < need or last is None:
            return False
        conn.execute("DELETE FROM outbox WHERE seq <= ? AND priority != ?", (last, URGENT))
        self._record(conn, first, last, rows, pts, freed, reason)
        return True

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
        conn.execute(
            "INSERT INTO drops (first_seq, last_seq, rows, points, bytes, reason, at_ns)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (first, last, rows, points, nbytes, reason, time.time_ns()),
        )
        conn.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped_rows'", (rows,))
        conn.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped_points'", (points,))

    def record_drop(self, points: int, reason: str) -> None:
        """Record points lost before they got a seq (e.g. refused under stop_acquisition)."""
        with self._lock, self._write("record_drop") as txn:
            self._record(txn.conn, None, None, 0, points, 0, reason)

    def pending_drops(self) -> list[Drop]:
        """Drops the platform has not been told about yet (see ``append(notifies=...)``)."""
        with self._lock:
            conn = self._db()
            try:
                rows = conn.execute(
                    "SELECT id, first_seq, last_seq, rows, points, bytes, reason, at_ns"
                    " FROM drops WHERE notified = 0 ORDER BY id"
                ).fetchall()
            except sqlite3.Error as exc:
                self._fail(conn, exc, "pending_drops")
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
