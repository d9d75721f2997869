"""The embedded store: one SQLite file (one machine, the demo, tests; ``":memory:"`` too).

Same tables as the PostgreSQL store (README "Platform"), with SQLite's types: times are
integer microseconds since the epoch (plus ``*_nanos``), ``value`` and ``value_int`` have
no declared type so each value keeps its own (a REAL column would turn −0.0 into 0, and a
uint64 above 2^63−1 is kept exactly as text in ``value_int``). SQLite cannot store a NaN:
a float reading whose ``value`` is NULL is a NaN.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .outcome import Alert
from .rows import command_result_row, device_of, join_ns, value_of
from .schema import I63, Payload
from .state import GatewayState
from .store import (
    Batch,
    Cached,
    EnrolmentChanged,
    GatewayTxn,
    LearnedKey,
    Reading,
    StoreError,
    StoreReport,
    fill_from_states,
    public_raw,
)
from .trust import Enrolment

log = logging.getLogger("edgegw.receiver")

SCHEMA_VERSION = 2

_TABLES = """
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

# Version 2: lossless, chartable readings keyed by series; events and notices of their own.
_V2 = """
CREATE TABLE messages (
    gw       TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    kind     TEXT NOT NULL,
    boot     INTEGER NOT NULL,
    kid      BLOB NOT NULL,
    digest   BLOB NOT NULL,
    sealed   INTEGER NOT NULL,
    received INTEGER NOT NULL,
    points   INTEGER NOT NULL,
    PRIMARY KEY (gw, seq)
) WITHOUT ROWID;
CREATE TABLE series (
    id       INTEGER PRIMARY KEY,
    gw       TEXT NOT NULL,
    tag      TEXT NOT NULL,
    device   TEXT,
    unit     TEXT,
    UNIQUE (gw, tag)
);
CREATE INDEX series_device ON series (gw, device);
CREATE TABLE readings (
    series          INTEGER NOT NULL REFERENCES series (id),
    seq             INTEGER NOT NULL,
    ts              INTEGER NOT NULL,
    ts_nanos        INTEGER NOT NULL,
    quality         INTEGER NOT NULL,
    vtype           TEXT NOT NULL,
    value,
    value_int,
    value_text      TEXT,
    value_bytes     BLOB,
    reason          TEXT,
    server_ts       INTEGER,
    server_ts_nanos INTEGER
);
CREATE INDEX readings_series_ts ON readings (series, ts);
CREATE TABLE events (
    gw               TEXT NOT NULL,
    seq              INTEGER NOT NULL,
    model            TEXT NOT NULL,
    kind             TEXT NOT NULL,
    ts               INTEGER NOT NULL,
    ts_nanos         INTEGER NOT NULL,
    window_end       INTEGER NOT NULL,
    window_end_nanos INTEGER NOT NULL,
    score            REAL,
    peak             REAL,
    inputs           TEXT NOT NULL,
    PRIMARY KEY (gw, seq)
);
CREATE INDEX events_ts ON events (gw, ts);
CREATE TABLE notices (
    gw        TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    n         INTEGER NOT NULL,
    first_seq INTEGER,
    last_seq  INTEGER,
    messages  INTEGER NOT NULL,
    points    INTEGER NOT NULL,
    bytes     INTEGER NOT NULL,
    reason    TEXT NOT NULL,
    at        INTEGER NOT NULL,
    PRIMARY KEY (gw, seq, n)
);
CREATE TABLE receivers (
    name    TEXT PRIMARY KEY,
    stats   TEXT NOT NULL,
    updated INTEGER NOT NULL
);
CREATE VIEW readings_view AS
    SELECT s.gw, s.device, s.tag, s.unit, r.*
    FROM readings r JOIN series s ON s.id = r.series;
"""

# The first receiver (before schema versions) had messages(gw, seq, boot, kind, t, kid as
# hex text, received_ns, points); version 1 added the digest and the state tables.
_FROM_V0 = """
ALTER TABLE messages RENAME TO messages_v0;
CREATE TABLE messages_v1 (
    gw TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, boot INTEGER NOT NULL,
    kid BLOB NOT NULL, digest BLOB NOT NULL, t INTEGER NOT NULL, received_ns INTEGER NOT NULL,
    points INTEGER NOT NULL, PRIMARY KEY (gw, seq)
) WITHOUT ROWID;
INSERT INTO messages_v1
    SELECT gw, seq, kind, boot, CAST(kid AS BLOB), x'', t, received_ns, points FROM messages_v0;
DROP TABLE messages_v0;
ALTER TABLE messages_v1 RENAME TO messages;
CREATE TABLE IF NOT EXISTS readings (
    gw TEXT, seq INTEGER, tag TEXT, ts INTEGER, value BLOB, quality INTEGER, reason TEXT,
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
"""

# Version 1 -> 2. Version 1 kept a value in one column: a uint64 above 2^63-1 as its digits
# and a NaN as the text 'NaN' (a text reading with those exact contents cannot be told
# apart: it becomes the number); bools were stored as 0/1 and stay integers.
_FROM_V1 = (
    """
ALTER TABLE messages RENAME TO messages_v1;
ALTER TABLE readings RENAME TO readings_v1;
ALTER TABLE events RENAME TO events_v1;
ALTER TABLE drops RENAME TO drops_v1;
"""
    + _V2
    + """
INSERT INTO messages SELECT gw, seq, kind, boot, kid, digest, t / 1000, received_ns / 1000, points
    FROM messages_v1;
INSERT INTO series (gw, tag, device)
    SELECT gw, tag, CASE WHEN instr(tag, '/') > 0 THEN substr(tag, 1, instr(tag, '/') - 1) END
    FROM readings_v1 GROUP BY gw, tag ORDER BY min(rowid);
INSERT INTO readings
    SELECT s.id, r.seq, r.ts / 1000, r.ts % 1000, r.quality,
        CASE WHEN typeof(r.value) = 'real' THEN 'f'
             WHEN typeof(r.value) = 'integer' THEN 'i'
             WHEN r.value = 'NaN' THEN 'f'
             WHEN typeof(r.value) = 'text' AND length(r.value) >= 19
                  AND r.value NOT GLOB '*[^0-9]*' THEN 'i'
             WHEN typeof(r.value) = 'text' THEN 's'
             WHEN typeof(r.value) = 'blob' THEN 'x'
             ELSE 'n' END,
        CASE WHEN typeof(r.value) IN ('real', 'integer') THEN CAST(r.value AS REAL)
             WHEN typeof(r.value) = 'text' AND length(r.value) >= 19
                  AND r.value NOT GLOB '*[^0-9]*' THEN CAST(r.value AS REAL) END,
        CASE WHEN typeof(r.value) = 'integer' THEN r.value
             WHEN typeof(r.value) = 'text' AND length(r.value) >= 19
                  AND r.value NOT GLOB '*[^0-9]*' THEN r.value END,
        CASE WHEN typeof(r.value) = 'text' AND r.value != 'NaN'
                  AND NOT (length(r.value) >= 19 AND r.value NOT GLOB '*[^0-9]*')
             THEN r.value END,
        CASE WHEN typeof(r.value) = 'blob' THEN r.value END,
        r.reason, r.server_ts / 1000, r.server_ts % 1000
    FROM readings_v1 r JOIN series s ON s.gw = r.gw AND s.tag = r.tag ORDER BY r.rowid;
INSERT INTO events
    SELECT gw, seq, model, kind, ts_ns / 1000, ts_ns % 1000, coalesce(window_end_ns, 0) / 1000,
        coalesce(window_end_ns, 0) % 1000, score, peak, coalesce(inputs, '[]')
    FROM events_v1;
INSERT INTO notices
    SELECT gw, seq, row_number() OVER (PARTITION BY gw, seq ORDER BY rowid) - 1, first_seq,
        last_seq, coalesce(messages, 0), coalesce(points, 0), coalesce(bytes, 0),
        coalesce(reason, ''), coalesce(at_ns, 0) / 1000
    FROM drops_v1;
DROP TABLE messages_v1;
DROP TABLE readings_v1;
DROP TABLE events_v1;
DROP TABLE drops_v1;
"""
)


def _script(db: sqlite3.Connection, script: str) -> None:
    for stmt in script.split(";\n"):
        if stmt.strip():
            db.execute(stmt)


def _i64(v: int) -> int | str:
    """SQLite integers are signed 64-bit: a uint64 above that is kept exactly, as text."""
    return v if -I63 <= v < I63 else str(v)


def reading_row(sid: int, seq: int, r: Sequence[Any]) -> tuple[Any, ...]:
    ts_us, ts_nanos = divmod(r[1], 1000)
    v = r[2]
    t = type(v)
    if t is float:
        row = ("f", None if math.isnan(v) else v, None, None, None)
    elif t is int:
        row = ("i", float(v), _i64(v), None, None)
    elif t is bool:
        row = ("b", float(v), None, None, None)
    elif t is str:
        row = ("s", None, None, v, None)
    elif t is bytes:
        row = ("x", None, None, None, v)
    else:
        row = ("n", None, None, None, None)
    reason = r[4] if len(r) > 4 else None
    server = r[5] if len(r) > 5 else None
    s_us, s_nanos = divmod(server, 1000) if server is not None else (None, None)
    return (sid, seq, ts_us, ts_nanos, r[3], *row, reason, s_us, s_nanos)


# Command results (kind "command_result"): one row per message, the gateway's answer to a
# signed command. Created on open whatever the schema version (an addition, not a change).
_COMMAND_RESULTS = """
CREATE TABLE IF NOT EXISTS command_results (
    gw TEXT NOT NULL, seq INTEGER NOT NULL, id TEXT, op TEXT, outcome TEXT NOT NULL,
    reason TEXT, detail TEXT, tag TEXT, value TEXT, before TEXT, after TEXT,
    version INTEGER, digest BLOB NOT NULL, kid BLOB, received INTEGER, received_nanos INTEGER,
    done INTEGER, done_nanos INTEGER, again INTEGER NOT NULL,
    PRIMARY KEY (gw, seq)
)
"""


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
        self._cache: dict[str, Cached] = {}
        self._series: dict[tuple[str, str], int] = {}
        self._lock = threading.RLock()

    def _migrate(self) -> None:
        db = self.db
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: store schema {version} was written by a newer edgegw (this one "
                f"knows {SCHEMA_VERSION}); upgrade edgegw or use another --db"
            )
        if version == SCHEMA_VERSION:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]  # another process?
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
            steps: list[str] = []
            if version == 0 and "messages" in tables:  # the first receiver's file
                steps, version = [_FROM_V0, _FROM_V1], 1
            elif version == 1:
                steps = [_FROM_V1]
            elif version == 0:
                steps = [_V2]
            _script(db, _TABLES)
            for step in steps:
                _script(db, step)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if steps and steps[0] is not _V2:
            log.info("%s: receiver store migrated to schema %d", self.path, SCHEMA_VERSION)

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
        with self.batch() as b:
            yield b.gateway(enrolment)

    @contextlib.contextmanager
    def batch(self) -> Iterator[Batch]:
        """One transaction for several messages (group commit): each gateway's row is
        opened once, and everything commits at the end or nothing does."""
        with self._lock:
            db = self.db
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: cannot begin a transaction: {exc}") from exc
            b = Batch(self._open)
            try:
                yield b
                for txn in b.txns.values():
                    txn.save()
                db.execute("COMMIT")
            except BaseException as exc:
                for gw in b.txns:
                    self._cache.pop(gw, None)  # state may be half-changed: reload
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"{self.path}: {exc}") from exc
                raise
            for gw, txn in b.txns.items():
                self._cache[gw] = Cached(txn.version, txn.state, txn.keys)
                self._series.update(txn.new_series)

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
                (e.root_kid, e.gw, public_raw(e.root), now),
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

    def readings(self, gw: str, tag: str | None = None) -> list[Reading]:
        q = (
            "SELECT r.seq, s.tag, r.ts, r.ts_nanos, r.vtype, r.value, r.value_int, r.value_text,"
            " r.value_bytes, r.quality, r.reason, r.server_ts, r.server_ts_nanos"
            " FROM readings r JOIN series s ON s.id = r.series WHERE s.gw = ?"
        )
        args: tuple[Any, ...] = (gw,)
        if tag is not None:
            q, args = q + " AND s.tag = ?", (gw, tag)
        with self._lock:
            rows = self.db.execute(q + " ORDER BY r.seq, r.rowid", args).fetchall()
        return [
            Reading(
                seq,
                t,
                join_ns(us, nanos),  # type: ignore[arg-type]
                value_of(vt, v, vi, vs, vb),
                q,
                reason,
                join_ns(s_us, s_nanos),
            )
            for seq, t, us, nanos, vt, v, vi, vs, vb, q, reason, s_us, s_nanos in rows
        ]

    def record_stats(self, receiver: str, stats: dict[str, Any]) -> None:
        with self._lock:
            self.db.execute(
                "INSERT INTO receivers VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE "
                "SET stats = excluded.stats, updated = excluded.updated",
                (receiver, json.dumps(stats), time.time_ns() // 1000),
            )

    def report(self) -> StoreReport:
        r = StoreReport()
        with self._lock:
            db = self.db
            r.messages, r.points = db.execute(
                "SELECT count(*), coalesce(sum(points), 0) FROM messages"
            ).fetchone()
            r.events = db.execute("SELECT count(*) FROM events").fetchone()[0]
            r.notices = db.execute("SELECT count(*) FROM notices").fetchone()[0]
            r.alerts, r.security_alerts = db.execute(
                "SELECT count(*), coalesce(sum(security), 0) FROM alerts"
            ).fetchone()
            r.receivers = {
                n: json.loads(s) for n, s in db.execute("SELECT name, stats FROM receivers")
            }
        fill_from_states(r, self.states())
        return r

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
        self.new_series: dict[tuple[str, str], int] = {}  # cached only after the commit

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
                public_raw(key.public_key),
                key.n,
                key.certified_by,
                time.time_ns(),
            ),
        )
        self.keys[key.kid] = key.public_key

    def _series_ids(self, readings: Sequence[Sequence[Any]]) -> dict[str, int]:
        """Series id of each tag of ``readings`` (one pass over them: ``_tag_ids`` with
        the payload's distinct ``tags`` does without)."""
        return self._tag_ids(list(dict.fromkeys([r[0] for r in readings])))

    def _tag_ids(self, tags: list[str]) -> dict[str, int]:
        """Series id of each distinct tag of a message (``Payload.tags``)."""
        known = self.store._series
        gw = self.gw
        ids: dict[str, int] = {}
        for tag in tags:
            sid = known.get((gw, tag))
            if sid is None:
                self.db.execute(
                    "INSERT OR IGNORE INTO series (gw, tag, device) VALUES (?, ?, ?)",
                    (gw, tag, device_of(tag)),
                )
                (sid,) = self.db.execute(
                    "SELECT id FROM series WHERE gw = ? AND tag = ?", (gw, tag)
                ).fetchone()
                self.new_series[(gw, tag)] = sid
            ids[tag] = sid
        return ids

    def put_message(self, p: Payload, kid: bytes, digest: bytes, received_ns: int) -> None:
        self.dirty = True
        db, gw, seq = self.db, self.gw, p.seq
        db.execute(
            "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                gw,
                seq,
                p.kind,
                p.boot,
                kid,
                digest,
                p.t_ns // 1000,
                received_ns // 1000,
                p.points,
            ),
        )
        if p.points and self.store.keep_readings:
            ids = self._tag_ids(p.tags)
            db.executemany(
                "INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [reading_row(ids[r[0]], seq, r) for r in p.readings],
            )
        if p.event is not None:
            e = p.event
            db.execute(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    gw,
                    seq,
                    e["model"],
                    e["kind"],
                    *divmod(e["ts_ns"], 1000),
                    *divmod(e["window_end_ns"], 1000),
                    e["score"],
                    e["peak"],
                    json.dumps(e["inputs"]),
                ),
            )
        if p.command_result is not None:
            db.execute(
                "INSERT INTO command_results VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                command_result_row(gw, seq, p.command_result),
            )
        if p.drops:
            db.executemany(
                "INSERT INTO notices VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        gw,
                        seq,
                        n,
                        d.first_seq,
                        d.last_seq,
                        d.messages,
                        d.points,
                        d.bytes,
                        d.reason,
                        d.at_ns // 1000,
                    )
                    for n, d in enumerate(p.drops)
                ],
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
