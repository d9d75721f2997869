"""SQLite outbox: every signed message is committed here before it is published.

One row per sealed message. The sequence number is allocated inside the same transaction
that stores the message, because the seq is part of the signed bytes (see ``append``).

Durability, by ``synchronous`` mode (the file is always in WAL mode):

- ``NORMAL``: a commit is in the OS once ``append`` returns, so a ``kill -9`` of the
  process loses nothing committed. A power cut can roll back the commits since the last
  checkpoint (the WAL is only fsynced at checkpoints).
- ``FULL``: every commit is fsynced; power cuts lose nothing committed either.

``next_boot`` always commits with an fsync, whatever the mode, so a boot number is never
handed out twice even across a power cut (it also makes everything before it durable).

Sequence numbers come from an ``AUTOINCREMENT`` key, so they are never reused after rows
are acknowledged (deleted) or the process restarts. Row and byte totals are kept by
triggers in the ``meta`` table so ``stats()`` costs O(log n), not a scan of the backlog.

Only the standard library is used: this module is imported on small gateways where
import time and RSS matter.
"""

from __future__ import annotations

import contextlib
import operator
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, NoReturn, Self

__all__ = ["Outbox", "OutboxCorrupt", "OutboxError", "OutboxRow", "OutboxStats"]

SCHEMA_VERSION = 1
# Written to the SQLite header (PRAGMA application_id) so our files are recognisable by
# tools such as `file(1)` and foreign SQLite files are never mistaken for an outbox.
APPLICATION_ID = 0x45475742  # "EGWB": edgegw buffer

_SQLITE_MAGIC = b"SQLite format 3\x00"
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26

_SCHEMA = f"""
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES
    ('schema_version', {SCHEMA_VERSION}), ('boot', 0), ('rows', 0), ('bytes', 0);
-- The INTEGER PRIMARY KEY is the table's own B-tree key, so `seq > ? ORDER BY seq LIMIT ?`
-- is a range search on it: no second index (which would cost every insert and delete).
CREATE TABLE outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    topic      TEXT    NOT NULL,
    body       BLOB    NOT NULL,
    priority   INTEGER NOT NULL,
    created_ns INTEGER NOT NULL
);
-- Totals for stats(): kept in the same transaction as the change, whoever makes it
-- (ack, future eviction, or an operator's sqlite3 shell).
CREATE TRIGGER outbox_totals_insert AFTER INSERT ON outbox BEGIN
    UPDATE meta SET value = value + CASE key WHEN 'rows' THEN 1 ELSE length(NEW.body) END
    WHERE key IN ('rows', 'bytes');
END;
CREATE TRIGGER outbox_totals_delete AFTER DELETE ON outbox BEGIN
    UPDATE meta SET value = value - CASE key WHEN 'rows' THEN 1 ELSE length(OLD.body) END
    WHERE key IN ('rows', 'bytes');
END;
CREATE TRIGGER outbox_totals_update AFTER UPDATE OF body ON outbox BEGIN
    UPDATE meta SET value = value + length(NEW.body) - length(OLD.body) WHERE key = 'bytes';
END;
PRAGMA application_id = {APPLICATION_ID};
"""

_OBJECTS = {
    "meta": "table",
    "outbox": "table",
    "outbox_totals_insert": "trigger",
    "outbox_totals_delete": "trigger",
    "outbox_totals_update": "trigger",
}

_NEXT_SEQ = """
SELECT max(
    coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0),
    coalesce((SELECT max(seq) FROM outbox), 0)
) + 1
"""

# One statement, so one snapshot even if another process writes meanwhile.
_STATS = """
SELECT
    (SELECT value FROM meta WHERE key = 'rows'),
    (SELECT value FROM meta WHERE key = 'bytes'),
    (SELECT min(seq) FROM outbox),
    coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0),
    (SELECT created_ns FROM outbox ORDER BY seq LIMIT 1)
"""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One committed, not yet acknowledged message."""

    seq: int
    topic: str
    body: bytes
    priority: int
    created_ns: int


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """A consistent snapshot of the outbox."""

    rows: int  # unacknowledged rows
    bytes: int  # sum of body lengths of those rows
    first_seq: int | None  # lowest unacknowledged seq
    last_seq: int  # highest seq ever assigned (0 if none); survives acks and restarts
    # created_ns of the lowest unacknowledged seq: the oldest row in commit order (it
    # differs from min(created_ns) only if the wall clock stepped back; not worth an index).
    oldest_created_ns: int | None


class OutboxError(Exception):
    """Any failure of the outbox (I/O error, disk full, locked, closed, ...)."""


class OutboxCorrupt(OutboxError):
    """The file is not a usable outbox: not SQLite, damaged, or another program's database."""


class Outbox:
    """The SQLite outbox. Thread-safe: every method holds one lock for its whole transaction.

    The gateway drives it from one dedicated worker thread (not the one that created it),
    hence ``check_same_thread=False``; the lock makes any other use safe too.
    """

    path: Path

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    ) -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be 'NORMAL' or 'FULL', not {synchronous!r}")
        self.path = Path(path)
        self._synchronous = synchronous
        self._lock = threading.RLock()  # reentrant: seal() may call stats() without deadlock
        self._conn: sqlite3.Connection | None = None
        self._check_header()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode (isolation_level=None): transactions are explicit below.
            conn = sqlite3.connect(
                self.path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(f"{self._where}: cannot open the outbox: {exc}") from exc
        self._conn = conn
        try:
            self._open(conn)
        except BaseException:
            self._conn = None
            conn.close()
            raise

    # -- opening ----------------------------------------------------------------------

    @property
    def _where(self) -> str:
        return str(self.path.absolute())

    def _corrupt(self, what: str) -> OutboxCorrupt:
        p = self._where
        return OutboxCorrupt(
            f"{p}: not a usable edgegw outbox: {what}. Stop edgegw and move {p} aside "
            f"together with {p}-wal and {p}-shm if present (the -wal holds the latest "
            f"commits); a new, empty outbox is created on the next start. Unsent messages "
            f"stay in the moved file; `sqlite3 <moved file> .recover` may salvage rows from "
            f"a damaged one."
        )

    def _check_header(self) -> None:
        # SQLite's own message for a non-database is "file is not a database"; say which
        # file and what to do, and never let SQLite write into a file that is not ours.
        try:
            with open(self.path, "rb") as f:
                head = f.read(len(_SQLITE_MAGIC))
        except FileNotFoundError:
            return
        except IsADirectoryError as exc:
            raise OutboxError(f"{self._where}: is a directory, not an outbox file") from exc
        except OSError as exc:
            raise OutboxError(f"{self._where}: cannot read the outbox: {exc}") from exc
        if head and head != _SQLITE_MAGIC:
            raise self._corrupt("it is not a SQLite database (wrong file header)")

    def _open(self, conn: sqlite3.Connection) -> None:
        try:
            # Read-only checks first, so a foreign database is never modified.
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            objects = {
                name: kind
                for kind, name in conn.execute(
                    "SELECT type, name FROM sqlite_master"
                    " WHERE name NOT LIKE 'sqlite!_%' ESCAPE '!'"
                )
            }
            fresh = not objects and app_id in (0, APPLICATION_ID)
            if not fresh:
                if app_id != APPLICATION_ID:
                    tables = ", ".join(sorted(objects)) or "none"
                    raise self._corrupt(
                        f"it is another program's SQLite database "
                        f"(application_id {app_id:#x}, objects: {tables})"
                    )
                problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
                if problems != ["ok"]:
                    detail = "; ".join(" ".join(p.split()) for p in problems)
                    raise self._corrupt(f"integrity check failed: {detail}")
                missing = sorted(
                    name for name, kind in _OBJECTS.items() if objects.get(name) != kind
                )
                if missing:
                    raise self._corrupt("part of its schema is missing: " + ", ".join(missing))
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if row is None:
                    raise self._corrupt("the schema version is missing")
                if row[0] > SCHEMA_VERSION:
                    # Not corrupt: written by a newer edgegw. Refuse rather than guess.
                    raise OutboxError(
                        f"{self._where}: outbox schema version {row[0]} was written by a "
                        f"newer edgegw; this one understands version {SCHEMA_VERSION}. "
                        f"Upgrade edgegw, or move the file aside to start a new outbox."
                    )
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OutboxError(
                    f"{self._where}: cannot use WAL journal mode (got {mode!r}); the "
                    f"outbox needs a local filesystem with shared-memory support"
                )
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            if fresh:
                # executescript() would COMMIT first; one explicit transaction makes a
                # kill during creation leave either no schema or all of it.
                with self._write("create the schema"):
                    # Another process may have created it while we waited for the lock.
                    if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
                        for stmt in _split_script(_SCHEMA):
                            conn.execute(stmt)
        except OutboxError:
            raise
        except sqlite3.Error as exc:
            raise self._translate(exc, "open") from exc

    # -- errors -----------------------------------------------------------------------

    def _translate(self, exc: sqlite3.Error, doing: str) -> OutboxError:
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            return self._corrupt(f"SQLite reports '{exc}' during {doing}")
        return OutboxError(f"{self._where}: {doing} failed: {exc}")

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise OutboxError(f"{self._where}: the outbox is closed")
        return self._conn

    def _rollback(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            # SQLite may already have rolled back by itself (e.g. on SQLITE_FULL).
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    def _fail(self, conn: sqlite3.Connection, exc: sqlite3.Error, doing: str) -> NoReturn:
        self._rollback(conn)
        raise self._translate(exc, doing) from exc

    @contextlib.contextmanager
    def _write(self, doing: str) -> Iterator[_Txn]:
        """One write transaction: commit at the end, roll back on abort() or ANY exception."""
        conn = self._db()
        try:
            # IMMEDIATE takes the write lock up front, so what we read inside (the next
            # seq) cannot be changed by another connection before we commit.
            conn.execute("BEGIN IMMEDIATE")
            txn = _Txn(conn)
            yield txn
            conn.execute("ROLLBACK" if txn.aborted else "COMMIT")
        except sqlite3.Error as exc:
            self._fail(conn, exc, doing)
        except BaseException:
            self._rollback(conn)  # e.g. KeyboardInterrupt: never leave a transaction open
            raise

    # -- public API -------------------------------------------------------------------

    def next_boot(self) -> int:
        """Increment and return the persistent boot counter (1 on the first call ever).

        Committed with an fsync even in NORMAL mode: a boot number must never be reused,
        so messages sealed in this boot are distinguishable after a power cut.
        """
        with self._lock:
            conn = self._db()
            durable_now = self._synchronous != "FULL"
            try:
                if durable_now:
                    conn.execute("PRAGMA synchronous = FULL")
                with self._write("next_boot"):
                    conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'boot'")
                    row = conn.execute("SELECT value FROM meta WHERE key = 'boot'").fetchone()
            except sqlite3.Error as exc:
                raise self._translate(exc, "next_boot") from exc
            finally:
                if durable_now:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            boot: int = row[0]
            return boot

    def append(self, topic: str, seal: Callable[[int], bytes], *, priority: int = 1) -> int:
        """Allocate the next seq, store ``seal(seq)`` under it and commit; return the seq.

        All in ONE transaction: the seq is inside the signed message, so it must be known
        before signing, and it must not be handed out unless the message is committed.
        If ``seal`` raises, nothing is committed and its exception propagates unchanged.
        ``seal`` runs with the outbox lock held: keep it to encode + sign.
        """
        if not isinstance(topic, str):
            raise TypeError(f"topic must be str, not {type(topic).__name__}")
        priority = operator.index(priority)
        failure: BaseException | None = None
        with self._lock:
            with self._write("append") as txn:
                seq: int = txn.conn.execute(_NEXT_SEQ).fetchone()[0]
                try:
                    body = seal(seq)
                    if not isinstance(body, bytes):
                        if not isinstance(body, bytearray | memoryview):
                            raise TypeError(f"seal() must return bytes, not {type(body).__name__}")
                        body = bytes(body)
                except BaseException as exc:
                    # Not an outbox error: roll back, then re-raise it unchanged (outside
                    # the transaction helper, so it is never translated or chained).
                    failure = exc
                    txn.abort()
                else:
                    txn.conn.execute(
                        "INSERT INTO outbox (seq, topic, body, priority, created_ns)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (seq, topic, body, priority, time.time_ns()),
                    )
            if failure is not None:
                try:
                    raise failure
                finally:
                    failure = None  # break the frame <-> traceback reference cycle
        return seq

    def pending(self, after_seq: int = 0, limit: int = 256) -> list[OutboxRow]:
        """Unacknowledged rows with ``seq > after_seq``, in seq order, at most ``limit``."""
        after_seq = operator.index(after_seq)
        limit = operator.index(limit)
        if limit < 0:
            raise ValueError(f"limit must be >= 0, not {limit}")  # SQLite reads -1 as "all"
        if limit == 0:
            return []
        with self._lock:
            conn = self._db()
            try:
                rows = conn.execute(
                    "SELECT seq, topic, body, priority, created_ns FROM outbox"
                    " WHERE seq > ? ORDER BY seq LIMIT ?",
                    (after_seq, limit),
                ).fetchall()
            except sqlite3.Error as exc:
                self._fail(conn, exc, "pending")
        return [OutboxRow(*row) for row in rows]

    def ack(self, seqs: Iterable[int]) -> int:
        """Delete these rows in one transaction; unknown seqs are ignored. Returns rows deleted."""
        # Sorted and unique: deletes walk the B-tree in order, and repeats cost nothing.
        keys = sorted({operator.index(s) for s in seqs})
        if not keys:
            return 0
        with self._lock, self._write("ack") as txn:
            # rowcount counts the statement's own deletes, not the triggers' updates.
            deleted: int = txn.conn.executemany(
                "DELETE FROM outbox WHERE seq = ?", ((k,) for k in keys)
            ).rowcount
        return deleted

    def stats(self) -> OutboxStats:
        """Rows, bytes, first/last seq and age of the backlog, from one snapshot; O(log n)."""
        with self._lock:
            conn = self._db()
            try:
                rows, nbytes, first, last, oldest = conn.execute(_STATS).fetchone()
            except sqlite3.Error as exc:
                self._fail(conn, exc, "stats")
        return OutboxStats(
            rows=rows, bytes=nbytes, first_seq=first, last_seq=last, oldest_created_ns=oldest
        )

    def close(self) -> None:
        """Close the file (idempotent). SQLite checkpoints the WAL on the last close."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else self._synchronous
        return f"Outbox({str(self.path)!r}, {state})"


class _Txn:
    """An open write transaction; ``abort()`` makes it roll back instead of commit."""

    __slots__ = ("aborted", "conn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


def _split_script(script: str) -> list[str]:
    """Split a SQL script into complete statements (triggers contain inner semicolons)."""
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
