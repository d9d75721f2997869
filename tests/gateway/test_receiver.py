"""The receiver's classification, without a broker: valid, duplicate, conflict, gap,
replay, bad signature, unknown key or gateway, wrong gateway, moved topic, garbage; and
that its state survives a restart."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.receiver import Intervals, Outcome, Receiver, SqliteStore
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
    kind: str = "telemetry",
    **extra: Any,
) -> bytes:
    r = readings if readings is not None else [["plc/t", 1_700_000_000_000_000_000, 1.5, 0]]
    p = encode_payload(gw=gw, seq=seq, boot=boot, kind=kind, t_ns=1, readings=r, **extra)
    return sign1(p, key, topic.encode())


def notice(key: DeviceKey, seq: int, lo: int | None, hi: int | None, **kw: Any) -> bytes:
    drop = {
        "first_seq": lo,
        "last_seq": hi,
        "messages": 0 if lo is None else hi - lo + 1,  # type: ignore[operator]
        "points": 30,
        "bytes": 1,
        "reason": "outbox_full",
        "at": 1,
    }
    drop.update(kw)
    return msg(
        key, seq, kind="notice", topic="edgegw/gw1/notice", notice="data_dropped", drops=[drop]
    )


def test_valid_duplicate_conflict(key: DeviceKey) -> None:
    rx = Receiver({"gw1": key.public_key}, "edgegw")
    m1 = msg(key, 1)
    assert rx.handle(TOPIC, m1) is Outcome.VALID
    assert rx.handle(TOPIC, m1) is Outcome.DUPLICATE
    other = msg(key, 1, [["plc/t", 1, 2.5, 0]])
    assert rx.handle(TOPIC, other) is Outcome.CONFLICT
    s = rx.stats
    assert (s.messages_verified, s.points_verified, s.duplicates, s.conflicts) == (1, 1, 1, 1)
    assert [a["class"] for a in rx.store.alerts()] == ["conflict"]


def test_re_encodings_of_a_genuine_message_are_duplicates_not_conflicts(key: DeviceKey) -> None:
    """Anyone on the broker can re-wrap a message (drop the tag, add unprotected headers):
    the signed content is the same, so it is a duplicate, never a false SECURITY alert."""
    import cbor2

    from security.cose import parse1

    rx = Receiver({"gw1": key.public_key}, "edgegw")
    m = msg(key, 1)
    env = parse1(m)
    untagged = m[1:]
    relabelled = cbor2.dumps(
        cbor2.CBORTag(18, [env.protected, {"x": 1, 99: "y"}, env.payload, env.signature])
    )
    assert rx.handle(TOPIC, m) is Outcome.VALID
    assert rx.handle(TOPIC, untagged) is Outcome.DUPLICATE
    assert rx.handle(TOPIC, relabelled) is Outcome.DUPLICATE
    assert rx.stats.conflicts == 0 and rx.store.alerts() == []


def test_gaps_are_counted_and_filled(key: DeviceKey) -> None:
    rx = Receiver({"gw1": key.public_key}, "edgegw")
    for seq in (1, 2, 5, 6, 9):
        assert rx.handle(TOPIC, msg(key, seq)) is Outcome.VALID
    assert rx.stats.gaps == 4  # 3, 4, 7, 8
    assert rx.missing() == {"gw1": [(3, 4), (7, 8)]}
    rx.handle(TOPIC, msg(key, 3))
    rx.handle(TOPIC, msg(key, 4))
    assert rx.stats.gaps == 2
    assert rx.missing() == {"gw1": [(7, 8)]}
    assert rx.received("gw1") == [(1, 6), (9, 9)]


def test_rejections(key: DeviceKey, tmp_path: Path) -> None:
    other = DeviceKey.load_or_create(tmp_path / "other")[0]
    rx = Receiver({"gw1": key.public_key}, "edgegw")
    assert rx.handle(TOPIC, msg(other, 1)) is Outcome.UNKNOWN_KID
    m = bytearray(msg(key, 1))
    m[-1] ^= 1
    assert rx.handle(TOPIC, bytes(m)) is Outcome.BAD_SIGNATURE
    # gw1's genuine message moved to gw2's topic: gw2 is not enrolled
    assert rx.handle("edgegw/gw2/telemetry", msg(key, 2)) is Outcome.UNKNOWN_GATEWAY
    # ... and to another kind's topic: the topic is signed
    assert rx.handle("edgegw/gw1/event", msg(key, 2)) is Outcome.BAD_SIGNATURE
    assert rx.handle(TOPIC, b"\x00garbage") is Outcome.MALFORMED
    assert rx.handle("elsewhere/x", msg(key, 4)) is Outcome.MALFORMED
    assert rx.handle("edgegw/gw1/nonsense", msg(key, 4)) is Outcome.MALFORMED
    assert rx.handle("edgegw/gw1/command", b"anything") is Outcome.IGNORED
    s = rx.stats
    assert (s.unknown_kid, s.signature_failures, s.unknown_gateway, s.malformed) == (1, 2, 1, 3)
    assert s.messages_verified == 0 and s.ignored == 1


def test_a_key_speaks_only_for_its_own_gateway(key: DeviceKey, tmp_path: Path) -> None:
    """gw-a's key signing a message for gw-b's topic (the attacker holds one stolen key):
    a wrong_gateway alert, never gw-b's data."""
    key_b = DeviceKey.load_or_create(tmp_path / "b")[0]
    rx = Receiver({"gw1": key.public_key, "gw2": key_b.public_key}, "edgegw")
    forged = msg(key, 1, gw="gw2", topic="edgegw/gw2/telemetry")
    assert rx.handle("edgegw/gw2/telemetry", forged) is Outcome.WRONG_GATEWAY
    assert (
        rx.handle("edgegw/gw2/telemetry", msg(key_b, 1, gw="gw2", topic="edgegw/gw2/telemetry"))
        is Outcome.VALID
    )
    assert [a["class"] for a in rx.store.alerts()] == ["wrong_gateway"]
    assert rx.received("gw2") == [(1, 1)]


def test_topic_mismatch_is_a_signed_alert(key: DeviceKey) -> None:
    rx = Receiver({"gw1": key.public_key}, "edgegw")
    # signed by gw1 for gw1's topic, but the payload claims another gateway
    m = msg(key, 3, gw="gw7")
    assert rx.handle(TOPIC, m) is Outcome.TOPIC_MISMATCH
    assert [a["class"] for a in rx.store.alerts()] == ["topic_mismatch"]


def test_sqlite_store_and_resume(key: DeviceKey, tmp_path: Path) -> None:
    db = tmp_path / "rx.db"
    store = SqliteStore(db)
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    bad = ["plc/x", 5, None, 2, "modbus exception 2"]
    rx.handle(TOPIC, msg(key, 1, [["plc/t", 5, 1.25, 0], bad]))
    rx.handle(TOPIC, msg(key, 2))
    rows = store.db.execute(
        "SELECT tag, value, quality, reason FROM readings_view ORDER BY seq, rowid"
    )
    assert list(rows) == [
        ("plc/t", 1.25, 0, None),
        ("plc/x", None, 2, "modbus exception 2"),
        ("plc/t", 1.5, 0, None),
    ]
    store.close()
    # a restarted receiver still knows seq 1 and 2, and what they were
    store2 = SqliteStore(db)
    rx2 = Receiver({"gw1": key.public_key}, "edgegw", store=store2)
    assert rx2.handle(TOPIC, msg(key, 2)) is Outcome.DUPLICATE
    assert rx2.handle(TOPIC, msg(key, 2, [["plc/t", 9, 9.0, 0]])) is Outcome.CONFLICT
    assert rx2.handle(TOPIC, msg(key, 4)) is Outcome.VALID
    assert rx2.stats.gaps == 1
    store2.close()


@given(st.lists(st.tuples(st.integers(1, 60), st.integers(0, 5)), max_size=60))
def test_intervals_match_a_plain_set(ranges: list[tuple[int, int]]) -> None:
    iv = Intervals()
    model: set[int] = set()
    for lo, n in ranges:
        hi = lo + n
        assert iv.covered(lo, hi) == len(model & set(range(lo, hi + 1)))
        iv.add(lo, hi)
        model |= set(range(lo, hi + 1))
    assert all((q in iv) == (q in model) for q in range(0, 70))
    lo, hi = (min(model), max(model)) if model else (0, 0)
    assert iv.missing() == (hi - lo + 1 - len(model) if model else 0)
    assert [q for a, b in iv for q in range(a, b + 1)] == sorted(model)
    pairs = list(iv)
    assert all(b + 1 < c for (_, b), (c, _) in itertools.pairwise(pairs))  # no touching
    assert Intervals.from_flat(iv.flat()) == iv


def test_out_of_order_delivery_is_not_a_duplicate(key: DeviceKey) -> None:
    rx = Receiver({"gw1": key.public_key}, "edgegw")
    for seq in (5, 6, 1, 2, 3, 4):  # live first, then the backlog
        assert rx.handle(TOPIC, msg(key, seq)) is Outcome.VALID
    assert rx.stats.gaps == 0 and rx.received("gw1") == [(1, 6)]


def test_drop_notice_explains_a_gap(key: DeviceKey) -> None:
    rx = Receiver({"gw1": key.public_key}, "edgegw")
    rx.handle(TOPIC, msg(key, 1))
    rx.handle(TOPIC, msg(key, 5))
    assert rx.stats.gaps == 3
    assert rx.handle("edgegw/gw1/notice", notice(key, 6, 2, 4)) is Outcome.VALID
    s = rx.stats
    assert (s.gaps, s.notices, s.dropped_points, s.dropped_seqs) == (0, 1, 30, 3)
    assert rx.received("gw1") == [(1, 6)]
    # a message the notice gave up on may still arrive (sent before it was evicted)
    assert rx.handle(TOPIC, msg(key, 3)) is Outcome.VALID


def test_a_huge_notice_range_costs_nothing(key: DeviceKey) -> None:
    """A (signed) notice naming 10**12 seqs is applied as one interval."""
    rx = Receiver({"gw1": key.public_key}, "edgegw")
    big = 10**12
    rx.handle(TOPIC, msg(key, 1))
    assert rx.handle("edgegw/gw1/notice", notice(key, big + 10, 2, big)) is Outcome.VALID
    assert rx.stats.dropped_seqs == big - 1
    assert rx.received("gw1") == [(1, big), (big + 10, big + 10)]


@pytest.mark.parametrize(
    "drop",
    [
        {"first_seq": 5, "last_seq": 4},  # reversed
        {"first_seq": 2, "last_seq": 50},  # beyond the notice's own seq
        {"first_seq": 0, "last_seq": 3},  # seqs start at 1
        {"first_seq": None, "last_seq": 3},  # half a range
        {"first_seq": "2", "last_seq": 3},
        {"first_seq": True, "last_seq": 3},  # a bool is not an int
        {"points": -1},
        {"reason": "because"},
        {"extra": 1},
    ],
)
def test_malformed_signed_notices_are_refused_and_alerted(key: DeviceKey, drop: dict) -> None:
    rx = Receiver({"gw1": key.public_key}, "edgegw")
    rx.handle(TOPIC, msg(key, 1))
    assert rx.handle("edgegw/gw1/notice", notice(key, 10, 2, 3, **drop)) is Outcome.MALFORMED
    assert rx.received("gw1") == [(1, 1)]
    assert [a["class"] for a in rx.store.alerts()] == ["signed_malformed"]


def test_replays_from_an_old_boot_are_flagged(key: DeviceKey) -> None:
    rx = Receiver({"gw1": key.public_key}, "edgegw")
    assert rx.handle(TOPIC, msg(key, 10, boot=1)) is Outcome.VALID
    assert rx.handle(TOPIC, msg(key, 11, boot=2)) is Outcome.VALID
    # backlog of the old boot arriving late is fine ...
    assert rx.handle(TOPIC, msg(key, 9, boot=1)) is Outcome.VALID
    # ... but boot 1 cannot have produced a seq after boot 2 began
    assert rx.handle(TOPIC, msg(key, 12, boot=1)) is Outcome.REPLAY
    # and a new boot cannot reuse seqs below the old boot's (a rolled-back state dir)
    assert rx.handle(TOPIC, msg(key, 8, boot=3)) is Outcome.REPLAY
    assert rx.handle(TOPIC, msg(key, 11, boot=2)) is Outcome.DUPLICATE
    assert rx.stats.replays == 2 and rx.stats.messages_verified == 3


def test_nothing_raised_while_handling_escapes(
    key: DeviceKey, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in a later step (here: the store's message insert) is counted as 'error',
    logged with the seq, and rolled back; the next message is handled as usual."""
    store = SqliteStore()
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    real = store.batch

    import contextlib

    @contextlib.contextmanager
    def broken():  # type: ignore[no-untyped-def]
        with real() as b:
            opener = b._open

            def open_broken(e):  # type: ignore[no-untyped-def]
                txn = opener(e)
                txn.put_message = lambda *a: 1 / 0
                return txn

            b._open = open_broken
            yield b

    store.batch = broken  # type: ignore[method-assign]
    assert rx.handle(TOPIC, msg(key, 1)) is Outcome.ERROR
    assert "seq 1" in caplog.text and "ZeroDivisionError" in caplog.text
    store.batch = real  # type: ignore[method-assign]
    assert rx.received("gw1") == []  # rolled back: seq 1 is not marked seen
    assert rx.handle(TOPIC, msg(key, 1)) is Outcome.VALID
    assert (rx.stats.errors, rx.stats.messages_verified) == (1, 1)


def test_a_group_of_messages_commits_once_and_classifies_as_one_by_one(
    key: DeviceKey, tmp_path: Path
) -> None:
    """handle_many: one transaction for several messages (any gateways, any kinds, any
    order), outcomes in the order given, the same as handling them one at a time."""
    key2 = DeviceKey.load_or_create(tmp_path / "k2")[0]
    t2 = "edgegw/gw2/telemetry"
    items = [
        (TOPIC, msg(key, 2)),
        (t2, msg(key2, 1, gw="gw2", topic=t2)),
        (TOPIC, msg(key, 1)),
        (TOPIC, msg(key, 2)),  # the same again in the same group
        (TOPIC, msg(key, 1, [["plc/t", 1, 9.0, 0]])),  # a conflict inside the group
        (TOPIC, b"garbage"),
        (t2, msg(key, 9, gw="gw2", topic=t2)),  # gw1's key for gw2
    ]
    expected = [
        Outcome.VALID,
        Outcome.VALID,
        Outcome.VALID,
        Outcome.DUPLICATE,
        Outcome.CONFLICT,
        Outcome.MALFORMED,
        Outcome.WRONG_GATEWAY,
    ]
    trust = {"gw1": key.public_key, "gw2": key2.public_key}
    one = Receiver(trust, "edgegw")
    assert [one.handle(t, b) for t, b in items] == expected
    grouped = Receiver(trust, "edgegw", store=SqliteStore(tmp_path / "g.db"))
    assert grouped.handle_many([(t, b, None) for t, b in items]) == expected
    assert summary_of(grouped) == summary_of(one)
    assert grouped.received("gw1") == [(1, 2)] and grouped.received("gw2") == [(1, 1)]
    assert [a["class"] for a in grouped.store.alerts()] == ["conflict", "wrong_gateway"]


def summary_of(rx: Receiver) -> dict[str, int]:
    from gateway.receiver import summary

    return summary(rx)


def test_a_group_that_fails_is_stored_one_by_one(key: DeviceKey, tmp_path: Path) -> None:
    """A bug on one message rolls the group back: the others are stored on their own,
    nothing is counted twice, the bad one is an error."""
    store = SqliteStore(tmp_path / "rx.db")
    rx = Receiver({"gw1": key.public_key}, "edgegw", store=store)
    import contextlib

    real = store.batch

    @contextlib.contextmanager
    def fails_on_seq_3():  # type: ignore[no-untyped-def]
        with real() as b:
            opener = b._open

            def open_gw(e):  # type: ignore[no-untyped-def]
                txn = opener(e)
                put = txn.put_message

                def put_message(p, *a):  # type: ignore[no-untyped-def]
                    if p.seq == 3:
                        raise RuntimeError("a bug on seq 3")
                    return put(p, *a)

                txn.put_message = put_message
                return txn

            b._open = open_gw
            yield b

    store.batch = fails_on_seq_3  # type: ignore[method-assign]
    out = rx.handle_many([(TOPIC, msg(key, s), None) for s in (1, 2, 3, 4)])
    assert out == [Outcome.VALID, Outcome.VALID, Outcome.ERROR, Outcome.VALID]
    assert (rx.stats.messages_verified, rx.stats.points_verified, rx.stats.errors) == (3, 3, 1)
    store.batch = real  # type: ignore[method-assign]
    assert rx.received("gw1") == [(1, 2), (4, 4)]
