"""What the gateway remembers about commands, in ``<state_dir>/commands.db`` (SQLite).

Why a file of its own rather than the outbox: the outbox is the data path (its own
thread, caps, eviction, quarantine, maybe its own partition), while this is a small
record kept for the commands' lifetime and read on the command path only. A fresh or
damaged outbox must not forget which commands ran, and the other way round.

- ``commands``: one row per command id that was verified: its signed digest, the key,
  its state (``executing`` while the device is being written, then ``finished``) and
  its result (CBOR). A re-delivered command is answered from here, never run again. A
  row stays until a day after the command expired (by then any copy of it is refused
  as expired anyway).
- ``tag_writes``: when each tag was last written (``min_interval_s``).
- ``meta``: the last config version applied.

Every change is committed with ``synchronous=FULL`` before the device is touched or the
broker is acknowledged: a power cut can lose a command's effect on the device, never the
fact that it ran. A row left ``executing`` by a crash is reported as ``failed``
(``interrupted``) at the next start, not run again.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2

FILE = "commands.db"
KEEP_AFTER_EXPIRY_NS = 86400 * 10**9

_SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    id          TEXT PRIMARY KEY,
    digest      BLOB NOT NULL,
    kid         BLOB,
    op          TEXT NOT NULL,
    state       TEXT NOT NULL,
    exp_ns      INTEGER NOT NULL,
    received_ns INTEGER NOT NULL,
    result      BLOB,
    sealed      INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS tag_writes (tag TEXT PRIMARY KEY, at_ns INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class StateError(Exception):
    """commands.db cannot be opened or written; the message names the file."""


@dataclass(frozen=True, slots=True)
class Seen:
    id: str
    digest: bytes
    state: str  # "executing" | "finished"
    result: dict[str, Any] | None
    sealed: bool


class CommandState:
    """Thread-safe (one connection, one lock): the downlink calls it from a worker thread
    so that its fsyncs never run on the event loop. What the checks on the loop need (when
    each tag was last written, the config version) is also kept in memory, set by the
    writes once they committed: reading it never waits for the lock, which a ``FULL``
    transaction holds through its fsync."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(_SCHEMA)
            if self.db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("quick_check failed")
            rows = self.db.execute("SELECT tag, at_ns FROM tag_writes").fetchall()
            self._tag_writes: dict[str, int] = {str(t): int(at) for t, at in rows}
            row = self.db.execute("SELECT value FROM meta WHERE name = 'config_version'").fetchone()
            self._config_version: int | None = None if row is None else int(row[0])
        except sqlite3.Error as exc:
            raise StateError(
                f"{path}: cannot open the command state ({exc}); if the file is damaged, move "
                "it aside: commands seen before are then no longer recognised (they are "
                "still refused once expired)"
            ) from None

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def _txn(self, fn: Any) -> Any:
        with self._lock:
            try:
                self.db.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(self.db)
                    self.db.execute("COMMIT")
                except BaseException:
                    self.db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StateError(f"{self.path}: {exc}") from None
            return out

    def seen(self, command_id: str) -> Seen | None:
        with self._lock:
            row = self.db.execute(
                "SELECT id, digest, state, result, sealed FROM commands WHERE id = ?",
                (command_id,),
            ).fetchone()
        if row is None:
            return None
        res = cbor2.loads(row[3]) if row[3] is not None else None
        return Seen(row[0], bytes(row[1]), row[2], res, bool(row[4]))

    def begin(
        self,
        command_id: str,
        digest: bytes,
        kid: bytes,
        op: str,
        exp_ns: int,
        received_ns: int,
        tag: str | None = None,
    ) -> None:
        """Record a command as executing (and its tag as written now), durably."""
        now = time.time_ns()

        def fn(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO commands (id, digest, kid, op, state, exp_ns, received_ns) "
                "VALUES (?, ?, ?, ?, 'executing', ?, ?)",
                (command_id, digest, kid, op, exp_ns, received_ns),
            )
            if tag is not None:
                db.execute("INSERT OR REPLACE INTO tag_writes VALUES (?, ?)", (tag, now))
            db.execute(
                "DELETE FROM commands WHERE exp_ns < ? AND state = 'finished' AND sealed = 1",
                (received_ns - KEEP_AFTER_EXPIRY_NS,),
            )

        self._txn(fn)
        if tag is not None:
            self._tag_writes[tag] = now  # committed: what the next check sees

    def finish(
        self,
        command_id: str,
        digest: bytes,
        kid: bytes | None,
        op: str,
        exp_ns: int,
        received_ns: int,
        res: dict[str, Any],
    ) -> None:
        """Record a command's result (a refused command gets its row here directly)."""
        blob = cbor2.dumps(res)

        def fn(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO commands (id, digest, kid, op, state, exp_ns, received_ns, result) "
                "VALUES (?, ?, ?, ?, 'finished', ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "state = 'finished', result = excluded.result",
                (command_id, digest, kid, op, exp_ns, received_ns, blob),
            )

        self._txn(fn)

    def mark_sealed(self, command_id: str) -> None:
        self._txn(
            lambda db: db.execute("UPDATE commands SET sealed = 1 WHERE id = ?", (command_id,))
        )

    def unsealed(self) -> list[tuple[str, dict[str, Any]]]:
        """Finished commands whose result is not yet in the outbox (a crash came between)."""
        with self._lock:
            rows = self.db.execute(
                "SELECT id, result FROM commands WHERE state = 'finished' AND sealed = 0 "
                "ORDER BY received_ns"
            ).fetchall()
        return [(r[0], cbor2.loads(r[1])) for r in rows]

    def interrupted(self) -> list[tuple[str, bytes, bytes | None, str, int, int]]:
        """Commands left executing by a crash: (id, digest, kid, op, exp_ns, received_ns)."""
        with self._lock:
            rows = self.db.execute(
                "SELECT id, digest, kid, op, exp_ns, received_ns FROM commands "
                "WHERE state = 'executing' ORDER BY received_ns"
            ).fetchall()
        return [(r[0], bytes(r[1]), bytes(r[2]) if r[2] else None, r[3], r[4], r[5]) for r in rows]

    def last_write_ns(self, tag: str) -> int | None:
        """When ``tag`` was last written (committed), from memory: safe on the event loop."""
        return self._tag_writes.get(tag)

    def config_version(self) -> int | None:
        """The config version last applied (committed), from memory: safe on the loop."""
        return self._config_version

    def set_config_version(self, version: int) -> None:
        self._txn(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('config_version', ?)", (version,)
            )
        )
        self._config_version = version
