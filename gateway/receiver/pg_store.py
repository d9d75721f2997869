"""The platform's store for a fleet: PostgreSQL (psycopg 3), shared by any number of
receivers.

One message is one transaction: it locks the gateway's row (``SELECT ... FOR UPDATE``),
takes the gateway's state from this process's cache when the row's version is the one
this process last committed (another receiver's commit bumps it, and then the state is
read again), and commits the message row, its readings (binary COPY), event, notices,
audit entries, alerts and the new state together. ``(gw, seq)`` is the primary key of
``messages``, so a message delivered twice is stored once, whichever receiver got it.

The connection is made again after any error (a restarted server, a dropped link); a
message that could not be committed raises StoreError and is not acknowledged, so the
broker delivers it again. Connection settings come from the URL and libpq's environment
(``PGPASSWORD``, ``PGPASSFILE``, ``sslmode``, ``sslrootcert``, ``sslcert``, ``sslkey``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import struct
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .outcome import Alert
from .rows import command_result_row, device_of, join_ns, value_of
from .schema import Block, Payload
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
_MIGRATION_LOCK = 0x6564676577  # pg_advisory_xact_lock key: one migrating receiver at a time

_V2 = """
CREATE TABLE gateways (
    gw       text PRIMARY KEY,
    root_kid bytea NOT NULL,
    state    bytea NOT NULL,
    version  bigint NOT NULL,
    updated  timestamptz NOT NULL
);
CREATE TABLE gateway_keys (
    kid          bytea PRIMARY KEY,
    gw           text NOT NULL,
    public_key   bytea NOT NULL,
    n            integer NOT NULL,
    certified_by bytea,
    learned      timestamptz NOT NULL
);
CREATE TABLE messages (
    gw       text NOT NULL,
    seq      bigint NOT NULL,
    kind     text NOT NULL,
    boot     bigint NOT NULL,
    kid      bytea NOT NULL,
    digest   bytea NOT NULL,
    sealed   timestamptz NOT NULL,
    received timestamptz NOT NULL,
    points   integer NOT NULL,
    PRIMARY KEY (gw, seq)
);
CREATE TABLE series (
    id     integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    gw     text NOT NULL,
    tag    text NOT NULL,
    device text,
    unit   text,
    UNIQUE (gw, tag)
);
CREATE INDEX series_device ON series (gw, device);
CREATE TABLE readings (
    series          integer NOT NULL,
    seq             bigint NOT NULL,
    ts              timestamptz NOT NULL,
    ts_nanos        smallint NOT NULL,
    quality         smallint NOT NULL,
    vtype           text NOT NULL,
    value           double precision,
    value_int       numeric(20, 0),
    value_text      text,
    value_bytes     bytea,
    reason          text,
    server_ts       timestamptz,
    server_ts_nanos smallint
);
CREATE INDEX readings_series_ts ON readings (series, ts);
CREATE TABLE events (
    gw               text NOT NULL,
    seq              bigint NOT NULL,
    model            text NOT NULL,
    kind             text NOT NULL,
    ts               timestamptz NOT NULL,
    ts_nanos         smallint NOT NULL,
    window_end       timestamptz NOT NULL,
    window_end_nanos smallint NOT NULL,
    score            double precision,
    peak             double precision,
    inputs           text[] NOT NULL,
    PRIMARY KEY (gw, seq)
);
CREATE INDEX events_ts ON events (gw, ts);
CREATE TABLE notices (
    gw        text NOT NULL,
    seq       bigint NOT NULL,
    n         smallint NOT NULL,
    first_seq bigint,
    last_seq  bigint,
    messages  bigint NOT NULL,
    points    bigint NOT NULL,
    bytes     bigint NOT NULL,
    reason    text NOT NULL,
    at        timestamptz NOT NULL,
    PRIMARY KEY (gw, seq, n)
);
CREATE TABLE audit_entries (
    gw       text NOT NULL,
    log      bytea NOT NULL,
    "offset" bigint NOT NULL,
    entry    bytea NOT NULL,
    seq      bigint NOT NULL,
    PRIMARY KEY (gw, log, "offset")
);
CREATE TABLE alerts (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    gw       text,
    seq      bigint,
    class    text NOT NULL,
    security boolean NOT NULL,
    detail   text NOT NULL,
    received timestamptz NOT NULL
);
CREATE INDEX alerts_gw ON alerts (gw, id);
CREATE TABLE receivers (
    name    text PRIMARY KEY,
    stats   jsonb NOT NULL,
    updated timestamptz NOT NULL
);
CREATE VIEW readings_view AS
    SELECT s.gw, s.device, s.tag, s.unit, r.*
    FROM readings r JOIN series s ON s.id = r.series;
"""

MIGRATIONS = {2: _V2}  # version -> the script that makes it from the one before

# -- binary COPY of readings ---------------------------------------------------------------

_PG_EPOCH_US = 946_684_800 * 1_000_000  # timestamptz counts µs from 2000-01-01 UTC
_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_TRAILER = b"\xff\xff"
_NULL = b"\xff\xff\xff\xff"
# The columns in the order whose values differ from reading to reading first (series,
# value): a block's rows are then packed by one struct call, the rest of each row being
# the same bytes (see copy_block).
_COPY = (
    "COPY readings (series, value, seq, ts, ts_nanos, quality, vtype, value_int, value_text,"
    " value_bytes, reason, server_ts, server_ts_nanos) FROM STDIN (FORMAT BINARY)"
)
_FIELDS = 13
_SID = struct.Struct(">hii")  # field count, series
_DOUBLE = struct.Struct(">id")  # value
_MID = struct.Struct(">iqiqihih")  # seq, ts, ts_nanos, quality
_SERVER = struct.Struct(">iqih")
_NULL2 = _NULL * 2
_NULL3 = _NULL * 3
_NULL6 = _NULL * 6
_NUMERIC_CACHE: dict[int, bytes] = {}
_SET_IDS_MAX = 100_000  # tag sets whose series ids a store keeps (then it starts over)


def _numeric(v: int) -> bytes:
    """An integer as PostgreSQL's binary numeric (base-10000 digits), with its length."""
    cached = _NUMERIC_CACHE.get(v)
    if cached is not None:
        return cached
    sign = 0x4000 if v < 0 else 0
    a = -v if v < 0 else v
    digits: list[int] = []
    while a:
        a, d = divmod(a, 10000)
        digits.append(d)
    digits.reverse()
    weight = len(digits) - 1
    while digits and digits[-1] == 0:
        digits.pop()
    n = len(digits)
    body = struct.pack(f">hhhh{n}H", n, max(weight, 0), sign, 0, *digits)
    out = struct.pack(">i", len(body)) + body
    if -1024 <= v < 65536:
        _NUMERIC_CACHE[v] = out
    return out


def _field(b: bytes) -> bytes:
    return struct.pack(">i", len(b)) + b


# Command results (kind "command_result"), the gateway's answers to signed commands.
_COMMAND_RESULTS = """
CREATE TABLE IF NOT EXISTS command_results (
    gw text NOT NULL, seq bigint NOT NULL, id text, op text, outcome text NOT NULL,
    reason text, detail text, tag text, value jsonb, before jsonb, after jsonb,
    version bigint, digest bytea NOT NULL, kid bytea, received timestamptz,
    received_nanos smallint, done timestamptz, done_nanos smallint, again boolean NOT NULL,
    PRIMARY KEY (gw, seq)
)
"""


def copy_data(
    ids: dict[str, int], seq: int, readings: Sequence[Sequence[Any]] = (), blocks: Any = ()
) -> bytes:
    """The whole binary COPY stream of one message's readings (rows or blocks)."""
    out = [_SIGNATURE, copy_rows(ids, seq, readings)]
    out += [copy_block([ids[t] for t in b.names], seq, b) for b in blocks]
    return b"".join((*out, _TRAILER))


_VT = b"\x00\x00\x00\x01"  # the length of a one-letter vtype


def _value(v: Any) -> tuple[bytes, bytes]:
    """A value as binary COPY fields: ``value``, then ``vtype`` to ``value_bytes``."""
    t = type(v)
    if t is float:
        return _DOUBLE.pack(8, v), _VT + b"f" + _NULL3
    if t is int:
        return _DOUBLE.pack(8, float(v)), _VT + b"i" + _numeric(v) + _NULL2
    if t is bool:
        return _DOUBLE.pack(8, 1.0 if v else 0.0), _VT + b"b" + _NULL3
    if t is str:
        b = v.encode()
        if b"\x00" in b:  # PostgreSQL text cannot hold NUL: the exact UTF-8 in value_bytes
            return _NULL, _VT + b"s" + _NULL2 + _field(b)
        return _NULL, _VT + b"s" + _NULL + _field(b) + _NULL
    if t is bytes:
        return _NULL, _VT + b"x" + _NULL2 + _field(v)
    return _NULL, _VT + b"n" + _NULL3


def _row(sid: int, seq: int, r: Sequence[Any]) -> bytes:
    """One reading ``[tag, ts, value, quality, reason?, server_ts?]`` as a binary COPY row."""
    us, nanos = divmod(r[1], 1000)
    value, vtype_to_bytes = _value(r[2])
    reason = r[4] if len(r) > 4 else None
    server = r[5] if len(r) > 5 else None
    if server is None:
        server_fields = _NULL2
    else:
        s_us, s_nanos = divmod(server, 1000)
        server_fields = _SERVER.pack(8, s_us - _PG_EPOCH_US, 2, s_nanos)
    return b"".join(
        (
            _SID.pack(_FIELDS, 4, sid),
            value,
            _MID.pack(8, seq, 8, us - _PG_EPOCH_US, 2, nanos, 2, r[3]),
            vtype_to_bytes,
            _NULL if reason is None else _field(reason.replace("\x00", "\ufffd").encode()),
            server_fields,
        )
    )


def copy_rows(ids: dict[str, int], seq: int, readings: Sequence[Sequence[Any]]) -> bytes:
    """Readings one by one (payload version 1) as binary COPY rows."""
    return b"".join([_row(ids[r[0]], seq, r) for r in readings])


_packers: dict[tuple[str, int], struct.Struct] = {}


def _packer(code: str, n: int) -> struct.Struct:
    """Packs ``n`` big-endian ``code`` (``i`` or ``d``) values (a few sizes: cached)."""
    s = _packers.get((code, n))
    if s is None:
        if len(_packers) >= 1024:
            _packers.clear()
        s = _packers[(code, n)] = struct.Struct(f">{n}{code}")
    return s


_SID_AT = 6  # where a row's series id starts (after the field count and its length)
_VALUE_AT = 14  # where its value starts (after the value's length)


def copy_block(sids: Sequence[int], seq: int, b: Block) -> bytes:
    """A payload version 2 block as binary COPY rows. The common block (one device read:
    every value a float, or every value a bool; one timestamp, one quality, no reasons or
    server timestamps) is written by C code, a dozen calls for the whole block: the rows
    differ only in their series and value, so the block is one row repeated, then the
    series ids and the values (each packed in one call) are copied in byte by byte with
    strided slice assignments. Any other block goes row by row."""
    vtype, ts, q = b.vtype, b.ts, b.quality
    if (
        (vtype is float or vtype is bool)
        and type(ts) is int
        and type(q) is int
        and b.reason is None
        and b.server_ts is None
    ):
        us, nanos = divmod(ts, 1000)
        row = b"".join(
            (
                _SID.pack(_FIELDS, 4, 0),
                _DOUBLE.pack(8, 0.0),
                _MID.pack(8, seq, 8, us - _PG_EPOCH_US, 2, nanos, 2, q),
                _VT,
                b"f" if vtype is float else b"b",
                _NULL6,
            )
        )
        size, n = len(row), len(sids)
        out = bytearray(row * n)
        packed = _packer("i", n).pack(*sids)
        for k in range(4):
            out[_SID_AT + k :: size] = packed[k::4]
        packed = _packer("d", n).pack(*b.values)  # a bool packs as 1.0 or 0.0
        for k in range(8):
            out[_VALUE_AT + k :: size] = packed[k::8]
        return bytes(out)
    return b"".join([_row(sid, seq, r) for sid, r in zip(sids, b.readings(), strict=True)])


_COPY_MESSAGES = (
    "COPY messages (gw, seq, kind, boot, kid, digest, sealed, received, points) "
    "FROM STDIN (FORMAT BINARY)"
)
_MESSAGE_MID = struct.Struct(">iq")  # seq or boot
_MESSAGE_END = struct.Struct(">iqiqii")  # sealed, received (µs), points


def message_row(
    gw: str,
    seq: int,
    kind: str,
    boot: int,
    kid: bytes,
    digest: bytes,
    sealed_ns: int,
    received_ns: int,
    points: int,
) -> bytes:
    """A ``messages`` row as binary COPY (times to the µs, as ``when`` gives them)."""
    return b"".join(
        (
            b"\x00\x09",
            _field(gw.encode()),
            _MESSAGE_MID.pack(8, seq),
            _field(kind.encode()),
            _MESSAGE_MID.pack(8, boot),
            _field(kid),
            _field(digest),
            _MESSAGE_END.pack(
                8,
                sealed_ns // 1000 - _PG_EPOCH_US,
                8,
                received_ns // 1000 - _PG_EPOCH_US,
                4,
                points,
            ),
        )
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def when(ns: int) -> datetime:
    """A uint64 ns timestamp as a datetime, to the µs (for per-message columns)."""
    return _EPOCH + timedelta(microseconds=ns // 1000)


def redact(url: str) -> str:
    """The connection string without its password, for messages."""
    try:
        d = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "the --db connection string"
    d.pop("password", None)
    return make_conninfo(**{k: v for k, v in d.items() if v is not None})


class PgStore:
    """The fleet store. ``url``: a libpq connection string or ``postgresql://`` URL.
    ``readings=False`` keeps the state and message index only."""

    def __init__(
        self,
        url: str,
        *,
        readings: bool = True,
        connect_timeout_s: int = 10,
        application_name: str = "edgegw-receive",
    ) -> None:
        self.url = url
        self.where = redact(url)
        self.keep_readings = readings
        self.connect_timeout_s = connect_timeout_s
        self.application_name = application_name
        self._conn: psycopg.Connection[Any] | None = None
        self._cache: dict[str, Cached] = {}
        self._series: dict[tuple[str, str], int] = {}
        # The series ids of a tag set (a block's names) of a gateway: one lookup a block.
        self._set_ids: dict[tuple[str, tuple[str, ...]], list[int]] = {}
        # Gateways whose series (as another receiver may have made them) were read in bulk.
        self._series_read: set[str] = set()
        self._key_objects: dict[bytes, Ed25519PublicKey] = {}  # raw public key -> object
        self._lock = threading.RLock()
        self.timescale = False
        with self._lock:
            try:
                self._migrate(self._connect())
            except psycopg.Error as exc:
                self._drop()
                raise StoreError(f"{self.where}: cannot set up the receiver store: {exc}") from exc

    # -- connection -------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._drop()
        try:
            conn = psycopg.connect(
                self.url,
                connect_timeout=self.connect_timeout_s,
                application_name=self.application_name,
            )
        except psycopg.Error as exc:
            raise StoreError(f"{self.where}: cannot connect: {exc}".strip()) from exc
        self._conn = conn
        # What another receiver committed while we were away is read again.
        self._cache.clear()
        return conn

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS edgegw_schema "
                "(version integer PRIMARY KEY, applied timestamptz NOT NULL DEFAULT now())"
            )
            row = conn.execute("SELECT max(version) FROM edgegw_schema").fetchone()
            version = (row[0] if row else None) or 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.where}: store schema {version} was written by a newer edgegw "
                    f"(this one knows {SCHEMA_VERSION}); upgrade edgegw or use another --db"
                )
            for v in sorted(MIGRATIONS):
                if v > version:
                    for stmt in MIGRATIONS[v].split(";\n"):
                        if stmt.strip():
                            conn.execute(stmt)  # type: ignore[arg-type]
                    conn.execute("INSERT INTO edgegw_schema (version) VALUES (%s)", (v,))
                    log.info("%s: receiver store schema %d applied", self.where, v)
            conn.execute(_COMMAND_RESULTS)  # an addition (no version change), under the lock
        self._try_timescale(conn)

    def _try_timescale(self, conn: psycopg.Connection[Any]) -> None:
        """Readings become a hypertable where the TimescaleDB extension is installed."""
        with conn.transaction():
            if not conn.execute(
                "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
            ).fetchone():
                return
        try:
            with conn.transaction():
                conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
                conn.execute(
                    "SELECT create_hypertable('readings', 'ts', if_not_exists => TRUE, "
                    "migrate_data => TRUE)"
                )
            self.timescale = True
        except psycopg.Error as exc:
            log.warning(
                "%s: TimescaleDB is available but readings stay a plain table: %s",
                self.where,
                exc,
            )

    # -- transactions -----------------------------------------------------------------

    def check_enrolment(self, enrolment: Enrolment) -> None:
        with self._lock:
            try:
                conn = self._connect()
                with conn.transaction():
                    row = conn.execute(
                        "SELECT root_kid FROM gateways WHERE gw = %s", (enrolment.gw,)
                    ).fetchone()
            except psycopg.Error as exc:
                self._drop()
                raise StoreError(f"{self.where}: {exc}") from exc
        if row is not None and bytes(row[0]) != enrolment.root_kid:
            raise EnrolmentChanged(
                f"gateway {enrolment.gw}: enrolled with key {enrolment.root_kid.hex()} "
                f"({enrolment.source}), but {self.where} holds data verified with root key "
                f"{bytes(row[0]).hex()}. A re-enrolled gateway is a new identity: restore the "
                "old enrolment, or receive it into another database"
            )

    @contextlib.contextmanager
    def transaction(self, enrolment: Enrolment) -> Iterator[GatewayTxn]:
        with self.batch() as b:
            yield b.gateway(enrolment)

    @contextlib.contextmanager
    def batch(self) -> Iterator[Batch]:
        """One transaction for several messages (group commit): the gateways' rows are
        locked in gateway order (so receivers sharing the database never deadlock), the
        messages' rows and readings go in with one statement and one COPY at the end, and
        everything commits together or nothing does."""
        with self._lock:
            try:
                conn = self._connect()
            except psycopg.Error as exc:
                raise StoreError(f"{self.where}: cannot begin a transaction: {exc}") from exc
            b = _PgBatch(self, conn)
            try:
                yield b
                b.flush()
                conn.commit()
            except BaseException as exc:
                self._fail(list(b.txns))
                if isinstance(exc, psycopg.Error):
                    raise StoreError(f"{self.where}: {exc}") from exc
                raise
            for gw, txn in b.txns.items():
                self._cache[gw] = Cached(txn.version, txn.state, txn.keys)
                self._series.update(txn.new_series)
                if txn.new_sets:
                    if len(self._set_ids) > _SET_IDS_MAX:
                        self._set_ids.clear()
                    self._set_ids.update(txn.new_sets)

    def _fail(self, gws: list[str]) -> None:
        """After an error: the states may be half-changed, the connection may be gone."""
        for gw in gws:
            self._cache.pop(gw, None)
        conn = self._conn
        if conn is None:
            return
        try:
            conn.rollback()
        except psycopg.Error:
            self._drop()
        if conn.broken:
            self._drop()

    def _read_series(self, cur: psycopg.Cursor[Any], gws: list[str]) -> None:
        """The series of gateways this process has not read yet (another receiver may have
        made them): one query for all, instead of an insert and a select per tag set at
        first sight."""
        unread = [gw for gw in gws if gw not in self._series_read]
        if unread:
            for gw, tag, sid in cur.execute(
                "SELECT gw, tag, id FROM series WHERE gw = ANY(%s)", (unread,)
            ).fetchall():
                self._series[(gw, tag)] = sid  # committed rows: cached at once
            self._series_read.update(unread)

    def _key(self, raw: bytes) -> Ed25519PublicKey:
        """The key object of a raw public key (made once: states are read again whenever
        another receiver wrote them, and their keys with them)."""
        key = self._key_objects.get(raw)
        if key is None:
            key = self._key_objects[raw] = Ed25519PublicKey.from_public_bytes(raw)
        return key

    def _open(self, conn: psycopg.Connection[Any], e: Enrolment) -> _PgTxn:
        cur = conn.cursor()
        lock = "SELECT version, root_kid FROM gateways WHERE gw = %s FOR UPDATE"
        row = cur.execute(lock, (e.gw,)).fetchone()
        if row is None:
            # A new gateway; another receiver may be adding it at this very moment: the
            # insert waits for it, and the second SELECT locks whichever row won.
            cur.execute(
                "INSERT INTO gateways (gw, root_kid, state, version, updated) "
                "VALUES (%s, %s, %s, 0, now()) ON CONFLICT (gw) DO NOTHING",
                (e.gw, e.root_kid, GatewayState().to_bytes()),
            )
            cur.execute(
                "INSERT INTO gateway_keys VALUES (%s, %s, %s, 0, NULL, now()) "
                "ON CONFLICT (kid) DO NOTHING",
                (e.root_kid, e.gw, public_raw(e.root)),
            )
            row = cur.execute(lock, (e.gw,)).fetchone()
            assert row is not None
        version, root_kid = row
        if bytes(root_kid) != e.root_kid:
            self.check_enrolment(e)  # raises EnrolmentChanged; the batch rolls back
        self._read_series(cur, [e.gw])
        cached = self._cache.get(e.gw)
        if cached is not None and cached.version == version:
            return _PgTxn(self, cur, e.gw, version, cached.state, cached.keys)
        (blob,) = cur.execute("SELECT state FROM gateways WHERE gw = %s", (e.gw,)).fetchone()  # type: ignore[misc]
        keys = {
            bytes(kid): self._key(bytes(pub))
            for kid, pub in cur.execute(
                "SELECT kid, public_key FROM gateway_keys WHERE gw = %s", (e.gw,)
            ).fetchall()
        }
        return _PgTxn(self, cur, e.gw, version, GatewayState.from_bytes(bytes(blob)), keys)

    # -- reading ----------------------------------------------------------------------

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                conn = self._connect()
                with conn.transaction():
                    return conn.execute(sql, args).fetchall()  # type: ignore[arg-type]
            except psycopg.Error as exc:
                self._drop()
                raise StoreError(f"{self.where}: {exc}") from exc

    def states(self) -> dict[str, GatewayState]:
        rows = self._query("SELECT gw, state FROM gateways ORDER BY gw")
        return {gw: GatewayState.from_bytes(bytes(blob)) for gw, blob in rows}

    def alerts(self, gw: str | None = None) -> list[dict[str, Any]]:
        q = (
            "SELECT gw, seq, class, security::int, detail, "
            "(extract(epoch FROM received) * 1e6)::bigint * 1000 FROM alerts"
        )
        args: tuple[Any, ...] = ()
        if gw is not None:
            q, args = q + " WHERE gw = %s", (gw,)
        keys = ("gw", "seq", "class", "security", "detail", "received_ns")
        return [dict(zip(keys, r, strict=True)) for r in self._query(q + " ORDER BY id", args)]

    def audit_copy(self, gw: str, log_id: bytes | None = None) -> bytes:
        if log_id is None:
            rows = self._query("SELECT state FROM gateways WHERE gw = %s", (gw,))
            if not rows:
                return b""
            log_id = GatewayState.from_bytes(bytes(rows[0][0])).current_log
            if log_id is None:
                return b""
        out = bytearray()
        for offset, entry in self._query(
            'SELECT "offset", entry FROM audit_entries WHERE gw = %s AND log = %s '
            'ORDER BY "offset"',
            (gw, log_id),
        ):
            if offset != len(out):
                break
            out += entry
        return bytes(out)

    def readings(self, gw: str, tag: str | None = None) -> list[Reading]:
        q = (
            "SELECT r.seq, s.tag, (extract(epoch FROM r.ts) * 1e6)::bigint, r.ts_nanos, r.vtype,"
            " r.value, r.value_int, r.value_text, r.value_bytes, r.quality, r.reason,"
            " (extract(epoch FROM r.server_ts) * 1e6)::bigint, r.server_ts_nanos"
            " FROM readings r JOIN series s ON s.id = r.series WHERE s.gw = %s"
        )
        args: tuple[Any, ...] = (gw,)
        if tag is not None:
            q, args = q + " AND s.tag = %s", (gw, tag)
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
            for seq, t, us, nanos, vt, v, vi, vs, vb, q, reason, s_us, s_nanos in self._query(
                q + " ORDER BY r.seq, r.ctid", args
            )
        ]

    def record_stats(self, receiver: str, stats: dict[str, Any]) -> None:
        with self._lock:
            try:
                conn = self._connect()
                with conn.transaction():
                    conn.execute(
                        "INSERT INTO receivers VALUES (%s, %s, now()) ON CONFLICT (name) "
                        "DO UPDATE SET stats = excluded.stats, updated = excluded.updated",
                        (receiver, json.dumps(stats)),
                    )
            except psycopg.Error as exc:
                self._drop()
                raise StoreError(f"{self.where}: {exc}") from exc

    def report(self) -> StoreReport:
        r = StoreReport()
        ((r.messages, r.points),) = self._query(  # type: ignore[misc]
            "SELECT count(*), coalesce(sum(points), 0) FROM messages"
        )
        r.events = self._query("SELECT count(*) FROM events")[0][0]
        r.notices = self._query("SELECT count(*) FROM notices")[0][0]
        ((r.alerts, r.security_alerts),) = self._query(  # type: ignore[misc]
            "SELECT count(*), count(*) FILTER (WHERE security) FROM alerts"
        )
        r.receivers = dict(self._query("SELECT name, stats FROM receivers"))  # type: ignore[arg-type]
        fill_from_states(r, self.states())
        return r

    def close(self) -> None:
        with self._lock:
            self._drop()


class _PgBatch(Batch):
    """The gateways one transaction holds, and what it writes at its end in bulk."""

    def __init__(self, store: PgStore, conn: psycopg.Connection[Any]) -> None:
        super().__init__(self._open_one)
        self.store, self.conn = store, conn
        self.cur = conn.cursor()
        self.messages: list[bytes] = []  # binary COPY rows of messages
        self.rows: list[bytes] = []  # binary COPY rows of readings

    def _open_one(self, e: Enrolment) -> _PgTxn:
        try:
            txn = self.store._open(self.conn, e)
        except psycopg.Error as exc:
            raise StoreError(f"{self.store.where}: cannot lock gateway {e.gw}: {exc}") from exc
        txn.batch = self
        return txn

    def open_all(self, enrolments: list[Enrolment]) -> None:
        """Lock every gateway of the batch with one statement, in gateway order; load the
        states this process has no current copy of with two more."""
        todo = sorted({e.gw: e for e in enrolments if e.gw not in self.txns}.values(),
                      key=lambda e: e.gw)  # fmt: skip
        if not todo:
            return
        store, cur = self.store, self.cur
        try:
            found = {
                gw: (version, bytes(root))
                for gw, version, root in cur.execute(
                    "SELECT gw, version, root_kid FROM gateways WHERE gw = ANY(%s) "
                    "ORDER BY gw FOR UPDATE",
                    ([e.gw for e in todo],),
                ).fetchall()
            }
            store._read_series(cur, list(found))
            stale = []
            for e in todo:
                if e.gw not in found:
                    continue  # a new gateway: created at first use
                version, root = found[e.gw]
                if root != e.root_kid:
                    store.check_enrolment(e)  # raises EnrolmentChanged
                cached = store._cache.get(e.gw)
                if cached is not None and cached.version == version:
                    txn = _PgTxn(store, cur, e.gw, version, cached.state, cached.keys)
                    txn.batch = self
                    self.txns[e.gw] = txn
                else:
                    stale.append((e.gw, version))
            if stale:
                names = [gw for gw, _ in stale]
                blobs = dict(
                    cur.execute(
                        "SELECT gw, state FROM gateways WHERE gw = ANY(%s)", (names,)
                    ).fetchall()
                )
                keys: dict[str, dict[bytes, Ed25519PublicKey]] = {gw: {} for gw in names}
                for gw, kid, pub in cur.execute(
                    "SELECT gw, kid, public_key FROM gateway_keys WHERE gw = ANY(%s)", (names,)
                ).fetchall():
                    keys[gw][bytes(kid)] = store._key(bytes(pub))
                for gw, version in stale:
                    state = GatewayState.from_bytes(bytes(blobs[gw]))
                    txn = _PgTxn(store, cur, gw, version, state, keys[gw])
                    txn.batch = self
                    self.txns[gw] = txn
        except psycopg.Error as exc:
            raise StoreError(f"{store.where}: cannot lock the batch's gateways: {exc}") from exc

    def flush(self) -> None:
        """Write what the messages left for the end, then the changed states."""
        cur = self.cur
        if self.messages:
            with cur.copy(_COPY_MESSAGES) as cp:
                cp.write(b"".join((_SIGNATURE, *self.messages, _TRAILER)))
            self.messages = []
        if self.rows:
            with cur.copy(_COPY) as cp:
                cp.write(b"".join((_SIGNATURE, *self.rows, _TRAILER)))  # one write: one wait
            self.rows = []
        dirty = [t for t in self.txns.values() if t.dirty]
        if dirty:
            # One statement for all (the rows are locked by this transaction already).
            cur.execute(
                "UPDATE gateways AS g SET state = u.state, version = g.version + 1, "
                "updated = now() FROM unnest(%s::text[], %s::bytea[]) AS u (gw, state) "
                "WHERE g.gw = u.gw",
                ([t.gw for t in dirty], [t.state.to_bytes() for t in dirty]),
            )
            if cur.rowcount != len(dirty):  # cannot happen: each row was locked, so it exists
                raise StoreError(f"updated {cur.rowcount} of {len(dirty)} gateways' states")
            for t in dirty:
                t.version += 1


class _PgTxn:
    def __init__(
        self,
        store: PgStore,
        cur: psycopg.Cursor[Any],
        gw: str,
        version: int,
        state: GatewayState,
        keys: dict[bytes, Ed25519PublicKey],
    ) -> None:
        self.store, self.cur, self.gw = store, cur, gw
        self.version, self.state, self.keys = version, state, keys
        self.dirty = False
        self.new_series: dict[tuple[str, str], int] = {}  # cached only after the commit
        self.new_sets: dict[tuple[str, tuple[str, ...]], list[int]] = {}  # the same
        self.batch: _PgBatch | None = None
        self.pending: dict[int, bytes] = {}  # digests of messages written at the batch's end

    def stored_digest(self, seq: int) -> bytes | None:
        if seq in self.pending:
            return self.pending[seq]
        row = self.cur.execute(
            "SELECT digest FROM messages WHERE gw = %s AND seq = %s", (self.gw, seq)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def key_owner(self, kid: bytes) -> tuple[str, Ed25519PublicKey] | None:
        row = self.cur.execute(
            "SELECT gw, public_key FROM gateway_keys WHERE kid = %s", (kid,)
        ).fetchone()
        if row is None:
            return None
        return row[0], self.store._key(bytes(row[1]))

    def learn_key(self, key: LearnedKey) -> None:
        self.cur.execute(
            "INSERT INTO gateway_keys VALUES (%s, %s, %s, %s, %s, now()) "
            "ON CONFLICT (kid) DO NOTHING",
            (key.kid, self.gw, public_raw(key.public_key), key.n, key.certified_by),
        )
        self.keys[key.kid] = key.public_key

    def _series_ids(self, readings: Sequence[Sequence[Any]]) -> dict[str, int]:
        """Series id of each tag of ``readings`` (one pass over them: ``_tag_ids`` with
        the payload's distinct ``tags`` does without)."""
        return self._tag_ids(list(dict.fromkeys([r[0] for r in readings])))

    def _tag_ids(self, tags: list[str]) -> dict[str, int]:
        """Series id of each distinct tag of a message (``Payload.tags``)."""
        known, gw, added = self.store._series, self.gw, self.new_series
        ids: dict[str, int] = {}
        new: list[str] = []
        for tag in tags:
            sid = known.get((gw, tag)) or added.get((gw, tag))
            if sid is None:
                new.append(tag)
                sid = 0
            ids[tag] = sid
        if new:
            # The gateway's row is locked: no other receiver adds this gateway's series now.
            self.cur.execute(
                "INSERT INTO series (gw, tag, device) SELECT %s, t, d "
                "FROM unnest(%s::text[], %s::text[]) AS u (t, d) ON CONFLICT DO NOTHING",
                (gw, new, [device_of(t) for t in new]),
            )
            for sid, tag in self.cur.execute(
                "SELECT id, tag FROM series WHERE gw = %s AND tag = ANY(%s)", (gw, new)
            ).fetchall():
                ids[tag] = sid
                self.new_series[(gw, tag)] = sid
        return ids

    def _set(self, names: tuple[str, ...]) -> list[int]:
        """The series ids of a block's tags."""
        key = (self.gw, names)
        sids = self.store._set_ids.get(key) or self.new_sets.get(key)
        if sids is None:
            ids = self._tag_ids(list(dict.fromkeys(names)))
            sids = self.new_sets[key] = [ids[t] for t in names]
        return sids

    def put_message(self, p: Payload, kid: bytes, digest: bytes, received_ns: int) -> None:
        self.dirty = True
        cur, gw, seq = self.cur, self.gw, p.seq
        assert self.batch is not None
        self.pending[seq] = digest
        self.batch.messages.append(
            message_row(gw, seq, p.kind, p.boot, kid, digest, p.t_ns, received_ns, p.points)
        )
        if p.points and self.store.keep_readings:
            if p.blocks:
                self.batch.rows += [copy_block(self._set(b.names), seq, b) for b in p.blocks]
            else:
                self.batch.rows.append(copy_rows(self._tag_ids(p.tags), seq, p.rows))
        if p.event is not None:
            e = p.event
            cur.execute(
                "INSERT INTO events VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    gw,
                    seq,
                    e["model"],
                    e["kind"],
                    when(e["ts_ns"]),
                    e["ts_ns"] % 1000,
                    when(e["window_end_ns"]),
                    e["window_end_ns"] % 1000,
                    float(e["score"]),
                    float(e["peak"]),
                    list(e["inputs"]),
                ),
            )
        if p.command_result is not None:
            r = list(command_result_row(gw, seq, p.command_result))
            r[14] = None if r[14] is None else when(r[14] * 1000)  # µs -> timestamptz
            r[16] = None if r[16] is None else when(r[16] * 1000)
            cur.execute(
                "INSERT INTO command_results VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                r,
            )
        if p.drops:
            cur.executemany(
                "INSERT INTO notices VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
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
                        when(d.at_ns),
                    )
                    for n, d in enumerate(p.drops)
                ],
            )

    def put_audit_entries(
        self, log_id: bytes, entries: list[tuple[int, bytes]], seq: int, *, insert: bool = True
    ) -> list[tuple[int, bytes, bytes]]:
        rewritten: list[tuple[int, bytes, bytes]] = []
        for offset, entry in entries:
            row = self.cur.execute(
                'SELECT entry FROM audit_entries WHERE gw = %s AND log = %s AND "offset" = %s',
                (self.gw, log_id, offset),
            ).fetchone()
            if row is None:
                if not insert:
                    continue
                self.cur.execute(
                    "INSERT INTO audit_entries VALUES (%s, %s, %s, %s, %s)",
                    (self.gw, log_id, offset, entry, seq),
                )
            elif bytes(row[0]) != entry:
                rewritten.append((offset, bytes(row[0]), entry))
        return rewritten

    def audit_entries(self, log_id: bytes, from_offset: int) -> Iterator[tuple[int, bytes]]:
        rows = self.cur.execute(
            'SELECT "offset", entry FROM audit_entries WHERE gw = %s AND log = %s '
            'AND "offset" >= %s ORDER BY "offset"',
            (self.gw, log_id, from_offset),
        ).fetchall()
        for offset, entry in rows:
            yield offset, bytes(entry)

    def alert(self, a: Alert, received_ns: int) -> None:
        self.cur.execute(
            "INSERT INTO alerts (gw, seq, class, security, detail, received) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (a.gw, a.seq, a.cls.value, a.security, a.detail, when(received_ns)),
        )

    def save(self) -> None:
        """The state is written back by the batch's flush (one statement for all)."""
