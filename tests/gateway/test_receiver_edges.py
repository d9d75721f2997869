"""Edges the mutation run (`make mutate`) showed untested: exact bounds of the schema and
of the boot/seq order, what an alert row holds, the counters, the state's round trip, the
envelope's label rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cbor2
import pytest

from gateway.receiver import GatewayState, Intervals, Outcome, Receiver, SqliteStore
from gateway.receiver.state import MAX_BOOTS, LogWitness
from gateway.wire import encode_payload
from security import AUDIT_FILE, AuditLog, DeviceKey, sign1
from security.cose import MalformedMessage, encode_unprotected, parse1
from tests.gateway.auditmsgs import audit_messages
from tests.gateway.test_receiver import TOPIC, msg


@pytest.fixture
def key(tmp_path: Path) -> DeviceKey:
    return DeviceKey.load_or_create(tmp_path / "gw")[0]


def rx_for(key: DeviceKey) -> Receiver:
    return Receiver({"gw1": key.public_key}, "edgegw", store=SqliteStore())


def raw(key: DeviceKey, body: dict[str, Any], topic: str = TOPIC) -> bytes:
    base = {"v": 1, "gw": "gw1", "seq": 1, "boot": 1, "kind": "telemetry", "t": 1, "r": []}
    base.update(body)
    return sign1(cbor2.dumps({k: v for k, v in base.items() if v is not ...}), key, topic.encode())


@pytest.mark.parametrize(
    ("field", "value", "outcome"),
    [
        ("v", 2, Outcome.MALFORMED),
        ("v", True, Outcome.MALFORMED),
        ("v", ..., Outcome.MALFORMED),
        ("seq", 2**63 - 1, Outcome.VALID),
        ("seq", 2**63, Outcome.MALFORMED),
        ("seq", 0, Outcome.VALID),
        ("boot", 2**63 - 1, Outcome.VALID),
        ("boot", 2**63, Outcome.MALFORMED),
        ("boot", -1, Outcome.MALFORMED),
        ("t", -1, Outcome.MALFORMED),
        ("t", 2**64 - 1, Outcome.VALID),
        ("gw", "gw 1", Outcome.MALFORMED),
        ("kind", "event", Outcome.MALFORMED),  # fields of telemetry under another kind
        ("r", [["a", 1, 2**64 - 1, 0], ["b", 1, -(2**63), 4, None, 5]], Outcome.VALID),
        ("r", [["a", 1, -(2**63) - 1, 0]], Outcome.MALFORMED),
        ("r", [["a", 1, 1.0, 5]], Outcome.MALFORMED),
        ("r", [["a", -1, 1.0, 0]], Outcome.MALFORMED),
        ("r", [["", 1, 1.0, 0]], Outcome.MALFORMED),
        ("r", [["a" * 513, 1, 1.0, 0]], Outcome.MALFORMED),
        ("r", [["a", 1, [1], 0]], Outcome.MALFORMED),
        ("r", [["a", 1, 1.0, 0, 7]], Outcome.MALFORMED),
        ("r", [["a", 1, 1.0, 0, None, -1]], Outcome.MALFORMED),
        ("r", [["a", 1, 1.0, 0, "", None]], Outcome.MALFORMED),  # an empty reason
        ("r", [["a", 1, b"\x00", 0, "why", 3]], Outcome.VALID),
    ],
)
def test_schema_bounds(key: DeviceKey, field: str, value: Any, outcome: Outcome) -> None:
    rx = rx_for(key)
    assert rx.handle(TOPIC, raw(key, {field: value})) is outcome
    if outcome is Outcome.MALFORMED:
        [a] = rx.store.alerts()
        assert (a["gw"], a["class"], a["security"]) == ("gw1", "signed_malformed", 1)


@pytest.mark.parametrize(
    ("first", "last", "outcome"),
    [
        (1, 9, Outcome.VALID),
        (9, 9, Outcome.VALID),
        (1, 10, Outcome.MALFORMED),
        (0, 1, Outcome.MALFORMED),
    ],
)
def test_notice_ranges_end_before_the_notice(
    key: DeviceKey, first: int, last: int, outcome: Outcome
) -> None:
    drop = {"first_seq": first, "last_seq": last, "messages": 1, "points": 2**63 - 1,
            "bytes": 0, "reason": "unclean_stop", "at": 0}  # fmt: skip
    t = "edgegw/gw1/notice"
    m = raw(
        key, {"kind": "notice", "seq": 10, "r": ..., "notice": "data_dropped", "drops": [drop]}, t
    )
    assert rx_for(key).handle(t, m) is outcome


def test_boot_order_bounds_are_exact(key: DeviceKey) -> None:
    rx = rx_for(key)
    for seq in (15, 12, 18):  # out of order within boot 5: its range is 12..18
        assert rx.handle(TOPIC, msg(key, seq, boot=5)) is Outcome.VALID
    st = rx.store.states()["gw1"]
    assert st.boots == {5: [12, 18]} and st.boot == 5
    assert rx.handle(TOPIC, msg(key, 18, boot=6, readings=[])) is Outcome.CONFLICT
    assert rx.handle(TOPIC, msg(key, 19, boot=6)) is Outcome.VALID  # just above boot 5
    assert rx.handle(TOPIC, msg(key, 11, boot=4)) is Outcome.VALID  # just below boot 5
    assert rx.handle(TOPIC, msg(key, 15, boot=4, readings=[])) is Outcome.CONFLICT
    assert rx.handle(TOPIC, msg(key, 20, boot=4)) is Outcome.REPLAY  # above boot 5's lowest
    assert rx.handle(TOPIC, msg(key, 10, boot=5)) is Outcome.REPLAY  # below boot 4's highest
    assert rx.handle(TOPIC, msg(key, 21, boot=5)) is Outcome.REPLAY  # above boot 6's lowest
    a = rx.store.alerts()[-1]
    assert (a["gw"], a["seq"], a["class"], a["security"]) == ("gw1", 21, "replay", 1)
    assert rx.stats.replays == 3 and rx.stats.conflicts == 2 and rx.stats.alerts == 5


def test_old_boots_fold_into_a_floor() -> None:
    st = GatewayState()
    for b in range(1, MAX_BOOTS + 3):
        st.note_boot(b, b * 10)
        st.note_boot(b, b * 10 + 5)
    assert len(st.boots) == MAX_BOOTS
    assert st.boot_floor == (2, 25)  # boots 1 and 2 folded; the highest seq they had
    assert min(st.boots) == 3 and st.boot == MAX_BOOTS + 2
    assert st.order_problem(2, 26) is not None  # a forgotten boot: not trusted
    assert st.order_problem(MAX_BOOTS + 3, MAX_BOOTS * 10 + 30) is None
    back = GatewayState.from_bytes(st.to_bytes())
    assert (back.boots, back.boot_floor) == (st.boots, st.boot_floor)


def test_the_floor_bounds_boots_below_the_tracked_ones() -> None:
    """Folded boots still order what arrives below the oldest tracked boot: boot 0 is a
    floor like any other, and a boot between the floor and the oldest tracked boot must
    have seqs above the floor's (else the gateway was rolled back, or it is a replay)."""
    st = GatewayState()
    for b in range(0, MAX_BOOTS + 1, 1):  # boots 0, 1, ... : boot 0 folds
        st.note_boot(b * 2, b * 100)
    assert st.boot_floor == (0, 0) and min(st.boots) == 2
    assert st.order_problem(0, 50) is not None  # boot 0 is folded, not unknown
    assert st.order_problem(0, 0) is not None
    assert st.order_problem(1, 50) is None  # between boot 0 (seq 0) and boot 2 (seq 100)
    assert st.order_problem(1, 0) is not None  # not above the floor's seq
    assert "rolled back" in (st.order_problem(1, 0) or "")
    assert st.order_problem(1, 100) is not None  # not below boot 2's lowest
    st.note_boot(MAX_BOOTS * 2 + 2, 99_999)  # folds boot 2 (seq 100) as well
    assert st.boot_floor == (2, 100)
    assert st.order_problem(3, 100) is not None and st.order_problem(3, 101) is None
    back = GatewayState.from_bytes(st.to_bytes())
    assert back.boot_floor == (2, 100) and back == st
    assert GatewayState.from_bytes(GatewayState().to_bytes()).boot_floor is None


def test_a_version_1_state_still_loads() -> None:
    """Receivers upgraded in place keep their state: version 1 wrote [0, 0] for no floor."""

    def v1(floor: list[int]) -> bytes:
        return cbor2.dumps(
            {"v": 1, "seen": [], "explained": [], "boots": [[3, 5, 9]], "floor": floor}
            | {"logs": [], "current_log": None}
        )

    old = GatewayState.from_bytes(v1([0, 0]))
    assert old.boot_floor is None and old.boots == {3: [5, 9]}
    assert old.order_problem(1, 2) is None  # no floor: a lower boot is judged by boot 3
    assert GatewayState.from_bytes(v1([2, 4])).boot_floor == (2, 4)


def test_state_round_trips_exactly() -> None:
    st = GatewayState(
        seen=Intervals([(1, 5), (9, 9)]),
        explained=Intervals([(6, 7)]),
        boots={1: [1, 5], 2: [9, 9]},
        boot_floor=None,
        logs={b"L" * 16: LogWitness(10, 2, b"h" * 32, b"c" * 32, [b"f" * 32], 0, 3, 2, 123)},
        current_log=b"L" * 16,
    )
    back = GatewayState.from_bytes(st.to_bytes())
    assert back == st
    with pytest.raises(ValueError, match="version"):
        GatewayState.from_bytes(cbor2.dumps({"v": 99}))


def test_intervals_edges() -> None:
    iv = Intervals([(1, 2), (5, 6), (9, 10)])
    assert iv.holes() == [(3, 4), (7, 8)] and iv.holes(1) == [(3, 4)] and iv.holes(0) == []
    assert Intervals().holes() == [] and Intervals([(3, 3)]).holes() == []
    assert iv.covered(2, 5) == 2 and iv.covered(6, 6) == 1 and iv.covered(7, 4) == 0
    assert iv.missing() == 4 and Intervals([(1, 1)]).missing() == 0
    assert iv != [(1, 2), (5, 6), (9, 10)] and iv == Intervals(iv.pairs())
    with pytest.raises(ValueError):
        iv.add(5, 4)
    with pytest.raises(ValueError):
        Intervals.from_flat([1, 2, 3])


def test_counters_of_kinds(key: DeviceKey, tmp_path: Path) -> None:
    rx = rx_for(key)
    ev = {"model": "m", "kind": "start", "ts_ns": 1, "score": 0.5, "peak": 0.5,
          "window_end_ns": 2, "inputs": ["plc/t"]}  # fmt: skip
    t = "edgegw/gw1/event"
    assert (
        rx.handle(
            t,
            sign1(
                encode_payload(gw="gw1", seq=1, boot=1, kind="event", t_ns=1, event=ev),
                key,
                t.encode(),
            ),
        )
        is Outcome.VALID
    )
    assert (
        rx.handle(
            t,
            sign1(
                encode_payload(gw="gw1", seq=2, boot=1, kind="event", t_ns=1, event=ev),
                key,
                t.encode(),
            ),
        )
        is Outcome.VALID
    )
    state = tmp_path / "st"
    state.mkdir()
    log = AuditLog(state / AUDIT_FILE, key, boot=1)
    log.record("start")
    log.close()
    ms = audit_messages((state / AUDIT_FILE).read_bytes(), key, first_seq=3, per_message=10)
    assert rx.handle("edgegw/gw1/audit", ms[0].body) is Outcome.VALID
    s = rx.stats
    assert (s.events, s.audit_entries, s.messages_verified, s.points_verified) == (2, 3, 3, 0)


def test_a_replayed_audit_message_is_still_compared(key: DeviceKey, tmp_path: Path) -> None:
    """An audit message refused as a replay (an old boot's seq) still shows the witness
    that its entries differ from the log it holds."""
    from security.checkpoint import encode_record, parse_entries

    state = tmp_path / "st"
    state.mkdir()
    log = AuditLog(state / AUDIT_FILE, key, boot=1)
    log.record("start", n=1)
    log.close()
    first = (state / AUDIT_FILE).read_bytes()
    rx = rx_for(key)
    for m in audit_messages(first, key, first_seq=10, boot=2, per_message=10):
        assert rx.handle("edgegw/gw1/audit", m.body) is Outcome.VALID
    entries = parse_entries(first).entries
    r = entries[1].record
    assert r is not None
    edited = encode_record(
        seq=r.seq, boot=r.boot, ts_ns=r.ts_ns, mono_ns=r.mono_ns, event=r.event,
        detail={"n": 2}, prev=r.prev,
    )  # fmt: skip
    data = b"".join(edited if i == 1 else e.raw for i, e in enumerate(entries))
    m = audit_messages(data, key, first_seq=50, boot=1, per_message=10)[0]
    assert rx.handle("edgegw/gw1/audit", m.body) is Outcome.REPLAY
    assert [a["class"] for a in rx.store.alerts()] == ["replay", "audit_rewritten"]
    found = [(a["gw"], a["seq"], a["class"]) for a in rx.store.alerts()]
    assert found == [("gw1", 50, "replay"), ("gw1", 50, "audit_rewritten")]  # named
    assert rx.store.audit_copy("gw1") == first  # nothing overwritten


def test_unprotected_labels(key: DeviceKey) -> None:
    m = sign1(b"x", key, b"t", encode_unprotected({-65537: 1, "n" * 64: 2}))
    env = parse1(m)
    assert env.unprotected == {-65537: 1, "n" * 64: 2}
    env.verify(key.public_key, b"t")
    body = cbor2.loads(m).value
    sixteen = {i + 100: i for i in range(16)}
    parse1(cbor2.dumps(cbor2.CBORTag(18, [body[0], sixteen, body[2], body[3]])))
    for bad in ({i + 100: i for i in range(17)}, {"n" * 65: 1}, {b"bytes": 1}):
        with pytest.raises(MalformedMessage):
            parse1(cbor2.dumps(cbor2.CBORTag(18, [body[0], bad, body[2], body[3]])))
    for reserved in (0x1C, 0x1D, 0x1E):
        with pytest.raises(MalformedMessage, match="reserved"):
            parse1(bytes([0xD2, 0x80 | reserved]) + m[2:])
