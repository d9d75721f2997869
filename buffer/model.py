"""What the outbox hands out and raises: rows, stats, drop records, errors."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from .schema import SQLITE_FULL


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One committed, not yet acknowledged message."""

    seq: int
    topic: str
    body: bytes
    priority: int
    created_ns: int
    points: int = 0


@dataclass(frozen=True, slots=True)
class Drop:
    """Messages lost, or seqs skipped, that the platform has not yet been told about."""

    id: int
    first_seq: int | None  # None when nothing got a seq (stop_acquisition)
    last_seq: int | None
    rows: int
    points: int
    bytes: int
    reason: str  # outbox_full, disk_full, corrupt_at_rest, unclean_stop, refused_by_broker, ...
    at_ns: int


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
    dropped_rows: int = 0  # evicted or quarantined, ever
    dropped_points: int = 0


class OutboxError(Exception):
    """Any failure of the outbox (I/O error, disk full, locked, closed, ...)."""


class OutboxCorrupt(OutboxError):
    """The file is not a usable outbox: not SQLite, damaged, or another program's database."""


class OutboxFull(OutboxError):
    """No room for a message: the byte cap or the free-disk reserve is reached and the
    policy (or nothing evictable) forbids making room. ``reason``: outbox_full | disk_full."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def is_full(exc: BaseException) -> bool:
    """An OutboxError caused by SQLITE_FULL (the disk is full)."""
    cause = exc.__cause__
    code = getattr(cause, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == SQLITE_FULL


class OutboxParts:
    """What the Outbox mixins (room.py, seqs.py) use of the Outbox class itself."""

    path: Path
    _dir: Path
    max_bytes: int | None
    policy: str
    min_free_bytes: int
    _lock: threading.RLock
    _synchronous: str

    if TYPE_CHECKING:

        @property
        def _where(self) -> str: ...
        def _db(self) -> sqlite3.Connection: ...
        def _fail(self, conn: sqlite3.Connection, exc: sqlite3.Error, doing: str) -> NoReturn: ...
        def _write(self, doing: str) -> contextlib.AbstractContextManager[Any]: ...
