"""Survivors of the session-6 mutation run over the receiver's stores, witness, MQTT shell
and sinks that mattered. Most are the PostgreSQL store's paths that only the SQLite store's
tests reached: the alert table and its per-gateway filter, the audit copy a verifier reads
(to the first hole), audit entries compared without being stored, keys learned from an
audit log or a keychain (kept across a restart, and found as another gateway's key), the
receivers' counters, and payload version 1 readings. Each runs on both stores (a real
SQLite file and Debian's PostgreSQL from the fixtures) and asks for the same answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.mosquitto import Mosquitto
from gateway.receiver import MqttReceiver, Outcome, Receiver, SqliteStore, Store, open_store
from gateway.receiver.outcome import Alert, AlertClass
from gateway.receiver.sinks import JsonLinesSink
from gateway.receiver.store import StoreError
from gateway.wire import encode_payload
from security import AUDIT_FILE, AuditLog, DeviceKey, sign1
from security.checkpoint import (
    ZERO_HASH,
    MerkleFrontier,
    checkpoint_hash,
    encode_record,
    genesis_head,
    leaf_hash,
    sign_checkpoint,
)
from security.cose import KEYCHAIN, encode_unprotected
from security.keyring import init_keys, open_identity, rotate
from tests.gateway.auditmsgs import audit_messages, log_id_of
from tests.gateway.test_platform_store import TS, VALUES, same
from tests.gateway.test_receiver import TOPIC, msg, notice
from tests.gateway.test_receiver_mqtt import publish_all, wait
from tests.gateway.test_sqlite_store_mutants import NS_EVENT
from tests.gateway.test_witness import write_log
from tests.mqttscript import ScriptedBroker

AUDIT = "edgegw/gw1/audit"
T_US = 1_733_475_600_123_456  # a receive time, whole microseconds (what the stores keep)


@pytest.fixture
def key(tmp_path: Path) -> DeviceKey:
    return DeviceKey.load_or_create(tmp_path / "key")[0]


def test_alerts_report_and_receiver_counters(key: DeviceKey, store: Store, tmp_path: Path) -> None:
    """Every alert's columns (the receive time to the µs), in the order raised, filtered
    by gateway; the report's totals; each receiver's latest counters."""
    other = DeviceKey.load_or_create(tmp_path / "gw2")[0]
    rx = Receiver({"gw1": key.public_key, "gw2": other.public_key}, "edgegw", store=store)
    two = [["plc/a", 1, 1.0, 0], ["plc/b", 1, 2.0, 0]]
    assert rx.handle(TOPIC, msg(key, 1, two)) is Outcome.VALID
    assert rx.handle(TOPIC, msg(key, 4)) is Outcome.VALID
    assert rx.handle("edgegw/gw1/notice", notice(key, 5, 2, 2)) is Outcome.VALID
    bad = msg(key, 1, [["plc/a", 1, 9.0, 0]])
    assert rx.handle(TOPIC, bad, T_US * 1000) is Outcome.CONFLICT
    t2 = "edgegw/gw2/telemetry"
    p2 = encode_payload(gw="gw1", seq=7, boot=1, kind="telemetry", t_ns=1, readings=[])
    assert rx.handle(t2, sign1(p2, other, t2.encode()), (T_US + 5) * 1000) is Outcome.TOPIC_MISMATCH
    with store.transaction(rx.trust["gw1"]) as t:  # news, not an attack
        t.alert(Alert(AlertClass.AUDIT_RESET, "gw1", None, "the gateway reset its log"), 1000)
    store.record_stats("rx-a", {"duplicates": 3})
    store.record_stats("rx-a", {"duplicates": 4})  # the latest counters replace the last
    store.record_stats("rx-b", {"duplicates": 1})
    everything = store.alerts()
    assert everything == [
        {
            "gw": "gw1",
            "seq": 1,
            "class": "conflict",
            "security": 1,
            "detail": "two different messages with seq 1",
            "received_ns": T_US * 1000,
        },
        {
            "gw": "gw2",
            "seq": 7,
            "class": "topic_mismatch",
            "security": 1,
            "detail": "payload says gw1/telemetry, the topic gw2/telemetry",
            "received_ns": (T_US + 5) * 1000,
        },
        {
            "gw": "gw1",
            "seq": None,
            "class": "audit_reset",
            "security": 0,
            "detail": "the gateway reset its log",
            "received_ns": 1000,
        },
    ]
    assert store.alerts("gw1") == [everything[0], everything[2]]
    assert store.alerts("gw2") == [everything[1]]
    assert store.alerts("gw3") == []
    r = store.report()
    assert (r.gateways, r.messages, r.points, r.events, r.notices) == (2, 3, 3, 0, 1)
    assert (r.alerts, r.security_alerts) == (3, 2)
    assert r.receivers == {"rx-a": {"duplicates": 4}, "rx-b": {"duplicates": 1}}
    assert r.duplicates == 5
    assert (r.gaps, r.missing) == (1, {"gw1": [(3, 3)]})


def test_the_audit_copy_and_entries_compared_without_storing(key: DeviceKey, store: Store) -> None:
    """The copy a verifier reads runs from byte 0 to the first hole (a copy with a gap
    spliced out is a log the gateway never wrote); entries compared without ``insert``
    are passed over where none is stored, the later ones still compared, none stored."""
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    assert store.audit_copy("gw1") == b""  # no such gateway yet
    assert rx.handle(TOPIC, msg(key, 1)) is Outcome.VALID
    assert store.audit_copy("gw1") == b""  # a gateway with no audit log
    log_id = b"L" * 16
    with store.transaction(rx.trust["gw1"]) as t:
        assert t.put_audit_entries(log_id, [(0, b"abc"), (3, b"de"), (9, b"late")], 1) == []
    assert store.audit_copy("gw1", log_id) == b"abcde"
    with store.transaction(rx.trust["gw1"]) as t:
        t.put_audit_entries(b"N" * 16, [(0, b"abc"), (2, b"x"), (3, b"de")], 2)
    assert store.audit_copy("gw1", b"N" * 16) == b"abc"
    assert store.audit_copy("gw1", b"M" * 16) == b""
    with store.transaction(rx.trust["gw1"]) as t:
        got = t.put_audit_entries(log_id, [(0, b"abc"), (5, b"new"), (9, b"LATE")], 3, insert=False)
        assert got == [(9, b"late", b"LATE")]
        assert list(t.audit_entries(log_id, 0)) == [(0, b"abc"), (3, b"de"), (9, b"late")]
        assert list(t.audit_entries(log_id, 4)) == [(9, b"late")]
        assert list(t.audit_entries(b"N" * 16, 1)) == [(2, b"x"), (3, b"de")]
        # the same entries again (a redelivered message): nothing differs
        assert t.put_audit_entries(log_id, [(0, b"abc"), (3, b"de")], 4) == []
        assert t.put_audit_entries(log_id, [(3, b"dX")], 4) == [(3, b"de", b"dX")]
    assert store.audit_copy("gw1", log_id) == b"abcde"  # neither the new nor the rewrite


@pytest.fixture
def gw(tmp_path: Path) -> tuple[Path, DeviceKey]:
    state = tmp_path / "gw"
    k, _ = init_keys(state)
    return state, k


def test_the_witness_on_either_store(gw: tuple[Path, DeviceKey], store: Store) -> None:
    """A whole log in any order is witnessed byte for byte; a rollback that reuses seqs
    is a conflict whose entries are compared, not stored; a new log with its reset
    notice is news, and becomes the one the copy follows."""
    state, k = gw
    data = write_log(state, k, 11)
    msgs = audit_messages(data, k, per_message=2)
    random.Random(7).shuffle(msgs)
    rx = Receiver({"gw1": k.public_key}, "edgegw", store=store)
    for m in msgs:
        assert rx.handle(AUDIT, m.body) is Outcome.VALID
    assert store.alerts() == []
    assert store.audit_copy("gw1") == store.audit_copy("gw1", log_id_of(data)) == data
    w = store.states()["gw1"].logs[log_id_of(data)]
    assert (w.size, w.next_offset) == (11, len(data))
    seqs = sorted(m.seq for m in msgs)
    more = write_log(state, k, 2, boot=2)
    nxt = audit_messages(more, k, offset=len(data), first_seq=seqs[-1] + 1)
    assert rx.handle(AUDIT, nxt[0].body) is Outcome.VALID
    copy = store.audit_copy("gw1")
    assert copy.startswith(data) and len(copy) > len(data)
    (state / AUDIT_FILE).write_bytes(data)  # rolled back, with the outbox (seqs reused)
    rolled = write_log(state, k, 1, boot=2)
    again = audit_messages(rolled, k, offset=len(data), first_seq=nxt[0].seq)
    assert rx.handle(AUDIT, again[0].body) is Outcome.CONFLICT
    assert [a["class"] for a in store.alerts()] == ["conflict", "audit_rewritten"]
    assert store.audit_copy("gw1") == copy  # the rolled-back entries were not stored
    (state / AUDIT_FILE).unlink()
    second = write_log(state, k, 2, boot=3)
    announced = audit_messages(
        second, k, first_seq=100, reset={"old_log": log_id_of(data), "reason": "damaged"}
    )
    for m in announced:
        assert rx.handle(AUDIT, m.body) is Outcome.VALID
    assert [(a["class"], a["security"]) for a in store.alerts()][2:] == [("audit_reset", 0)]
    assert store.audit_copy("gw1") == second
    assert store.audit_copy("gw1", log_id_of(data)) == copy


def test_a_key_learned_from_the_audit_log_is_kept_and_owned(
    gw: tuple[Path, DeviceKey], store_url: str, key: DeviceKey
) -> None:
    """key_rotated records carry the new key's certificate: learned from a verified audit
    message, stored, trusted again after a restart (another store object, as another
    receiver sharing the database would see it), and a message signed with it on another
    gateway's topic is a wrong gateway: found through the store's learned keys."""
    state, old = gw
    log = AuditLog(state / AUDIT_FILE, old, boot=1)
    rot = rotate(state, audit=log)
    log.close()
    data = (state / AUDIT_FILE).read_bytes()
    trust = {"gw1": old.public_key, "gw2": key.public_key}
    store = open_store(store_url)
    rx = Receiver(trust, "edgegw", store=store)
    for m in audit_messages(data, old, per_message=10):
        assert rx.handle(AUDIT, m.body) is Outcome.VALID
    assert store.alerts() == [] and rx.stats.keys_learned == 1
    store.close()
    assert learned_keys(store_url) == [
        (old.kid, "gw1", 0, None),
        (rot.key.kid, "gw1", 1, old.kid),
    ]
    store = open_store(store_url)
    rx = Receiver(trust, "edgegw", store=store)
    p = encode_payload(gw="gw1", seq=30, boot=2, kind="telemetry", t_ns=1, readings=[])
    assert rx.handle(TOPIC, sign1(p, rot.key, TOPIC.encode())) is Outcome.VALID
    t2 = "edgegw/gw2/telemetry"
    p2 = encode_payload(gw="gw2", seq=1, boot=1, kind="telemetry", t_ns=1, readings=[])
    assert rx.handle(t2, sign1(p2, rot.key, t2.encode())) is Outcome.WRONG_GATEWAY
    [a] = store.alerts()
    assert (a["gw"], a["class"], a["security"]) == ("gw2", "wrong_gateway", 1)
    assert a["detail"] == f"message on gw2's topic signed by gw1's key {rot.key.kid.hex()}"
    stranger = DeviceKey.load_or_create(state.parent / "stranger")[0]
    assert rx.handle(t2, sign1(p2, stranger, t2.encode())) is Outcome.UNKNOWN_KID
    assert rx.received("gw2") == [] and len(store.alerts()) == 1
    store.close()


def test_a_key_learned_from_a_keychain_is_kept_and_owned(
    tmp_path: Path, store_url: str, key: DeviceKey
) -> None:
    state = tmp_path / "gw1"
    root, _ = init_keys(state)
    rotate(state)
    ident = open_identity(state, record=False)
    chain = encode_unprotected({KEYCHAIN: ident.keychain})
    trust = {"gw1": root.public_key, "gw2": key.public_key}
    store = open_store(store_url)
    rx = Receiver(trust, "edgegw", store=store)
    p = encode_payload(gw="gw1", seq=1, boot=1, kind="telemetry", t_ns=1, readings=[])
    assert rx.handle(TOPIC, sign1(p, ident.key, TOPIC.encode(), chain)) is Outcome.VALID
    assert rx.stats.keys_learned == 1
    store.close()
    assert learned_keys(store_url) == [
        (root.kid, "gw1", 0, None),
        (ident.key.kid, "gw1", 1, root.kid),
    ]
    store = open_store(store_url)
    rx = Receiver(trust, "edgegw", store=store)
    p = encode_payload(gw="gw1", seq=2, boot=1, kind="telemetry", t_ns=1, readings=[])
    assert rx.handle(TOPIC, sign1(p, ident.key, TOPIC.encode())) is Outcome.VALID  # no chain
    t2 = "edgegw/gw2/telemetry"
    p2 = encode_payload(gw="gw2", seq=1, boot=1, kind="telemetry", t_ns=1, readings=[])
    assert rx.handle(t2, sign1(p2, ident.key, t2.encode())) is Outcome.WRONG_GATEWAY
    [a] = store.alerts()
    assert a["detail"] == f"message on gw2's topic signed by gw1's key {ident.key.kid.hex()}"
    assert rx.received("gw1") == [(1, 2)] and rx.received("gw2") == []
    store.close()


def test_payload_version_1_readings_round_trip(
    key: DeviceKey, store: Store, store_url: str
) -> None:
    """Readings one by one (payload version 1: older gateways) keep every value type,
    each with its own tag, seq and time."""
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    sent: list[tuple[int, list[Any]]] = []
    for seq in (1, 2):
        readings = [[f"plc/tag{i % 7}", TS[(i + seq) % len(TS)], *v] for i, v in enumerate(VALUES)]
        p = encode_payload(
            gw="gw1", seq=seq, boot=1, kind="telemetry", t_ns=1, readings=readings, version=1
        )
        assert rx.handle(TOPIC, sign1(p, key, TOPIC.encode())) is Outcome.VALID
        sent += [(seq, r) for r in readings]
    got = store.readings("gw1")
    assert len(got) == len(sent)
    for (seq, r), g in zip(sent, got, strict=True):
        assert (g.seq, g.tag, g.ts_ns, g.quality) == (seq, r[0], r[1], r[3]), (r, g)
        assert same(g.value, r[2]), (r, g)
        want = r[4] if len(r) > 4 else None
        if want is not None and "postgresql" in store_url:  # text cannot hold NUL
            want = want.replace("\x00", "\ufffd")
        assert g.reason == want and g.server_ts_ns == (r[5] if len(r) > 5 else None), (r, g)
    assert [(g.seq, g.tag) for g in store.readings("gw1", "plc/tag3")] == [
        (s, r[0]) for s, r in sent if r[0] == "plc/tag3"
    ]


def test_the_json_lines_say_exactly_what_was_received(tmp_path: Path, key: DeviceKey) -> None:
    """Every field of every line, as a consumer reading the file while the receiver runs
    sees it (each message's lines are flushed once it is stored): JSON's missing NaN,
    infinities and bytes spelt out with the type kept in ``vtype``, text as UTF-8."""
    path = tmp_path / "out.jsonl"
    with path.open("w", encoding="utf-8") as out:
        rx = Receiver({"gw1": key.public_key}, "edgegw", JsonLinesSink(out))
        ts = 1_700_000_000_123_456_789
        r = [
            ["plc/nan", ts, math.nan, 4, "sensor says NaN"],
            ["plc/inf", ts + 1, math.inf, 0],
            ["plc/-inf", ts + 2, -math.inf, 0],
            ["plc/f", ts + 3, -0.5, 0, None, ts + 9],
            ["plc/text", ts + 4, "Grüße ✓", 0],
            ["plc/big", ts + 5, 2**64 - 1, 2],
            ["plc/bool", ts + 6, True, 0],
            ["plc/raw", ts + 7, b"\x01\xff", 0],
            ["plc/none", ts + 8, None, 1, "timeout", ts + 10],
        ]
        assert rx.handle(TOPIC, msg(key, 3, r)) is Outcome.VALID
        lines = path.read_text(encoding="utf-8").splitlines()  # before any close
        assert lines[4] == (
            '{"type": "reading", "gw": "gw1", "seq": 3, "tag": "plc/text", '
            f'"ts": {ts + 4}, "vtype": "s", "value": "Grüße ✓", "quality": 0}}'
        )
        got = [json.loads(x) for x in lines]
        base = {"type": "reading", "gw": "gw1", "seq": 3}
        assert got == [
            {**base, "tag": "plc/nan", "ts": ts, "vtype": "f", "value": "NaN", "quality": 4,
             "reason": "sensor says NaN"},
            {**base, "tag": "plc/inf", "ts": ts + 1, "vtype": "f", "value": "Infinity",
             "quality": 0},
            {**base, "tag": "plc/-inf", "ts": ts + 2, "vtype": "f", "value": "-Infinity",
             "quality": 0},
            {**base, "tag": "plc/f", "ts": ts + 3, "vtype": "f", "value": -0.5, "quality": 0,
             "server_ts": ts + 9},
            {**base, "tag": "plc/text", "ts": ts + 4, "vtype": "s", "value": "Grüße ✓",
             "quality": 0},
            {**base, "tag": "plc/big", "ts": ts + 5, "vtype": "i", "value": 2**64 - 1,
             "quality": 2},
            {**base, "tag": "plc/bool", "ts": ts + 6, "vtype": "b", "value": True, "quality": 0},
            {**base, "tag": "plc/raw", "ts": ts + 7, "vtype": "x", "value": "01ff", "quality": 0},
            {**base, "tag": "plc/none", "ts": ts + 8, "vtype": "n", "value": None, "quality": 1,
             "reason": "timeout", "server_ts": ts + 10},
        ]  # fmt: skip
        event = {
            "model": "Ofen ✓",
            "kind": "start",
            "ts_ns": 5,
            "score": math.inf,
            "peak": 2.0,
            "window_end_ns": 6,
            "inputs": ["plc/nan"],
        }
        t_ev = "edgegw/gw1/event"
        assert rx.handle(t_ev, msg(key, 4, kind="event", topic=t_ev, event=event)) is Outcome.VALID
        [line] = path.read_text(encoding="utf-8").splitlines()[len(lines) :]
        assert line == (
            '{"type": "event", "gw": "gw1", "seq": 4, "inputs": ["plc/nan"], "kind": "start", '
            '"model": "Ofen ✓", "peak": 2.0, "score": "Infinity", "ts_ns": 5, "window_end_ns": 6}'
        )
        # blocks of 4 and 5 elements a reading (no reason, no server time), and version 1
        for seq, rs, version in (
            (5, [["plc/a", ts, 1.0, 0]], 2),
            (6, [["plc/b", ts, None, 1, "timeout"]], 2),
            (7, [["plc/c", ts, 2, 0], ["plc/d", ts, None, 1, "gone"]], 1),
        ):
            p = encode_payload(
                gw="gw1", seq=seq, boot=1, kind="telemetry", t_ns=1, readings=rs, version=version
            )
            assert rx.handle(TOPIC, sign1(p, key, TOPIC.encode())) is Outcome.VALID
        base = {"type": "reading", "gw": "gw1", "ts": ts}
        assert [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()[-4:]] == [
            {**base, "seq": 5, "tag": "plc/a", "vtype": "f", "value": 1.0, "quality": 0},
            {**base, "seq": 6, "tag": "plc/b", "vtype": "n", "value": None, "quality": 1,
             "reason": "timeout"},
            {**base, "seq": 7, "tag": "plc/c", "vtype": "i", "value": 2, "quality": 0},
            {**base, "seq": 7, "tag": "plc/d", "vtype": "n", "value": None, "quality": 1,
             "reason": "gone"},
        ]  # fmt: skip
        at = 1_733_475_600_123_456_789
        m = notice(key, 10, 3, 9, at=at, bytes=4096, reason="disk_full")
        assert rx.handle("edgegw/gw1/notice", m) is Outcome.VALID
        assert json.loads(path.read_text(encoding="utf-8").splitlines()[-1]) == {
            "type": "notice",
            "gw": "gw1",
            "seq": 10,
            "notice": "data_dropped",
            "first_seq": 3,
            "last_seq": 9,
            "messages": 7,
            "points": 30,
            "bytes": 4096,
            "reason": "disk_full",
            "at": at,
        }


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(record.getMessage())


def test_groups_over_several_gateways_and_two_receivers(tmp_path: Path, store_url: str) -> None:
    """Group commits (the MQTT shell's batches) lock every gateway of the group at once:
    new gateways are made at first use, states this receiver committed are used as they
    are, and states (with keys learned) another receiver of the database changed since
    are read again. Each message lands in its own gateway, in the order given."""
    keys = {gw: DeviceKey.load_or_create(tmp_path / gw)[0] for gw in ("gw1", "gw2", "gw3")}
    state = tmp_path / "gw1-state"
    root, _ = init_keys(state)
    rotate(state)
    ident = open_identity(state, record=False)
    keys["gw1"] = root
    trust = {gw: k.public_key for gw, k in keys.items()}
    stores = [open_store(store_url) for _ in range(2)]
    a, b = (Receiver(trust, "edgegw", store=s) for s in stores)
    warnings = _Warnings()  # a group that had to go one by one says so
    logging.getLogger("edgegw.receiver").addHandler(warnings)

    def m(gw: str, seq: int, value: float, k: DeviceKey | None = None, chain: bool = False) -> Any:
        topic = f"edgegw/{gw}/telemetry"
        p = encode_payload(
            gw=gw, seq=seq, boot=1, kind="telemetry", t_ns=1,
            readings=[[f"plc/{gw}", seq, value, 0]],
        )  # fmt: skip
        if chain:
            extra = encode_unprotected({KEYCHAIN: ident.keychain})
            return (topic, sign1(p, k or keys[gw], topic.encode(), extra), None)
        return (topic, sign1(p, k or keys[gw], topic.encode()), None)

    assert (
        a.handle_many([m("gw2", 1, 2.1), m("gw1", 1, 1.1), m("gw2", 2, 2.2)]) == [Outcome.VALID] * 3
    )
    assert a.handle_many([m("gw1", 2, 1.2), m("gw2", 2, 9.9), m("gw2", 3, 2.3)]) == [
        Outcome.VALID,
        Outcome.CONFLICT,
        Outcome.VALID,
    ]
    # the other receiver: gw1's rotated key (learned from its keychain), and gw2's seq 4
    assert b.handle(TOPIC, m("gw1", 3, 1.3, ident.key, chain=True)[1]) is Outcome.VALID
    assert b.handle_many([m("gw2", 4, 2.4), m("gw3", 1, 3.1)]) == [Outcome.VALID] * 2
    # a's copies of gw1 and gw2 are stale now: read again, with the key b learned
    got = a.handle_many(
        [
            m("gw3", 1, 3.1),
            m("gw1", 4, 1.4, ident.key),
            m("gw2", 4, 2.4),
            m("gw1", 3, 1.3, ident.key),
        ]
    )
    assert got == [Outcome.DUPLICATE, Outcome.VALID, Outcome.DUPLICATE, Outcome.DUPLICATE]
    assert a.handle_many([m("gw2", 5, 2.5), m("gw1", 5, 1.5, ident.key)]) == [Outcome.VALID] * 2
    for s in stores:
        for gw, n in (("gw1", 5), ("gw2", 5), ("gw3", 1)):
            assert [(r.seq, r.tag, r.ts_ns) for r in s.readings(gw)] == [
                (seq, f"plc/{gw}", seq) for seq in range(1, n + 1)
            ]
            assert s.states()[gw].seen.pairs() == [(1, n)]
        assert [r.value for r in s.readings("gw2")] == [2.1, 2.2, 2.3, 2.4, 2.5]
        assert [(x["gw"], x["seq"], x["class"]) for x in s.alerts()] == [("gw2", 2, "conflict")]
    assert (a.stats.messages_verified, a.stats.duplicates, a.stats.conflicts) == (8, 3, 1)
    assert (b.stats.messages_verified, b.stats.keys_learned) == (3, 1)
    logging.getLogger("edgegw.receiver").removeHandler(warnings)
    assert [w for w in warnings.seen if "rolled back" in w] == []  # each group committed as one
    for s in stores:
        s.close()


LOG = b"W" * 16


def crafted_log(k: DeviceKey, records: int) -> tuple[list[bytes], dict[str, Any]]:
    """An audit log written here from the format (records, then checkpoints at 0 and at
    the end), and what each of its checkpoints must state."""
    frontier, head = MerkleFrontier(), genesis_head(LOG)
    cp0 = sign_checkpoint(
        k, log_id=LOG, size=0, root=frontier.root(), head=head, prev=ZERO_HASH, boot=1,
        ts_ns=1, why="open",
    ).encoded  # fmt: skip
    entries = [cp0]
    for i in range(records):
        r = encode_record(
            seq=i, boot=1, ts_ns=2 + i, mono_ns=None, event="link_up", detail={"n": i}, prev=head
        )
        head = leaf_hash(r)
        frontier.append(head)
        entries.append(r)
    state = {"log_id": LOG, "size": records, "root": frontier.root(), "head": head,
             "prev": checkpoint_hash(cp0), "boot": 1, "ts_ns": 99, "why": "count"}  # fmt: skip
    return entries, state


def audit_body(k: DeviceKey, seq: int, entries: list[bytes], offset: int = 0, **kw: Any) -> bytes:
    base = kw.pop("base", [0, genesis_head(LOG), ZERO_HASH, []])
    p = encode_payload(
        gw="gw1", seq=seq, boot=1, kind="audit", t_ns=1, log=LOG, offset=offset, base=base,
        entries=entries, **kw,
    )  # fmt: skip
    return sign1(p, k, AUDIT.encode())


def witnessed(k: DeviceKey, *bodies: bytes) -> tuple[Receiver, list[str]]:
    rx = Receiver({"gw1": k.public_key}, "edgegw", store=SqliteStore())
    for b in bodies:
        assert rx.handle(AUDIT, b) is Outcome.VALID
    return rx, [a["class"] for a in rx.store.alerts()]


@pytest.mark.parametrize(
    ("change", "want"),
    [
        ({}, []),
        ({"log_id": b"X" * 16}, ["audit_inconsistent"]),
        ({"size": 2}, ["audit_inconsistent"]),
        ({"head": b"h" * 32}, ["audit_inconsistent"]),
        ({"prev": b"p" * 32}, ["audit_inconsistent"]),
        ({"root": b"r" * 32}, ["audit_inconsistent"]),
    ],
)
def test_every_false_statement_of_a_checkpoint_is_alerted(
    key: DeviceKey, change: dict[str, Any], want: list[str]
) -> None:
    """A checkpoint signed by the gateway's key that states another log, size, root, head
    or previous checkpoint than the records it follows (a daemon made to lie) is an alert
    naming what is wrong; the message is stored, and no key was learned."""
    entries, state = crafted_log(key, 3)
    cp = sign_checkpoint(key, **{**state, **change}).encoded
    rx, found = witnessed(key, audit_body(key, 1, [*entries, cp]))
    assert found == want
    assert rx.stats.keys_learned == 0 and rx.received("gw1") == [(1, 1)]
    if want:
        [a] = rx.store.alerts()
        wrong = {"log_id": "belongs to log 5858", "size": "states 2 records, the witness counted 3",
                 "head": "its head is not the last record", "root": "Merkle root",
                 "prev": "it does not chain to the previous checkpoint"}  # fmt: skip
        assert wrong[next(iter(change))] in a["detail"], a["detail"]


def test_bad_entries_and_a_shrinking_checkpoint_learn_no_key(
    key: DeviceKey, tmp_path: Path
) -> None:
    """Each problem the witness finds is one alert of its class, and none counts as a key
    learned: an entry that is not a record, a checkpoint by a stranger's key, one whose
    signature fails, and one that states fewer records than an earlier one."""
    entries, state = crafted_log(key, 3)
    good = sign_checkpoint(key, **state).encoded
    stranger = DeviceKey.load_or_create(tmp_path / "stranger")[0]
    cases: list[tuple[list[bytes], list[str]]] = [
        ([*entries[:2], b"\x01\x02\x03"], ["audit_inconsistent"]),
        ([*entries, good[:-1] + bytes([good[-1] ^ 1])], ["audit_bad_checkpoint"]),
        ([*entries, sign_checkpoint(stranger, **state).encoded], ["audit_bad_checkpoint"]),
        ([*entries, good, sign_checkpoint(key, **{**state, "size": 2}).encoded],
         ["audit_shrank"]),
    ]  # fmt: skip
    for es, want in cases:
        rx, found = witnessed(key, audit_body(key, 1, es))
        assert found == want, es
        assert rx.stats.keys_learned == 0


def test_a_message_that_states_another_log_state_is_alerted(key: DeviceKey) -> None:
    """The base a message states where the witness's walk has arrived must be the state
    the witness computed; another one is an alert, and the message is still stored."""
    entries, _ = crafted_log(key, 3)
    first = audit_body(key, 1, entries[:2])
    at = len(entries[0]) + len(entries[1])
    lie = audit_body(key, 2, entries[2:], offset=at, base=[7, b"h" * 32, ZERO_HASH, []])
    rx, found = witnessed(key, first, lie)
    assert found == ["audit_inconsistent"]
    assert "another log state at byte" in rx.store.alerts()[0]["detail"]
    assert rx.received("gw1") == [(1, 2)]


def test_a_refused_audit_message_is_compared_and_never_stored(key: DeviceKey) -> None:
    """A conflict (a seq reused after a rollback) stores none of its entries, not even
    those at offsets the witness has no entry for; its entries are compared at their own
    offsets (a message can start anywhere), and a checkpoint stating fewer records than
    the witness saw is called a shrink."""
    entries, state = crafted_log(key, 3)
    cp = sign_checkpoint(key, **state).encoded
    stored = [*entries, cp]
    rx, _ = witnessed(key, audit_body(key, 1, stored))
    with rx.store.transaction(rx.trust["gw1"]) as t:
        before = list(t.audit_entries(LOG, 0))
    at = len(entries[0])
    other = encode_record(
        seq=1, boot=1, ts_ns=3, mono_ns=None, event="link_up", detail={"n": 9}, prev=b"p" * 32
    )
    tail = [b"\x05" * 40, b"\x06" * 50]  # beyond what is stored
    refused = audit_body(key, 1, [entries[1], other, *stored[3:], *tail], offset=at)
    assert rx.handle(AUDIT, refused) is Outcome.CONFLICT
    assert [a["class"] for a in rx.store.alerts()] == ["conflict", "audit_rewritten"]
    assert f"at byte {at + len(entries[1])}:" in rx.store.alerts()[1]["detail"]
    fewer = sign_checkpoint(key, **{**state, "size": 2, "ts_ns": 100}).encoded
    cp_at = sum(len(e) for e in entries)
    assert rx.handle(AUDIT, audit_body(key, 1, [fewer], offset=cp_at)) is Outcome.CONFLICT
    assert [a["class"] for a in rx.store.alerts()][2:] == ["conflict", "audit_shrank"]
    with rx.store.transaction(rx.trust["gw1"]) as t:
        assert list(t.audit_entries(LOG, 0)) == before
    assert rx.store.audit_copy("gw1") == b"".join(stored)


def test_a_group_with_a_re_enrolled_gateway_stores_only_the_others(
    tmp_path: Path, store_url: str, key: DeviceKey
) -> None:
    """A receiver started with another root key for gw1 (a re-enrolment) before gw1 had
    data: in a group its gw1 messages are refused as a store error (never mixed into the
    old identity's data, nor taken for an unknown key), the other gateways' are stored."""
    other = DeviceKey.load_or_create(tmp_path / "other")[0]
    gw2 = DeviceKey.load_or_create(tmp_path / "gw2")[0]
    stores = [open_store(store_url) for _ in range(2)]
    old = Receiver({"gw1": key.public_key, "gw2": gw2.public_key}, "edgegw", store=stores[0])
    new = Receiver({"gw1": other.public_key, "gw2": gw2.public_key}, "edgegw", store=stores[1])
    assert old.handle(TOPIC, msg(key, 1)) is Outcome.VALID
    t2 = "edgegw/gw2/telemetry"
    group = [(TOPIC, msg(other, 2), None), (t2, msg(gw2, 1, topic=t2, gw="gw2"), None)]
    assert new.handle_many(group) == [Outcome.STORE_ERROR, Outcome.VALID]
    assert [r.seq for r in stores[0].readings("gw1")] == [1]
    assert stores[0].states()["gw1"].seen.pairs() == [(1, 1)]
    assert [r.seq for r in stores[0].readings("gw2")] == [1]
    for s in stores:
        s.close()


def test_a_late_message_after_a_notice_and_a_repeat_in_one_group(
    key: DeviceKey, store: Store
) -> None:
    """A seq a drop notice gave up on is stored when it comes after all; the same message
    twice in one group is stored once."""
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    assert rx.handle(TOPIC, msg(key, 1)) is Outcome.VALID
    assert rx.handle("edgegw/gw1/notice", notice(key, 4, 2, 3)) is Outcome.VALID
    late, again = (TOPIC, msg(key, 2), None), (TOPIC, msg(key, 5), None)
    assert rx.handle_many([late, again, again]) == [
        Outcome.VALID,
        Outcome.VALID,
        Outcome.DUPLICATE,
    ]
    assert [r.seq for r in store.readings("gw1")] == [1, 2, 5]
    assert rx.handle(TOPIC, msg(key, 2)) is Outcome.DUPLICATE
    # two different messages with one seq in one group: the second is a conflict
    other = (TOPIC, msg(key, 6, [["plc/t", 1, -1.0, 0]]), None)
    assert rx.handle_many([(TOPIC, msg(key, 6), None), other]) == [
        Outcome.VALID,
        Outcome.CONFLICT,
    ]
    assert [a["class"] for a in store.alerts()] == ["conflict"]


def test_a_keychain_in_any_order_is_followed_and_a_strangers_ends(
    tmp_path: Path, key: DeviceKey
) -> None:
    """Each certificate must verify with a key already trusted; the chain is followed in
    as many passes as its order needs (two rotations, newest first), and a chain of
    certificates no key of the gateway signed ends at once as an unknown key."""
    state = tmp_path / "gw1"
    root, _ = init_keys(state)
    rotate(state)
    rotate(state)
    ident = open_identity(state, record=False)
    assert len(ident.keychain) == 2
    rx = Receiver({"gw1": root.public_key}, "edgegw", store=SqliteStore())
    p = encode_payload(gw="gw1", seq=1, boot=1, kind="telemetry", t_ns=1, readings=[])
    backwards = encode_unprotected({KEYCHAIN: list(reversed(ident.keychain))})
    assert rx.handle(TOPIC, sign1(p, ident.key, TOPIC.encode(), backwards)) is Outcome.VALID
    assert rx.stats.keys_learned == 2
    s_state = tmp_path / "stranger"
    init_keys(s_state)
    rotate(s_state)
    s_ident = open_identity(s_state, record=False)
    chain = encode_unprotected({KEYCHAIN: [*s_ident.keychain, *s_ident.keychain]})
    p2 = encode_payload(gw="gw1", seq=2, boot=1, kind="telemetry", t_ns=1, readings=[])
    got: list[Outcome] = []
    t = threading.Thread(
        target=lambda: got.append(rx.handle(TOPIC, sign1(p2, s_ident.key, TOPIC.encode(), chain))),
        daemon=True,
    )
    t.start()
    t.join(30)  # generous: it is one pass over two certificates
    assert got == [Outcome.UNKNOWN_KID]
    assert rx.stats.keys_learned == 2 and rx.received("gw1") == [(1, 1)]


def learned_keys(store_url: str) -> list[tuple[bytes, str, int, bytes | None]]:
    """The gateway_keys table as the platform's SQL sees it (kid, gw, n, certified_by)."""
    q = "SELECT kid, gw, n, certified_by FROM gateway_keys ORDER BY n"
    if "://" in store_url:
        import psycopg

        with psycopg.connect(store_url) as c:
            rows = c.execute(q).fetchall()
    else:
        with contextlib.closing(sqlite3.connect(store_url)) as db:
            rows = db.execute(q).fetchall()
    return [(bytes(k), gw, n, None if c is None else bytes(c)) for k, gw, n, c in rows]


def test_a_healthy_receiver_never_reconnects(
    tmp_path: Path, key: DeviceKey, broker: Mosquitto
) -> None:
    """supervise() reconnects only after a store failure: a reconnect without one would
    drop a clean session (and what the broker would have sent meanwhile). Before any
    message, health() says none came."""
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=SqliteStore(tmp_path / "rx.db"))
    warnings = _Warnings()
    logging.getLogger("edgegw.receiver").addHandler(warnings)
    mr = MqttReceiver(rx, "::1", broker.port).start()
    try:
        assert mr.health().last_message_ns == 0
        h = mr.supervise()
        assert h.ok and h.connected and h.subscribed and h.unacked == 0
        publish_all(broker.port, [msg(key, 1)])
        assert wait(lambda: rx.received("gw1") == [(1, 1)])
        assert mr.supervise().connected and mr.health().last_message_ns > 0
    finally:
        mr.stop()
        logging.getLogger("edgegw.receiver").removeHandler(warnings)
    assert [w for w in warnings.seen if "reconnect" in w] == []


def test_a_key_is_counted_learned_once(gw: tuple[Path, DeviceKey], tmp_path: Path) -> None:
    """keys_learned counts keys newly trusted: not a key_rotated record whose key came
    already by a keychain, nor a record whose certificate no key of the gateway signed."""
    state, old = gw
    log = AuditLog(state / AUDIT_FILE, old, boot=1)
    rot = rotate(state, audit=log)
    log.close()
    chain = encode_unprotected({KEYCHAIN: open_identity(state, record=False).keychain})
    rx = Receiver({"gw1": old.public_key}, "edgegw", store=SqliteStore())
    p = encode_payload(gw="gw1", seq=1, boot=1, kind="telemetry", t_ns=1, readings=[])
    assert rx.handle(TOPIC, sign1(p, rot.key, TOPIC.encode(), chain)) is Outcome.VALID
    assert rx.stats.keys_learned == 1
    data = (state / AUDIT_FILE).read_bytes()
    for m in audit_messages(data, old, per_message=10, first_seq=2):
        assert rx.handle(AUDIT, m.body) is Outcome.VALID
    assert rx.store.alerts() == [] and rx.stats.keys_learned == 1
    s_state = tmp_path / "stranger"
    init_keys(s_state)
    rotate(s_state)
    foreign = open_identity(s_state, record=False).keychain[0]
    entries, _ = crafted_log(old, 1)
    r = encode_record(
        seq=1, boot=1, ts_ns=9, mono_ns=None, event="key_rotated", detail={"cert": foreign},
        prev=leaf_hash(entries[1]),
    )  # fmt: skip
    rx2, found = witnessed(old, audit_body(old, 1, [*entries, r]))
    assert found == [] and rx2.stats.keys_learned == 0


class SlowStore(SqliteStore):
    """A real SQLite store whose first commit takes seconds (a database under load)."""

    first = True

    @contextlib.contextmanager
    def batch(self) -> Iterator[Any]:
        with super().batch() as b:
            yield b
            if self.first:
                self.first = False
                time.sleep(3.0)


def test_a_full_queue_holds_the_broker_back_and_loses_nothing(
    tmp_path: Path, key: DeviceKey, broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the store is slow the queue fills and paho's thread waits (backpressure to
    the broker), for as long as it takes: no message is dropped unacknowledged meanwhile."""
    monkeypatch.setattr("gateway.receiver.mqtt.QUEUE_MAX", 2)
    store = SlowStore(tmp_path / "rx.db")
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    mr = MqttReceiver(rx, "::1", broker.port, client_id="rx-q", session_expiry_s=60).start()
    try:
        publish_all(broker.port, [msg(key, s) for s in range(1, 11)])
        assert wait(lambda: rx.received("gw1") == [(1, 10)], timeout=30), rx.received("gw1")
        assert mr.health().unacked == 0
    finally:
        mr.stop()
    store.close()


def test_a_refused_subscription_ends_start_with_the_fix(key: DeviceKey) -> None:
    """A broker that refuses the subscription (SUBACK 0x87, not authorized: an ACL that
    does not let this login read the gateways' topics): start() says so, instead of
    running and receiving nothing."""
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=SqliteStore())

    async def main() -> None:
        broker = await ScriptedBroker(suback=0x87).start()
        mr = MqttReceiver(rx, "::1", broker.port)
        try:
            with pytest.raises(PermissionError, match="refused to subscribe to edgegw/"):
                await asyncio.to_thread(mr.start, 20)
        finally:
            await broker.stop()

    asyncio.run(main())


def test_a_user_name_without_a_password_is_sent(tmp_path: Path, key: DeviceKey) -> None:
    """--username without a password file is a login by name (a broker whose ACL is by
    user, or that takes the name from a client certificate): sent, not dropped for an
    anonymous connection that may read nothing."""
    acl = "topic write edgegw/#\nuser rx\ntopic read edgegw/#\n"  # anonymous: write only
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=SqliteStore())
    with Mosquitto(host="::1", workdir=tmp_path / "b", acl=acl) as b:
        mr = MqttReceiver(rx, "::1", b.port, username="rx").start()
        try:
            publish_all(b.port, [msg(key, 1)])
            assert wait(lambda: rx.received("gw1") == [(1, 1)])
        finally:
            mr.stop()


def test_stop_with_messages_still_queued_stores_them_all(
    tmp_path: Path, key: DeviceKey, broker: Mosquitto
) -> None:
    """stop() while the store is slow and messages wait in the queue: it waits for the
    worker to store (and acknowledge) them, then disconnects."""
    store = SlowStore(tmp_path / "rx.db")
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    mr = MqttReceiver(rx, "::1", broker.port, client_id="rx-s", session_expiry_s=60).start()
    try:
        publish_all(broker.port, [msg(key, s) for s in range(1, 11)])
        assert wait(lambda: mr.health().last_message_ns > 0)
        time.sleep(0.5)  # the rest arrive (and wait) while the first commit takes 3 s
    finally:
        mr.stop()
    assert rx.received("gw1") == [(1, 10)]
    store.close()


def test_counters_recorded_between_messages_are_committed(tmp_path: Path, key: DeviceKey) -> None:
    """The receiver records its counters every few seconds between messages: each is
    committed at once (another reader sees it) and leaves no transaction open that the
    next message's would trip over."""
    db = tmp_path / "rx.db"
    store = SqliteStore(db)
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    assert rx.handle(TOPIC, msg(key, 1)) is Outcome.VALID
    store.record_stats("rx-a", {"duplicates": 2})
    with contextlib.closing(sqlite3.connect(db)) as other:
        assert other.execute("SELECT name, stats FROM receivers").fetchall() == [
            ("rx-a", '{"duplicates": 2}')
        ]
    assert rx.handle(TOPIC, msg(key, 2)) is Outcome.VALID
    store.record_stats("rx-a", {"duplicates": 3})
    assert rx.handle(TOPIC, msg(key, 3)) is Outcome.VALID
    store.close()
    again = SqliteStore(db)
    assert again.report().receivers == {"rx-a": {"duplicates": 3}}
    assert [r.seq for r in again.readings("gw1")] == [1, 2, 3]
    again.close()


def test_a_file_migrated_by_another_receiver_meanwhile_opens(tmp_path: Path) -> None:
    """Two receivers start on one new file: the second waits for the first's migration
    (BEGIN IMMEDIATE), finds the schema made when it gets the lock, and opens it."""
    from gateway.receiver import sqlite_store

    db = tmp_path / "rx.db"
    first = sqlite3.connect(db, isolation_level=None)
    first.execute("PRAGMA journal_mode=WAL")  # as the first receiver does, before migrating
    first.execute("BEGIN IMMEDIATE")
    opened: list[object] = []
    t = threading.Thread(target=lambda: opened.append(SqliteStore(db)), daemon=True)
    t.start()
    time.sleep(1.0)  # it reads schema 0, then waits for the lock
    for script in (sqlite_store._TABLES, sqlite_store._V2):  # what the first one makes
        sqlite_store._script(first, script)
    first.execute(f"PRAGMA user_version = {sqlite_store.SCHEMA_VERSION}")
    first.execute("COMMIT")
    first.close()
    t.join(30)
    assert len(opened) == 1 and isinstance(opened[0], SqliteStore)
    opened[0].close()


def test_a_store_without_readings_keeps_none(store_url: str, key: DeviceKey) -> None:
    """``readings=False`` (the message index and states only): no reading is kept, in
    either store, while every message is still classified."""
    store = open_store(store_url, readings=False)
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    two = [["plc/a", 1, 1.0, 0], ["plc/b", 1, 2.0, 0]]
    assert rx.handle(TOPIC, msg(key, 1, two)) is Outcome.VALID
    p = encode_payload(gw="gw1", seq=2, boot=1, kind="telemetry", t_ns=1, readings=two, version=1)
    assert rx.handle(TOPIC, sign1(p, key, TOPIC.encode())) is Outcome.VALID
    assert rx.handle(TOPIC, msg(key, 1, two)) is Outcome.DUPLICATE
    assert store.readings("gw1") == []
    r = store.report()
    assert (r.messages, r.points) == (2, 4)
    store.close()


INTS = [0, 1, -1, 2, 9999, 10000, 10001, -10001, 65535, 65536, -1024, -1025, 10**8, 10**8 + 1,
        10**12 + 10**4 + 1, 2**63 - 1, -(2**63), 2**64 - 1, 10**19 + 1]  # fmt: skip


def test_integers_round_trip_exactly(key: DeviceKey, store: Store) -> None:
    """Integers go to PostgreSQL as binary numeric (base-10000 digits, trailing zero
    digits dropped): every digit pattern comes back exact, twice (the second time from
    the encoder's cache), one by one (version 1) and in a block (version 2)."""
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    rows = [[f"plc/i{k}", 5, v, 0] for k, v in enumerate(INTS)]
    for seq in (1, 2):
        assert rx.handle(TOPIC, msg(key, seq, rows)) is Outcome.VALID
    p = encode_payload(gw="gw1", seq=3, boot=1, kind="telemetry", t_ns=1, readings=rows, version=1)
    assert rx.handle(TOPIC, sign1(p, key, TOPIC.encode())) is Outcome.VALID
    got = [(r.seq, r.value) for r in store.readings("gw1")]
    assert got == [(seq, v) for seq in (1, 2, 3) for v in INTS]
    assert all(type(v) is int for _, v in got)


def test_event_and_notice_times_are_kept_to_the_nanosecond_in_postgresql(
    key: DeviceKey, pg_url: str
) -> None:
    """timestamptz holds microseconds: the rest of each time is its ``*_nanos`` column,
    nothing rounded (a time ending in 789 ns is not the next microsecond)."""
    import psycopg

    store = open_store(pg_url)
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    t = "edgegw/gw1/event"
    ev = NS_EVENT
    p = encode_payload(gw="gw1", seq=1, boot=1, kind="event", t_ns=1, event=ev)
    assert rx.handle(t, sign1(p, key, t.encode())) is Outcome.VALID
    at = 1_733_475_600_999_999_999
    assert rx.handle("edgegw/gw1/notice", notice(key, 2, None, None, at=at)) is Outcome.VALID
    us = "(extract(epoch FROM {0}) * 1e6)::bigint"
    with psycopg.connect(pg_url) as c:
        got = c.execute(
            f"SELECT {us.format('ts')}, ts_nanos, {us.format('window_end')}, window_end_nanos"
            " FROM events"
        ).fetchall()
        assert got == [(1_733_475_600_123_456, 789, 1_733_475_660_987_654, 321)]
        assert c.execute(f"SELECT {us.format('at')} FROM notices").fetchall() == [
            (1_733_475_600_999_999,)
        ]
    store.close()


def test_the_store_never_shows_the_database_password(pg_url: str) -> None:
    """Messages and logs name the database by its connection string without the
    password, whichever form the password came in."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from gateway.receiver.pg_store import PgStore, redact

    with_pw = make_conninfo(pg_url, password="s3cret-pw")
    assert "s3cret-pw" in with_pw
    assert "s3cret-pw" not in redact(with_pw)
    assert conninfo_to_dict(redact(with_pw))["dbname"] == conninfo_to_dict(pg_url)["dbname"]
    store = PgStore(with_pw)  # the test server trusts its local users: the password is unused
    assert "s3cret-pw" not in store.where and "dbname=" in store.where
    store.close()


def test_a_postgresql_error_in_a_transaction_leaves_no_state(key: DeviceKey, pg_url: str) -> None:
    """An error PostgreSQL raises mid-transaction is a store error (not acknowledged),
    the transaction is rolled back and the connection usable, and nothing of the failed
    message is remembered: delivered again, it is stored, not taken for a duplicate."""
    import psycopg

    store = open_store(pg_url)
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute(
            "CREATE FUNCTION fail() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'I/O'; END $$"
            " LANGUAGE plpgsql"
        )
        c.execute(
            "CREATE TRIGGER fail BEFORE INSERT ON notices FOR EACH ROW EXECUTE FUNCTION fail()"
        )
        m2 = notice(key, 2, None, None)  # the gateway's very first message fails
        assert rx.handle("edgegw/gw1/notice", m2) is Outcome.STORE_ERROR
        assert (rx.stats.store_errors, rx.stats.errors) == (1, 0)
        assert rx.handle(TOPIC, msg(key, 1)) is Outcome.VALID  # the connection still works
        assert rx.handle("edgegw/gw1/notice", m2) is Outcome.STORE_ERROR  # a known gateway
        assert rx.handle(TOPIC, msg(key, 3)) is Outcome.VALID
        assert (rx.stats.store_errors, rx.stats.errors) == (2, 0)
        c.execute("DROP TRIGGER fail ON notices")
    assert rx.handle("edgegw/gw1/notice", m2) is Outcome.VALID
    assert rx.received("gw1") == [(1, 3)]
    assert store.report().notices == 1
    store.close()


def test_receivers_taking_turns_on_one_database_see_each_others_messages(
    key: DeviceKey, store_url: str
) -> None:
    """Each receiver keeps a cached state per gateway; a commit by the other makes it
    stale, and it is read again: never a message stored twice or a conflict missed."""
    stores = [open_store(store_url) for _ in range(2)]
    a, b = (Receiver({"gw1": key.public_key}, "edgegw", store=s) for s in stores)
    for seq in range(1, 6):
        first, second = (a, b) if seq % 2 else (b, a)
        assert first.handle(TOPIC, msg(key, seq)) is Outcome.VALID
        assert second.handle(TOPIC, msg(key, seq)) is Outcome.DUPLICATE
        conflict = msg(key, seq, [["plc/t", 1, -1.0, 0]])
        assert second.handle(TOPIC, conflict) is Outcome.CONFLICT
    assert [r.seq for r in stores[0].readings("gw1")] == [1, 2, 3, 4, 5]
    assert a.received("gw1") == b.received("gw1") == [(1, 5)]
    for s in stores:
        s.close()


def test_a_database_that_never_answers_is_a_store_error_in_time() -> None:
    """A server that accepts the connection and says nothing (a hung host, a firewall
    that swallows packets) ends the connect after connect_timeout_s, as a StoreError,
    instead of hanging the receiver."""
    from gateway.receiver.pg_store import PgStore

    with socket.create_server(("::1", 0), family=socket.AF_INET6) as silent:
        port = silent.getsockname()[1]
        got: list[BaseException] = []

        def connect() -> None:
            try:
                PgStore(f"postgresql://edgegw@[::1]:{port}/x", connect_timeout_s=2)
            except BaseException as exc:  # what it raised is the result
                got.append(exc)

        t = threading.Thread(target=connect, daemon=True)
        t.start()
        t.join(30)  # generous: it is 2 s
        assert got and isinstance(got[0], StoreError), got


def test_command_result_times_are_kept_to_the_nanosecond_in_postgresql(
    key: DeviceKey, pg_url: str
) -> None:
    """When the gateway received a command and when it was done: microseconds in the
    timestamptz column, the rest in ``*_nanos`` (nothing rounded up)."""
    from gateway.downlink.wire import result

    store = open_store(pg_url)
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    topic = "edgegw/gw1/command_result"
    recv, done = 1_733_475_600_123_456_789, 1_733_475_601_987_654_821
    for seq in (1, 2):
        res = result(digest=b"\x01" * 32, outcome="done", received_ns=recv, done_ns=done + seq)
        p = encode_payload(gw="gw1", seq=seq, boot=1, kind="command_result", t_ns=1, result=res)
        assert rx.handle(topic, sign1(p, key, topic.encode())) is Outcome.VALID
    us = "(extract(epoch FROM {0}) * 1e6)::bigint"
    rows = store._query(  # type: ignore[attr-defined]
        f"SELECT {us.format('received')}, received_nanos, {us.format('done')}, done_nanos"
        " FROM command_results ORDER BY seq"
    )
    assert rows == [
        (1_733_475_600_123_456, 789, 1_733_475_601_987_654, 822),
        (1_733_475_600_123_456, 789, 1_733_475_601_987_654, 823),
    ]
    store.close()
