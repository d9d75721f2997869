"""The receiver's classification, without a broker: valid, duplicate, conflict, gap,
bad signature, unknown key, moved topic, garbage."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.receiver import Receiver, SqliteSink, _Track, restore_tracks
from gateway.wire import encode_payload
from security import DeviceKey, sign1

TOPIC = "edgegw/gw1/telemetry"


@pytest.fixture
def key(tmp_path: Path) -> DeviceKey:
    return DeviceKey.load_or_create(tmp_path / "gw")[0]


def msg(
    key: DeviceKey,
    seq: int,
    readings: list | None = None,
    topic: str = TOPIC,
    gw: str = "gw1",
    boot: int = 1,
) -> bytes:
    r = readings if readings is not None else [("plc/t", 1_700_000_000_000_000_000, 1.5, 0)]
    p = encode_payload(gw=gw, seq=seq, boot=boot, kind="telemetry", t_ns=1, readings=r)
    return sign1(p, key, topic.encode())


def test_valid_duplicate_conflict(key: DeviceKey) -> None:
    rx = Receiver({key.kid: key.public_key}, "edgegw")
    m1 = msg(key, 1)
    assert rx.handle(TOPIC, m1) == "valid"
    assert rx.handle(TOPIC, m1) == "duplicate"
    other = msg(key, 1, [("plc/t", 1, 2.5, 0)])
    assert rx.handle(TOPIC, other) == "conflict"
    s = rx.stats
    assert (s.messages_verified, s.points_verified, s.duplicates, s.conflicts) == (1, 1, 1, 1)


def test_gaps_are_counted_and_filled(key: DeviceKey) -> None:
    rx = Receiver({key.kid: key.public_key}, "edgegw")
    for seq in (1, 2, 5, 6, 9):
        assert rx.handle(TOPIC, msg(key, seq)) == "valid"
    assert rx.stats.gaps == 4  # 3, 4, 7, 8
    assert rx.missing() == {"gw1": [(3, 4), (7, 8)]}
    rx.handle(TOPIC, msg(key, 3))
    rx.handle(TOPIC, msg(key, 4))
    assert rx.stats.gaps == 2
    assert rx.missing() == {"gw1": [(7, 8)]}


def test_rejections(key: DeviceKey, tmp_path: Path) -> None:
    other = DeviceKey.load_or_create(tmp_path / "other")[0]
    rx = Receiver({key.kid: key.public_key}, "edgegw")
    assert rx.handle(TOPIC, msg(other, 1)) == "unknown_kid"
    m = bytearray(msg(key, 1))
    m[-1] ^= 1
    assert rx.handle(TOPIC, bytes(m)) == "bad_signature"
    # a genuine message moved to another gateway's topic fails: the topic is signed
    assert rx.handle("edgegw/gw2/telemetry", msg(key, 2)) == "bad_signature"
    # signed for gw2's topic, but claims gw1 inside
    assert (
        rx.handle("edgegw/gw2/telemetry", msg(key, 3, topic="edgegw/gw2/telemetry"))
        == "topic_mismatch"
    )
    assert rx.handle(TOPIC, b"\x00garbage") == "malformed"
    assert rx.handle("elsewhere/x", msg(key, 4)) == "malformed"
    s = rx.stats
    assert (s.unknown_kid, s.signature_failures, s.topic_mismatch, s.malformed) == (1, 2, 1, 2)
    assert s.messages_verified == 0


def test_sqlite_store_and_resume(key: DeviceKey, tmp_path: Path) -> None:
    db = tmp_path / "rx.db"
    sink = SqliteSink(db)
    rx = Receiver({key.kid: key.public_key}, "edgegw", sink)
    bad = ("plc/x", 5, None, 2, "modbus exception 2")
    rx.handle(TOPIC, msg(key, 1, [("plc/t", 5, 1.25, 0), bad]))
    rx.handle(TOPIC, msg(key, 2))
    rows = list(sink.db.query("SELECT tag, value, quality, reason FROM readings ORDER BY rowid"))
    assert rows[0] == {"tag": "plc/t", "value": 1.25, "quality": 0, "reason": None}
    assert rows[1] == {"tag": "plc/x", "value": None, "quality": 2, "reason": "modbus exception 2"}
    sink.close()
    # a restarted receiver still knows seq 1 and 2 were delivered
    sink2 = SqliteSink(db)
    rx2 = Receiver({key.kid: key.public_key}, "edgegw", sink2)
    restore_tracks(rx2, sink2.known_seqs())
    assert rx2.handle(TOPIC, msg(key, 2)) == "duplicate"
    assert rx2.handle(TOPIC, msg(key, 3)) == "valid"
    sink2.close()


@given(st.lists(st.integers(1, 60), max_size=80))
def test_seen_intervals_match_a_plain_set(seqs: list[int]) -> None:
    tr = _Track()
    model: set[int] = set()
    for q in seqs:
        assert tr.seen(q) == (q in model)
        tr.add(q)
        model.add(q)
    assert all(tr.seen(q) == (q in model) for q in range(0, 62))
    lo, hi = (min(model), max(model)) if model else (0, 0)
    assert tr.missing() == (hi - lo + 1 - len(model) if model else 0)
    flat = [q for a, b in tr.ranges for q in range(a, b + 1)]
    assert flat == sorted(model)


def test_out_of_order_delivery_is_not_a_duplicate(key: DeviceKey) -> None:
    rx = Receiver({key.kid: key.public_key}, "edgegw")
    for seq in (5, 6, 1, 2, 3, 4):  # live first, then the backlog
        assert rx.handle(TOPIC, msg(key, seq)) == "valid"
    assert rx.stats.gaps == 0 and rx.tracks["gw1"].ranges == [[1, 6]]


def test_drop_notice_explains_a_gap(key: DeviceKey) -> None:
    rx = Receiver({key.kid: key.public_key}, "edgegw")
    rx.handle(TOPIC, msg(key, 1))
    rx.handle(TOPIC, msg(key, 5))
    assert rx.stats.gaps == 3
    ntopic = "edgegw/gw1/notice"
    drops = [
        {
            "first_seq": 2,
            "last_seq": 4,
            "messages": 3,
            "points": 30,
            "bytes": 1,
            "reason": "outbox_full",
            "at": 1,
        }
    ]
    p = encode_payload(
        gw="gw1", seq=6, boot=1, kind="notice", t_ns=1, notice="data_dropped", drops=drops
    )
    assert rx.handle(ntopic, sign1(p, key, ntopic.encode())) == "valid"
    s = rx.stats
    assert (s.gaps, s.notices, s.dropped_points, s.dropped_seqs) == (0, 1, 30, 3)
    assert rx.tracks["gw1"].ranges == [[1, 6]]


def test_a_rotated_key_is_learned_from_its_certificate(tmp_path: Path) -> None:
    """The receiver knows only the enrolled key. After a rotation the gateway signs
    with the new key; the audit message that carries the certificate of the new key
    (signed by the old one) is signed by the new key too: the receiver learns the key
    from the certificate, then verifies the message, and everything after it."""
    from security import AUDIT_FILE, AuditLog
    from security.keyring import init_keys, rotate

    state = tmp_path / "gw"
    old, _ = init_keys(state)
    rx = Receiver({old.kid: old.public_key}, "edgegw")
    assert rx.handle(TOPIC, msg(old, 1)) == "valid"
    audit = AuditLog(state / AUDIT_FILE, old, boot=1)
    entries: list[bytes] = []
    audit.on_append = lambda e: entries.append(e.encoded)
    rot = rotate(state, audit=audit)
    audit.close()
    new = rot.key
    atopic = "edgegw/gw1/audit"
    p = encode_payload(gw="gw1", seq=2, boot=2, kind="audit", t_ns=1, entries=entries)
    assert rx.handle(atopic, sign1(p, new, atopic.encode())) == "valid"
    assert rx.stats.keys_learned == 1
    assert rx.handle(TOPIC, msg(new, 3, boot=2)) == "valid"
    # a key that no trusted key certified is still unknown
    other = DeviceKey.load_or_create(tmp_path / "stranger")[0]
    assert rx.handle(TOPIC, msg(other, 4, boot=2)) == "unknown_kid"


def test_replays_from_an_old_boot_are_flagged(key: DeviceKey) -> None:
    rx = Receiver({key.kid: key.public_key}, "edgegw")
    assert rx.handle(TOPIC, msg(key, 10, boot=1)) == "valid"
    assert rx.handle(TOPIC, msg(key, 11, boot=2)) == "valid"
    # backlog of the old boot arriving late is fine ...
    assert rx.handle(TOPIC, msg(key, 9, boot=1)) == "valid"
    # ... but boot 1 cannot have produced a seq after boot 2 began
    assert rx.handle(TOPIC, msg(key, 12, boot=1)) == "replay"
    # an old message re-sent after its digest was forgotten
    rx.tracks["gw1"].digests.clear()
    assert rx.handle(TOPIC, msg(key, 10, boot=1)) == "replay"
    assert rx.handle(TOPIC, msg(key, 11, boot=2)) == "duplicate"
    assert rx.stats.replays == 2 and rx.stats.messages_verified == 3
