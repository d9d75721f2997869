"""Survivors of the mutation run over gateway/receiver/sqlite_store.py that mattered, each
on a real SQLite file: a transaction that fails leaves no state behind (the message is
stored when it comes again, never taken for a duplicate), two receivers sharing one file
see each other's messages (and use their cached state until the other changes it), a
file store is in WAL mode, the report counts what the file holds, a learned key of one
gateway on another's topic is a wrong gateway, times are kept to the nanosecond, and a
store without readings keeps none."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.receiver import Outcome, Receiver, SqliteStore, StoreError
from gateway.receiver.outcome import Alert, AlertClass
from gateway.receiver.sqlite_store import SCHEMA_VERSION
from gateway.wire import encode_payload
from security import DeviceKey, sign1
from security.cose import KEYCHAIN, encode_unprotected
from security.keyring import init_keys, open_identity, rotate
from tests.gateway.test_receiver import TOPIC, msg, notice


@pytest.fixture
def key(tmp_path: Path) -> DeviceKey:
    return DeviceKey.load_or_create(tmp_path / "gw")[0]


class FailingStore(SqliteStore):
    """A real SQLite store whose next ``fail`` commits fail after the messages were
    classified and written (a full disk at COMMIT, say): the rollback path of batch()."""

    fail = 0

    @contextlib.contextmanager
    def batch(self) -> Iterator:  # type: ignore[override]
        with super().batch() as b:
            yield b
            if self.fail:
                self.fail -= 1
                raise StoreError("disk full (injected)")


def test_a_failed_transaction_leaves_no_state_and_the_retry_is_stored(
    tmp_path: Path, key: DeviceKey
) -> None:
    store = FailingStore(tmp_path / "rx.db")
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    assert rx.handle(TOPIC, msg(key, 1)) is Outcome.VALID
    store.fail = 1
    m2 = msg(key, 2, [["plc/new", 5, 2.5, 0]])  # a new series too
    assert rx.handle(TOPIC, m2) is Outcome.STORE_ERROR
    assert rx.received("gw1") == [(1, 1)]
    # the broker delivers it again: stored now, not a duplicate of what was rolled back
    assert rx.handle(TOPIC, m2) is Outcome.VALID
    assert [(r.seq, r.tag, r.value) for r in store.readings("gw1", "plc/new")] == [
        (2, "plc/new", 2.5)
    ]
    assert rx.handle(TOPIC, m2) is Outcome.DUPLICATE
    store.close()
    again = SqliteStore(tmp_path / "rx.db")  # and what a restart reads back
    assert [r.seq for r in again.readings("gw1")] == [1, 2]
    assert again.states()["gw1"].seen.pairs() == [(1, 2)]
    again.close()


def test_two_receivers_sharing_a_file_see_each_others_messages(
    tmp_path: Path, key: DeviceKey
) -> None:
    """Each keeps a cached state per gateway; a commit by the other makes it stale."""
    stores = [SqliteStore(tmp_path / "rx.db") for _ in range(2)]
    a, b = (Receiver({"gw1": key.public_key}, "edgegw", store=s) for s in stores)
    for seq in range(1, 7):
        first, second = (a, b) if seq % 2 else (b, a)
        assert first.handle(TOPIC, msg(key, seq)) is Outcome.VALID
        assert second.handle(TOPIC, msg(key, seq)) is Outcome.DUPLICATE  # not stored twice
        conflict = msg(key, seq, [["plc/t", 1, -1.0, 0]])
        assert second.handle(TOPIC, conflict) is Outcome.CONFLICT
    assert [r.seq for r in stores[0].readings("gw1")] == [1, 2, 3, 4, 5, 6]
    assert a.received("gw1") == b.received("gw1") == [(1, 6)]
    for s in stores:
        s.close()


def test_a_file_store_is_in_wal_mode(tmp_path: Path) -> None:
    """Readers (``--report``, Grafana) do not block the receiver's writes."""
    SqliteStore(tmp_path / "rx.db").close()
    with contextlib.closing(sqlite3.connect(tmp_path / "rx.db")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2


def test_the_report_counts_what_the_file_holds(tmp_path: Path, key: DeviceKey) -> None:
    store = SqliteStore(tmp_path / "rx.db")
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    two = [["plc/a", 1, 1.0, 0], ["plc/b", 1, 2.0, 0]]
    assert rx.handle(TOPIC, msg(key, 1, two)) is Outcome.VALID
    assert rx.handle(TOPIC, msg(key, 4)) is Outcome.VALID
    assert rx.handle("edgegw/gw1/notice", notice(key, 5, 2, 2)) is Outcome.VALID
    assert rx.handle(TOPIC, msg(key, 1, [["plc/a", 1, 9.0, 0]])) is Outcome.CONFLICT
    with store.transaction(rx.trust["gw1"]) as t:  # news, not an attack
        t.alert(Alert(AlertClass.AUDIT_RESET, "gw1", 5, "the gateway reset its log"), 1)
    store.record_stats("rx-a", {"duplicates": 3})
    store.record_stats("rx-a", {"duplicates": 4})  # the latest counters replace the last
    store.record_stats("rx-b", {"duplicates": 1})
    r = store.report()
    assert (r.gateways, r.messages, r.points, r.events, r.notices) == (1, 3, 3, 0, 1)
    assert (r.alerts, r.security_alerts) == (2, 1)
    assert [a["class"] for a in store.alerts("gw1")] == ["conflict", "audit_reset"]
    assert store.alerts("gw2") == []
    assert r.receivers == {"rx-a": {"duplicates": 4}, "rx-b": {"duplicates": 1}}
    assert r.duplicates == 5
    assert (r.gaps, r.missing) == (1, {"gw1": [(3, 3)]})  # seq 2 was dropped, 3 is missing
    store.close()


def test_an_sqlite_error_in_a_transaction_is_a_store_error_and_nothing_is_kept(
    tmp_path: Path, key: DeviceKey
) -> None:
    """A store error is never acknowledged (the broker delivers the message again); any
    other error would be. So an error SQLite raises mid-transaction must be one."""
    store = SqliteStore(tmp_path / "rx.db")
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    assert rx.handle(TOPIC, msg(key, 1)) is Outcome.VALID
    with contextlib.closing(sqlite3.connect(tmp_path / "rx.db")) as other:
        other.execute(  # a real SQLite error inside the receiver's transaction
            "CREATE TRIGGER fail BEFORE INSERT ON readings BEGIN SELECT RAISE(ABORT, 'I/O'); END"
        )
        other.commit()
        assert rx.handle(TOPIC, msg(key, 2)) is Outcome.STORE_ERROR
        assert (rx.stats.store_errors, rx.stats.errors) == (1, 0)
        other.execute("DROP TRIGGER fail")
        other.commit()
    assert rx.received("gw1") == [(1, 1)]  # the failed message left nothing
    assert rx.handle(TOPIC, msg(key, 2)) is Outcome.VALID
    assert [r.seq for r in store.readings("gw1")] == [1, 2]
    store.close()


def test_the_audit_copy_stops_at_the_first_hole(tmp_path: Path, key: DeviceKey) -> None:
    """A copy with a gap spliced out would be a log the gateway never wrote."""
    store = SqliteStore(tmp_path / "rx.db")
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    log_id = b"L" * 16
    with store.transaction(rx.trust["gw1"]) as t:
        assert t.put_audit_entries(log_id, [(0, b"abc"), (3, b"de"), (9, b"late")], 1) == []
    assert store.audit_copy("gw1", log_id) == b"abcde"
    # an entry that starts inside the one before (the stored entries disagree): stop there
    with store.transaction(rx.trust["gw1"]) as t:
        t.put_audit_entries(b"N" * 16, [(0, b"abc"), (2, b"x"), (3, b"de")], 2)
    assert store.audit_copy("gw1", b"N" * 16) == b"abc"
    assert store.audit_copy("gw1", b"M" * 16) == b""
    assert store.audit_copy("gw2") == b""
    store.close()


def test_int64_values_stay_integers_in_sql_and_beyond_them_exact_text(
    tmp_path: Path, key: DeviceKey
) -> None:
    """``value_int`` is what SQL compares and sums: an integer wherever SQLite can hold it."""
    store = SqliteStore(tmp_path / "rx.db")
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    values = [-(2**63), 2**63 - 1, 2**63, 2**64 - 1]
    r = [[f"plc/{i}", 1, v, 0] for i, v in enumerate(values)]
    assert rx.handle(TOPIC, msg(key, 1, r)) is Outcome.VALID
    rows = store.db.execute(
        "SELECT typeof(value_int), value_int FROM readings ORDER BY rowid"
    ).fetchall()
    assert rows == [("integer", -(2**63)), ("integer", 2**63 - 1),
                    ("text", str(2**63)), ("text", str(2**64 - 1))]  # fmt: skip
    assert [x.value for x in store.readings("gw1")] == values
    store.close()


def test_a_gateway_enrolled_anew_by_another_receiver_of_the_file_is_refused(
    tmp_path: Path, key: DeviceKey
) -> None:
    """Two receivers share a file; one was started with another root key for gw1 (a
    re-enrolment) before the other stored anything: its messages must not be mixed in."""
    other = DeviceKey.load_or_create(tmp_path / "other")[0]
    stores = [SqliteStore(tmp_path / "rx.db") for _ in range(2)]
    old = Receiver({"gw1": key.public_key}, "edgegw", store=stores[0])
    new = Receiver({"gw1": other.public_key}, "edgegw", store=stores[1])
    assert old.handle(TOPIC, msg(key, 1)) is Outcome.VALID
    assert new.handle(TOPIC, msg(other, 2)) is Outcome.STORE_ERROR
    assert [r.seq for r in stores[0].readings("gw1")] == [1]
    assert stores[0].states()["gw1"].seen.pairs() == [(1, 1)]
    for s in stores:
        s.close()


def test_a_learned_key_of_one_gateway_on_anothers_topic_is_a_wrong_gateway(
    tmp_path: Path, key: DeviceKey
) -> None:
    """gw1 rotated its key; the receiver learned the new key from gw1's keychain. A
    message signed with it on gw2's topic is gw1 speaking for gw2 (found through the
    store's learned keys, not the enrolled roots): never gw2's data, nor a mere stranger."""
    state = tmp_path / "gw1"
    root, _ = init_keys(state)
    rotate(state)
    ident = open_identity(state, record=False)
    assert ident.key.kid != root.kid and ident.keychain
    chain = encode_unprotected({KEYCHAIN: ident.keychain})
    store = SqliteStore(tmp_path / "rx.db")
    rx = Receiver({"gw1": root.public_key, "gw2": key.public_key}, "edgegw", store=store)
    p = encode_payload(gw="gw1", seq=1, boot=1, kind="telemetry", t_ns=1, readings=[])
    assert rx.handle(TOPIC, sign1(p, ident.key, TOPIC.encode(), chain)) is Outcome.VALID
    assert rx.stats.keys_learned == 1
    t2 = "edgegw/gw2/telemetry"
    p2 = encode_payload(gw="gw2", seq=1, boot=1, kind="telemetry", t_ns=1, readings=[])
    assert rx.handle(t2, sign1(p2, ident.key, t2.encode())) is Outcome.WRONG_GATEWAY
    [a] = store.alerts()
    assert (a["gw"], a["class"], a["security"]) == ("gw2", "wrong_gateway", 1)
    assert f"signed by gw1's key {ident.key.kid.hex()}" in a["detail"]
    # a forgery with that kid but another key's signature is a bad signature, not news
    forged = bytearray(sign1(p2, ident.key, t2.encode()))
    forged[-1] ^= 1
    assert rx.handle(t2, bytes(forged)) is Outcome.BAD_SIGNATURE
    assert rx.received("gw2") == [] and len(store.alerts()) == 1
    store.close()


def test_a_notice_keeps_each_drops_fields_and_time_exactly(tmp_path: Path, key: DeviceKey) -> None:
    """``at`` is nanoseconds on the wire, microseconds in the table: exact, not rounded."""
    store = SqliteStore(tmp_path / "rx.db")
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    at = 1_733_475_600_123_456_789
    m = notice(key, 5, 2, 4, at=at, points=31, bytes=4096, reason="disk_full")
    assert rx.handle("edgegw/gw1/notice", m) is Outcome.VALID
    rows = store.db.execute("SELECT * FROM notices").fetchall()
    assert rows == [("gw1", 5, 0, 2, 4, 3, 31, 4096, "disk_full", at // 1000)]
    assert rows[0][-1] == 1_733_475_600_123_456
    store.close()


def test_audit_entries_not_inserted_still_report_every_rewrite(
    tmp_path: Path, key: DeviceKey
) -> None:
    """With ``insert=False`` an entry not stored is passed over, and the ones after it
    are still compared: a rewrite after a gap is reported, and nothing is inserted."""
    store = SqliteStore(tmp_path / "rx.db")
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    log_id = b"L" * 16
    with store.transaction(rx.trust["gw1"]) as t:
        t.put_audit_entries(log_id, [(0, b"abc"), (9, b"zz")], 1)
    with store.transaction(rx.trust["gw1"]) as t:
        got = t.put_audit_entries(log_id, [(0, b"abc"), (3, b"de"), (9, b"yy")], 2, insert=False)
        assert got == [(9, b"zz", b"yy")]
        assert list(t.audit_entries(log_id, 0)) == [(0, b"abc"), (9, b"zz")]
    store.close()


def test_a_store_without_readings_keeps_the_index_and_no_readings(
    tmp_path: Path, key: DeviceKey
) -> None:
    store = SqliteStore(tmp_path / "rx.db", readings=False)
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    two = [["plc/a", 1, 1.0, 0], ["plc/b", 1, 2.0, 0]]
    assert rx.handle(TOPIC, msg(key, 1, two)) is Outcome.VALID
    assert rx.handle(TOPIC, msg(key, 1, two)) is Outcome.DUPLICATE  # still classified
    assert store.db.execute("SELECT count(*) FROM readings").fetchone()[0] == 0
    assert store.db.execute("SELECT count(*) FROM series").fetchone()[0] == 0
    assert store.db.execute("SELECT seq, points FROM messages").fetchall() == [(1, 2)]
    assert store.readings("gw1") == []
    store.close()


def test_the_cached_state_is_used_until_another_receiver_changes_it(
    tmp_path: Path, key: DeviceKey
) -> None:
    """A receiver reads a gateway's state (a blob that grows with its history) from the
    file only when another receiver of the file has changed it since: not per message."""
    stores = [SqliteStore(tmp_path / "rx.db") for _ in range(2)]
    a, b = (Receiver({"gw1": key.public_key}, "edgegw", store=s) for s in stores)
    reads: list[str] = []
    stores[0].db.set_trace_callback(
        lambda sql: reads.append(sql) if sql.startswith("SELECT state FROM gateways") else None
    )
    assert a.handle(TOPIC, msg(key, 1)) is Outcome.VALID
    assert a.handle(TOPIC, msg(key, 2)) is Outcome.VALID
    assert a.handle(TOPIC, msg(key, 2)) is Outcome.DUPLICATE
    assert reads == []  # its own changes: known without reading them back
    assert b.handle(TOPIC, msg(key, 3)) is Outcome.VALID  # the other one changes it
    assert a.handle(TOPIC, msg(key, 3)) is Outcome.DUPLICATE  # seen: read again
    assert len(reads) == 1
    assert a.handle(TOPIC, msg(key, 4)) is Outcome.VALID
    assert len(reads) == 1
    assert b.handle(TOPIC, msg(key, 4)) is Outcome.DUPLICATE
    assert a.received("gw1") == b.received("gw1") == [(1, 4)]
    for s in stores:
        s.close()


# An event whose times end in nanoseconds (a store that keeps only µs would round them).
NS_EVENT = {
    "model": "m",
    "kind": "start",
    "ts_ns": 1_733_475_600_123_456_789,
    "score": 0.5,
    "peak": 0.75,
    "window_end_ns": 1_733_475_660_987_654_321,
    "inputs": ["plc/t"],
}


def test_message_and_event_times_are_kept_to_the_nanosecond(tmp_path: Path, key: DeviceKey) -> None:
    """Times are microseconds plus ``*_nanos`` in the tables: nothing lost or rescaled."""
    store = SqliteStore(tmp_path / "rx.db")
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    t = "edgegw/gw1/event"
    ev = NS_EVENT
    sealed = 1_733_475_661_000_001_999
    p = encode_payload(gw="gw1", seq=1, boot=1, kind="event", t_ns=sealed, event=ev)
    assert rx.handle(t, sign1(p, key, t.encode())) is Outcome.VALID
    hour = 3600 * 10**6  # the receive time is the wall clock's: near now, in microseconds
    [(kind, got_sealed, received)] = store.db.execute(
        "SELECT kind, sealed, received FROM messages"
    ).fetchall()
    assert (kind, got_sealed) == ("event", 1_733_475_661_000_001)
    assert abs(received - time.time_ns() // 1000) < hour
    rows = store.db.execute("SELECT * FROM events").fetchall()
    assert rows == [
        ("gw1", 1, "m", "start", 1_733_475_600_123_456, 789, 1_733_475_660_987_654, 321,
         0.5, 0.75, '["plc/t"]'),
    ]  # fmt: skip
    store.record_stats("rx-a", {"duplicates": 0})
    [(updated,)] = store.db.execute("SELECT updated FROM receivers").fetchall()
    assert abs(updated - time.time_ns() // 1000) < hour
    store.close()


def test_each_reading_is_stored_to_the_nanosecond_with_its_type(
    tmp_path: Path, key: DeviceKey
) -> None:
    """Source and server times exactly (microseconds plus ``*_nanos``), each value with
    its own type (a bool is not an integer), the reason and the server time kept."""
    store = SqliteStore(tmp_path / "rx.db")
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    ts, server = 1_733_475_600_123_456_789, 1_733_475_600_223_456_001
    r = [
        ["plc/f", ts, 2.5, 0, None, server],
        ["plc/b", ts + 1, True, 0],
        ["plc/i", ts + 2, 7, 2, "uncertain"],
        ["plc/s", ts + 3, "on", 0, "bad link", server + 998],
    ]
    assert rx.handle(TOPIC, msg(key, 1, r)) is Outcome.VALID
    rows = store.db.execute(
        "SELECT ts, ts_nanos, vtype, reason, server_ts, server_ts_nanos FROM readings_view"
        " ORDER BY rowid"
    ).fetchall()
    assert rows == [
        (1_733_475_600_123_456, 789, "f", None, 1_733_475_600_223_456, 1),
        (1_733_475_600_123_456, 790, "b", None, None, None),
        (1_733_475_600_123_456, 791, "i", "uncertain", None, None),
        (1_733_475_600_123_456, 792, "s", "bad link", 1_733_475_600_223_456, 999),
    ]
    got = [(x.tag, x.ts_ns, x.value, x.quality, x.reason, x.server_ts_ns)
           for x in store.readings("gw1")]  # fmt: skip
    assert got == [
        ("plc/f", ts, 2.5, 0, None, server),
        ("plc/b", ts + 1, True, 0, None, None),
        ("plc/i", ts + 2, 7, 2, "uncertain", None),
        ("plc/s", ts + 3, "on", 0, "bad link", server + 998),
    ]
    assert type(got[1][2]) is bool and type(got[2][2]) is int
    store.close()


def test_known_series_and_unchanged_states_cost_no_writes(tmp_path: Path, key: DeviceKey) -> None:
    """The per-message work stays small: a known tag's series id comes from the cache (no
    lookup), a message that changes nothing (a duplicate) does not rewrite the state,
    and commits are WAL-synchronous NORMAL (durable at checkpoints, no fsync each)."""
    store = SqliteStore(tmp_path / "rx.db")
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    two = [["plc/a", 1, 1.0, 0], ["plc/b", 1, 2.0, 0]]
    assert rx.handle(TOPIC, msg(key, 1, two)) is Outcome.VALID
    sql: list[str] = []
    store.db.set_trace_callback(sql.append)
    assert rx.handle(TOPIC, msg(key, 2, two)) is Outcome.VALID
    assert not [s for s in sql if "series" in s], sql
    version = "SELECT version FROM gateways WHERE gw = 'gw1'"
    (v,) = store.db.execute(version).fetchone()
    assert rx.handle(TOPIC, msg(key, 2, two)) is Outcome.DUPLICATE
    assert store.db.execute(version).fetchone() == (v,)
    assert [r.tag for r in store.readings("gw1")] == ["plc/a", "plc/b"] * 2
    store.close()


def test_the_next_schema_is_refused_and_a_new_file_is_made_silently(
    tmp_path: Path, key: DeviceKey, caplog: pytest.LogCaptureFixture
) -> None:
    """A file from the very next schema is refused untouched (never "migrated" down); a
    new file is made silently."""
    with caplog.at_level(logging.INFO, logger="edgegw.receiver"):
        SqliteStore(tmp_path / "rx.db").close()
    assert caplog.records == []
    with contextlib.closing(sqlite3.connect(tmp_path / "rx.db")) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer edgegw"):
        SqliteStore(tmp_path / "rx.db")
    with contextlib.closing(sqlite3.connect(tmp_path / "rx.db")) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
