"""Opening a long audit log resumes from its last checkpoint (security/resume.py): the
entries before it are hashed, not parsed and replayed; the state is the one a full read
gives; anything that does not match (an edit, a cut, another writer, a stale or damaged
resume file) falls back to reading the whole log, which refuses tampering as before."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import security.audit as audit_mod
from security import resume
from security.audit import AUDIT_FILE, AuditLog, AuditLogCorrupt, Problem, verify
from security.checkpoint import (
    Entry,
    checkpoint_hash,
    decode_checkpoint_payload,
    parse_entries,
    sign_checkpoint,
)
from security.keys import DeviceKey

KEY = DeviceKey(Ed25519PrivateKey.generate())


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / AUDIT_FILE


def fill(path: Path, n: int, boot: int = 1) -> None:
    with AuditLog(path, KEY, boot=boot, checkpoint_every=50) as log:
        for i in range(n):
            log.record("link_up", host=f"h{i}", port=i)


def state(log: AuditLog) -> tuple[Any, ...]:
    return (log.log_id, log.size, log.head, log._frontier.root(), log._cp_prev, log.length)


def parsed_bytes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    seen: list[int] = []
    real = audit_mod.parse_entries

    def spy(data: bytes) -> Any:
        seen.append(len(data))
        return real(data)

    monkeypatch.setattr(audit_mod, "parse_entries", spy)
    return seen


def test_an_open_parses_only_from_the_last_checkpoint(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(path, 3000)
    size = path.stat().st_size
    seen = parsed_bytes(monkeypatch)
    with AuditLog(path, KEY, boot=2, trusted_keys={KEY.kid: KEY.public_key}) as log:
        resumed = state(log)
        assert log.resumed_from is not None and log.resumed_from.offset == size
        log.record("start", version="x")
    assert seen and max(seen) < 2000  # the close checkpoint, not the 3000 records
    resume.remove(path)  # the same log read in full gives the same state
    monkeypatch.undo()
    with AuditLog(path, KEY, boot=3) as log:
        assert log.resumed_from is None
        assert log.size == 3001
    assert verify(path, [KEY.public_key]).ok
    assert resumed[1] == 3000


def test_resumed_and_full_opens_agree(path: Path) -> None:
    fill(path, 777)
    with AuditLog(path, KEY, boot=2) as log:
        a = state(log)
        assert log.resumed_from is not None
    # the same bytes, opened again in full from a copy without the resume file
    copy = path.with_name("copy.cborseq")
    copy.write_bytes(path.read_bytes()[: a[5]])
    with AuditLog(copy, KEY, boot=2) as log:
        assert log.resumed_from is None
        b = state(log)
    # both see the same log up to the "open" checkpoint each wrote
    assert a[:3] == b[:3] and a[3] == b[3]


def test_an_edit_anywhere_falls_back_to_a_full_read_which_refuses_it(path: Path) -> None:
    fill(path, 500)
    data = bytearray(path.read_bytes())
    i = data.index(b"h17")
    data[i : i + 3] = b"h71"  # same length: only a full read notices
    path.write_bytes(bytes(data))
    with pytest.raises(AuditLogCorrupt):
        AuditLog(path, KEY, boot=2)


def test_a_cut_log_or_a_bad_resume_file_is_read_in_full(path: Path) -> None:
    fill(path, 300)
    good = path.read_bytes()
    with AuditLog(path, KEY, boot=2):
        pass
    # a stale resume file (an older checkpoint of the same log) still works
    stale = resume.path_for(path).read_bytes()
    fill(path, 10, boot=3)
    resume.path_for(path).write_bytes(stale)
    with AuditLog(path, KEY, boot=4) as log:
        assert log.resumed_from is not None and log.size == 310
    # garbage: ignored
    resume.path_for(path).write_bytes(b"\x00garbage")
    with AuditLog(path, KEY, boot=5) as log:
        assert log.resumed_from is None and log.size == 310
    # the log cut below the resume point: read in full (the torn tail handled as before)
    path.write_bytes(good[:-10])
    with AuditLog(path, KEY, boot=6) as log:
        assert log.resumed_from is None and log.size == 300


def test_a_resume_point_written_by_another_key_is_not_trusted(path: Path, tmp_path: Path) -> None:
    fill(path, 20)
    attacker = DeviceKey(Ed25519PrivateKey.generate())
    with AuditLog(path, attacker, boot=1) as log:  # writes its own checkpoints and resume
        log.record("config_change", sha256="00" * 32)
    with AuditLog(path, KEY, boot=2, trusted_keys={KEY.kid: KEY.public_key}) as log:
        assert log.resumed_from is None  # read in full: the forged tail is cut
        assert log.size == 21  # the 20 records and the tail_quarantined record
    assert len(list(tmp_path.glob(f"{AUDIT_FILE}.forged-*"))) == 1


def test_opening_a_long_log_resumes(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """60,000 records (the issue measured 0.7 s per start): the resumed open parses one
    checkpoint; both times are printed (a figure, not an assertion)."""
    fill(path, 60_000)
    seen = parsed_bytes(monkeypatch)
    t0 = time.perf_counter()
    with AuditLog(path, KEY, boot=2):
        pass
    resumed = time.perf_counter() - t0
    assert max(seen) < 2000
    monkeypatch.undo()
    resume.remove(path)
    t0 = time.perf_counter()
    with AuditLog(path, KEY, boot=3):
        pass
    full = time.perf_counter() - t0
    print(f"open of {path.stat().st_size} bytes: resumed {resumed:.3f} s, full {full:.3f} s")
    assert len(parse_entries(path.read_bytes()).entries) > 60_000


def test_verify_compares_each_checkpoints_merkle_root(path: Path) -> None:
    """A checkpoint signed by the right key, with the right size, head and previous
    checkpoint, but a Merkle root that is not the records': verify says so."""
    fill(path, 30)
    entries: list[Entry] = parse_entries(path.read_bytes()).entries
    last = entries[-1]
    cp = decode_checkpoint_payload(cbor2.loads(last.raw).value[2], b"", last.raw)
    forged = sign_checkpoint(
        KEY,
        log_id=cp.log_id,
        size=cp.size,
        root=b"\x42" * 32,  # not the records' root
        head=cp.head,
        prev=cp.prev,
        boot=cp.boot,
        ts_ns=cp.ts_ns,
        why=cp.why,
    ).encoded
    assert checkpoint_hash(forged) != checkpoint_hash(last.raw)
    path.write_bytes(path.read_bytes()[: last.offset] + forged)
    rep = verify(path, [KEY.public_key])
    assert not rep.ok
    assert rep.problem is Problem.BAD_CHECKPOINT, rep
    assert "its Merkle root does not match the records" in rep.message, rep
