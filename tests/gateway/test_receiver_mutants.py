"""Survivors of the receiver's mutation run (mutmut 3 over gateway/receiver/core.py,
schema.py, state.py) that mattered: exact bounds of a version-1 reading, every field of a
decoded payload of each kind and version, boot/seq order with several boots, what an
alert row names, the drop counters, a group that really commits as one, what an output
and the latency figures get, and the rate limit of rejection logs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cbor2
import pytest

from gateway.receiver import GatewayState, Outcome, Receiver, SqliteStore, schema
from gateway.receiver import core as rx_core
from gateway.receiver.schema import Payload, PayloadError
from gateway.wire import encode_payload
from security import AUDIT_FILE, AuditLog, DeviceKey, sign1
from security.cose import parse1
from security.keyring import init_keys
from tests.gateway.auditmsgs import audit_messages, log_id_of
from tests.gateway.test_receiver import TOPIC, msg, notice
from tests.gateway.test_receiver_edges import raw, rx_for
from tests.gateway.test_witness import write_log

TS = 1_700_000_000_000_000_000


@pytest.fixture
def key(tmp_path: Path) -> DeviceKey:
    return DeviceKey.load_or_create(tmp_path / "gw")[0]


# -- a version-1 reading: its exact bounds ---------------------------------------------


@pytest.mark.parametrize(
    ("reading", "outcome"),
    [
        (["a", 0, 1.0, 0], Outcome.VALID),  # ts 0 is a uint64
        (["a" * 512, 1, 1.0, 0], Outcome.VALID),  # the longest tag
        (["a", 1, 1.0, 0, "why"], Outcome.VALID),  # five elements: a reason, no server_ts
        (["a", 1, 1.0, 0, "x" * 1024], Outcome.VALID),  # the longest reason
        (["a", 1, 1.0, 0, "x" * 1025], Outcome.MALFORMED),
        (["a", 1, 1.0, 0, None, None, 1], Outcome.MALFORMED),  # seven elements
        (["a", 1.5, 1.0, 0], Outcome.MALFORMED),  # a float timestamp
        ([b"a", 1, 1.0, 0], Outcome.MALFORMED),  # a tag that is bytes, not text
    ],
)
def test_v1_reading_bounds(key: DeviceKey, reading: list[Any], outcome: Outcome) -> None:
    rx = rx_for(key)
    assert rx.handle(TOPIC, raw(key, {"r": [reading]})) is outcome
    if outcome is Outcome.VALID:
        assert rx.stats.points_verified == 1
    else:
        [a] = rx.store.alerts()
        assert (a["gw"], a["class"]) == ("gw1", "signed_malformed")


# -- a decoded payload: every field, each kind, each version ---------------------------

EVENT = {"model": "m", "kind": "start", "ts_ns": 1, "score": 0.5, "peak": 0.5,
         "window_end_ns": 2, "inputs": ["plc/t"]}  # fmt: skip
DROP = {"first_seq": 1, "last_seq": 2, "messages": 2, "points": 3, "bytes": 4,
        "reason": "outbox_full", "at": 5}  # fmt: skip
RESULT = {"id": "c1", "digest": b"d" * 32, "kid": b"k" * 16, "op": "write", "outcome": "done",
          "reason": None, "detail": None, "tag": "plc/t", "value": 1, "before": 0, "after": 1,
          "version": 3, "received": 10, "done": 11, "again": False}  # fmt: skip
AUDIT = {"log": b"L" * 16, "offset": 0, "base": [0, b"h" * 32, b"\x00" * 32, []],
         "entries": [b"e"]}  # fmt: skip
KINDS: dict[str, dict[str, Any]] = {
    "event": {"event": EVENT},
    "notice": {"notice": "data_dropped", "drops": [DROP]},
    "command_result": {"result": RESULT},
    "audit": AUDIT,
}


def decoded(kind: str, version: int, **extra: Any) -> Payload:
    body = encode_payload(gw="gw1", seq=7, boot=3, kind=kind, t_ns=11, version=version, **extra)
    p = schema.decode(body)
    assert (p.gw, p.seq, p.boot, p.kind, p.t_ns, p.version) == ("gw1", 7, 3, kind, 11, version)
    assert p.body == cbor2.loads(body)
    return p


@pytest.mark.parametrize("version", [1, 2])
def test_telemetry_keeps_every_field(version: int) -> None:
    r = [["plc/a", TS, 1.5, 0], ["plc/b", TS, 2, 1]]
    p = decoded("telemetry", version, readings=r)
    assert p.points == 2 and p.tags == ["plc/a", "plc/b"]
    assert [list(x) for x in p.readings] == r


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_other_kinds_keep_every_field(kind: str, version: int) -> None:
    p = decoded(kind, version, **KINDS[kind])
    if kind == "event":
        assert p.event == EVENT
    elif kind == "notice":
        assert p.drops == [schema.Drop(1, 2, 2, 3, 4, "outbox_full", 5)]
    elif kind == "command_result":
        assert p.command_result == RESULT
    else:
        assert p.audit is not None and p.audit.log == b"L" * 16 and p.audit.entries == [b"e"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("digest", b"d" * 31), ("digest", b"d" * 33), ("kid", b"k" * 15), ("digest", "d" * 32)],
)
def test_a_hash_of_the_wrong_size_is_refused(field: str, value: Any) -> None:
    body = encode_payload(
        gw="gw1", seq=7, boot=3, kind="command_result", t_ns=1, result={**RESULT, field: value}
    )
    with pytest.raises(PayloadError, match=f"result.{field}"):
        schema.decode(body)


# -- boot/seq order: several boots, boot 0 ---------------------------------------------


def test_order_with_three_boots(key: DeviceKey) -> None:
    rx = rx_for(key)
    for boot, seqs in ((1, (1, 5)), (2, (10, 15)), (3, (20, 25))):
        for seq in seqs:
            assert rx.handle(TOPIC, msg(key, seq, boot=boot)) is Outcome.VALID
    # between boot 2's highest and boot 3's lowest: a late message of boot 2 or 3
    assert rx.handle(TOPIC, msg(key, 16, boot=2)) is Outcome.VALID
    assert rx.handle(TOPIC, msg(key, 17, boot=3)) is Outcome.VALID
    # at or below the highest seq of the boot just before: a replay or a rollback
    assert rx.handle(TOPIC, msg(key, 12, boot=3)) is Outcome.REPLAY
    # at or above the LOWEST seq of the boot just after (boot 1's range 1..5 is below)
    assert rx.handle(TOPIC, msg(key, 13, boot=1)) is Outcome.REPLAY
    assert [(a["seq"], a["class"]) for a in rx.store.alerts()] == [(12, "replay"), (13, "replay")]


def test_order_bounds_are_inclusive() -> None:
    st = GatewayState()
    st.note_boot(5, 12)
    st.note_boot(5, 18)
    assert st.order_problem(6, 18) is not None  # equal to the earlier boot's highest
    assert st.order_problem(6, 19) is None
    assert st.order_problem(4, 12) is not None  # equal to the later boot's lowest
    assert st.order_problem(4, 11) is None


def test_boot_zero_is_a_boot_like_any_other(key: DeviceKey) -> None:
    rx = rx_for(key)
    assert rx.handle(TOPIC, msg(key, 1, boot=0)) is Outcome.VALID
    assert rx.handle(TOPIC, msg(key, 2, boot=1)) is Outcome.VALID


# -- what alert rows name ----------------------------------------------------------------


def test_alert_rows_name_the_gateway_and_seq(key: DeviceKey) -> None:
    rx = rx_for(key)
    assert rx.handle(TOPIC, msg(key, 4)) is Outcome.VALID
    assert rx.handle(TOPIC, msg(key, 4, [["plc/t", 1, 9.0, 0]])) is Outcome.CONFLICT
    moved = sign1(
        encode_payload(gw="gw1", seq=6, boot=1, kind="event", t_ns=1, event=EVENT),
        key,
        TOPIC.encode(),
    )  # an event's payload on the telemetry topic
    assert rx.handle(TOPIC, moved) is Outcome.TOPIC_MISMATCH
    rows = [(a["gw"], a["seq"], a["class"], a["security"]) for a in rx.store.alerts()]
    assert rows == [("gw1", 4, "conflict", 1), ("gw1", 6, "topic_mismatch", 1)]


# -- counters ----------------------------------------------------------------------------


def test_dropped_seqs_count_only_seqs_not_seen_and_add_up(key: DeviceKey) -> None:
    rx = rx_for(key)
    t = "edgegw/gw1/notice"
    for seq in (1, 3):
        assert rx.handle(TOPIC, msg(key, seq)) is Outcome.VALID
    assert rx.handle(t, notice(key, 10, 1, 5)) is Outcome.VALID  # 2, 4, 5: 3 never came
    assert rx.stats.dropped_seqs == 3
    assert rx.handle(t, notice(key, 11, 6, 7)) is Outcome.VALID
    assert rx.stats.dropped_seqs == 5 and rx.stats.notices == 2
    assert rx.stats.dropped_points == 60


def test_missing_lists_at_most_20_holes_and_no_gateway_without_one(key: DeviceKey) -> None:
    rx = rx_for(key)
    assert rx.handle(TOPIC, msg(key, 1)) is Outcome.VALID
    assert rx.missing() == {}  # one seq: nothing between first and last
    for seq in range(3, 3 + 2 * 22, 2):  # 22 holes: 2, 4, ..., 44
        rx.handle(TOPIC, msg(key, seq))
    assert rx.missing()["gw1"] == [(s, s) for s in range(2, 42, 2)]
    assert rx.stats.gaps == 22


# -- a group: one transaction, not the one-by-one fallback --------------------------------


def test_a_group_commits_as_one_without_falling_back(
    key: DeviceKey, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key2 = DeviceKey.load_or_create(tmp_path / "k2")[0]
    t2 = "edgegw/gw2/telemetry"
    rx = Receiver(
        {"gw1": key.public_key, "gw2": key2.public_key},
        "edgegw",
        store=SqliteStore(tmp_path / "g.db"),
    )
    commits = 0
    real_batch = rx.store.batch

    def counting_batch() -> Any:
        nonlocal commits
        commits += 1
        return real_batch()

    rx.store.batch = counting_batch  # type: ignore[method-assign]
    items = [(t2, msg(key2, 1, gw="gw2", topic=t2)), (TOPIC, msg(key, 2)), (TOPIC, msg(key, 1))]
    with caplog.at_level(logging.WARNING, logger="edgegw.receiver"):
        assert rx.handle_many([(t, b, None) for t, b in items]) == [Outcome.VALID] * 3
    assert commits == 1, "the group was not stored in one transaction"
    assert "rolled back" not in caplog.text
    assert rx.received("gw1") == [(1, 2)] and rx.received("gw2") == [(1, 1)]


# -- outputs -----------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.got: list[tuple[int, bytes, int]] = []

    def write(self, p: Payload, kid: bytes, received_ns: int) -> None:
        self.got.append((p.seq, kid, received_ns))

    def close(self) -> None:
        pass


def test_a_sink_gets_the_kid_and_the_receive_time(key: DeviceKey) -> None:
    sink = Recorder()
    rx = Receiver({"gw1": key.public_key}, "edgegw", sink, track_latency=True)
    readings = [["plc/t", TS, 1.5, 0], ["plc/u", TS - 2_000_000, 2.5, 0]]
    assert rx.handle(TOPIC, msg(key, 1, readings), TS + 5_000_000) is Outcome.VALID
    assert sink.got == [(1, key.kid, TS + 5_000_000)]
    assert rx.latencies_ms is not None and list(rx.latencies_ms) == [5.0, 7.0]


# -- rejection logs: anyone's garbage is rate-limited, a SECURITY event never ------------


def test_rejections_anyone_can_send_are_logged_once_per_interval(
    key: DeviceKey, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    rx = rx_for(key)
    now = [1000.0]
    monkeypatch.setattr(rx_core.time, "monotonic", lambda: now[0])

    def lines() -> list[tuple[int, str]]:
        out = [(r.levelno, r.getMessage()) for r in caplog.records]
        caplog.clear()
        return out

    with caplog.at_level(logging.WARNING, logger="edgegw.receiver"):
        for _ in range(3):
            assert rx.handle(TOPIC, b"\x00garbage") is Outcome.MALFORMED
        [(level, text)] = lines()
        assert level == logging.WARNING and "more like it" not in text
        # another class, or another gateway, has its own interval: logged at once
        assert rx.handle("edgegw/gw9/telemetry", msg(key, 1)) is Outcome.UNKNOWN_GATEWAY
        assert rx.handle("edgegw/gw9/telemetry", b"\x00garbage") is Outcome.MALFORMED
        assert [t.split(": ")[1] for _, t in lines()] == ["unknown_gateway", "malformed"]
        now[0] += rx_core.LOG_EVERY_S  # the interval has passed, exactly
        assert rx.handle(TOPIC, b"\x00garbage") is Outcome.MALFORMED
        [(_, text)] = lines()
        assert text.endswith("(and 2 more like it)")
        now[0] += rx_core.LOG_EVERY_S
        assert rx.handle(TOPIC, b"\x00garbage") is Outcome.MALFORMED
        [(_, text)] = lines()
        assert "more like it" not in text
        # a signed message off the schema is a SECURITY event: every one is logged
        for seq in (1, 2):
            bad = raw(key, {"seq": seq, "r": [["", 1, 1.0, 0]]})
            assert rx.handle(TOPIC, bad) is Outcome.MALFORMED
        got = lines()
        assert [lvl for lvl, _ in got] == [logging.ERROR] * 2
        assert all(t.startswith("SECURITY: gateway gw1: malformed") for _, t in got)


def test_audit_entries_add_up_over_messages(key: DeviceKey, tmp_path: Path) -> None:
    state = tmp_path / "st"
    state.mkdir()
    log = AuditLog(state / AUDIT_FILE, key, boot=1)
    for n in range(3):
        log.record("start", n=n)
    log.close()
    ms = audit_messages((state / AUDIT_FILE).read_bytes(), key, per_message=2)
    assert len(ms) >= 2
    rx = rx_for(key)
    for m in ms:
        assert rx.handle("edgegw/gw1/audit", m.body) is Outcome.VALID
    total = sum(len(entries_of(m.body)) for m in ms)
    assert rx.stats.audit_entries == total and total > 2
    assert rx.store.alerts() == []


def entries_of(body: bytes) -> list[bytes]:
    audit = schema.decode(parse1(body).payload).audit
    assert audit is not None
    return audit.entries


def test_witness_alerts_are_counted_and_logged_by_severity(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A log reset the gateway announced is a notice (WARNING); a new log without one is a
    SECURITY event (ERROR); both are stored, counted, and logged naming gateway and seq."""
    state = tmp_path / "gw"
    key, _ = init_keys(state)
    rx = rx_for(key)
    t = "edgegw/gw1/audit"
    first = write_log(state, key, 3)
    for m in audit_messages(first, key):
        assert rx.handle(t, m.body) is Outcome.VALID
    (state / AUDIT_FILE).unlink()
    second = write_log(state, key, 2, boot=2)
    reset = {"old_log": log_id_of(first), "reason": "damaged"}
    with caplog.at_level(logging.WARNING, logger="edgegw.receiver"):
        for m in audit_messages(second, key, first_seq=20, reset=reset):
            assert rx.handle(t, m.body) is Outcome.VALID
        (state / AUDIT_FILE).unlink()
        third = write_log(state, key, 2, boot=3)
        for m in audit_messages(third, key, first_seq=40):  # no reset notice
            assert rx.handle(t, m.body) is Outcome.VALID
    found = [(a["gw"], a["seq"], a["class"], a["security"]) for a in rx.store.alerts()]
    assert found == [("gw1", 20, "audit_reset", 0), ("gw1", 40, "audit_new_log", 1)]
    assert rx.stats.alerts == 2
    logged = [(r.levelno, r.getMessage()) for r in caplog.records if "audit_" in r.getMessage()]
    assert [(lvl, text.split(": audit_")[0]) for lvl, text in logged] == [
        (logging.WARNING, "notice: gateway gw1, seq 20"),
        (logging.ERROR, "SECURITY: gateway gw1, seq 40"),
    ]


def test_keys_learned_add_up_over_messages(tmp_path: Path) -> None:
    """Two rotations, their records in two audit messages: two keys learned."""
    from security.keyring import rotate

    state = tmp_path / "gw"
    old, _ = init_keys(state)
    log = AuditLog(state / AUDIT_FILE, old, boot=1)
    rotate(state, audit=log)
    log.record("link_up", n=1)
    rotate(state, audit=log)
    log.close()
    data = (state / AUDIT_FILE).read_bytes()
    ms = audit_messages(data, old, per_message=2)
    assert len(ms) >= 2
    rx = rx_for(old)
    for m in ms:
        assert rx.handle("edgegw/gw1/audit", m.body) is Outcome.VALID
    assert rx.store.alerts() == [] and rx.stats.keys_learned == 2
