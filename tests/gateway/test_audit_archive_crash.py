"""A SIGKILL at each step of archiving a segment (linked, copied half-way, recorded,
unlinked) loses nothing: the segment is whole in at least one place at every instant, the
next pass finishes the job, and the log (live + archived) verifies with every record.
Real processes killed for real, real files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.audit_archive import AuditArchiver
from security import AUDIT_FILE, DeviceKey
from security.audit import AuditLog
from security.checkpoint import parse_entries
from security.segments import log_dir_files
from security.segverify import read_files, verify_files

REPO = Path(__file__).resolve().parents[2]
SEG = 2048

CHILD = r"""
import os, shutil, signal, sys
from pathlib import Path
import security.audit as A
from gateway.audit_archive import AuditArchiver
from security.keys import DeviceKey

state, point, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
key = DeviceKey.load(state / DeviceKey.PRIVATE_KEY_FILE)

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if point == "linked":
    real_link = os.link
    def link(a, b):
        real_link(a, b)
        die()
    os.link = link
elif point == "half_copied":
    def link(a, b):
        raise OSError(18, "Invalid cross-device link")
    os.link = link
    def copy(src, dst, n):
        dst.write(src.read(1000))
        dst.flush()
        die()
    shutil.copyfileobj = copy
elif point == "recorded":
    real_record = A.AuditLog.record
    def record(self, event, /, **kw):
        rec = real_record(self, event, **kw)
        if event == "segment_archived":
            die()
        return rec
    A.AuditLog.record = record
elif point == "unlinked":
    real_unlink = os.unlink
    def unlink(p, *a, **kw):
        real_unlink(p, *a, **kw)
        die()
    os.unlink = unlink

seg_bytes = int(sys.argv[4])
log = A.AuditLog(state / A.AUDIT_FILE, key, boot=5, checkpoint_every=3, segment_bytes=seg_bytes)
arch = AuditArchiver(log, None, None, lambda: (mode, state / "archive"))
(seg, nxt), *_ = arch._candidates()
arch._archive(seg, nxt, mode, state / "archive")
print("not killed")
"""


def archive_pass(state: Path, key: DeviceKey, mode: str) -> int:
    """What the daemon's next pass does for the first segment (acknowledged)."""
    with AuditLog(state / AUDIT_FILE, key, boot=6, checkpoint_every=3, segment_bytes=SEG) as log:
        arch = AuditArchiver(log, None, None, lambda: (mode, state / "archive"))  # type: ignore[arg-type]
        (seg, nxt), *_ = arch._candidates()
        assert arch._archive(seg, nxt, mode, state / "archive")
        return seg.k


@pytest.mark.parametrize(
    ("point", "mode"),
    [
        ("linked", "move"),
        ("half_copied", "move"),
        ("recorded", "move"),
        ("unlinked", "move"),
        ("recorded", "delete"),
        ("unlinked", "delete"),
    ],
)
def test_a_sigkill_while_archiving_loses_nothing(tmp_path: Path, point: str, mode: str) -> None:
    key, _ = DeviceKey.load_or_create(tmp_path)
    path = tmp_path / AUDIT_FILE
    with AuditLog(path, key, boot=1, checkpoint_every=3, segment_bytes=SEG) as log:
        for i in range(30):
            log.record("link_up", host=f"h{i}", port=i)
    first = path.read_bytes()
    r = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), point, mode, str(SEG)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == -9, (r.stdout, r.stderr)
    archived = tmp_path / "archive" / parse_log_id(first)
    # until it is deleted on purpose (after its record), the segment is whole somewhere
    where = [p for p in (path, archived / AUDIT_FILE) if p.exists()]
    if (point, mode) != ("unlinked", "delete"):
        assert any(p.read_bytes() == first for p in where), where
    if path.exists():
        assert archive_pass(tmp_path, key, mode) == 0  # the next pass finishes the job
    else:  # the next start seals what the killed one recorded
        AuditLog(path, key, boot=6, segment_bytes=SEG).close()
    assert not path.exists()
    if mode == "move":
        assert (archived / AUDIT_FILE).read_bytes() == first
        assert not list(archived.glob("*.part"))
    else:
        assert not (tmp_path / "archive").exists()
    files = [f for _, f in log_dir_files(path)] + sorted(tmp_path.glob("archive/*/*.cborseq"))
    rep, _ = verify_files(files, [key.public_key])
    assert rep.ok, rep.summary()
    data = b"".join(i.data for i in read_files(files))
    recs = [e.record for e in parse_entries(data).entries if e.record is not None]
    hosts = [r.detail["host"] for r in recs if r.event == "link_up"]
    if mode == "move":
        assert hosts == [f"h{i}" for i in range(30)]  # nothing lost
        assert recs[0].seq == 0
    archived_recs = [r.detail for r in recs if r.event == "segment_archived"]
    twice = point == "recorded"  # recorded before the kill, and again by the retry
    assert [d["segment"] for d in archived_recs] == [0, 0] if twice else [0]
    assert all(d["bytes"] == len(first) for d in archived_recs)


def parse_log_id(data: bytes) -> str:
    from security.segments import read_head

    return read_head(data).log_id.hex()
