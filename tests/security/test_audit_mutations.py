"""Tampering with an audit log, at every position: each kind of change is detected, classified
right, and the first bad record is named.

One ~200-record log (three boots, checkpoints every 50 records plus open/close) is built once;
each test applies one kind of tampering at every record position and verifies the result.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from security.audit import AuditLog, Outcome, Problem, VerifyReport, verify_bytes
from security.checkpoint import (
    ZERO_HASH,
    Entry,
    MerkleFrontier,
    checkpoint_hash,
    decode_checkpoint_payload,
    decode_record,
    encode_record,
    genesis_head,
    parse_entries,
    sign_checkpoint,
)
from security.keys import DeviceKey

N_RECORDS = 200
EVERY = 50
EVENTS = ("link_up", "link_down", "buffer_drop", "config_change", "tls_failure", "clock_jump")


def build_log(path: Path, key: DeviceKey, seed: int) -> bytes:
    """Three boots of ~N_RECORDS/3 records each, with varied details."""
    rnd = random.Random(seed)
    per_boot = [N_RECORDS // 3, N_RECORDS // 3, N_RECORDS - 2 * (N_RECORDS // 3)]
    for boot, count in enumerate(per_boot, start=1):
        with AuditLog(path, key, boot=boot, checkpoint_every=EVERY) as log:
            log.record("start", version="0.1.0")
            for i in range(count - 2):
                ev = EVENTS[rnd.randrange(len(EVENTS))]
                log.record(ev, host="::1", port=1883, n=rnd.randrange(10**6), note="x" * (i % 7))
            log.record("stop", reason="test")
    return path.read_bytes()


@dataclass
class Log:
    data: bytes
    entries: list[Entry]
    key: DeviceKey

    @property
    def record_entries(self) -> list[int]:
        """Entry index of each record, by seq."""
        return [i for i, e in enumerate(self.entries) if e.record is not None]

    def join(self, raws: list[bytes]) -> bytes:
        return b"".join(raws)

    def raws(self) -> list[bytes]:
        return [e.raw for e in self.entries]

    def verify(self, data: bytes) -> VerifyReport:
        return verify_bytes(data, [self.key.public_key])


@pytest.fixture(scope="module")
def lg(tmp_path_factory: pytest.TempPathFactory) -> Log:
    key = DeviceKey(Ed25519PrivateKey.generate())
    data = build_log(tmp_path_factory.mktemp("audit") / "a.cborseq", key, seed=1)
    parsed = parse_entries(data)
    assert parsed.malformed_at is None and not parsed.torn
    lg = Log(data, parsed.entries, key)
    assert len(lg.record_entries) == N_RECORDS
    rep = lg.verify(data)
    assert rep.ok and rep.sealed == N_RECORDS, rep
    return lg


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Log:
    """Another device's log with the same shape: same seqs, boots and events."""
    key = DeviceKey(Ed25519PrivateKey.generate())
    data = build_log(tmp_path_factory.mktemp("audit") / "b.cborseq", key, seed=1)
    return Log(data, parse_entries(data).entries, key)


def check_all(
    lg: Log,
    mutate: Callable[[int], bytes | None],
    expect: Callable[[int, VerifyReport], None],
    positions: range = range(N_RECORDS),
) -> int:
    """Apply ``mutate`` at every position; collect every mis-classification, then fail."""
    wrong: list[str] = []
    tried = 0
    for k in positions:
        data = mutate(k)
        if data is None:
            continue
        tried += 1
        rep = lg.verify(data)
        try:
            expect(k, rep)
        except AssertionError as exc:
            wrong.append(
                f"position {k}: {exc or ''} got {rep.outcome} {rep.problem} "
                f"first_bad={rep.first_bad}: {rep.message}"
            )
    assert not wrong, f"{len(wrong)}/{tried} not classified right:\n" + "\n".join(wrong[:20])
    return tried


def tampered(problem: Problem) -> Callable[[int, VerifyReport], None]:
    """Tampering of this kind, naming exactly record k."""

    def expect(k: int, rep: VerifyReport) -> None:
        assert rep.outcome is Outcome.TAMPERED and rep.problem is problem
        assert rep.first_bad == rep.last_bad == k
        assert rep.sealed <= k  # nothing from the bad record on counts as verified
        assert rep.exit_code == 1

    return expect


def tampered_within(problem: Problem, exact: bool = True) -> Callable[[int, VerifyReport], None]:
    """Like tampered(), but for the last record (nothing after it links to it) a range
    ending with it is the honest answer: an edit there looks like a re-linked run."""

    def expect(k: int, rep: VerifyReport) -> None:
        if exact and k < N_RECORDS - 1:
            return tampered(problem)(k, rep)
        assert rep.outcome is Outcome.TAMPERED and rep.problem is problem
        assert rep.first_bad is not None and rep.last_bad is not None
        assert rep.first_bad <= k <= rep.last_bad and rep.sealed <= rep.first_bad

    return expect


# -- records --------------------------------------------------------------------------------


def test_edited_field_of_every_record_is_named(lg: Log) -> None:
    def mutate(k: int) -> bytes:
        raws = lg.raws()
        i = lg.record_entries[k]
        obj = cbor2.loads(raws[i])
        detail = dict(obj["detail"])
        detail["n"] = detail.get("n", 0) + 1  # e.g. hide one more dropped batch
        obj["detail"] = detail
        raws[i] = cbor2.dumps(obj, canonical=True)
        return lg.join(raws)

    assert check_all(lg, mutate, tampered_within(Problem.EDITED)) == N_RECORDS


@pytest.mark.parametrize("field", ["seq", "boot", "ts_ns", "event", "prev"])
def test_edited_header_field_of_every_record_is_named(lg: Log, field: str) -> None:
    def mutate(k: int) -> bytes:
        raws = lg.raws()
        i = lg.record_entries[k]
        obj = cbor2.loads(raws[i])
        v = obj[field]
        obj[field] = (
            (v + 1 if type(v) is int else ("stop" if v != "stop" else "start"))
            if not isinstance(v, bytes)
            else bytes(32)
        )
        raws[i] = cbor2.dumps(obj, canonical=True)
        return lg.join(raws)

    assert check_all(lg, mutate, tampered_within(Problem.EDITED)) == N_RECORDS


def test_flipped_byte_anywhere_in_every_record_is_named(lg: Log) -> None:
    rnd = random.Random(7)

    def mutate(k: int) -> bytes:
        e = lg.entries[lg.record_entries[k]]
        data = bytearray(lg.data)
        off = e.offset + rnd.randrange(len(e.raw))
        data[off] ^= 1 << rnd.randrange(8)
        return bytes(data)

    def expect(k: int, rep: VerifyReport) -> None:
        # A flip may leave valid CBOR (an edited record) or break it (a damaged entry);
        # either way it is tampering at exactly this record (or in a range ending with the
        # last record, see tampered_within).
        assert rep.outcome is Outcome.TAMPERED
        assert rep.problem in (Problem.EDITED, Problem.MALFORMED)
        if k < N_RECORDS - 1:
            assert rep.first_bad == rep.last_bad == k
        else:
            assert rep.first_bad is not None and rep.last_bad is not None
            assert rep.first_bad <= k <= rep.last_bad

    for _ in range(3):  # three random flips per record
        check_all(lg, mutate, expect)


def test_deleted_record_at_every_position_is_named(lg: Log) -> None:
    def mutate(k: int) -> bytes:
        raws = lg.raws()
        del raws[lg.record_entries[k]]
        return lg.join(raws)

    assert check_all(lg, mutate, tampered(Problem.DELETED)) == N_RECORDS


def test_deleted_run_of_records_is_named(lg: Log) -> None:
    def mutate(k: int) -> bytes | None:
        if k + 5 > N_RECORDS:
            return None
        drop = set(lg.record_entries[k : k + 5])
        return lg.join([r for i, r in enumerate(lg.raws()) if i not in drop])

    check_all(lg, mutate, tampered(Problem.DELETED))


def test_swapped_neighbours_at_every_position_are_named(lg: Log) -> None:
    def mutate(k: int) -> bytes | None:
        if k + 1 >= N_RECORDS:
            return None
        raws = lg.raws()
        i, j = lg.record_entries[k], lg.record_entries[k + 1]
        raws[i], raws[j] = raws[j], raws[i]
        return lg.join(raws)

    assert check_all(lg, mutate, tampered(Problem.REORDERED)) == N_RECORDS - 1


def test_record_moved_later_is_named(lg: Log) -> None:
    def mutate(k: int) -> bytes | None:
        if k + 10 >= N_RECORDS:
            return None
        raws = lg.raws()
        i, j = lg.record_entries[k], lg.record_entries[k + 10]
        moved = raws.pop(i)
        raws.insert(j, moved)  # after seq k+10 (indices shifted by the pop)
        return lg.join(raws)

    check_all(lg, mutate, tampered(Problem.REORDERED))


def forged(lg: Log, k: int) -> bytes:
    """The best an attacker without the key can do: a record that fits at seq k."""
    if k == 0:
        cp0 = decode_checkpoint_payload(cbor2.loads(lg.entries[0].raw).value[2], b"", b"")
        prev = genesis_head(cp0.log_id)
    else:
        prev = lg.entries[lg.record_entries[k - 1]].record.hash  # type: ignore[union-attr]
    at = lg.entries[lg.record_entries[min(k, N_RECORDS - 1)]].record
    assert at is not None
    return encode_record(
        seq=k,
        boot=at.boot,
        ts_ns=at.ts_ns,
        mono_ns=at.mono_ns,
        event="config_change",
        detail={"sha256": "00" * 32},
        prev=prev,
    )


def test_forged_record_inserted_at_every_position_is_named(lg: Log) -> None:
    def mutate(k: int) -> bytes:
        raws = lg.raws()
        raws.insert(lg.record_entries[k], forged(lg, k))
        return lg.join(raws)

    assert check_all(lg, mutate, tampered(Problem.INSERTED)) == N_RECORDS


def test_copy_of_a_record_inserted_again_is_named(lg: Log) -> None:
    def mutate(k: int) -> bytes | None:
        if k == 0:
            return None
        raws = lg.raws()
        raws.insert(lg.record_entries[k], raws[lg.record_entries[k - 1]])  # replay k-1
        return lg.join(raws)

    check_all(lg, mutate, tampered(Problem.INSERTED))


def test_forged_record_appended_after_the_close_is_an_unsealed_tail(lg: Log) -> None:
    rep = lg.verify(lg.data + forged_after_end(lg))
    assert rep.outcome is Outcome.UNSEALED_TAIL and rep.sealed == N_RECORDS
    assert rep.first_bad == N_RECORDS and rep.exit_code == 3


def forged_after_end(lg: Log) -> bytes:
    last = lg.entries[lg.record_entries[-1]].record
    assert last is not None
    return encode_record(
        seq=N_RECORDS,
        boot=last.boot,
        ts_ns=last.ts_ns,
        mono_ns=None,
        event="stop",
        detail={},
        prev=last.hash,
    )


def test_segment_of_another_devices_log_is_named(lg: Log, other: Log) -> None:
    def mutate(k: int) -> bytes | None:
        if k + 5 > N_RECORDS:
            return None
        raws = lg.raws()
        for s in range(k, k + 5):
            raws[lg.record_entries[s]] = other.entries[other.record_entries[s]].raw
        return lg.join(raws)

    check_all(lg, mutate, tampered(Problem.EDITED))


def test_other_devices_whole_log_does_not_verify_with_this_key(lg: Log, other: Log) -> None:
    rep = lg.verify(other.data)
    assert rep.outcome is Outcome.UNKNOWN_KEY and rep.sealed == 0 and rep.first_bad == 0


# -- truncation -----------------------------------------------------------------------------


def cut_after_record(lg: Log, k: int) -> bytes:
    """The file up to the end of record k-1 (k records kept)."""
    if k == 0:
        return lg.data[: len(lg.entries[0].raw)]
    e = lg.entries[lg.record_entries[k - 1]]
    return lg.data[: e.offset + len(e.raw)]


def checkpoint_sizes(lg: Log) -> list[int]:
    out = []
    n = 0
    for e in lg.entries:
        if e.record is None:
            out.append(n)
        else:
            n += 1
    return out


def test_tail_cut_after_any_record_is_an_unsealed_tail(lg: Log) -> None:
    sizes = checkpoint_sizes(lg)

    def expect(k: int, rep: VerifyReport) -> None:
        sealed = max(s for s in sizes if s < k)  # the checkpoint after record k-1 is cut too
        assert rep.outcome is Outcome.UNSEALED_TAIL and rep.problem is None
        assert rep.sealed == sealed and rep.first_bad == sealed and rep.records == k
        assert rep.exit_code == 3

    check_all(lg, lambda k: cut_after_record(lg, k), expect, range(1, N_RECORDS + 1))


def test_cut_inside_an_entry_is_an_unsealed_tail(lg: Log) -> None:
    def mutate(k: int) -> bytes:
        e = lg.entries[lg.record_entries[k]]
        return lg.data[: e.offset + len(e.raw) // 2]

    def expect(k: int, rep: VerifyReport) -> None:
        assert rep.outcome is Outcome.UNSEALED_TAIL and rep.records == k

    check_all(lg, mutate, expect)


def test_cut_exactly_at_a_checkpoint_is_not_detectable_only_warned(lg: Log) -> None:
    """The documented limit: without an outside anchor (the platform witnessing published
    checkpoints), a log cut right after a checkpoint is a valid, shorter log. Unless the cut
    is at a clean close, verify warns that the log does not end with one."""
    ends = [e.offset + len(e.raw) for e in lg.entries if e.record is None]
    sizes = checkpoint_sizes(lg)
    closes = [cbor_why(e.raw) == "close" for e in lg.entries if e.record is None]
    for end, size, close in zip(ends, sizes, closes, strict=True):
        rep = lg.verify(lg.data[:end])
        assert rep.outcome is Outcome.OK and rep.sealed == size
        assert close or any("clean-close" in w for w in rep.warnings)


def cbor_why(raw: bytes) -> str:
    return str(cbor2.loads(cbor2.loads(raw).value[2])["why"])


def test_everything_cut_is_reported_empty(lg: Log) -> None:
    rep = lg.verify(b"")
    assert rep.outcome is Outcome.TAMPERED and rep.problem is Problem.EMPTY


# -- checkpoints and keys -------------------------------------------------------------------


def rebuild(lg: Log, k: int, signer: DeviceKey, edit: bool = True) -> bytes:
    """An attacker's rewrite: alter record k, re-link every later record and re-sign every
    later checkpoint with ``signer`` (the one before record k stays as it was)."""
    out: list[bytes] = []
    frontier = MerkleFrontier()
    head = b""
    cp_prev = ZERO_HASH
    log_id = b""
    n = 0
    for e in lg.entries:
        if e.record is None:
            cp = decode_checkpoint_payload(cbor2.loads(e.raw).value[2], b"", e.raw)
            if not log_id:
                log_id, head = cp.log_id, genesis_head(cp.log_id)
            if n <= k:
                raw = e.raw
            else:
                raw = sign_checkpoint(
                    signer,
                    log_id=log_id,
                    size=n,
                    root=frontier.root(),
                    head=head,
                    prev=cp_prev,
                    boot=cp.boot,
                    ts_ns=cp.ts_ns,
                    why=cp.why,
                ).encoded
            cp_prev = checkpoint_hash(raw)
            out.append(raw)
            continue
        r = e.record
        detail = dict(r.detail)
        if edit and n == k:
            detail["n"] = -1
        raw = encode_record(
            seq=r.seq,
            boot=r.boot,
            ts_ns=r.ts_ns,
            mono_ns=r.mono_ns,
            event=r.event,
            detail=detail,
            prev=head,
        )
        rec = decode_record(raw)
        head = rec.hash
        frontier.append(rec.hash)
        out.append(raw)
        n += 1
    return b"".join(out)


def test_rebuild_without_changes_reproduces_the_log(lg: Log) -> None:
    # The attacker model below is sound: with the device key and no edit, it is the log.
    data = rebuild(lg, 10**9, lg.key, edit=False)
    assert data == lg.data


def test_rewritten_and_resigned_with_unknown_key_at_every_position(lg: Log) -> None:
    attacker = DeviceKey(Ed25519PrivateKey.generate())
    sizes = checkpoint_sizes(lg)

    def expect(k: int, rep: VerifyReport) -> None:
        assert rep.outcome is Outcome.UNKNOWN_KEY and rep.problem is Problem.UNKNOWN_KEY
        assert rep.sealed == max(s for s in sizes if s <= k)
        assert rep.sealed <= k and rep.exit_code == 4

    check_all(lg, lambda k: rebuild(lg, k, attacker), expect)


def test_rewritten_without_resigning_is_named(lg: Log) -> None:
    """Re-linked records but the genuine checkpoints: their heads no longer match."""

    def mutate(k: int) -> bytes:
        data = rebuild(lg, k, lg.key)  # sign with the real key, then restore old checkpoints
        entries = parse_entries(data).entries
        raws = [e.raw for e in entries]
        for i, e in enumerate(lg.entries):
            if e.record is None:
                raws[i] = e.raw
        return b"".join(raws)

    check_all(lg, mutate, tampered_within(Problem.EDITED, exact=False))


def test_flipped_byte_in_every_checkpoint_is_detected(lg: Log) -> None:
    rnd = random.Random(11)
    cps = [e for e in lg.entries if e.record is None]
    wrong = []
    for e in cps:
        for _ in range(40):
            data = bytearray(lg.data)
            data[e.offset + rnd.randrange(len(e.raw))] ^= 1 << rnd.randrange(8)
            rep = lg.verify(bytes(data))
            # The close checkpoint is the last entry: damage there may read as a torn end.
            torn_end = e is cps[-1] and rep.outcome is Outcome.UNSEALED_TAIL
            if rep.outcome not in (Outcome.TAMPERED, Outcome.UNKNOWN_KEY) and not torn_end:
                wrong.append((e.offset, rep.outcome, rep.message))
    assert not wrong


def test_deleted_checkpoint_is_detected(lg: Log) -> None:
    cps = [i for i, e in enumerate(lg.entries) if e.record is None]
    for i in cps:
        raws = lg.raws()
        del raws[i]
        rep = lg.verify(b"".join(raws))
        if i == cps[-1]:
            # The final close checkpoint: what follows the one before it is now unsealed.
            assert rep.outcome is Outcome.UNSEALED_TAIL, rep
        else:
            assert rep.outcome is Outcome.TAMPERED and rep.problem is Problem.DELETED, rep


def test_checkpoint_from_another_log_is_foreign(lg: Log, other: Log) -> None:
    """Even if the verifier trusts both devices' keys, a checkpoint of another log does not
    vouch for this one."""
    raws = lg.raws()
    cp_index = [i for i, e in enumerate(lg.entries) if e.record is None][2]
    other_cp = [e.raw for e in other.entries if e.record is None][2]
    raws[cp_index] = other_cp
    rep = verify_bytes(b"".join(raws), [lg.key.public_key, other.key.public_key])
    assert rep.outcome is Outcome.TAMPERED and rep.problem is Problem.FOREIGN_LOG, rep
