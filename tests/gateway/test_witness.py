"""The audit witness: every entry of a gateway's audit log checked in file order as it
arrives (in any order), what it held remembered across restarts, and a log that shrinks,
is rewritten, rolled back or replaced without notice raised as an alert."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from gateway.receiver import Outcome, Receiver, SqliteStore
from gateway.wire import encode_payload
from security import AUDIT_FILE, AuditLog, DeviceKey, sign1
from security import Outcome as AuditOutcome
from security.audit import verify_bytes
from security.checkpoint import encode_record, parse_entries
from security.keyring import init_keys, rotate
from tests.gateway.auditmsgs import audit_messages, log_id_of

TOPIC = "edgegw/gw1/audit"


def write_log(
    state: Path, key: DeviceKey, records: int, *, boot: int = 1, close: bool = True
) -> bytes:
    log = AuditLog(state / AUDIT_FILE, key, boot=boot, checkpoint_every=4)
    for i in range(records):
        log.record("link_up", host="::1", n=i)
    if close:
        log.close()
    else:  # a crash: the file stays as it is
        assert log._fd is not None
        import os

        os.close(log._fd)
        log._fd = None
    return (state / AUDIT_FILE).read_bytes()


@pytest.fixture
def gw(tmp_path: Path) -> tuple[Path, DeviceKey]:
    state = tmp_path / "gw"
    key, _ = init_keys(state)
    return state, key


def receiver(key: DeviceKey, store: SqliteStore | None = None) -> Receiver:
    return Receiver({"gw1": key.public_key}, "edgegw", store=store or SqliteStore())


def alerts(rx: Receiver) -> list[str]:
    return [a["class"] for a in rx.store.alerts()]


def test_a_witnessed_log_is_the_gateways_file_byte_for_byte(gw: tuple[Path, DeviceKey]) -> None:
    state, key = gw
    data = write_log(state, key, 10)
    rx = receiver(key)
    for m in audit_messages(data, key):
        assert rx.handle(TOPIC, m.body) is Outcome.VALID
    assert alerts(rx) == []
    copy = rx.store.audit_copy("gw1")
    assert copy == data
    assert verify_bytes(copy, [key.public_key]).outcome is AuditOutcome.OK
    w = rx.store.states()["gw1"].logs[log_id_of(data)]
    assert (w.size, w.next_offset, w.checkpoints) == (10, len(data), 4)  # open, 4, 8, close


def test_any_delivery_order_gives_the_same_result(gw: tuple[Path, DeviceKey]) -> None:
    state, key = gw
    data = write_log(state, key, 23)
    msgs = audit_messages(data, key, per_message=2)
    random.Random(5).shuffle(msgs)
    rx = receiver(key)
    for m in msgs:
        assert rx.handle(TOPIC, m.body) is Outcome.VALID
    assert alerts(rx) == [] and rx.store.audit_copy("gw1") == data
    assert rx.store.states()["gw1"].logs[log_id_of(data)].size == 23


def test_a_receiver_enrolled_late_witnesses_from_where_it_starts(
    gw: tuple[Path, DeviceKey],
) -> None:
    state, key = gw
    data = write_log(state, key, 12)
    msgs = audit_messages(data, key)
    rx = receiver(key)
    for m in msgs[2:]:
        assert rx.handle(TOPIC, m.body) is Outcome.VALID
    assert alerts(rx) == []
    w = rx.store.states()["gw1"].logs[log_id_of(data)]
    assert w.started_at == msgs[2].offset and w.next_offset == len(data)


def test_the_witness_survives_a_restart(gw: tuple[Path, DeviceKey], tmp_path: Path) -> None:
    state, key = gw
    data = write_log(state, key, 12)
    msgs = audit_messages(data, key)
    db = tmp_path / "rx.db"
    store = SqliteStore(db)
    rx = receiver(key, store)
    half = len(msgs) // 2
    for m in msgs[:half]:
        rx.handle(TOPIC, m.body)
    store.close()
    store = SqliteStore(db)
    rx = receiver(key, store)
    for m in msgs[half:]:
        assert rx.handle(TOPIC, m.body) is Outcome.VALID
    assert alerts(rx) == [] and store.audit_copy("gw1") == data


def test_a_log_cut_at_a_checkpoint_is_seen(gw: tuple[Path, DeviceKey]) -> None:
    """The log is cut back to an earlier checkpoint (offline verify calls that OK) and the
    daemon starts again: its open checkpoint lands where the witness holds other bytes and
    states fewer records than it saw."""
    state, key = gw
    log = AuditLog(state / AUDIT_FILE, key, boot=1, checkpoint_every=4)
    for i in range(6):
        log.record("link_up", n=i)
    log.close()
    short = (state / AUDIT_FILE).read_bytes()  # 6 records, ends with a close checkpoint
    full = write_log(state, key, 6, boot=2)  # 12 records
    rx = receiver(key)
    for m in audit_messages(full, key):
        rx.handle(TOPIC, m.body)
    assert alerts(rx) == []
    (state / AUDIT_FILE).write_bytes(short)  # the cut
    assert verify_bytes(short, [key.public_key]).outcome is AuditOutcome.OK
    after = write_log(state, key, 1, boot=3)
    msgs = audit_messages(after, key, offset=len(short), first_seq=100, boot=3)
    for m in msgs:
        assert rx.handle(TOPIC, m.body) is Outcome.VALID
    found = alerts(rx)
    assert found and found[0] == "audit_shrank", found


def test_a_rolled_back_log_is_seen(gw: tuple[Path, DeviceKey], tmp_path: Path) -> None:
    """The whole state directory restored from a backup (log and the outbox's marker): the
    gateway publishes again from the old marker, and the entries differ from what the
    witness holds at those offsets."""
    state, key = gw
    data = write_log(state, key, 5)
    backup = tmp_path / "backup"
    shutil.copytree(state, backup)
    newer = write_log(state, key, 7, boot=2)
    rx = receiver(key)
    for m in audit_messages(newer, key):
        rx.handle(TOPIC, m.body)
    shutil.rmtree(state)
    shutil.copytree(backup, state)
    restored = write_log(state, key, 2, boot=2)
    msgs = audit_messages(restored, key, offset=len(data), first_seq=50, boot=3)
    for m in msgs:
        rx.handle(TOPIC, m.body)
    found = alerts(rx)
    assert found and set(found) <= {"audit_rewritten", "audit_shrank"}, found


def test_a_new_log_needs_the_gateways_reset_notice(gw: tuple[Path, DeviceKey]) -> None:
    state, key = gw
    first = write_log(state, key, 3)
    rx = receiver(key)
    for m in audit_messages(first, key):
        rx.handle(TOPIC, m.body)
    (state / AUDIT_FILE).unlink()
    second = write_log(state, key, 2, boot=2)
    announced = audit_messages(
        second, key, first_seq=20, reset={"old_log": log_id_of(first), "reason": "damaged"}
    )
    for m in announced:
        assert rx.handle(TOPIC, m.body) is Outcome.VALID
    found = rx.store.alerts()
    assert [(a["class"], a["security"]) for a in found] == [("audit_reset", 0)]
    assert rx.store.audit_copy("gw1") == second
    (state / AUDIT_FILE).unlink()
    third = write_log(state, key, 2, boot=3)
    for m in audit_messages(third, key, first_seq=40):  # no reset notice
        rx.handle(TOPIC, m.body)
    assert [(a["class"], a["security"]) for a in rx.store.alerts()][1:] == [("audit_new_log", 1)]


def test_entries_that_do_not_chain_are_alerted(gw: tuple[Path, DeviceKey]) -> None:
    """A genuine key publishing a log whose records do not link (a bug, or a file edited
    and then published by a compromised daemon) is caught by the witness, not only offline."""
    state, key = gw
    data = write_log(state, key, 6)
    parsed = parse_entries(data)
    r = parsed.entries[2].record
    assert r is not None
    forged = encode_record(
        seq=r.seq,
        boot=r.boot,
        ts_ns=r.ts_ns,
        mono_ns=r.mono_ns,
        event=r.event,
        detail={**r.detail, "host": "elsewhere"},
        prev=r.prev,
    )
    edited = b"".join(forged if i == 2 else e.raw for i, e in enumerate(parsed.entries))
    rx = receiver(key)
    for m in audit_messages(edited, key):
        assert rx.handle(TOPIC, m.body) is Outcome.VALID
    assert set(alerts(rx)) == {"audit_inconsistent"}
    details = " ".join(a["detail"] for a in rx.store.alerts())
    assert "does not extend the chain" in details and "Merkle root" in details


def test_a_rotated_key_is_learned_from_the_audit_log(gw: tuple[Path, DeviceKey]) -> None:
    """key_rotated records carry the certificate: the witness learns the new key from a
    verified message, and checkpoints signed by it verify."""
    state, old = gw
    log = AuditLog(state / AUDIT_FILE, old, boot=1)
    rot = rotate(state, audit=log)
    log.close()
    data = (state / AUDIT_FILE).read_bytes()
    rx = receiver(old)
    # the old key signs the message (as if it had been sent before the daemon restarted)
    for m in audit_messages(data, old, per_message=10):
        assert rx.handle(TOPIC, m.body) is Outcome.VALID
    assert alerts(rx) == [] and rx.stats.keys_learned == 1
    p = encode_payload(gw="gw1", seq=30, boot=2, kind="telemetry", t_ns=1, readings=[])
    topic = "edgegw/gw1/telemetry"
    assert rx.handle(topic, sign1(p, rot.key, topic.encode())) is Outcome.VALID


def test_a_rollback_that_reuses_seqs_is_still_witnessed(gw: tuple[Path, DeviceKey]) -> None:
    """After a rollback the gateway also reuses seqs, so its audit messages are conflicts
    and are not stored; the witness still compares their entries and says what happened."""
    state, key = gw
    data = write_log(state, key, 3)
    rx = receiver(key)
    for m in audit_messages(data, key):
        rx.handle(TOPIC, m.body)
    other = write_log(state, key, 2, boot=2)
    msgs = audit_messages(other, key, offset=len(data), first_seq=50)
    assert rx.handle(TOPIC, msgs[0].body) is Outcome.VALID
    (state / AUDIT_FILE).write_bytes(data)  # rolled back, with the outbox (seqs reused)
    rolled = write_log(state, key, 1, boot=2)
    again = audit_messages(rolled, key, offset=len(data), first_seq=msgs[0].seq)
    assert rx.handle(TOPIC, again[0].body) is Outcome.CONFLICT
    assert alerts(rx) == ["conflict", "audit_rewritten"]
    # the copy holds the log up to the rollback and the entries of the one message stored
    # after it (seq 50); the conflicting rolled-back entries were compared, not stored
    end = msgs[1].offset if len(msgs) > 1 else len(other)
    assert rx.store.audit_copy("gw1") == other[:end] and other[: len(data)] == data
