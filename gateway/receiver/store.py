"""The receiver's store: the interface classification needs, and its SQLite implementation.

One message is one transaction: its row (gateway, seq, kind, boot, kid, digest of the
signed content), its readings, event, drops or audit entries, any alert it raised, and the
gateway's state (seen seqs, boots, the audit witness) commit together or not at all. The
transaction locks the gateway's row, so several receivers sharing one database classify
as one would (SQLite serialises writers; a PostgreSQL store would ``SELECT ... FOR UPDATE``).

SQLite is the embedded store (one machine, the demo, tests: ``":memory:"`` works too).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .outcome import Alert
from .schema import I63, Payload
from .state import GatewayState
from .trust import Enrolment

log = logging.getLogger("edgegw.receiver")


class StoreError(Exception):
    """The store cannot commit (disk full, locked, gone): the message is not acknowledged."""


class EnrolmentChanged(StoreError):
    """A gateway's enrolled root key is not the one its stored data was verified with."""


@dataclass(frozen=True, slots=True)
class LearnedKey:
    kid: bytes
    public_key: Ed25519PublicKey
    n: int  # rotation number (0: the enrolled root)
    certified_by: bytes | None


class GatewayTxn(Protocol):
    """One gateway's state and data, locked for one message."""

    state: GatewayState
    keys: dict[bytes, Ed25519PublicKey]  # every key trusted for this gateway

    def stored_digest(self, seq: int) -> bytes | None: ...
    def key_owner(self, kid: bytes) -> tuple[str, Ed25519PublicKey] | None: ...
    def learn_key(self, key: LearnedKey) -> None: ...
    def put_message(self, p: Payload, kid: bytes, digest: bytes, received_ns: int) -> None: ...
    def put_audit_entries(
        self, log_id: bytes, entries: list[tuple[int, bytes]], seq: int, *, insert: bool = True
    ) -> list[tuple[int, bytes, bytes]]:
        """Store entries by offset (only compare them, without ``insert``); returns
        (offset, stored, offered) where they differ from what is stored."""
        ...

    def audit_entries(self, log_id: bytes, from_offset: int) -> Iterator[tuple[int, bytes]]: ...
    def alert(self, a: Alert, received_ns: int) -> None: ...


class Store(Protocol):
    def transaction(self, enrolment: Enrolment) -> AbstractContextManager[GatewayTxn]: ...
    def check_enrolment(self, enrolment: Enrolment) -> None: ...
    def states(self) -> dict[str, GatewayState]: ...
    def alerts(self, gw: str | None = None) -> list[dict[str, Any]]: ...
    def audit_copy(self, gw: str, log_id: bytes | None = None) -> bytes: ...
    def close(self) -> None: ...


# -- SQLite -------------------------------------------------------------------------------

SCHEMA_VERSION = 1

# Version 1. readings keeps the layout of the first receiver; value has BLOB affinity so
# each value keeps its own type (REAL, INTEGER, TEXT, NULL).
_V1 = """
CREATE TABLE IF NOT EXISTS gateways (
    gw         TEXT PRIMARY KEY,
    root_kid   BLOB NOT NULL,
    state      BLOB NOT NULL,
    version    INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS gateway_keys (
    kid          BLOB PRIMARY KEY,
    gw           TEXT NOT NULL,
    public_key   BLOB NOT NULL,
    n            INTEGER NOT NULL,
    certified_by BLOB,
    learned_ns   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    gw          TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    boot        INTEGER NOT NULL,
    kid         BLOB NOT NULL,
    digest      BLOB NOT NULL,
    t           INTEGER NOT NULL,
    received_ns INTEGER NOT NULL,
    points      INTEGER NOT NULL,
    PRIMARY KEY (gw, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS readings (
    gw        TEXT,
    seq       INTEGER,
    tag       TEXT,
    ts        INTEGER,
    value     BLOB,
    quality   INTEGER,
    reason    TEXT,
    server_ts INTEGER
);
CREATE TABLE IF NOT EXISTS events (
    gw TEXT NOT NULL, seq INTEGER NOT NULL, model TEXT NOT NULL, kind TEXT NOT NULL,
    ts_ns INTEGER NOT NULL, score REAL, peak REAL, window_end_ns INTEGER, inputs TEXT
);
CREATE TABLE IF NOT EXISTS drops (
    gw TEXT NOT NULL, seq INTEGER NOT NULL, first_seq INTEGER, last_seq INTEGER,
    messages INTEGER, points INTEGER, bytes INTEGER, reason TEXT, at_ns INTEGER
);
CREATE TABLE IF NOT EXISTS audit_entries (
    gw     TEXT NOT NULL,
    log    BLOB NOT NULL,
    offset INTEGER NOT NULL,
    entry  BLOB NOT NULL,
    seq    INTEGER NOT NULL,
    PRIMARY KEY (gw, log, offset)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alerts (
    id          INTEGER PRIMARY KEY,
    gw          TEXT,
    seq         INTEGER,
    class       TEXT NOT NULL,
    security    INTEGER NOT NULL,
    detail      TEXT NOT NULL,
    received_ns INTEGER NOT NULL
);
"""

# Command results (kind "command_result"): one row per message, the gateway's answer to a
# signed command. Created on open whatever the schema version (an addition, not a change).
_COMMAND_RESULTS = """
CREATE TABLE IF NOT EXISTS command_results (
    gw TEXT NOT NULL, seq INTEGER NOT NULL, id TEXT, op TEXT, outcome TEXT NOT NULL,
    reason TEXT, detail TEXT, tag TEXT, value BLOB, before BLOB, after BLOB,
    version INTEGER, digest BLOB NOT NULL, kid BLOB, received_ns INTEGER, done_ns INTEGER,
    again INTEGER NOT NULL
)
"""

# The first receiver (before schema versions) had messages(gw, seq, boot, kind, t, kid as
# hex text, received_ns, points) and the same readings table: keep both, add the rest.
_FROM_V0 = (
    """
ALTER TABLE messages RENAME TO messages_v0;
"""
    + _V1
    + """
INSERT INTO messages (gw, seq, kind, boot, kid, digest, t, received_ns, points)
    SELECT gw, seq, kind, boot, CAST(kid AS BLOB), x'', t, received_ns, points FROM messages_v0;
DROP TABLE messages_v0;
"""
)


def _public_raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _sql_value(v: Any) -> Any:
    """SQLite integers are signed 64-bit: a uint64 above that is kept exactly, as text."""
    if type(v) is int and not -I63 <= v < I63:
        return str(v)
    if type(v) is float and math.isnan(v):
        return "NaN"  # sqlite3 would store NULL, which reads as "no value"
    return v


@dataclass(slots=True)
class _Cached:
    version: int
    state: GatewayState
    keys: dict[bytes, Ed25519PublicKey]


class SqliteStore:
    """The embedded store. ``readings=False`` keeps the state and the message index only
    (enough to classify), not the data: for receivers that hand readings elsewhere."""

    def __init__(self, path: str | Path = ":memory:", *, readings: bool = True) -> None:
        self.path = str(path)
        self.keep_readings = readings
        try:
            self.db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            if self.path != ":memory:":
                self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
            self.db.execute(_COMMAND_RESULTS)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the receiver store: {exc}") from exc
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.RLock()

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: store schema {version} was written by a newer edgegw (this one "
                f"knows {SCHEMA_VERSION}); upgrade edgegw or use another --db"
            )
        if version == SCHEMA_VERSION:
            return
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master")}
        script = _FROM_V0 if "messages" in tables and "gateways" not in tables else _V1
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for stmt in script.split(";"):
                if stmt.strip():
                    self.db.execute(stmt)
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        if script is _FROM_V0:
            log.info("%s: receiver store migrated from the first format", self.path)

    # -- transactions -----------------------------------------------------------------

    def check_enrolment(self, enrolment: Enrolment) -> None:
        row = self.db.execute(
            "SELECT root_kid FROM gateways WHERE gw = ?", (enrolment.gw,)
        ).fetchone()
        if row is not None and bytes(row[0]) != enrolment.root_kid:
            raise EnrolmentChanged(
                f"gateway {enrolment.gw}: enrolled with key {enrolment.root_kid.hex()} "
                f"({enrolment.source}), but {self.path} holds data verified with root key "
                f"{bytes(row[0]).hex()}. A re-enrolled gateway is a new identity: restore the "
                "old enrolment, or receive it into another --db"
            )

    @contextlib.contextmanager
    def transaction(self, enrolment: Enrolment) -> Iterator[GatewayTxn]:
        with self._lock:
            db = self.db
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: cannot begin a transaction: {exc}") from exc
            try:
                txn = self._open(enrolment)
                yield txn
                txn.save()
                db.execute("COMMIT")
            except BaseException as exc:
                self._cache.pop(enrolment.gw, None)  # state may be half-changed: reload
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"{self.path}: {exc}") from exc
                raise
            self._cache[enrolment.gw] = _Cached(txn.version, txn.state, txn.keys)

    def _open(self, e: Enrolment) -> _SqliteTxn:
        row = self.db.execute(
            "SELECT version, root_kid FROM gateways WHERE gw = ?", (e.gw,)
        ).fetchone()
        if row is None:
            state = GatewayState()
            for (seq,) in self.db.execute(  # data stored before states were kept
                "SELECT seq FROM messages WHERE gw = ? ORDER BY seq", (e.gw,)
            ):
                state.seen.add(seq, seq)
            now = time.time_ns()
            self.db.execute(
                "INSERT INTO gateways (gw, root_kid, state, version, updated_ns) "
                "VALUES (?, ?, ?, 0, ?)",
                (e.gw, e.root_kid, state.to_bytes(), now),
            )
            self.db.execute(
                "INSERT OR IGNORE INTO gateway_keys VALUES (?, ?, ?, 0, NULL, ?)",
                (e.root_kid, e.gw, _public_raw(e.root), now),
            )
            return _SqliteTxn(self, e.gw, 0, state, {e.root_kid: e.root}, dirty=True)
        version, root_kid = row
        if bytes(root_kid) != e.root_kid:
            self.check_enrolment(e)
        cached = self._cache.get(e.gw)
        if cached is not None and cached.version == version:
            return _SqliteTxn(self, e.gw, version, cached.state, cached.keys)
        (blob,) = self.db.execute("SELECT state FROM gateways WHERE gw = ?", (e.gw,)).fetchone()
        keys = {
            bytes(kid): Ed25519PublicKey.from_public_bytes(bytes(pub))
            for kid, pub in self.db.execute(
                "SELECT kid, public_key FROM gateway_keys WHERE gw = ?", (e.gw,)
            )
        }
        return _SqliteTxn(self, e.gw, version, GatewayState.from_bytes(bytes(blob)), keys)

    # -- reading ----------------------------------------------------------------------

    def states(self) -> dict[str, GatewayState]:
        with self._lock:
            return {
                gw: GatewayState.from_bytes(bytes(blob))
                for gw, blob in self.db.execute("SELECT gw, state FROM gateways ORDER BY gw")
            }

    def alerts(self, gw: str | None = None) -> list[dict[str, Any]]:
        q = "SELECT gw, seq, class, security, detail, received_ns FROM alerts"
        args: tuple[Any, ...] = ()
        if gw is not None:
            q, args = q + " WHERE gw = ?", (gw,)
        with self._lock:
            rows = self.db.execute(q + " ORDER BY id", args).fetchall()
        keys = ("gw", "seq", "class", "security", "detail", "received_ns")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def audit_copy(self, gw: str, log_id: bytes | None = None) -> bytes:
        """The gateway's audit log as the platform received it: its entries by offset, from
        0 to the first hole. ``log_id`` defaults to the log the witness follows now."""
        with self._lock:
            if log_id is None:
                row = self.db.execute("SELECT state FROM gateways WHERE gw = ?", (gw,)).fetchone()
                if row is None:
                    return b""
                log_id = GatewayState.from_bytes(bytes(row[0])).current_log
                if log_id is None:
                    return b""
            out = bytearray()
            for offset, entry in self.db.execute(
                "SELECT offset, entry FROM audit_entries WHERE gw = ? AND log = ? ORDER BY offset",
                (gw, log_id),
            ):
                if offset != len(out):
                    break
                out += entry
            return bytes(out)

    def close(self) -> None:
        with self._lock:
            self.db.close()


class _SqliteTxn:
    def __init__(
        self,
        store: SqliteStore,
        gw: str,
        version: int,
        state: GatewayState,
        keys: dict[bytes, Ed25519PublicKey],
        *,
        dirty: bool = False,
    ) -> None:
        self.store, self.db, self.gw = store, store.db, gw
        self.version, self.state, self.keys = version, state, keys
        self.dirty = dirty

    def stored_digest(self, seq: int) -> bytes | None:
        row = self.db.execute(
            "SELECT digest FROM messages WHERE gw = ? AND seq = ?", (self.gw, seq)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def key_owner(self, kid: bytes) -> tuple[str, Ed25519PublicKey] | None:
        row = self.db.execute(
            "SELECT gw, public_key FROM gateway_keys WHERE kid = ?", (kid,)
        ).fetchone()
        if row is None:
            return None
        return row[0], Ed25519PublicKey.from_public_bytes(bytes(row[1]))

    def learn_key(self, key: LearnedKey) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO gateway_keys VALUES (?, ?, ?, ?, ?, ?)",
            (
                key.kid,
                self.gw,
                _public_raw(key.public_key),
                key.n,
                key.certified_by,
                time.time_ns(),
            ),
        )
        self.keys[key.kid] = key.public_key

    def put_message(self, p: Payload, kid: bytes, digest: bytes, received_ns: int) -> None:
        self.dirty = True
        db, gw, seq = self.db, self.gw, p.seq
        db.execute(
            "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (gw, seq, p.kind, p.boot, kid, digest, p.t_ns, received_ns, len(p.readings)),
        )
        if p.readings and self.store.keep_readings:
            db.executemany(
                "INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        gw,
                        seq,
                        r[0],
                        r[1],
                        _sql_value(r[2]),
                        r[3],
                        r[4] if len(r) > 4 else None,
                        r[5] if len(r) > 5 else None,
                    )
                    for r in p.readings
                ],
            )
        if p.event is not None:
            e = p.event
            db.execute(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    gw,
                    seq,
                    e["model"],
                    e["kind"],
                    e["ts_ns"],
                    e["score"],
                    e["peak"],
                    e["window_end_ns"],
                    json.dumps(e["inputs"]),
                ),
            )
        if p.drops:
            db.executemany(
                "INSERT INTO drops VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        gw,
                        seq,
                        d.first_seq,
                        d.last_seq,
                        d.messages,
                        d.points,
                        d.bytes,
                        d.reason,
                        d.at_ns,
                    )
                    for d in p.drops
                ],
            )

        if p.command_result is not None:
            r = p.command_result
            db.execute(
                "INSERT INTO command_results VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    gw,
                    seq,
                    r["id"],
                    r["op"],
                    r["outcome"],
                    r["reason"],
                    r["detail"],
                    r["tag"],
                    _sql_value(r["value"]),
                    _sql_value(r["before"]),
                    _sql_value(r["after"]),
                    r["version"],
                    r["digest"],
                    r["kid"],
                    _sql_value(r["received"]),
                    _sql_value(r["done"]),
                    int(r["again"]),
                ),
            )

    def put_audit_entries(
        self, log_id: bytes, entries: list[tuple[int, bytes]], seq: int, *, insert: bool = True
    ) -> list[tuple[int, bytes, bytes]]:
        rewritten: list[tuple[int, bytes, bytes]] = []
        for offset, entry in entries:
            row = self.db.execute(
                "SELECT entry FROM audit_entries WHERE gw = ? AND log = ? AND offset = ?",
                (self.gw, log_id, offset),
            ).fetchone()
            if row is None:
                if not insert:
                    continue
                self.db.execute(
                    "INSERT INTO audit_entries VALUES (?, ?, ?, ?, ?)",
                    (self.gw, log_id, offset, entry, seq),
                )
            elif bytes(row[0]) != entry:
                rewritten.append((offset, bytes(row[0]), entry))
        return rewritten

    def audit_entries(self, log_id: bytes, from_offset: int) -> Iterator[tuple[int, bytes]]:
        cur = self.db.execute(
            "SELECT offset, entry FROM audit_entries WHERE gw = ? AND log = ? AND offset >= ? "
            "ORDER BY offset",
            (self.gw, log_id, from_offset),
        )
        for offset, entry in cur:
            yield offset, bytes(entry)

    def alert(self, a: Alert, received_ns: int) -> None:
        self.db.execute(
            "INSERT INTO alerts (gw, seq, class, security, detail, received_ns) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (a.gw, a.seq, a.cls.value, int(a.security), a.detail, received_ns),
        )

    def save(self) -> None:
        """Write the state back if a message changed it (a rejected message changes nothing)."""
        if not self.dirty:
            return
        self.db.execute(
            "UPDATE gateways SET state = ?, version = version + 1, updated_ns = ? WHERE gw = ?",
            (self.state.to_bytes(), time.time_ns(), self.gw),
        )
        self.version += 1
