"""Audit verification details that mutation testing (``make mutate``) showed no test
judged: each test here fails with at least one mutant of security/audit.py that the rest
of the audit suite lets through. Real log files written by AuditLog, tampered with
byte by byte, verified as ``edgegw audit verify`` does."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from security.audit import AUDIT_FILE, AuditLog, Outcome, Problem, verify
from security.checkpoint import parse_entries
from security.keys import DeviceKey

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
