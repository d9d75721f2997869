"""A SIGKILL at each step of a roll-over loses no record that ``record()`` returned, and
the next open goes on in the right segment: a new segment file that a crash left empty or
with a cut first checkpoint is removed (its bytes kept beside it), one whose checkpoint is
whole is adopted. Real processes, killed for real (SIGKILL), real files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from security.audit import AUDIT_FILE, AuditLog, verify_bytes
from security.checkpoint import parse_entries
from security.keys import DeviceKey
from security.segments import log_dir_files

REPO = Path(__file__).resolve().parents[2]
SEG = 2048

CHILD = r"""
import os, signal, sys
import security.audit as A
from security import resume
from security.checkpoint import peek_checkpoint
from security.keys import DeviceKey

path, keyfile, point, SEG = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
key = DeviceKey.load(keyfile)
armed = False

def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)

if point == "create":  # the new file exists, nothing written to it
    real_sign = A.sign_checkpoint
    def sign(*a, **kw):
        if armed and kw.get("segment") is not None:
            die()
        return real_sign(*a, **kw)
    A.sign_checkpoint = sign
elif point == "half":  # half of the segment's first checkpoint written
    real_write = A._write_all
    def write(fd, data):
        if armed and data[:1] == b"\xd2" and peek_checkpoint(data).seg is not None:
            real_write(fd, data[: len(data) // 2])
            die()
        real_write(fd, data)
    A._write_all = write
elif point == "dirsync":  # checkpoint written and synced, the directory not yet
    real_sync = A.fsync_dir
    def sync(d):
        if armed:
            die()
        real_sync(d)
    A.fsync_dir = sync
elif point == "switched":  # the new segment is live, its resume point not yet saved
    real_save = resume.save
    def save(log, r):
        if armed and r.seg > 0:
            die()
        real_save(log, r)
    resume.save = save

log = A.AuditLog(path, key, boot=A.last_boot(path) + 1, checkpoint_every=3, segment_bytes=SEG)
armed = True
for i in range(10_000):
    rec = log.record("link_up", host=f"h{i}", port=i)
    print(rec.seq, flush=True)
"""


@pytest.mark.parametrize("point", ["create", "half", "dirsync", "switched"])
def test_a_sigkill_during_a_roll_over_loses_nothing(tmp_path: Path, point: str) -> None:
    key, _ = DeviceKey.load_or_create(tmp_path)
    keyfile = tmp_path / DeviceKey.PRIVATE_KEY_FILE
    path = tmp_path / AUDIT_FILE
    with AuditLog(path, key, boot=1, checkpoint_every=3, segment_bytes=SEG) as log:
        for i in range(40):  # a few segments already
            log.record("config_change", sha256=f"{i:064x}")
    segments_before = len(log_dir_files(path))
    assert segments_before >= 2
    r = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(keyfile), point, str(SEG)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == -9, r.stderr
    returned = [int(x) for x in r.stdout.split()]
    assert returned, "the child recorded nothing before the roll-over"
    files = log_dir_files(path)
    trust = {key.kid: key.public_key}
    kw = {"checkpoint_every": 3, "segment_bytes": SEG, "trusted_keys": trust}
    with AuditLog(path, key, boot=9, **kw) as log:  # type: ignore[arg-type]
        # every record the child was told is durable is there, and the one whose record()
        # was rolling over when it died (appended and synced before its checkpoint)
        n = len(returned) + 1
        assert log.size == 40 + n
        for i in range(40):
            log.record("link_up", host="after", port=i)
        assert log.segment > files[-1][0] - (1 if point in ("create", "half") else 0)
    data = b"".join(f.read_bytes() for _, f in log_dir_files(path))
    rep = verify_bytes(data, [key.public_key])
    assert rep.ok and rep.records == 80 + n, rep.summary()
    seqs = [e.record.seq for e in parse_entries(data).entries if e.record is not None]
    assert seqs == list(range(len(seqs)))
    hosts = [e.record.detail.get("host") for e in parse_entries(data).entries if e.record]
    assert [f"h{i}" for i in range(n)] == [h for h in hosts if h and h[0] == "h"]
    assert seqs[40 : 40 + len(returned)] == returned
    leftovers = sorted(p.name for p in tmp_path.glob("audit.*.cborseq.torn-*"))
    if point == "half":
        assert len(leftovers) == 1  # the cut checkpoint, kept beside for a look
    else:
        assert leftovers == []
    assert any("did not end with a clean close" in w for w in rep.warnings)
