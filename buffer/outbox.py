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

Sequence numbers in NORMAL mode: a power cut can roll back recent commits, whose seqs
would then be handed out again. So seqs are reserved durably in blocks (one fsync per
``SEQ_BLOCK`` messages); a clean ``close`` releases the unused part, and an open after an
unclean stop skips the rest of the block and records the skipped range as a drop with
reason ``unclean_stop``, so the platform sees an explained gap, never a reused seq.

Bounded: with ``max_bytes`` (and ``min_free_bytes`` of free disk to keep), a full
outbox either evicts the oldest telemetry (``drop_oldest``) or refuses the new message
(``stop_acquisition``, :class:`OutboxFull`). Urgent rows (priority 0) are never evicted.
Every eviction is a row in ``drops`` until a signed notice about it is committed.

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
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Literal, NoReturn, Self

from .model import Drop, OutboxCorrupt, OutboxError, OutboxFull, OutboxRow, OutboxStats, is_full
from .room import Disk, RoomMixin
from .schema import (
    APPLICATION_ID,
    NEXT_SEQ,
    NEXT_SEQ_AND_BYTES,
    NORMAL,
    OBJECTS,
    ROW_COLUMNS,
    SCHEMA,
    SCHEMA_VERSION,
    SQLITE_CORRUPT,
    SQLITE_MAGIC,
    SQLITE_NOTADB,
    STATS,
    URGENT,
    split_script,
)
from .seqs import SEQ_BLOCK, SeqReservationMixin

__all__ = [
    "NORMAL",
    "URGENT",
    "Drop",
    "Outbox",
    "OutboxCorrupt",
    "OutboxError",
    "OutboxFull",
    "OutboxRow",
    "OutboxStats",
    "Policy",
]

Policy = Literal["drop_oldest", "stop_acquisition"]

_MARK_PREFIX = "mark:"  # marks live in the meta table under these keys
_INT64 = range(-(2**63), 2**63)  # what a SQLite INTEGER holds
_NO_MARKS: Mapping[str, int] = {}
# Acks of up to this many rows are one DELETE statement (SQLite allows 32766 parameters
# since 3.32, 999 before); larger ones are one transaction of single-row deletes.
_ONE_DELETE = 500


def _check_marks(marks: Mapping[str, int]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for name, value in marks.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"mark names must be non-empty text, not {name!r}")
        value = operator.index(value)
        if value not in _INT64:
            raise ValueError(f"mark {name!r}: {value} does not fit a signed 64-bit integer")
        out.append((_MARK_PREFIX + name, value))
    return out


class Outbox(RoomMixin, SeqReservationMixin):
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
        max_bytes: int | None = None,
        policy: Policy = "drop_oldest",
        min_free_bytes: int = 0,
        disk: Disk | None = None,
    ) -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be 'NORMAL' or 'FULL', not {synchronous!r}")
        if policy not in ("drop_oldest", "stop_acquisition"):
            raise ValueError(f"policy must be 'drop_oldest' or 'stop_acquisition', not {policy!r}")
        self.path = Path(path)
        self._dir = self.path.parent
        self._synchronous = synchronous
        self.max_bytes = max_bytes
        self.policy: Policy = policy
        self.min_free_bytes = min_free_bytes
        self.disk = disk if disk is not None else Disk()
        self._reserve_ok = False  # the reserve beside the file is in place (room.py)
        self._reserve_retry = 0.0  # monotonic time of the next attempt to make it again
        self._reserved = 0  # seqs up to here are durably reserved (NORMAL mode)
        self._last_seq = 0  # the highest seq handed out (set when the file is opened)
        self.quarantined = 0
        """Rows moved to the quarantine by this object (a reader's ``pending`` returned
        fewer rows than were there)."""
        self._lock = threading.RLock()  # reentrant: seal() may call stats() without deadlock
        self._conn: sqlite3.Connection | None = None
        self._check_header()
        self._open_room()
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
                head = f.read(len(SQLITE_MAGIC))
        except FileNotFoundError:
            return
        except IsADirectoryError as exc:
            raise OutboxError(f"{self._where}: is a directory, not an outbox file") from exc
        except OSError as exc:
            raise OutboxError(f"{self._where}: cannot read the outbox: {exc}") from exc
        if head and head != SQLITE_MAGIC:
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
                    name for name, kind in OBJECTS.items() if objects.get(name) != kind
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
            if fresh:
                # Pages freed by deletes can be given back to the filesystem (room.py:
                # the reserve is made again from them on a full disk); settable only on
                # an empty file, before WAL mode writes its header.
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OutboxError(
                    f"{self._where}: cannot use WAL journal mode (got {mode!r}); the "
                    f"outbox needs a local filesystem with shared-memory support"
                )
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            # Keep the WAL small: on a small disk it, not the data, fills the disk
            # (checkpoint every ~1 MiB, truncate it back to 1 MiB after).
            conn.execute("PRAGMA wal_autocheckpoint = 256")
            conn.execute("PRAGMA journal_size_limit = 1048576")
            if fresh:
                # executescript() would COMMIT first; one explicit transaction makes a
                # kill during creation leave either no schema or all of it.
                with self._write("create the schema"):
                    # Another process may have created it while we waited for the lock.
                    if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
                        for stmt in split_script(SCHEMA):
                            conn.execute(stmt)
            self._essential("drop totals", lambda: self._migrate_drop_totals(conn))
            self._recover_reservation(conn)
            self._ensure_ballast()
        except OutboxError:
            raise
        except sqlite3.Error as exc:
            raise self._translate(exc, "open") from exc

    # -- errors -----------------------------------------------------------------------

    def _translate(self, exc: sqlite3.Error, doing: str) -> OutboxError:
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB):
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
            # A start on a full disk must run (it can still send and delete): the boot
            # counter may spend the reserve.
            return self._essential("next_boot", self._next_boot)

    def _next_boot(self) -> int:
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

    def append(
        self,
        topic: str,
        seal: Callable[[int], bytes],
        *,
        priority: int = NORMAL,
        points: int = 0,
        notifies: Iterable[int] = (),
        marks: Mapping[str, int] = _NO_MARKS,
        essential: bool = False,
    ) -> int:
        """Allocate the next seq, store ``seal(seq)`` under it and commit; return the seq.

        All in ONE transaction: the seq is inside the signed message, so it must be known
        before signing, and it must not be handed out unless the message is committed.
        If ``seal`` raises, nothing is committed and its exception propagates unchanged.
        ``seal`` runs with the outbox lock held: keep it to encode + sign. ``points`` is
        how many readings the message holds (counted if it is ever evicted); ``notifies``
        are drop ids that this message reports, marked notified in the same transaction.
        ``marks`` (name -> signed 64-bit int) are set in the same transaction too: a
        producer's "published up to here" survives exactly when the message does (see
        :meth:`mark`). Raises :class:`OutboxFull` when there is no room under the policy.

        On a full disk new data never spends the reserves (``min_free_bytes``, the
        reserve file, the WAL's room): it evicts the oldest telemetry (``drop_oldest``)
        or is refused. ``essential`` (drop notices) may spend them: a notice about a
        loss always gets written.
        """
        if not isinstance(topic, str):
            raise TypeError(f"topic must be str, not {type(topic).__name__}")
        priority = operator.index(priority)
        drop_ids = [operator.index(i) for i in notifies]
        mark_rows = _check_marks(marks)
        args = (topic, seal, priority, points, drop_ids, mark_rows, essential)
        with self._lock:
            if not (self._reserve_ok and self._pool_ok) and time.monotonic() >= self._reserve_retry:
                self._reserve_retry = time.monotonic() + 1.0
                self._ensure_ballast()
            if self.min_free_bytes and self._free_disk() < 2 * self.min_free_bytes:
                self._shrink_wal()  # give the WAL's space back before it counts as full
            try:
                return self._append(*args)
            except OutboxFull:
                raise
            except OutboxError as exc:
                if not is_full(exc):
                    raise
                if essential:  # spend the reserve and try once more
                    self._on_disk_full()
                    return self._append(*args)
                # ENOSPC inside SQLite for new data: restart the WAL; drop_oldest evicts
                # (that write must proceed) and tries once more. The reserve stays owed.
                self._shrink_wal()
                try:
                    if self.policy == "drop_oldest" and self._essential("evict", self._evict_some):
                        return self._append(*args)
                except OutboxError as again:
                    if not is_full(again):
                        raise
                raise OutboxFull(f"{self._where}: the disk is full: {exc}", "disk_full") from exc

    def _append(
        self,
        topic: str,
        seal: Callable[[int], bytes],
        priority: int,
        points: int,
        drop_ids: list[int],
        mark_rows: list[tuple[str, int]],
        essential: bool = False,
    ) -> int:
        failure: BaseException | None = None
        conn = self._db()
        reserve = self._synchronous == "NORMAL" and self._next_seq_hint() > self._reserved
        if reserve:  # this commit also makes a new block of seqs durable: fsync it
            conn.execute("PRAGMA synchronous = FULL")
        # under the byte cap: the bytes held come with the seq (the write lock is held
        # from here to the commit, so they cannot change in between)
        capped = self.max_bytes is not None and priority != URGENT and not essential
        used: int | None = None
        try:
            with self._write("append") as txn:
                if capped:
                    seq, used = txn.conn.execute(NEXT_SEQ_AND_BYTES).fetchone()
                else:
                    seq = txn.conn.execute(NEXT_SEQ).fetchone()[0]
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
                    if not essential:
                        self._make_room(txn.conn, len(body), priority, used)
                    txn.conn.execute(
                        f"INSERT INTO outbox ({ROW_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (seq, topic, body, priority, time.time_ns(), points, zlib.crc32(body)),
                    )
                    if drop_ids:
                        txn.conn.executemany(
                            "UPDATE drops SET notified = 1 WHERE id = ?", ((i,) for i in drop_ids)
                        )
                    if mark_rows:
                        txn.conn.executemany(
                            "INSERT INTO meta (key, value) VALUES (?, ?)"
                            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                            mark_rows,
                        )
                    if reserve:
                        txn.conn.execute(
                            "UPDATE meta SET value = ? WHERE key = 'seq_reserved'",
                            (seq + SEQ_BLOCK,),
                        )
        finally:
            if reserve:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        if failure is not None:
            try:
                raise failure
            finally:
                failure = None  # break the frame <-> traceback reference cycle
        if reserve:
            self._reserved = seq + SEQ_BLOCK
        self._last_seq = seq
        return seq

    def _next_seq_hint(self) -> int:
        return self._last_seq + 1

    @property
    def last_seq(self) -> int:
        """The highest seq handed out so far (committed, or skipped after an unclean
        stop); read without a query, from any thread: a reader that has seen every row
        up to it knows nothing new was committed since."""
        return self._last_seq

    def mark(self, name: str) -> int | None:
        """The value of mark ``name`` as last committed by :meth:`append`, or None."""
        with self._lock:
            conn = self._db()
            try:
                row = conn.execute(
                    "SELECT value FROM meta WHERE key = ?", (_MARK_PREFIX + name,)
                ).fetchone()
            except sqlite3.Error as exc:
                self._fail(conn, exc, "mark")
        return None if row is None else int(row[0])

    def pending(
        self,
        after_seq: int = 0,
        limit: int = 256,
        *,
        urgent: bool | None = None,
        max_seq: int | None = None,
    ) -> list[OutboxRow]:
        """Unacknowledged rows with ``seq > after_seq`` (and ``<= max_seq``), in seq order,
        at most ``limit``; only urgent rows (``urgent=True``) or only the others (False).

        A row whose body no longer matches its CRC is moved to the quarantine table and
        recorded as a drop (``corrupt_at_rest``): damaged bytes are never sent.
        """
        after_seq = operator.index(after_seq)
        limit = operator.index(limit)
        if limit < 0:
            raise ValueError(f"limit must be >= 0, not {limit}")  # SQLite reads -1 as "all"
        if limit == 0:
            return []
        where, args = "seq > ?", [after_seq]
        if urgent is not None:
            # The priority as a literal, not a parameter: SQLite picks the partial index
            # outbox_urgent from its value, and with a parameter it compiled the statement
            # again at every call (18 µs against 3).
            where += f" AND priority = {URGENT}" if urgent else f" AND priority != {URGENT}"
        if max_seq is not None:
            where += " AND seq <= ?"
            args.append(max_seq)
        with self._lock:
            conn = self._db()
            try:
                rows = conn.execute(
                    f"SELECT {ROW_COLUMNS} FROM outbox WHERE {where} ORDER BY seq LIMIT ?",
                    (*args, limit),
                ).fetchall()
            except sqlite3.Error as exc:
                self._fail(conn, exc, "pending")
            bad = [r for r in rows if zlib.crc32(r[2]) != r[6]]
            if bad:
                self._quarantine(bad)
                rows = [r for r in rows if zlib.crc32(r[2]) == r[6]]
        return [OutboxRow(*r[:6]) for r in rows]

    def ack(self, seqs: Iterable[int]) -> int:
        """Delete these rows in one transaction; unknown seqs are ignored. Returns rows deleted."""
        # Sorted and unique: deletes walk the B-tree in order, and repeats cost nothing.
        keys = sorted({operator.index(s) for s in seqs})
        if not keys:
            return 0
        with self._lock:
            # a delete needs WAL space: on a full disk it spends the reserve
            return self._essential("ack", lambda: self._ack(keys))

    def _ack(self, keys: list[int]) -> int:
        # rowcount counts the statement's own deletes, not the triggers' updates.
        deleted: int
        if len(keys) <= _ONE_DELETE:
            # One statement is a transaction of its own (autocommit): the same commit
            # without the BEGIN and COMMIT statements around it (a fourth of an ack's CPU).
            conn = self._db()
            marks = ",".join("?" * len(keys))
            try:
                deleted = conn.execute(f"DELETE FROM outbox WHERE seq IN ({marks})", keys).rowcount
            except sqlite3.Error as exc:
                self._fail(conn, exc, "ack")
        else:
            with self._write("ack") as txn:
                deleted = txn.conn.executemany(
                    "DELETE FROM outbox WHERE seq = ?", ((k,) for k in keys)
                ).rowcount
        self._ensure_ballast()
        return deleted

    def stats(self) -> OutboxStats:
        """Rows, bytes, first/last seq and age of the backlog, from one snapshot; O(log n)."""
        with self._lock:
            conn = self._db()
            try:
                row = conn.execute(STATS).fetchone()
            except sqlite3.Error as exc:
                self._fail(conn, exc, "stats")
        return OutboxStats(*row)

    def close(self) -> None:
        """Close the file (idempotent). SQLite checkpoints the WAL on the last close."""
        with self._lock:
            self._release_reservation()
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
