"""An open of the audit log that fails after it rolled over to a new segment.

The "open" checkpoint rolls the live segment over when it is past ``segment_bytes``: the
old segment's fd is closed and the new one is live. If something then fails before the
constructor returns (here: Ctrl-C while ``on_append`` is handed the ``tail_quarantined``
record; ``_emit`` only swallows ``Exception``), the error path must close the NEW fd: not
the old number, which is closed already (EBADF would hide the real error) or, worse, may
by then be another file or socket of the daemon. Real files; fds read from /proc/self/fd.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from security.audit import AUDIT_FILE, AuditLog, Outcome, verify
from security.checkpoint import Checkpoint, Record, encode_record, parse_entries
from security.keys import DeviceKey
from security.segments import log_dir_files

KEY = DeviceKey(Ed25519PrivateKey.generate())
TRUST = {KEY.kid: KEY.public_key}


def open_fds() -> dict[int, str]:
    """fd -> what it points at, for this process (the listing's own fd left out)."""
    fds: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:
            continue  # the directory fd os.listdir used, closed by now
    return fds


def log_with_forged_tail(path: Path) -> None:
    """A closed log with a record after its "close" checkpoint: the next open cuts it off
    and records ``tail_quarantined``."""
    with AuditLog(path, KEY, boot=1) as log:
        log.record("start", version="0.1.0")
        log.record("link_up", host="127.0.0.1", port=1883)
    records = [e.record for e in parse_entries(path.read_bytes()).entries if e.record]
    forged = encode_record(
        seq=len(records),
        boot=1,
        ts_ns=time.time_ns(),
        mono_ns=None,
        event="config_change",
        detail={"path": "/etc/edgegw/config.yaml", "sha256": "00" * 32},
        prev=records[-1].hash,
    )
    with open(path, "ab") as f:
        f.write(forged)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C while the open is under way (a BaseException: on_append cannot swallow it)."""


@pytest.mark.parametrize("reuse", [False, True], ids=["old-fd-free", "old-fd-reused"])
def test_a_failure_after_the_open_rolled_over_closes_the_new_segment_only(
    tmp_path: Path, reuse: bool
) -> None:
    path = tmp_path / AUDIT_FILE
    log_with_forged_tail(path)
    other = tmp_path / "other-file"  # stands for a socket or file the daemon opened meanwhile
    other.write_bytes(b"not the audit log")
    seen: list[str] = []
    old_fd: list[int] = []
    reused: list[int] = []

    def on_append(item: Record | Checkpoint) -> None:
        if isinstance(item, Checkpoint):
            seen.append(item.why)
            if item.why == "open":  # segment 0 is still live: find its fd
                old_fd.extend(fd for fd, to in open_fds().items() if to == str(path))
            elif item.why == "segment" and reuse:  # segment 0's fd is closed: its number free
                fd = os.open(other, os.O_RDONLY | os.O_CLOEXEC)
                if fd != old_fd[0]:  # put the file at that very number, as a reuse would
                    os.dup2(fd, old_fd[0], inheritable=False)
                    os.close(fd)
                reused.append(old_fd[0])
            return
        seen.append(item.event)
        if item.event == "tail_quarantined":
            raise Interrupted

    before = open_fds()
    with pytest.raises(Interrupted):  # the real error, not an OSError from closing
        AuditLog(path, KEY, boot=2, segment_bytes=1, on_append=on_append)
    after = open_fds()
    try:
        # Both faults happened: the open rolled over, then the record's delivery failed.
        assert seen == ["open", "segment", "tail_quarantined"]
        assert len(old_fd) == 1
        assert [k for k, _ in log_dir_files(path)] == [0, 1]
        if reuse:
            # The file now at the old number is left alone, and still readable.
            assert after.pop(reused[0]) == str(other)
            assert os.pread(reused[0], 64, 0) == b"not the audit log"
        assert after == before  # the new segment's fd is not leaked
    finally:
        for fd in reused:
            with contextlib.suppress(OSError):  # closed already if the error path took it
                os.close(fd)
    # The lock is released with it: the log opens again, and it is whole.
    with AuditLog(path, KEY, boot=3, segment_bytes=1 << 20) as log:
        assert log.segment == 1
    report = verify(path, TRUST)
    assert report.outcome is Outcome.OK, report.summary()
