"""The audit log in segments (security/segments.py): it rolls over to a new file at the
first checkpoint after the live one passes ``segment_bytes``; each new segment starts with
a signed checkpoint bound to the one that ended the segment before; opening reads only the
live segment; and verification across files names the file of a missing, swapped, cut,
grown or edited segment. Real files throughout."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import security.audit as audit_mod
from security import resume
from security.audit import AUDIT_FILE, AuditLog, AuditLogCorrupt, Outcome, Problem, verify_bytes
from security.checkpoint import checkpoint_hash, parse_entries, peek_checkpoint
from security.keys import DeviceKey
from security.segments import head_of, log_dir_files, segment_number, segment_path
from security.segverify import verify_files

KEY = DeviceKey(Ed25519PrivateKey.generate())
TRUST = {KEY.kid: KEY.public_key}
SEG = 4096


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / AUDIT_FILE


def fill(path: Path, n: int, boot: int = 1, start: int = 0, seg: int | None = SEG) -> None:
    with AuditLog(path, KEY, boot=boot, checkpoint_every=7, segment_bytes=seg) as log:
        for i in range(start, start + n):
            log.record("link_up", host=f"h{i}", port=i)


def files(path: Path) -> list[Path]:
    return [f for _, f in log_dir_files(path)]


def whole(path: Path) -> bytes:
    return b"".join(f.read_bytes() for f in files(path))


def test_segment_names() -> None:
    log = Path("/s/audit.cborseq")
    assert segment_path(log, 0) == log
    assert segment_path(log, 3) == Path("/s/audit.000003.cborseq")
    assert segment_path(log, 2, Path("/a")) == Path("/a/audit.000002.cborseq")
    assert segment_number(log, "audit.000003.cborseq") == 3
    assert segment_number(log, "audit.cborseq") == 0
    for other in ("audit.cborseq.resume", "audit.000000.cborseq", "audit.3.cborseq", "x.cborseq"):
        assert segment_number(log, other) is None, other


def test_the_log_rolls_over_at_the_first_checkpoint_past_the_size(path: Path) -> None:
    fill(path, 300)
    segs = files(path)
    assert len(segs) >= 5
    assert segs[0] == path and segs[1].name == "audit.000001.cborseq"
    for f in segs[:-1]:  # every closed segment
        entries = parse_entries(f.read_bytes()).entries
        assert entries[-1].record is None  # ends with a checkpoint
        before = [e for e in entries[:-1] if e.record is None][-1]
        # the checkpoint before the last ended below the size; the last passed it
        assert before.offset + len(before.raw) < SEG <= f.stat().st_size, f
    rep = verify_bytes(whole(path), [KEY.public_key])
    assert rep.ok and rep.records == 300 and rep.sealed == 300, rep.summary()
    assert rep.warnings == []


def test_without_segment_bytes_the_log_stays_one_file(path: Path) -> None:
    fill(path, 300, seg=None)
    assert files(path) == [path]


def test_each_segment_starts_bound_to_the_checkpoint_that_ended_the_one_before(
    path: Path,
) -> None:
    fill(path, 200)
    at = 0
    segs = files(path)
    for k, (a, b) in enumerate(itertools.pairwise(segs), start=1):
        at += a.stat().st_size
        last = parse_entries(a.read_bytes()).entries[-1]
        ended, head = peek_checkpoint(last.raw), head_of(b)
        assert (head.seg, head.at, head.why) == (k, at, "segment")
        assert head.prev == checkpoint_hash(last.raw)
        assert (head.size, head.root, head.head, head.log_id) == (
            ended.size,
            ended.root,
            ended.head,
            ended.log_id,
        )
        assert b.stat().st_mode & 0o777 == 0o600


def parsed_sizes(monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], list[int]]:
    parsed: list[int] = []
    hashed: list[int] = []
    real_parse, real_digest = audit_mod.parse_entries, resume.prefix_digest

    def parse(data: bytes) -> Any:
        parsed.append(len(data))
        return real_parse(data)

    def digest(fd: int, end: int) -> Any:
        hashed.append(end)
        return real_digest(fd, end)

    monkeypatch.setattr(audit_mod, "parse_entries", parse)
    monkeypatch.setattr(resume, "prefix_digest", digest)
    return parsed, hashed


def test_an_open_reads_only_the_live_segment(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Start-up does not grow with the log: with the resume file it hashes the live
    segment up to its last checkpoint and parses from there; without it, it parses the
    live segment alone (its first checkpoint states the log's state there)."""
    fill(path, 2000)
    total = sum(f.stat().st_size for f in files(path))
    live = files(path)[-1].stat().st_size
    assert total > 20 * live
    parsed, hashed = parsed_sizes(monkeypatch)
    with AuditLog(path, KEY, boot=2, segment_bytes=SEG, trusted_keys=TRUST) as log:
        assert log.resumed_from is not None and log.resumed_from.offset == total
        assert log.size == 2000 and log.loaded_length == total
    assert max(parsed) < 2000 and max(hashed) <= live
    resume.remove(path)
    parsed.clear()
    with AuditLog(path, KEY, boot=3, segment_bytes=SEG, trusted_keys=TRUST) as log:
        assert log.resumed_from is None and log.size == 2000
        assert log.segment_start > 0 and log.length > total
    assert max(parsed) <= SEG + 2000
    monkeypatch.undo()
    rep = verify_bytes(whole(path), [KEY.public_key])
    assert rep.ok and rep.records == 2000, rep.summary()


def test_a_resume_file_of_an_older_segment_is_not_used(path: Path) -> None:
    fill(path, 30)
    old = resume.path_for(path).read_bytes()
    fill(path, 300, boot=2, start=30)
    resume.path_for(path).write_bytes(old)
    with AuditLog(path, KEY, boot=3, segment_bytes=SEG, trusted_keys=TRUST) as log:
        assert log.resumed_from is None and log.size == 330
    assert verify_bytes(whole(path), [KEY.public_key]).ok


def test_a_run_of_segments_from_the_middle_verifies_from_its_first_checkpoint(
    path: Path,
) -> None:
    fill(path, 200)
    segs = files(path)
    for i, j in itertools.combinations(range(len(segs) + 1), 2):
        run = segs[i:j]
        rep, infos = verify_files(run, TRUST)
        first = head_of(run[0])
        assert rep.outcome is Outcome.OK, (i, j, rep.summary())
        assert rep.first_seq == first.size
        assert [x.seg for x in infos] == list(range(i, j))
        if j < len(segs):  # it ends where the next segment starts
            assert rep.first_seq + rep.records == head_of(segs[j]).size
        if i > 0:
            assert "segments before it were not given" in rep.warnings[0]


def copies(path: Path, tmp: Path) -> list[Path]:
    """The segments copied to ``tmp/x`` (to be tampered with)."""
    d = tmp / "x"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    out = []
    for f in files(path):
        out.append(d / f.name)
        shutil.copy(f, out[-1])
    return out


@pytest.fixture
def log6(path: Path) -> Path:
    fill(path, 200)
    assert len(files(path)) >= 6
    return path


def test_a_missing_middle_segment_is_named(log6: Path, tmp_path: Path) -> None:
    segs = copies(log6, tmp_path)
    gone = segs.pop(3)
    rep, _ = verify_files(segs, TRUST)
    start = head_of(gone).size
    assert rep.outcome is Outcome.TAMPERED and rep.problem is Problem.DELETED
    assert rep.first_bad == start and rep.sealed <= start
    assert "segment 3 missing between audit.000002.cborseq and audit.000004.cborseq" in (
        rep.message
    )
    assert rep.file == str(segs[3])  # the segment after the hole


def test_swapped_segments_are_named(log6: Path, tmp_path: Path) -> None:
    segs = copies(log6, tmp_path)
    a, b = segs[2].read_bytes(), segs[3].read_bytes()
    segs[2].write_bytes(b)
    segs[3].write_bytes(a)
    rep, _ = verify_files(segs, TRUST)
    assert rep.outcome is Outcome.TAMPERED and rep.problem is Problem.REORDERED
    assert "is named for segment" in rep.message and rep.file in (str(segs[2]), str(segs[3]))


def test_a_segment_of_another_log_swapped_in_is_named(log6: Path, tmp_path: Path) -> None:
    other = tmp_path / "other" / AUDIT_FILE
    other.parent.mkdir()
    fill(other, 200)
    segs = copies(log6, tmp_path)
    shutil.copy(files(other)[3], segs[3])
    rep, _ = verify_files(segs, TRUST)
    assert rep.outcome is Outcome.TAMPERED and rep.problem is Problem.FOREIGN_LOG
    assert rep.file == str(segs[3]) and "another log" in rep.message


@pytest.mark.parametrize("cut", ["mid_entry", "at_checkpoint"])
def test_a_middle_segment_cut_short_is_named(log6: Path, tmp_path: Path, cut: str) -> None:
    segs = copies(log6, tmp_path)
    data = segs[2].read_bytes()
    entries = parse_entries(data).entries
    if cut == "mid_entry":
        keep = len(data) - 40
    else:  # exactly at a checkpoint: nothing in the file itself looks wrong
        cps = [e for e in entries if e.record is None]
        keep = cps[-3].offset + len(cps[-3].raw)
    segs[2].write_bytes(data[:keep])
    rep, _ = verify_files(segs, TRUST)
    assert rep.outcome is Outcome.TAMPERED and rep.problem is Problem.DELETED
    assert "audit.000002.cborseq is cut short" in rep.message
    assert rep.file == str(segs[2]) and rep.file_offset == keep
    lost = [e.record.seq for e in entries if e.record is not None and e.offset >= keep]
    assert rep.first_bad == (lost[0] if lost else head_of(segs[3]).size)


def test_a_closed_segment_that_grew_is_named(log6: Path, tmp_path: Path) -> None:
    segs = copies(log6, tmp_path)
    tail = parse_entries(segs[1].read_bytes()).entries[-2].raw  # any record, appended again
    segs[1].write_bytes(segs[1].read_bytes() + tail)
    rep, _ = verify_files(segs, TRUST)
    assert rep.outcome is Outcome.TAMPERED and rep.problem is Problem.INSERTED
    assert "audit.000001.cborseq holds" in rep.message and rep.file == str(segs[1])


def test_an_edit_in_an_archived_segment_names_the_record_file_and_byte(
    log6: Path, tmp_path: Path
) -> None:
    segs = copies(log6, tmp_path)
    archive = tmp_path / "archive"
    archive.mkdir()
    moved = [archive / s.name for s in segs[:3]]
    for s, m in zip(segs[:3], moved, strict=True):
        s.rename(m)
    data = bytearray(moved[1].read_bytes())
    rec = next(e for e in parse_entries(bytes(data)).entries if e.record is not None)
    i = data.index(b"port", rec.offset)
    data[i + 5] ^= 1  # the port number: still a well-formed record
    moved[1].write_bytes(bytes(data))
    rep, _ = verify_files([*segs[3:], *moved], TRUST)  # in any order
    assert rep.outcome is Outcome.TAMPERED and rep.problem is Problem.EDITED
    assert rep.first_bad == rec.record.seq  # type: ignore[union-attr]
    assert rep.file == str(moved[1]) and rep.file_offset == rec.offset
    assert rep.sealed <= rec.record.seq  # type: ignore[union-attr]


def test_two_different_files_for_one_segment(log6: Path, tmp_path: Path) -> None:
    segs = copies(log6, tmp_path)
    twin = tmp_path / "twin" / segs[2].name
    twin.parent.mkdir()
    data = bytearray(segs[2].read_bytes())
    data[-5] ^= 1
    twin.write_bytes(bytes(data))
    rep, _ = verify_files([*segs, twin], TRUST)
    assert rep.outcome is Outcome.TAMPERED and "both hold segment 2" in rep.message
    # the same bytes twice (a move interrupted before its unlink): not a problem
    shutil.copy(segs[2], twin)
    rep, _ = verify_files([*segs, twin], TRUST)
    assert rep.ok, rep.summary()


def test_a_live_segment_cut_short_is_an_unsealed_tail_in_that_file(
    log6: Path, tmp_path: Path
) -> None:
    segs = copies(log6, tmp_path)
    segs[-1].write_bytes(segs[-1].read_bytes()[:-30])
    rep, _ = verify_files(segs, TRUST)
    assert rep.outcome is Outcome.UNSEALED_TAIL and rep.file == str(segs[-1])


def test_a_damaged_live_segment_is_refused_and_set_aside_whole(path: Path) -> None:
    fill(path, 200)
    live = files(path)[-1]
    data = bytearray(live.read_bytes())
    data[20] ^= 0xFF  # inside its first checkpoint
    live.write_bytes(bytes(data))
    resume.remove(path)
    with pytest.raises(AuditLogCorrupt, match=live.name):
        AuditLog(path, KEY, boot=2, segment_bytes=SEG, trusted_keys=TRUST)
    n = len(files(path))
    aside = AuditLog.set_aside(path)
    assert aside.name.startswith(live.name + ".bad-")
    assert files(path) == [] and len(list(path.parent.glob("*.bad-*"))) == n
    with AuditLog(path, KEY, boot=2, segment_bytes=SEG) as log:  # a new log starts
        assert log.size == 0 and log.segment == 0


def test_a_second_writer_is_refused_even_across_a_roll_over(path: Path) -> None:
    with AuditLog(path, KEY, boot=1, checkpoint_every=1, segment_bytes=1024) as log:
        for i in range(10):
            log.record("link_up", host=f"h{i}", port=i)
        assert log.segment >= 2
        with pytest.raises(audit_mod.AuditLogBusy):
            AuditLog(path, KEY, boot=2)
