"""Sequence numbers that are never reused, in NORMAL durability too: seqs are reserved
durably in blocks; a clean close gives the unused part back; an open after an unclean
stop skips the rest of the block and records it as an ``unclean_stop`` drop. A mixin of
Outbox."""

from __future__ import annotations

import contextlib
import sqlite3
from typing import TYPE_CHECKING

from .model import OutboxError, OutboxFull, OutboxParts, is_full
from .schema import LAST_SEQ

SEQ_BLOCK = 1000


class SeqReservationMixin(OutboxParts):
    _reserved: int
    _last_seq: int
    _conn: sqlite3.Connection | None

    if TYPE_CHECKING:

        def _record(
            self,
            conn: sqlite3.Connection,
            first: int | None,
            last: int | None,
            rows: int,
            points: int,
            nbytes: int,
            reason: str,
        ) -> None: ...
        def _on_disk_full(self) -> None: ...

    def _recover_reservation(self, conn: sqlite3.Connection) -> None:
        """At open: after an unclean stop, skip the rest of the reserved block."""
        last = conn.execute(LAST_SEQ).fetchone()[0]
        reserved = conn.execute("SELECT value FROM meta WHERE key = 'seq_reserved'").fetchone()
        reserved = reserved[0] if reserved else 0
        self._last_seq = last
        if reserved > last:
            self._skip_reserved(conn, last, reserved)
            self._last_seq = reserved
        self._reserved = max(reserved, last) if self._synchronous == "NORMAL" else 1 << 62

    def _skip_reserved(self, conn: sqlite3.Connection, last: int, reserved: int) -> None:
        """Record and skip the unused part of the reserved block, once more after
        shrinking the WAL if the disk is full."""
        for attempt in (1, 2):
            try:
                self._skip_reserved_txn(last, reserved)
                return
            except OutboxError as exc:
                if not is_full(exc):
                    raise
                if attempt == 2:
                    raise OutboxFull(
                        f"{self._where}: the disk is full; cannot even record the seqs "
                        f"skipped after an unclean stop. Free some space on this "
                        f"filesystem (and set outbox.min_free_mib to keep a reserve)",
                        "disk_full",
                    ) from exc
                self._on_disk_full()

    def _skip_reserved_txn(self, last: int, reserved: int) -> None:
        with self._write("skip reserved seqs") as txn:
            c = txn.conn
            if (
                c.execute(
                    "UPDATE sqlite_sequence SET seq = ? WHERE name = 'outbox'", (reserved,)
                ).rowcount
                == 0
            ):
                c.execute(
                    "INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)", (reserved,)
                )
            self._record(c, last + 1, reserved, 0, 0, 0, "unclean_stop")

    def _release_reservation(self) -> None:
        """At a clean close: durably give back the unused part of the block."""
        conn = self._conn
        if conn is None or self._synchronous != "NORMAL":
            return
        with contextlib.suppress(sqlite3.Error, OutboxError):
            conn.execute("PRAGMA synchronous = FULL")
            with self._write("release seqs") as txn:
                txn.conn.execute(
                    "UPDATE meta SET value = (" + LAST_SEQ + ") WHERE key = 'seq_reserved'"
                )
