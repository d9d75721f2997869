"""Both receiver stores (SQLite, and PostgreSQL from Debian's package) hold exactly what
the gateway sent: every value type round-trips, timestamps to the nanosecond, quality as
sent; events and notices have tables of their own; a re-delivery is a no-op; the schema is
made by migrations, from an empty database and from the previous schema."""

from __future__ import annotations

import math
import sqlite3
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.receiver import (
    Outcome,
    Receiver,
    SqliteStore,
    Store,
    StoreError,
    open_store,
    pg_store,
    schema,
)
from gateway.receiver.store import public_raw
from gateway.wire import encode_payload
from security import DeviceKey, sign1
from security.cose import parse1
from tests.gateway.test_receiver import TOPIC, msg, notice

U64_MAX = 2**64 - 1
F32 = struct.unpack("<f", struct.pack("<f", 0.1))[0]  # a float32 value, widened exactly

# (value, quality, reason, server_ts) in every form the wire format allows
VALUES: list[list[Any]] = [
    [True, 0],
    [False, 0],
    [0, 0],
    [-(2**63), 0],
    [2**63 - 1, 0],
    [2**63, 0],
    [U64_MAX, 0],
    [2**53 + 1, 0],  # not exact as a double
    [1.5, 0],
    [F32, 0],
    [-0.0, 0],
    [0.0, 0],
    [math.inf, 0],
    [-math.inf, 0],
    [math.nan, 4, "sensor says NaN"],
    [5e-324, 0],
    [1.7976931348623157e308, 0],
    ["", 0],
    ["Grüße, 温度 ✓", 0],
    ["NaN", 0],  # text that looks like a number stays text
    ["a\x00b", 0],  # an S7 or OPC UA string may hold NUL, which PostgreSQL text cannot
    ["\x00", 4, "device said \x00 here"],
    [str(U64_MAX), 0],
    [b"", 0],
    [b"\x00\xff\x10", 0],
    [None, 1, "timeout"],
    [None, 2, None],
    [None, 3, "cannot decode"],
    [7, 4, None, 1_700_000_000_123_456_789],  # OPC UA server timestamp
    [8, 0, None, None],
]
TS = [0, 1, 999, 1_700_000_000_123_456_789, 2**63 - 1, 2**63, U64_MAX]


@pytest.fixture
def key(tmp_path: Path) -> DeviceKey:
    return DeviceKey.load_or_create(tmp_path / "gw")[0]


def same(a: Any, b: Any) -> bool:
    """Equal, with the same type; NaN equals NaN and -0.0 is not 0.0."""
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return (math.isnan(a) and math.isnan(b)) or struct.pack("<d", a) == struct.pack("<d", b)
    return bool(a == b)


def test_every_value_type_round_trips(key: DeviceKey, store: Store, store_url: str) -> None:
    readings = []
    for i, v in enumerate(VALUES):
        r = [f"plc/tag{i}", TS[i % len(TS)], *v]
        readings.append(r)
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    assert rx.handle(TOPIC, msg(key, 1, readings)) is Outcome.VALID
    got = store.readings("gw1")
    assert len(got) == len(readings)
    for r, g in zip(readings, got, strict=True):
        assert (g.seq, g.tag, g.ts_ns, g.quality) == (1, r[0], r[1], r[3]), r
        assert same(g.value, r[2]), (r, g)
        want_reason = r[4] if len(r) > 4 else None
        if want_reason is not None and "postgresql" in store_url:  # text cannot hold NUL
            want_reason = want_reason.replace("\x00", "\ufffd")
        assert g.reason == want_reason, r
        assert g.server_ts_ns == (r[5] if len(r) > 5 else None), r


FLOATS = [1.5, F32, -0.0, 0.0, math.inf, -math.inf, math.nan, 5e-324, 1.7976931348623157e308]


def test_device_reads_round_trip_in_columns(key: DeviceKey, store: Store) -> None:
    """What gateways send most: a device read as one block of floats (or bools) with one
    timestamp and one quality, which the stores write without a row object per reading;
    and the blocks next to it that they write row by row (a timestamp or quality each,
    reasons, server timestamps, mixed types). Every value and every column exact."""
    groups = [
        [[f"plc/f{i}", TS[3] + 7, v, 0] for i, v in enumerate(FLOATS)],  # one ts, one quality
        [[f"plc/b{i}", U64_MAX, v, 4] for i, v in enumerate([True, False, True])],
        [[f"plc/f{i}", TS[3] + 1000 + 999, v, 0] for i, v in enumerate(FLOATS)],  # set again
        [[f"plc/g{i}", TS[i], float(i), 0] for i in range(len(TS))],  # a timestamp each
        [[f"plc/q{i}", 5, 2.5, i] for i in range(5)],  # a quality each
        [[f"plc/r{i}", 9, 0.5, 4, "stale"] for i in range(3)],  # one reason for all
        [["plc/s0", 9, 0.25, 0, None, 123_456_789_012], ["plc/s1", 9, 0.75, 0, None, None]],
        [["plc/m0", 9, 1.0, 0], ["plc/m1", 9, 2**64 - 1, 0], ["plc/m2", 9, None, 1, "timeout"]],
        [[f"plc/i{i}", 9, v, 0] for i, v in enumerate([0, -(2**63), 2**63])],  # all ints
    ]
    readings = [r for g in groups for r in g]
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    assert rx.handle(TOPIC, msg(key, 1, [], groups=groups)) is Outcome.VALID
    got = store.readings("gw1")
    assert len(got) == len(readings)
    for r, g in zip(readings, got, strict=True):
        assert (g.seq, g.tag, g.ts_ns, g.quality) == (1, r[0], r[1], r[3]), (r, g)
        assert same(g.value, r[2]), (r, g)
        assert g.reason == (r[4] if len(r) > 4 else None), (r, g)
        assert g.server_ts_ns == (r[5] if len(r) > 5 else None), (r, g)
    assert store.report().points == len(readings)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.lists(st.floats(), min_size=1, max_size=300),
        st.lists(st.floats(width=32), min_size=1, max_size=300),
        st.lists(st.booleans(), min_size=1, max_size=20),
    ),
    st.integers(0, 2**64 - 1),
    st.integers(0, 4),
    st.integers(0, 2**63 - 1),
)
def test_a_device_reads_copy_rows_are_the_rows_one_by_one(
    values: list[Any], ts: int, quality: int, seq: int
) -> None:
    """The PostgreSQL store writes a device read (one type, one timestamp, one quality)
    by copying series ids and values into one repeated row: byte for byte what the
    reading-by-reading path (which the round trips above check) writes."""
    names = [f"plc/t{i}" for i in range(len(values))]
    body = encode_payload(
        gw="gw1", seq=seq, boot=1, kind="telemetry", t_ns=1,
        readings=[[n, ts, v, quality] for n, v in zip(names, values, strict=True)],
    )  # fmt: skip
    (block,) = schema.decode(body).blocks
    sids = [7 * i + 1 for i in range(len(values))]
    one_by_one = b"".join(
        pg_store._row(sid, seq, r) for sid, r in zip(sids, block.readings(), strict=True)
    )
    assert block.vtype in (float, bool)
    assert pg_store.copy_block(sids, seq, block) == one_by_one


def test_the_message_row_says_what_was_stored(key: DeviceKey, store: Store) -> None:
    """Every column of ``messages`` (written in bulk at a group's end): kind, boot, key,
    the signed content's digest, sealed and received to the µs, points."""
    sealed = 1_700_000_000_123_456_789
    body = sign1(
        encode_payload(gw="gw1", seq=7, boot=3, kind="telemetry", t_ns=sealed,
                       readings=[["plc/a", sealed, 1.5, 0], ["plc/b", sealed, 2.5, 0]]),
        key, TOPIC.encode(),
    )  # fmt: skip
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    received = 1_700_000_001_987_654_321
    assert rx.handle(TOPIC, body, received) is Outcome.VALID
    epoch_us = "(extract(epoch FROM {0}) * 1e6)::bigint"
    cols = "kind, boot, kid, digest, {}, {}, points"
    if isinstance(store, SqliteStore):
        q = cols.format("sealed", "received")
        row = store.db.execute(f"SELECT {q} FROM messages WHERE seq = 7").fetchone()
    else:
        q = cols.format(epoch_us.format("sealed"), epoch_us.format("received"))
        (row,) = store._query(f"SELECT {q} FROM messages WHERE seq = 7")  # type: ignore[attr-defined]
    env = parse1(body)
    assert (row[0], row[1], bytes(row[2]), bytes(row[3])) == (
        "telemetry", 3, key.kid, env.signed_digest(TOPIC.encode())
    )  # fmt: skip
    assert tuple(row[4:]) == (sealed // 1000, received // 1000, 2)


def test_readings_are_chartable_by_series(key: DeviceKey, store: Store) -> None:
    """One number to chart (``value``) for every numeric type, the device from the tag."""
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    r = [
        ["press/temp", 1_000_000_000, 21.5, 0],
        ["press/count", 1_000_000_000, 2**64 - 1, 0],
        ["press/on", 1_000_000_000, True, 0],
        ["press/name", 1_000_000_000, "A", 0],
        ["loose", 1_000_000_000, None, 1, "timeout"],
    ]
    assert rx.handle(TOPIC, msg(key, 1, r)) is Outcome.VALID
    sql = "SELECT device, tag, vtype, value FROM readings_view WHERE gw = 'gw1' ORDER BY tag"
    rows = _sql(store, sql)
    assert [tuple(x) for x in rows] == [
        (None, "loose", "n", None),
        ("press", "press/count", "i", float(2**64)),
        ("press", "press/name", "s", None),
        ("press", "press/on", "b", 1.0),
        ("press", "press/temp", "f", 21.5),
    ]


def test_events_and_notices_are_stored(key: DeviceKey, store: Store) -> None:
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    event = {
        "model": "pump-ae",
        "kind": "start",
        "ts_ns": 1_700_000_000_123_456_789,
        "score": 3.25,
        "peak": 4.5,
        "window_end_ns": 1_700_000_001_000_000_001,
        "inputs": ["pump/flow", "pump/pressure"],
    }
    ev = msg(key, 1, kind="event", topic="edgegw/gw1/event", event=event)
    assert rx.handle("edgegw/gw1/event", ev) is Outcome.VALID
    assert rx.handle("edgegw/gw1/notice", notice(key, 9, 2, 8)) is Outcome.VALID
    rows = _sql(
        store,
        "SELECT model, kind, ts_nanos, window_end_nanos, score, peak, inputs FROM events",
    )
    (model, kind, nanos, end_nanos, score, peak, inputs) = rows[0]
    assert (model, kind, nanos, end_nanos, score, peak) == ("pump-ae", "start", 789, 1, 3.25, 4.5)
    assert list(inputs) == ["pump/flow", "pump/pressure"] or inputs == (
        '["pump/flow", "pump/pressure"]'
    )
    assert [
        tuple(x) for x in _sql(store, "SELECT seq, first_seq, last_seq, points FROM notices")
    ] == [(9, 2, 8, 30)]
    rep = store.report()
    assert (rep.messages, rep.events, rep.notices, rep.gaps) == (2, 1, 1, 0)


def test_a_redelivery_is_a_no_op_and_a_conflict_is_refused(key: DeviceKey, store: Store) -> None:
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    m = msg(key, 1, [["plc/a", 1, 1.0, 0], ["plc/b", 1, 2.0, 0]])
    assert rx.handle(TOPIC, m) is Outcome.VALID
    assert rx.handle(TOPIC, m) is Outcome.DUPLICATE
    assert rx.handle(TOPIC, msg(key, 1, [["plc/a", 1, 9.0, 0]])) is Outcome.CONFLICT
    assert len(store.readings("gw1")) == 2
    rep = store.report()
    assert (rep.messages, rep.points, rep.alerts, rep.security_alerts) == (1, 2, 1, 1)


def test_a_restart_reloads_state_and_series(key: DeviceKey, store_url: str) -> None:
    s1 = open_store(store_url)
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=s1)
    assert rx.handle(TOPIC, msg(key, 1, [["plc/a", 1, 1.0, 0]])) is Outcome.VALID
    assert rx.handle(TOPIC, msg(key, 3, [["plc/a", 3, 3.0, 0]])) is Outcome.VALID
    s1.close()
    s2 = open_store(store_url)
    rx2 = Receiver({"gw1": key.public_key}, "edgegw", store=s2)
    assert rx2.stats.gaps == 1
    assert rx2.handle(TOPIC, msg(key, 3, [["plc/a", 3, 3.0, 0]])) is Outcome.DUPLICATE
    assert rx2.handle(TOPIC, msg(key, 2, [["plc/a", 2, 2.0, 0]])) is Outcome.VALID
    assert [r.value for r in s2.readings("gw1", "plc/a")] == [1.0, 2.0, 3.0]
    assert s2.report().gaps == 0
    s2.close()


def test_receivers_sharing_a_database_share_the_series(key: DeviceKey, pg_url: str) -> None:
    """A receiver finds the series another one made (read in bulk when it first locks the
    gateway, alone or in a group; looked up when made after that) and makes the ones
    nobody has: one series per tag, each reading under its own tag, whichever receiver
    stored it."""
    stores = [open_store(pg_url) for _ in range(2)]
    rxs = [Receiver({"gw1": key.public_key}, "edgegw", store=s) for s in stores]
    tags = {1: ["a", "b"], 2: ["a", "b"], 3: ["b", "c"], 4: ["c"], 5: ["a", "d"], 6: ["d"]}
    # (receiver, seqs stored in one transaction)
    for n, seqs in [(0, [1]), (1, [2, 3]), (0, [4, 5]), (1, [6])]:
        items = []
        for seq in seqs:
            groups = [[[f"plc/{t}", seq, float(seq * 10 + i), 0] for i, t in enumerate(tags[seq])]]
            items.append((TOPIC, msg(key, seq, [], groups=groups), None))
        assert rxs[n].handle_many(items) == [Outcome.VALID] * len(seqs)
    got = [(r.seq, r.tag, r.value) for r in stores[0].readings("gw1")]
    assert got == [
        (seq, f"plc/{t}", float(seq * 10 + i))
        for seq, names in tags.items()
        for i, t in enumerate(names)
    ]
    series = _sql(stores[0], "SELECT tag, count(*) FROM series GROUP BY tag ORDER BY tag")
    assert [tuple(r) for r in series] == [(f"plc/{t}", 1) for t in "abcd"]
    for s in stores:
        s.close()


def _sql(store: Store, sql: str) -> list[Any]:
    if isinstance(store, SqliteStore):
        return store.db.execute(sql).fetchall()
    return store._query(sql)  # type: ignore[attr-defined]


# -- migrations ------------------------------------------------------------------------------

# Schema 1 of the SQLite store, as the receiver of the platform-trust issue wrote it.
V1 = """
CREATE TABLE gateways (gw TEXT PRIMARY KEY, root_kid BLOB NOT NULL, state BLOB NOT NULL,
    version INTEGER NOT NULL, updated_ns INTEGER NOT NULL);
CREATE TABLE gateway_keys (kid BLOB PRIMARY KEY, gw TEXT NOT NULL, public_key BLOB NOT NULL,
    n INTEGER NOT NULL, certified_by BLOB, learned_ns INTEGER NOT NULL);
CREATE TABLE messages (gw TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL,
    boot INTEGER NOT NULL, kid BLOB NOT NULL, digest BLOB NOT NULL, t INTEGER NOT NULL,
    received_ns INTEGER NOT NULL, points INTEGER NOT NULL, PRIMARY KEY (gw, seq)) WITHOUT ROWID;
CREATE TABLE readings (gw TEXT, seq INTEGER, tag TEXT, ts INTEGER, value BLOB, quality INTEGER,
    reason TEXT, server_ts INTEGER);
CREATE TABLE events (gw TEXT NOT NULL, seq INTEGER NOT NULL, model TEXT NOT NULL,
    kind TEXT NOT NULL, ts_ns INTEGER NOT NULL, score REAL, peak REAL, window_end_ns INTEGER,
    inputs TEXT);
CREATE TABLE drops (gw TEXT NOT NULL, seq INTEGER NOT NULL, first_seq INTEGER,
    last_seq INTEGER, messages INTEGER, points INTEGER, bytes INTEGER, reason TEXT,
    at_ns INTEGER);
CREATE TABLE audit_entries (gw TEXT NOT NULL, log BLOB NOT NULL, offset INTEGER NOT NULL,
    entry BLOB NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (gw, log, offset)) WITHOUT ROWID;
CREATE TABLE alerts (id INTEGER PRIMARY KEY, gw TEXT, seq INTEGER, class TEXT NOT NULL,
    security INTEGER NOT NULL, detail TEXT NOT NULL, received_ns INTEGER NOT NULL);
PRAGMA user_version = 1;
"""


def test_sqlite_migrates_from_schema_1(key: DeviceKey, tmp_path: Path) -> None:
    """A store written by schema 1 (values in one column, 'NaN' and big uint64 as text)
    opens as schema 2 with every reading, event, notice and the state kept."""
    db = tmp_path / "v1.db"
    # Made by a schema-1 receiver: seqs 1 and 3 (so a gap at 2), state saved.
    rx = Receiver({"gw1": key.public_key}, "edgegw")
    rx.handle(TOPIC, msg(key, 1))
    rx.handle(TOPIC, msg(key, 3))
    state = rx.store.states()["gw1"].to_bytes()
    c = sqlite3.connect(db)
    c.executescript(V1)
    c.execute("INSERT INTO gateways VALUES ('gw1', ?, ?, 2, 0)", (key.kid, state))
    c.execute(
        "INSERT INTO gateway_keys VALUES (?, 'gw1', ?, 0, NULL, 0)",
        (key.kid, public_raw(key.public_key)),
    )
    for seq in (1, 3):
        c.execute(
            "INSERT INTO messages VALUES ('gw1', ?, 'telemetry', 1, ?, x'01', 5000, 7000, 3)",
            (seq, key.kid),
        )
    rows = [
        ("gw1", 1, "plc/f", 1_000_000_001_234, 1.25, 0, None, None),
        ("gw1", 1, "plc/nan", 1_000_000_001_234, "NaN", 0, None, None),
        ("gw1", 1, "plc/big", 1_000_000_001_234, str(U64_MAX), 0, None, 55_555),
        ("gw1", 3, "plc/f", 3_000_000_000_000, 7, 2, "oops", None),
        ("gw1", 3, "plc/s", 3_000_000_000_000, "hello", 0, None, None),
        ("gw1", 3, "plc/none", 3_000_000_000_000, None, 1, "timeout", None),
    ]
    c.executemany("INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    c.execute("INSERT INTO events VALUES ('gw1', 3, 'm', 'end', 4001, 1.0, 2.0, 5002, '[\"a\"]')")
    c.execute("INSERT INTO drops VALUES ('gw1', 3, 2, 2, 1, 10, 100, 'outbox_full', 9000)")
    c.commit()
    c.close()

    store = SqliteStore(db)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == 2
    got = [
        (r.seq, r.tag, r.ts_ns, r.value, r.quality, r.reason, r.server_ts_ns)
        for r in store.readings("gw1")
    ]
    assert got[0] == (1, "plc/f", 1_000_000_001_234, 1.25, 0, None, None)
    assert got[1][1] == "plc/nan" and math.isnan(got[1][3])
    assert got[2] == (1, "plc/big", 1_000_000_001_234, U64_MAX, 0, None, 55_555)
    assert got[3:] == [
        (3, "plc/f", 3_000_000_000_000, 7, 2, "oops", None),
        (3, "plc/s", 3_000_000_000_000, "hello", 0, None, None),
        (3, "plc/none", 3_000_000_000_000, None, 1, "timeout", None),
    ]
    assert store.db.execute("SELECT sealed, received FROM messages WHERE seq = 1").fetchone() == (
        5,
        7,
    )
    assert store.db.execute(
        "SELECT ts, ts_nanos, window_end, window_end_nanos FROM events"
    ).fetchone() == (4, 1, 5, 2)
    assert store.db.execute("SELECT seq, n, first_seq, points, at FROM notices").fetchone() == (
        3,
        0,
        2,
        10,
        9,
    )
    # the state came along: seq 2 is still a gap, seq 3 a duplicate (its digest is x'01':
    # another digest under it is a conflict), new data goes into the new tables
    rx2 = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    assert rx2.stats.gaps == 1
    assert rx2.handle(TOPIC, msg(key, 3)) is Outcome.CONFLICT
    assert rx2.handle(TOPIC, msg(key, 2, [["plc/f", 2, 2.5, 0]])) is Outcome.VALID
    assert [r.value for r in store.readings("gw1", "plc/f")] == [1.25, 2.5, 7]
    store.close()


def test_sqlite_migrates_from_the_first_format(key: DeviceKey, tmp_path: Path) -> None:
    db = tmp_path / "v0.db"
    c = sqlite3.connect(db)
    c.executescript(
        """
        CREATE TABLE messages (gw TEXT, seq INTEGER, boot INTEGER, kind TEXT, t INTEGER,
            kid TEXT, received_ns INTEGER, points INTEGER, PRIMARY KEY (gw, seq));
        CREATE TABLE readings (gw TEXT, seq INTEGER, tag TEXT, ts INTEGER, value BLOB,
            quality INTEGER, reason TEXT, server_ts INTEGER);
        INSERT INTO messages VALUES ('gw1', 1, 1, 'telemetry', 10, 'ab', 20, 1);
        INSERT INTO readings VALUES ('gw1', 1, 'plc/x', 1000, 4.5, 0, NULL, NULL);
        """
    )
    c.commit()
    c.close()
    store = SqliteStore(db)
    assert [(r.tag, r.value) for r in store.readings("gw1")] == [("plc/x", 4.5)]
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    assert rx.handle(TOPIC, msg(key, 1)) is Outcome.DUPLICATE  # stored before digests
    assert rx.handle(TOPIC, msg(key, 2)) is Outcome.VALID
    store.close()


def test_a_newer_schema_is_refused(store_url: str) -> None:
    s = open_store(store_url)
    if isinstance(s, SqliteStore):
        s.db.execute("PRAGMA user_version = 99")
    else:
        s._query("INSERT INTO edgegw_schema (version) VALUES (99) RETURNING version")  # type: ignore[attr-defined]
    s.close()
    with pytest.raises(StoreError, match="newer edgegw"):
        open_store(store_url)


def test_postgres_from_empty_and_again(pg_url: str) -> None:
    """The first start makes schema 2; later starts (several at once) change nothing."""
    import threading

    stores: list[Any] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            stores.append(open_store(pg_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(stores) == 4
    versions = stores[0]._query("SELECT version FROM edgegw_schema ORDER BY version")
    assert [v for (v,) in versions] == [2]
    tables = {
        t
        for (t,) in stores[0]._query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    assert {"messages", "readings", "series", "events", "notices", "alerts"} <= tables
    indexes = {i for (i,) in stores[0]._query("SELECT indexname FROM pg_indexes")}
    assert {"readings_series_ts", "series_device", "events_ts"} <= indexes
    for s in stores:
        s.close()


def test_postgres_down_is_a_store_error_then_it_reconnects(
    key: DeviceKey, pg_url: str, pg_server: Any
) -> None:
    """A lost connection: the message is not stored (STORE_ERROR, not acknowledged); the
    next message reconnects."""
    import psycopg

    store = open_store(pg_url)
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    assert rx.handle(TOPIC, msg(key, 1)) is Outcome.VALID
    # kill our backend, as a server restart would
    admin = pg_server.url
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'edgegw-receive' AND datname = %s",
            (pg_url.rsplit("/", 1)[1],),
        )
    assert rx.handle(TOPIC, msg(key, 2)) is Outcome.STORE_ERROR
    assert rx.handle(TOPIC, msg(key, 2)) is Outcome.VALID
    assert rx.received("gw1") == [(1, 2)]
    store.close()


def test_the_readme_grafana_queries_run(key: DeviceKey, pg_url: str) -> None:
    """The SQL of the README's "Platform" section, as written there, on a real store."""
    import re

    from tests.conftest import REPO

    store = open_store(pg_url)
    rx = Receiver({"gw-press-1": key.public_key}, "edgegw", store=store)
    t = "edgegw/gw-press-1/telemetry"
    for seq in (1, 2, 3):
        r = [
            ["press/pressure", seq * 10**9, float(seq), 0],
            ["press/temp", seq * 10**9, 20.0 + seq, 0],
            ["oven/temp", seq * 10**9, 99.0, 0],
        ]
        assert rx.handle(t, msg(key, seq, r, topic=t, gw="gw-press-1")) is Outcome.VALID
    readme = (REPO / "README.md").read_text()
    queries = re.findall(r"```sql\n(.*?)```", readme, re.S)
    assert len(queries) == 2
    one_tag = (
        queries[0].replace("$__timeFrom()", "'1970-01-01'").replace("$__timeTo()", "'2100-01-01'")
    )
    assert [r[1] for r in _sql(store, one_tag)] == [1.0, 2.0, 3.0]
    latest = _sql(store, queries[1])
    assert [(r[0], r[2]) for r in latest] == [("press/pressure", 3.0), ("press/temp", 23.0)]
    store.close()
