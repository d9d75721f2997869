"""Audit verification details that mutation testing (``make mutate``) showed no test
judged: each test here fails with at least one mutant of security/audit.py that the rest
of the audit suite lets through. Real log files written by AuditLog, tampered with
byte by byte, verified as ``edgegw audit verify`` does."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from security.audit import (
    AUDIT_FILE,
    AuditLog,
    AuditLogError,
    Outcome,
    Problem,
    verify,
    verify_bytes,
)
from security.checkpoint import Entry, parse_entries, peek_checkpoint, sign_checkpoint
from security.keyring import certify
from security.keys import DeviceKey
from security.segments import log_dir_files
from tests.tmpfs import tmpfs

from .test_audit_mutations import Log, rebuild

KEY = DeviceKey(Ed25519PrivateKey.generate())


def test_an_edit_just_after_a_checkpoint_still_verifies_what_that_checkpoint_seals(
    tmp_path: Path,
) -> None:
    """Records 0..19, a checkpoint every 10; record 10 is edited. The checkpoint after
    record 9 still vouches for 0..9: verify names seq 10 and says 0..9 verified."""
    path = tmp_path / AUDIT_FILE
    with AuditLog(path, KEY, boot=1, checkpoint_every=10) as log:
        for i in range(20):
            log.record("link_up", host="::1", note=f"r{i:03d}")
    data = path.read_bytes()
    assert data.count(b"r010") == 1
    path.write_bytes(data.replace(b"r010", b"r01X"))
    rep = verify(path, [KEY.public_key])
    assert rep.outcome is Outcome.TAMPERED and rep.problem is Problem.EDITED
    assert (rep.first_bad, rep.last_bad) == (10, 10)
    assert rep.sealed == 10  # `edgegw audit verify`: "verified: seq 0..9 of 20 records"


def test_a_bad_close_checkpoint_does_not_hide_the_open_checkpoint_at_the_same_place(
    tmp_path: Path,
) -> None:
    """Boot 1 writes records 0..9 and closes; boot 2 opens (its "open" checkpoint seals
    the same 10 records) and adds 10..14. The "close" checkpoint's signature is damaged:
    verify says so, and still counts 0..9 as verified by the "open" checkpoint."""
    path = tmp_path / AUDIT_FILE
    with AuditLog(path, KEY, boot=1) as log:
        for i in range(10):
            log.record("link_up", host="::1", note=f"a{i}")
    close_end = path.stat().st_size
    with AuditLog(path, KEY, boot=2) as log:
        for i in range(5):
            log.record("link_down", host="::1", note=f"b{i}")
    data = bytearray(path.read_bytes())
    [close] = [e for e in parse_entries(bytes(data)).entries if e.offset + len(e.raw) == close_end]
    assert close.record is None
    data[close_end - 1] ^= 0x01  # the last byte of its signature
    path.write_bytes(bytes(data))
    rep = verify(path, [KEY.public_key])
    assert rep.outcome is Outcome.TAMPERED and rep.problem is Problem.BAD_CHECKPOINT
    assert rep.first_bad == 10
    assert rep.sealed == 10


def test_a_foreign_checkpoint_right_after_the_genesis_does_not_take_the_logs_place(
    tmp_path: Path,
) -> None:
    """Another device's checkpoint inserted right after this log's genesis checkpoint,
    the verifier trusting both keys: the log is the genesis checkpoint's, and the
    inserted one is named as another log's, not the other way round."""
    other_key = DeviceKey(Ed25519PrivateKey.generate())
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for path, key in ((ours, KEY), (theirs, other_key)):
        with AuditLog(path, key, boot=1, checkpoint_every=5) as log:
            for i in range(10):
                log.record("link_up", host="::1", note=f"{path.name}{i}")
    mine = parse_entries(ours.read_bytes()).entries
    foreign = [e.raw for e in parse_entries(theirs.read_bytes()).entries if e.record is None][1]
    data = mine[0].raw + foreign + b"".join(e.raw for e in mine[1:])
    log_id = peek_checkpoint(mine[0].raw).log_id
    rep = verify_bytes(data, [KEY.public_key, other_key.public_key])
    assert rep.log_id == log_id
    assert rep.outcome is Outcome.TAMPERED and rep.problem is Problem.FOREIGN_LOG, rep
    assert rep.first_bad == 0 and rep.bad_offset == len(mine[0].raw), rep


def test_a_log_without_its_genesis_checkpoint_is_named_as_such(tmp_path: Path) -> None:
    """The genesis checkpoint is cut off a log that has only one other checkpoint: verify
    does not fail, keeps the log's id (from the remaining checkpoint) and names the
    missing genesis checkpoint."""
    path = tmp_path / AUDIT_FILE
    with AuditLog(path, KEY, boot=1) as log:
        for i in range(5):
            log.record("link_up", host="::1", note=f"r{i}")
    entries = parse_entries(path.read_bytes()).entries
    assert [e.record is None for e in entries] == [True] + [False] * 5 + [True]
    rep = verify_bytes(b"".join(e.raw for e in entries[1:]), [KEY.public_key])
    assert rep.log_id == peek_checkpoint(entries[0].raw).log_id
    assert rep.outcome is Outcome.TAMPERED and rep.problem is Problem.DELETED, rep
    assert rep.first_bad == 0 and "genesis checkpoint" in rep.message, rep


@pytest.mark.parametrize(
    ("every", "k", "first", "last", "says"),
    [
        (5, 6, 5, 9, "seq 5..9: altered (checkpoint after seq 9 names another head; the"),
        (5, 9, 5, 9, "seq 5..9: altered (checkpoint after seq 9 names another head; the"),
        (5, 11, 10, 11, "seq 10..11: altered (checkpoint after seq 11 names another head;"),
        (1, 3, 3, 3, "seq 3: record altered (checkpoint after seq 3 names another head)"),
    ],
)
def test_a_relinked_rewrite_is_named_from_the_last_good_checkpoint_to_the_next(
    tmp_path: Path, every: int, k: int, first: int, last: int, says: str
) -> None:
    """Record k is altered and every later record re-linked and re-signed (a stolen
    key), but the genuine checkpoints are kept: the first checkpoint after the change
    names another head. Which record changed cannot be told, so verify names exactly
    the run between the last checkpoint that still holds and that one (one record
    when a checkpoint follows every record), and counts only what comes before as
    verified."""
    path = tmp_path / AUDIT_FILE
    with AuditLog(path, KEY, boot=1, checkpoint_every=every) as log:
        for i in range(12):
            log.record("link_up", host="::1", note=f"r{i}")
    data = path.read_bytes()
    genuine = parse_entries(data).entries
    rewritten = [e.raw for e in parse_entries(rebuild(Log(data, genuine, KEY), k, KEY)).entries]
    kept = [e.raw if e.record is None else rewritten[i] for i, e in enumerate(genuine)]
    rep = verify_bytes(b"".join(kept), [KEY.public_key])
    assert rep.outcome is Outcome.TAMPERED and rep.problem is Problem.EDITED, rep
    assert (rep.first_bad, rep.last_bad, rep.sealed) == (first, last, first), rep
    assert rep.message.startswith(says), rep.message


def _resigned(raw: bytes, **change: object) -> bytes:
    """The checkpoint ``raw`` signed again with the device's key (a stolen key), with
    some of its fields changed."""
    cp = peek_checkpoint(raw)
    fields = ("log_id", "size", "root", "head", "prev", "boot", "ts_ns", "why")
    return sign_checkpoint(KEY, **{**{f: getattr(cp, f) for f in fields}, **change}).encoded  # type: ignore[arg-type]


# Records 0..11, a checkpoint every 5: entries are
# [genesis, 0..4, cp(5), 5..9, cp(10), 10, 11, close(12)].
CHECKPOINT_CASES = {
    "last records cut": (
        lambda r: r[:-3] + r[-1:],
        (
            Problem.DELETED,
            10,
            10,
            10,
            "checkpoint after seq 9 seals 12 records: seq 10..11 deleted",
        ),
    ),
    "close claims one more": (
        lambda r: [*r[:-1], _resigned(r[-1], size=13)],
        (
            Problem.DELETED,
            12,
            12,
            10,
            "checkpoint after seq 11 seals 13 records: seq 12..12 deleted",
        ),
    ),
    "close claims one fewer": (
        lambda r: [*r[:-1], _resigned(r[-1], size=11)],
        (
            Problem.INSERTED,
            11,
            11,
            10,
            "checkpoint after seq 11 seals 11 records, but 12 precede it",
        ),
    ),
    "wrong Merkle root": (
        lambda r: [*r[:-1], _resigned(r[-1], root=bytes(32))],
        (
            Problem.BAD_CHECKPOINT,
            12,
            12,
            12,
            "checkpoint after seq 11: its Merkle root does not match the records",
        ),
    ),
    "chain of checkpoints broken": (
        lambda r: [*r[:-1], _resigned(r[-1], prev=bytes(32))],
        (
            Problem.DELETED,
            12,
            12,
            12,
            "checkpoint after seq 11: the checkpoint before it is missing or was replaced",
        ),
    ),
    "genesis claims a record": (
        lambda r: [_resigned(r[0], size=1), *r[1:]],
        (Problem.DELETED, 0, 0, 0, "first checkpoint seals 1 records: seq 0..0 deleted"),
    ),
}


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_a_checkpoint_that_disagrees_with_the_records_is_named_exactly(
    tmp_path: Path, case: str
) -> None:
    """Each way a validly signed checkpoint can disagree with the records before it
    (records cut off the end, a size that claims more or fewer, a wrong Merkle root, a
    broken chain of checkpoints): verify names the problem, the seqs, what still counts
    as verified, the message `edgegw audit verify` prints, and the byte where that
    checkpoint starts."""
    path = tmp_path / AUDIT_FILE
    with AuditLog(path, KEY, boot=1, checkpoint_every=5) as log:
        for i in range(12):
            log.record("link_up", host="::1", note=f"r{i}")
    entries = parse_entries(path.read_bytes()).entries
    assert [e.record is None for e in entries] == [
        True,
        *[False] * 5,
        True,
        *[False] * 5,
        True,
        False,
        False,
        True,
    ]
    tamper, (problem, first, last, sealed, message) = CHECKPOINT_CASES[case]
    raws = tamper([e.raw for e in entries])
    bad = 0 if case.startswith("genesis") else len(raws) - 1  # the checkpoint named
    rep = verify_bytes(b"".join(raws), [KEY.public_key])
    assert rep.outcome is Outcome.TAMPERED and rep.problem is problem, rep
    assert (rep.first_bad, rep.last_bad, rep.sealed) == (first, last, sealed), rep
    assert rep.message == message
    assert rep.bad_offset == sum(len(r) for r in raws[:bad])


JUNK = b"\xff\x00\xfe"  # not CBOR: a damaged entry


@pytest.mark.parametrize(
    ("case", "at", "sealed"),
    [
        ("in the middle", 7, 5),
        ("at one place with a bad checkpoint", 12, 12),
        ("before a cut genesis", 0, 0),
    ],
)
def test_a_damaged_entry_is_named_even_where_another_problem_is(
    tmp_path: Path, case: str, at: int, sealed: int
) -> None:
    """Bytes that are not an entry: verify names them (the seq after which they sit and
    their byte), also where a checkpoint problem is found at the same place (a close
    checkpoint with a wrong Merkle root followed by junk; junk where the genesis
    checkpoint was cut off): one report, the damage first, never a crash."""
    path = tmp_path / AUDIT_FILE
    with AuditLog(path, KEY, boot=1, checkpoint_every=5) as log:
        for i in range(12):
            log.record("link_up", host="::1", note=f"r{i}")
    raws = [e.raw for e in parse_entries(path.read_bytes()).entries]
    if case == "in the middle":
        raws = [*raws[:9], JUNK, *raws[9:]]  # after record 6
    elif case.startswith("at one place"):
        raws = [*raws[:-1], _resigned(raws[-1], root=bytes(32)), JUNK]
    else:
        raws = [JUNK, *raws[1:]]
    offset = sum(len(r) for r in raws[: raws.index(JUNK)])
    rep = verify_bytes(b"".join(raws), [KEY.public_key])
    assert rep.outcome is Outcome.TAMPERED and rep.problem is Problem.MALFORMED, rep
    assert (rep.first_bad, rep.last_bad, rep.sealed, rep.bad_offset) == (at, at, sealed, offset)
    assert rep.message.startswith(f"damaged entry at byte {offset}, after seq {at - 1} (")


def _twelve_records(tmp_path: Path) -> list[bytes]:
    """Records 0..11 (notes r000..r011), a checkpoint every 5, closed: the raw entries."""
    path = tmp_path / AUDIT_FILE
    with AuditLog(path, KEY, boot=1, checkpoint_every=5) as log:
        for i in range(12):
            log.record("link_up", host="::1", note=f"r{i:03d}")
    return [e.raw for e in parse_entries(path.read_bytes()).entries]


def test_an_edit_inside_a_checkpoints_range_names_the_one_record(tmp_path: Path) -> None:
    """Record 7 is edited (not re-linked): the checkpoint after seq 9 names another head
    (the range 5..9), but record 8 does not link to 7, which names the record exactly:
    verify reports seq 7 alone, not the range."""
    data = b"".join(_twelve_records(tmp_path))
    assert data.count(b"r007") == 1
    rep = verify_bytes(data.replace(b"r007", b"r00X"), [KEY.public_key])
    assert rep.outcome is Outcome.TAMPERED and rep.problem is Problem.EDITED, rep
    assert (rep.first_bad, rep.last_bad, rep.sealed) == (7, 7, 5), rep
    assert rep.message == "seq 7: record altered (seq 8 does not link to it)"


TAIL = "after the last checkpoint ({}); the tail cannot be checked for truncation or edits"


@pytest.mark.parametrize(
    ("case", "first", "last", "sealed", "torn", "says"),
    [
        ("not closed", 10, 11, 10, False, "records seq 10..11 " + TAIL.format("seq 0..9 sealed")),
        (
            "torn after the close",
            12,
            12,
            12,
            True,
            "a torn (incomplete) final entry " + TAIL.format("seq 0..11 sealed"),
        ),
        (
            "not closed and torn",
            10,
            11,
            10,
            True,
            "records seq 10..11 and a torn (incomplete) final entry "
            + TAIL.format("seq 0..9 sealed"),
        ),
    ],
)
def test_a_tail_after_the_last_checkpoint_is_named_as_unsealed(
    tmp_path: Path, case: str, first: int, last: int, sealed: int, torn: bool, says: str
) -> None:
    """A log that ends without its close checkpoint (a crash), or with a torn final entry
    (a crash mid-write), is not tampered but cannot be fully checked: verify names the
    unsealed records (or the torn bytes), what is sealed (and the time span it
    covers), and for a torn entry after everything sealed, the byte where it starts."""
    raws = _twelve_records(tmp_path)
    if case.startswith("not closed"):
        raws = raws[:-1]
    whole = b"".join(raws)
    data = whole + (raws[3][:10] if torn else b"")
    rep = verify_bytes(data, [KEY.public_key])
    assert rep.outcome is Outcome.UNSEALED_TAIL, rep
    assert (rep.first_bad, rep.last_bad, rep.sealed) == (first, last, sealed), rep
    assert rep.message == says
    assert rep.bad_offset == (len(whole) if torn and sealed == 12 else None)
    # the time span verify vouches for: the first record's to the last sealed one's
    recs = [e.record for e in parse_entries(whole).entries if e.record is not None]
    assert (rep.first_ts_ns, rep.last_ts_ns) == (recs[0].ts_ns, recs[sealed - 1].ts_ns)


def test_a_record_that_fails_on_a_full_disk_leaves_no_torn_entry(tmp_path: Path) -> None:
    """The disk fills up while a record is written (a real tmpfs: part of the record is
    written, then ENOSPC): record() fails with a clear error and the part written is cut
    off again. Once space is freed the next records follow, and the log verifies: no
    damaged entry in its middle (which verify would call tampering)."""
    with tmpfs(tmp_path / "fs", "1m") as fs:
        path = fs / AUDIT_FILE
        with AuditLog(path, KEY, boot=1, checkpoint_every=1000) as log:
            log.record("link_up", host="::1", note="before")
            filler = fs / "other-program"
            with open(filler, "wb") as f:  # leave less room than the next record needs
                f.write(b"\0" * (1024 * 1024 - path.stat().st_size - 8192 - 1000))
            size = path.stat().st_size
            with pytest.raises(AuditLogError, match="cannot append"):
                log.record("link_up", host="::1", note="x" * 20_000)
            assert path.stat().st_size == size  # the part that was written is cut off
            filler.unlink()
            log.record("link_up", host="::1", note="after")
        rep = verify(path, [KEY.public_key])
        assert rep.ok and rep.sealed == 2, rep


def _unclosed(tmp_path: Path, n: int) -> list[bytes]:
    """Records 0..n-1 (notes r000..), a checkpoint every 5, never closed (a crash): the
    raw entries, the last checkpoint sealing seq 0..9."""
    path = tmp_path / AUDIT_FILE
    log = AuditLog(path, KEY, boot=1, checkpoint_every=5)
    for i in range(n):
        log.record("link_up", host="::1", note=f"r{i:03d}")
    raws = [e.raw for e in parse_entries(path.read_bytes()).entries]
    log.close()
    return raws


@pytest.mark.parametrize(
    ("k", "named", "sealed", "says"),
    [
        (9, 9, 5, "seq 9: record altered (seq 10 does not link to it; not sealed)"),
        (10, 10, 10, "seq 10: record altered (seq 11 does not link to it; not sealed)"),
        (11, 12, 10, "seq 12: record altered (it does not link to seq 11)"),
    ],
)
def test_an_edit_at_the_unsealed_tail_names_the_likelier_record(
    tmp_path: Path, k: int, named: int, sealed: int, says: str
) -> None:
    """A crashed log (records 0..12, the last checkpoint seals 0..9) whose record k is
    edited (not re-linked): in the unsealed tail, where a record's successor still links
    to it, the record before the break is named. At the tail's first record (k=9: seq 10
    is the first unsealed one) too; at the very last link (k=11) there is no successor
    to agree with, so the last record is named, and verify does not crash."""
    raws = _unclosed(tmp_path, 13)
    data = b"".join(raws)
    note = f"r{k:03d}".encode()
    assert data.count(note) == 1
    rep = verify_bytes(data.replace(note, b"r0XX"), [KEY.public_key])
    assert rep.outcome is Outcome.TAMPERED and rep.problem is Problem.EDITED, rep
    assert (rep.first_bad, rep.last_bad, rep.sealed) == (named, named, sealed), rep
    assert rep.message == says


def test_an_edit_of_the_last_record_a_checkpoint_seals_names_that_record(
    tmp_path: Path,
) -> None:
    """Record 9 is edited (not re-linked): the checkpoint after seq 9 names another head
    (the range 5..9), and record 10 does not link to 9, which names the last record of
    that range exactly."""
    data = b"".join(_twelve_records(tmp_path))
    assert data.count(b"r009") == 1
    rep = verify_bytes(data.replace(b"r009", b"r00X"), [KEY.public_key])
    assert rep.outcome is Outcome.TAMPERED and rep.problem is Problem.EDITED, rep
    assert (rep.first_bad, rep.last_bad, rep.sealed) == (9, 9, 5), rep
    assert rep.message == "seq 9: record altered (seq 10 does not link to it)"


@pytest.mark.parametrize(
    "case", ["close claims one more", "wrong Merkle root", "chain of checkpoints broken"]
)
def test_damage_right_after_a_bad_close_checkpoint_is_named_first(
    tmp_path: Path, case: str
) -> None:
    """A close checkpoint that disagrees with the records (validly signed), then bytes
    that are not an entry: both are found at seq 12. Verify does not crash on the tie
    and names the damage first."""
    raws = _twelve_records(tmp_path)
    tamper = CHECKPOINT_CASES[case][0]
    raws = [*tamper(raws), JUNK]
    offset = sum(len(r) for r in raws[:-1])
    rep = verify_bytes(b"".join(raws), [KEY.public_key])
    assert rep.outcome is Outcome.TAMPERED and rep.problem is Problem.MALFORMED, rep
    assert (rep.first_bad, rep.last_bad, rep.bad_offset) == (12, 12, offset), rep


def test_a_run_of_segments_from_the_middle_with_an_unsealed_tail_is_named_from_its_start(
    tmp_path: Path,
) -> None:
    """An archived log whose first segments are gone, and whose writer crashed (records
    after its last checkpoint): verify counts from the first given segment's checkpoint,
    names the unsealed tail and what is sealed from that seq on, and vouches for the
    time span of the given records that are sealed."""
    path = tmp_path / AUDIT_FILE
    log = AuditLog(path, KEY, boot=1, checkpoint_every=7, segment_bytes=4096)
    for i in range(200):
        log.record("link_up", host=f"h{i}", port=i)
    segs = [f for _, f in log_dir_files(path)]
    assert len(segs) >= 4
    data = b"".join(f.read_bytes() for f in segs[2:])
    everything = b"".join(f.read_bytes() for f in segs)
    log.close()
    first = parse_entries(segs[2].read_bytes()).entries[0]
    b = peek_checkpoint(first.raw).size
    recs = [e.record for e in parse_entries(everything).entries if e.record is not None]
    assert len(recs) == 200 and 0 < b < 196
    rep = verify_bytes(data, [KEY.public_key])
    assert rep.outcome is Outcome.UNSEALED_TAIL, rep
    assert (rep.first_seq, rep.records) == (b, 200 - b), rep
    assert (rep.first_bad, rep.last_bad, rep.sealed) == (196, 199, 196), rep
    assert rep.message == (
        f"records seq 196..199 after the last checkpoint (seq {b}..195 sealed); the tail "
        "cannot be checked for truncation or edits"
    )
    assert (rep.first_ts_ns, rep.last_ts_ns) == (recs[b].ts_ns, recs[195].ts_ns)


def test_a_last_segment_alone_with_nothing_sealed_after_its_start_says_so(
    tmp_path: Path,
) -> None:
    """Only the live segment of a crashed log is given, and no checkpoint follows its
    first one: verify counts from that checkpoint's seq, says nothing is sealed, names
    every given record as the unsealed tail, and vouches for no time span."""
    path = tmp_path / AUDIT_FILE
    log = AuditLog(path, KEY, boot=1, checkpoint_every=7, segment_bytes=4096)
    i = 0
    while log.segment < 2:
        log.record("link_up", host=f"h{i}", port=i)
        i += 1
    b = log.size
    for j in range(3):
        log.record("link_up", host=f"t{j}", port=j)
    segs = [f for _, f in log_dir_files(path)]
    data = segs[-1].read_bytes()
    log.close()
    assert peek_checkpoint(parse_entries(data).entries[0].raw).size == b > 0
    rep = verify_bytes(data, [KEY.public_key])
    assert rep.outcome is Outcome.UNSEALED_TAIL, rep
    assert (rep.first_seq, rep.records) == (b, 3), rep
    assert (rep.first_bad, rep.last_bad, rep.sealed) == (b, b + 2, b), rep
    assert rep.message == (
        f"records seq {b}..{b + 2} after the last checkpoint (nothing sealed); the tail "
        "cannot be checked for truncation or edits"
    )
    assert (rep.first_ts_ns, rep.last_ts_ns) == (None, None), rep


def test_an_edit_of_the_first_record_after_a_checkpoint_names_that_record(
    tmp_path: Path,
) -> None:
    """Record 5 is edited (not re-linked): the checkpoints after seq 9 and 11 find that
    their Merkle roots do not match, and record 6 does not link to 5: verify names seq 5
    alone, and counts 0..4 as verified."""
    data = b"".join(_twelve_records(tmp_path))
    assert data.count(b"r005") == 1
    rep = verify_bytes(data.replace(b"r005", b"r00X"), [KEY.public_key])
    assert rep.outcome is Outcome.TAMPERED and rep.problem is Problem.EDITED, rep
    assert (rep.first_bad, rep.last_bad, rep.sealed) == (5, 5, 5), rep
    assert rep.message == "seq 5: record altered (seq 6 does not link to it)"


def test_another_logs_record_inserted_before_a_real_one_is_named_as_inserted(
    tmp_path: Path,
) -> None:
    """Another log's record 5 (same seq, but it links to that log's record 4) is put
    before this log's record 5: verify names an inserted forgery at seq 5."""
    (tmp_path / "ours").mkdir()
    (tmp_path / "theirs").mkdir()
    ours, theirs = _twelve_records(tmp_path / "ours"), _twelve_records(tmp_path / "theirs")
    # entries: [genesis, 0..4, cp(5), 5..9, ...]: record 5 is entry 7
    assert parse_entries(theirs[7]).entries[0].record.seq == 5  # type: ignore[union-attr]
    rep = verify_bytes(b"".join([*ours[:7], theirs[7], *ours[7:]]), [KEY.public_key])
    assert rep.outcome is Outcome.TAMPERED and rep.problem is Problem.INSERTED, rep
    assert (rep.first_bad, rep.last_bad, rep.sealed) == (5, 5, 5), rep
    assert rep.message == "seq 5: forged record inserted before the real seq 5"


def _relinked_from_seq7(tmp_path: Path) -> tuple[list[Entry], list[bytes]]:
    """Records 0..11, a checkpoint every 5; record 7 altered and every later record
    re-linked and re-signed (a stolen key), checkpoints kept as they were: the genuine
    entries, and the raw entries of the rewrite."""
    path = tmp_path / AUDIT_FILE
    with AuditLog(path, KEY, boot=1, checkpoint_every=5) as log:
        for i in range(12):
            log.record("link_up", host="::1", note=f"r{i}")
    data = path.read_bytes()
    genuine = parse_entries(data).entries
    rewritten = [e.raw for e in parse_entries(rebuild(Log(data, genuine, KEY), 7, KEY)).entries]
    return genuine, [e.raw if e.record is None else rewritten[i] for i, e in enumerate(genuine)]


def test_damage_where_a_relinked_rewrite_starts_is_named_first(tmp_path: Path) -> None:
    """Record 7 is altered and every later record re-linked and re-signed (a stolen key),
    so the checkpoint after seq 9 names another head (the range 5..9), and bytes that are
    not an entry sit right after the checkpoint after seq 4: both are found at seq 5.
    Verify does not crash on the tie and names the damage first."""
    genuine, kept = _relinked_from_seq7(tmp_path)
    assert genuine[6].record is None  # [genesis, 0..4, cp(5), ...]
    raws = [*kept[:7], JUNK, *kept[7:]]
    offset = sum(len(r) for r in kept[:7])
    rep = verify_bytes(b"".join(raws), [KEY.public_key])
    assert rep.outcome is Outcome.TAMPERED and rep.problem is Problem.MALFORMED, rep
    assert (rep.first_bad, rep.last_bad, rep.sealed, rep.bad_offset) == (5, 5, 5, offset), rep


def _archived_run(tmp_path: Path) -> tuple[list[bytes], int]:
    """A closed log of 200 records in segments, its first two segments gone: the raw
    entries of the rest, and the seq they start at."""
    path = tmp_path / AUDIT_FILE
    with AuditLog(path, KEY, boot=1, checkpoint_every=7, segment_bytes=4096) as log:
        for i in range(200):
            log.record("link_up", host=f"h{i}", port=i)
    segs = [f for _, f in log_dir_files(path)]
    assert len(segs) >= 4
    raws = [e.raw for e in parse_entries(b"".join(f.read_bytes() for f in segs[2:])).entries]
    b = peek_checkpoint(raws[0]).size
    assert b > 0
    return raws, b


def test_damage_in_a_run_of_segments_from_the_middle_is_named_by_its_seq(
    tmp_path: Path,
) -> None:
    """Bytes that are not an entry, after the third record of an archived run whose
    first segments are gone: verify names the seq they follow, counted from the run's
    first checkpoint, and what is verified before them."""
    raws, b = _archived_run(tmp_path)
    kinds = [parse_entries(r).entries[0].record is None for r in raws[:4]]
    assert kinds == [True, False, False, False]
    raws = [*raws[:4], JUNK, *raws[4:]]  # the first checkpoint, then records b..b+2
    offset = sum(len(r) for r in raws[:4])
    rep = verify_bytes(b"".join(raws), [KEY.public_key])
    assert rep.outcome is Outcome.TAMPERED and rep.problem is Problem.MALFORMED, rep
    assert (rep.first_bad, rep.last_bad, rep.sealed) == (b + 3, b + 3, b), rep
    assert rep.bad_offset == offset
    assert rep.message.startswith(f"damaged entry at byte {offset}, after seq {b + 2} (")


def test_a_bad_first_checkpoint_of_a_run_from_the_middle_seals_nothing(
    tmp_path: Path,
) -> None:
    """The first checkpoint of an archived run (its first segments gone) has a damaged
    signature: verify names it, at the run's first seq, and counts nothing as
    verified, not the records before the run."""
    raws, b = _archived_run(tmp_path)
    first = bytearray(raws[0])
    first[-1] ^= 0x01  # the last byte of its signature
    rep = verify_bytes(b"".join([bytes(first), *raws[1:]]), [KEY.public_key])
    assert rep.outcome is Outcome.TAMPERED and rep.problem is Problem.BAD_CHECKPOINT, rep
    assert (rep.first_seq, rep.first_bad, rep.sealed) == (b, b, b), rep
    assert (rep.first_ts_ns, rep.last_ts_ns) == (None, None), rep
    assert rep.bad_offset == 0


def test_a_run_from_the_middle_verifies_with_the_rotated_key_alone(tmp_path: Path) -> None:
    """The device rotated its key at the start of the log (a key_rotated record with the
    certificate the old key signed for the new one); the segments from the third on, all
    signed by the new key, are verified with that key alone. The certificate each
    segment's first checkpoint carries cannot be checked (the old key is not given): it
    is passed over, not an error, and the run verifies; with the old key alone it
    verifies through that certificate."""
    old, new = DeviceKey(Ed25519PrivateKey.generate()), DeviceKey(Ed25519PrivateKey.generate())
    path = tmp_path / AUDIT_FILE
    with AuditLog(path, old, boot=1, checkpoint_every=7, segment_bytes=4096) as log:
        cert = certify(old, new.public_key, 1)
        log.record("key_rotated", old_kid=old.kid.hex(), new_kid=new.kid.hex(), n=1, cert=cert)
        log.signer = new
        for i in range(200):
            log.record("link_up", host=f"h{i}", port=i)
    segs = [f for _, f in log_dir_files(path)]
    assert len(segs) >= 4
    first = peek_checkpoint(parse_entries(segs[2].read_bytes()).entries[0].raw)
    assert first.certs == (cert,)
    data = b"".join(f.read_bytes() for f in segs[2:])
    for key in (new, old):
        rep = verify_bytes(data, [key.public_key])
        assert rep.ok, (key is new, rep.summary())
        assert (rep.first_seq, rep.sealed) == (first.size, 201), rep
        assert rep.kids == [new.kid], rep


def test_a_finding_at_the_start_of_a_relinked_range_is_preferred_to_the_range(
    tmp_path: Path,
) -> None:
    """Record 7 is altered and every later record re-linked (a stolen key): the
    checkpoint after seq 9 names another head (the range 5..9). The close checkpoint is
    also re-signed to claim only 5 records: that names seq 5, the first seq of the
    range, and being one place, it is reported rather than the range."""
    _, kept = _relinked_from_seq7(tmp_path)
    raws = [*kept[:-1], _resigned(kept[-1], size=5)]
    rep = verify_bytes(b"".join(raws), [KEY.public_key])
    assert rep.outcome is Outcome.TAMPERED and rep.problem is Problem.INSERTED, rep
    assert (rep.first_bad, rep.last_bad, rep.sealed) == (5, 5, 5), rep
    assert rep.message == "checkpoint after seq 11 seals 5 records, but 12 precede it"
    assert rep.bad_offset == sum(len(r) for r in raws[:-1])
