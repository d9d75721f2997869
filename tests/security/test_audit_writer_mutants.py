"""The audit log writer's internals, where mutation testing found gaps: a crash during
the very first roll-over, the torn bytes an open states in its checkpoint, a roll-over
that fails on a full disk (no room, or no inode), what ``on_append`` is handed across
roll-overs, ``tick()`` with nothing waiting, and opening a segment after the first
without its resume file. Real files, real processes killed with SIGKILL, a real tmpfs."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from security import resume
from security.audit import (
    AUDIT_FILE,
    AuditLog,
    AuditLogCorrupt,
    Outcome,
    Problem,
    last_boot,
    verify_bytes,
)
from security.checkpoint import (
    LOG_ID_LEN,
    ZERO_HASH,
    Checkpoint,
    MerkleFrontier,
    Record,
    SegmentStart,
    checkpoint_hash,
    decode_record,
    encode_record,
    genesis_head,
    parse_entries,
    peek_checkpoint,
    sign_checkpoint,
)
from security.keys import DeviceKey
from security.segments import log_dir_files, segment_path
from tests.security.test_audit_segment_crash import CHILD
from tests.tmpfs import tmpfs

REPO = Path(__file__).resolve().parents[2]
KEY = DeviceKey(Ed25519PrivateKey.generate())
TRUST = {KEY.kid: KEY.public_key}


def killed_child(code: str, *args: object) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a child python with ``args``; it must end killed by SIGKILL."""
    r = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == -signal.SIGKILL, r.stderr
    return r


def whole(path: Path) -> bytes:
    return b"".join(f.read_bytes() for _, f in log_dir_files(path))


def records(data: bytes) -> list[Record]:
    return [e.record for e in parse_entries(data).entries if e.record is not None]


def checkpoints(data: bytes) -> list[Checkpoint]:
    return [peek_checkpoint(e.raw) for e in parse_entries(data).entries if e.record is None]


@pytest.mark.parametrize("point", ["create", "half"])
def test_a_sigkill_during_the_first_roll_over_goes_on_in_the_first_file(
    tmp_path: Path, point: str
) -> None:
    """A log that has never rolled over: the child is killed (SIGKILL) just after
    creating ``audit.000001.cborseq`` (empty) or with half of its first checkpoint
    written. The next open removes that file, keeps the half checkpoint's bytes beside
    it exactly, and goes on in the first file; nothing returned by record() is lost."""
    key, _ = DeviceKey.load_or_create(tmp_path)
    keyfile = tmp_path / DeviceKey.PRIVATE_KEY_FILE
    path = tmp_path / AUDIT_FILE
    with AuditLog(path, key, boot=1, checkpoint_every=3, segment_bytes=2048):
        pass
    assert [k for k, _ in log_dir_files(path)] == [0]
    r = killed_child(CHILD, path, keyfile, point, "2048")
    returned = [int(x) for x in r.stdout.split()]
    seg1 = segment_path(path, 1)
    assert seg1.exists()
    cut = seg1.read_bytes()
    assert (cut == b"") is (point == "create")
    with AuditLog(path, key, boot=9, checkpoint_every=3, segment_bytes=2048) as log:
        assert log.size == len(returned) + 1  # + the record whose checkpoint was rolling
        # the first file goes on: its open checkpoint rolls over again, to a whole file
        assert log.segment == 1 and log.segment_start == path.stat().st_size
    kept = sorted(tmp_path.glob(f"{seg1.name}.torn-*"))
    if point == "half":
        assert len(kept) == 1 and kept[0].read_bytes() == cut  # every byte, from byte 0
        with pytest.raises(cbor2.CBORDecodeEOF):
            cbor2.loads(cut)
    else:
        assert kept == []
    rep = verify_bytes(whole(path), [key.public_key])
    assert rep.ok and rep.records == len(returned) + 1, rep.summary()
    assert [r.seq for r in records(whole(path))][: len(returned)] == returned


TORN_CHILD = r"""
import os, signal, sys
import security.audit as A
from security.keys import DeviceKey

path, keyfile, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
key = DeviceKey.load(keyfile)
log = A.AuditLog(path, key, boot=2, checkpoint_every=1000)
for i in range(n):
    log.record("link_up", host=f"h{i}", port=i)
real_write = A._write_all
def write(fd, data):  # the next record: 37 bytes of it reach the file, then the power goes
    os.write(fd, data[:37])
    os.fsync(fd)
    os.kill(os.getpid(), signal.SIGKILL)
A._write_all = write
log.record("link_up", host="lost", port=0)
"""


@pytest.mark.parametrize("resumed", [True, False])
def test_the_open_checkpoint_states_exactly_the_torn_bytes_it_removed(
    tmp_path: Path, resumed: bool
) -> None:
    """A SIGKILL in the middle of writing a record leaves 37 bytes of it. The next open
    removes them, keeps them beside the log, and its signed "open" checkpoint says 37
    (``torn``): read from the resume point (the last checkpoint is well into the file)
    or in full."""
    key, _ = DeviceKey.load_or_create(tmp_path)
    path = tmp_path / AUDIT_FILE
    with AuditLog(path, key, boot=1, checkpoint_every=4) as log:
        for i in range(10):
            log.record("config_change", sha256=f"{i:064x}")
    killed_child(TORN_CHILD, path, tmp_path / DeviceKey.PRIVATE_KEY_FILE, 3)
    good = path.stat().st_size - 37
    if not resumed:
        resume.remove(path)
    with AuditLog(path, key, boot=3, trusted_keys={key.kid: key.public_key}) as log:
        assert (log.resumed_from is not None) is resumed
        assert log.size == 13 and log.loaded_length == good
    data = path.read_bytes()
    opened = [c for c in checkpoints(data) if c.why == "open"]
    assert [c.torn_bytes for c in opened] == [0, 0, 37]
    kept = list(tmp_path.glob(f"{AUDIT_FILE}.torn-*"))
    assert len(kept) == 1 and len(kept[0].read_bytes()) == 37
    rep = verify_bytes(data, [key.public_key])
    assert rep.ok and rep.records == 13, rep.summary()


def test_tick_writes_nothing_while_no_record_waits(tmp_path: Path) -> None:
    """``tick()`` seals records that have waited the interval; with none waiting it writes
    nothing, however long the log has been idle (an idle gateway's log does not grow)."""
    path = tmp_path / AUDIT_FILE
    with AuditLog(path, KEY, boot=1, checkpoint_interval_s=0.0) as log:
        size = path.stat().st_size
        assert log.tick() is None and log.tick() is None
        assert path.stat().st_size == size
        log.record("link_up", host="::1", port=1)  # interval 0: sealed at once
        size = path.stat().st_size
        assert log.tick() is None
        assert path.stat().st_size == size


def test_on_append_is_handed_every_entry_in_file_order_across_roll_overs(tmp_path: Path) -> None:
    """The upstream copy is built from what ``on_append`` is handed: across roll-overs it
    is every byte of every segment file, in order (including each segment's first
    checkpoint, which the next checkpoint's ``prev`` is bound to), and every checkpoint
    names the origin."""
    path = tmp_path / AUDIT_FILE
    got: list[Record | Checkpoint] = []
    with AuditLog(
        path,
        KEY,
        boot=1,
        checkpoint_every=5,
        segment_bytes=2048,
        origin="gw-7",
        on_append=got.append,
    ) as log:
        for i in range(60):
            log.record("link_up", host=f"h{i}", port=i)
    assert len(log_dir_files(path)) >= 4
    assert b"".join(x.encoded for x in got) == whole(path)
    cps = checkpoints(whole(path))
    assert "segment" in {c.why for c in cps}
    assert {c.origin for c in cps} == {"gw-7"}


@pytest.mark.parametrize(("trusted", "live"), [(True, 1), (True, 4), (False, 1), (False, 4)])
def test_a_later_segment_opens_without_its_resume_file(
    tmp_path: Path, trusted: bool, live: int
) -> None:
    """Without the resume file an open reads the live segment (the second, or the fifth)
    from its first checkpoint, which states the log's state there; with trusted keys it
    checks that checkpoint's signature. The log goes on, in that segment, and verifies."""
    path = tmp_path / AUDIT_FILE
    with AuditLog(path, KEY, boot=1, checkpoint_every=5, segment_bytes=2048) as log:
        while log.segment < live:
            log.record("link_up", host=f"h{log.size}", port=log.size)
        for _ in range(3):
            log.record("link_up", host=f"h{log.size}", port=log.size)
        n = log.size
    assert log_dir_files(path)[-1][0] == live
    resume.remove(path)
    kw = {"trusted_keys": TRUST} if trusted else {}
    with AuditLog(path, KEY, boot=2, checkpoint_every=5, segment_bytes=2048, **kw) as log:  # type: ignore[arg-type]
        assert log.resumed_from is None and (log.segment, log.size) == (live, n)
        log.record("link_up", host="after", port=0)
    rep = verify_bytes(whole(path), [KEY.public_key])
    assert rep.ok and rep.records == n + 1, rep.summary()


def test_a_later_segment_whose_first_checkpoint_another_key_signed_is_refused(
    tmp_path: Path,
) -> None:
    """The live segment's first checkpoint was signed by a key this device never had (its
    file replaced by one from another log of the same shape): with trusted keys, an open
    without the resume file refuses it rather than adopting it."""
    other = DeviceKey(Ed25519PrivateKey.generate())
    a, b = tmp_path / "a" / AUDIT_FILE, tmp_path / "b" / AUDIT_FILE
    for p, k in ((a, KEY), (b, other)):
        p.parent.mkdir()
        with AuditLog(p, k, boot=1, checkpoint_every=5, segment_bytes=2048) as log:
            for i in range(30):
                log.record("link_up", host=f"h{i}", port=i)
    (ka, fa), (kb, fb) = log_dir_files(a)[-1], log_dir_files(b)[-1]
    assert ka == kb
    os.replace(fb, fa)
    resume.remove(a)
    with pytest.raises(AuditLogCorrupt, match="first checkpoint is not valid"):
        AuditLog(a, KEY, boot=2, segment_bytes=2048, trusted_keys=TRUST)


@pytest.mark.parametrize("short_of", ["space", "inodes"])
def test_a_roll_over_that_fails_on_a_full_disk_loses_nothing_and_is_retried(
    tmp_path: Path, short_of: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The disk is full when the log rolls over (a real tmpfs: no free page for the new
    segment's first checkpoint, or no free inode for its file). The checkpoint that
    ended the segment is written, record() returns, the new file is not left behind and
    the log goes on in the segment it was in; the error is logged once. Once there is
    room the next checkpoint rolls over, and nothing was lost."""
    size = "1m,nr_inodes=64" if short_of == "inodes" else "1m"
    with tmpfs(tmp_path / "fs", size) as fs:
        path = fs / AUDIT_FILE
        filler = fs / "filler"
        filler.mkdir()
        # segment_bytes 1: every checkpoint rolls over (the open one too)
        with AuditLog(path, KEY, boot=1, checkpoint_every=1000, segment_bytes=1) as log:
            seg = log.segment
            assert seg == 1
            if short_of == "space":
                with open(filler / "big", "wb", buffering=0) as f, pytest.raises(OSError):
                    while True:
                        f.write(b"\0" * 4096)
                assert os.statvfs(fs).f_bavail == 0
            else:
                with pytest.raises(OSError):
                    for i in range(1000):
                        (filler / f"{i}").touch()
                assert os.statvfs(fs).f_favail == 0
            caplog.clear()
            with caplog.at_level(logging.ERROR, logger="security.audit"):
                log.record("link_up", host="::1", port=1)
                log.checkpoint()  # the live segment's last page still has room for it
                log.record("link_up", host="::1", port=2)
                log.checkpoint()
            assert log.segment == seg
            assert not segment_path(path, seg + 1).exists()
            fails = [
                r for r in caplog.records if "cannot start a new audit log segment" in r.message
            ]
            assert len(fails) == 1, caplog.text
            for f in filler.iterdir():
                f.unlink()
            log.checkpoint()
            assert log.segment == seg + 1
            log.record("link_up", host="::1", port=3)
        rep = verify_bytes(whole(path), [KEY.public_key])
        assert rep.ok and rep.records == 3, rep.summary()
        assert [r.detail["port"] for r in records(whole(path))] == [1, 2, 3]


def test_a_key_rotated_in_the_live_segment_is_learnt_when_it_is_read_in_full(
    tmp_path: Path,
) -> None:
    """The device key was rotated (``keyring.rotate`` with the log: a key_rotated record
    carrying the certificate, then checkpoints signed by the new key). Opened without the
    resume file and trusting only the first key, the writer learns the new key from that
    record: nothing is cut off as forged. After the next roll-over the new segment's first
    checkpoint carries the certificate, so a run of segments from there verifies with the
    first key alone."""
    from security.keyring import init_keys, rotate

    state = tmp_path / "state"
    old, _ = init_keys(state)
    root = {old.kid: old.public_key}
    path = tmp_path / AUDIT_FILE
    with AuditLog(path, old, boot=1, checkpoint_every=5) as log:
        for i in range(7):
            log.record("link_up", host=f"h{i}", port=i)
        cert = rotate(state, audit=log).certificate
        for i in range(7):
            log.record("link_up", host=f"k{i}", port=i)
    new = DeviceKey.load(state / DeviceKey.PRIVATE_KEY_FILE)
    assert new.kid != old.kid
    resume.remove(path)
    with AuditLog(path, new, boot=2, checkpoint_every=5, segment_bytes=1, trusted_keys=root) as log:
        assert log.resumed_from is None and log.size == 15
        assert log.segment == 1  # the open checkpoint rolled over
        log.record("link_up", host="after", port=0)
    assert list(tmp_path.glob(f"{AUDIT_FILE}.forged-*")) == []
    seg1 = log_dir_files(path)[1][1]
    assert peek_checkpoint(parse_entries(seg1.read_bytes()).entries[0].raw).certs == (cert,)
    rep = verify_bytes(seg1.read_bytes(), [old.public_key])
    assert rep.ok and rep.records == 1, rep.summary()
    rep = verify_bytes(whole(path), [old.public_key])
    assert rep.ok and rep.records == 16, rep.summary()


def test_last_boot_is_that_of_the_newest_entry_in_the_live_segment(tmp_path: Path) -> None:
    """``edgegw keys rotate`` appends under ``last_boot()``: the boot of the newest entry
    (a checkpoint when the last run recorded nothing), read from the live segment, not
    the first file; 0 for a log that does not exist yet."""
    path = tmp_path / AUDIT_FILE
    assert last_boot(path) == 0
    with AuditLog(path, KEY, boot=3, checkpoint_every=5, segment_bytes=2048) as log:
        for i in range(60):
            log.record("link_up", host=f"h{i}", port=i)
    assert len(log_dir_files(path)) >= 3
    assert last_boot(path) == 3
    with AuditLog(path, KEY, boot=4, segment_bytes=2048):
        pass  # a run that recorded nothing: its checkpoints carry its boot
    assert last_boot(path) == 4


def _stale_listing(monkeypatch: pytest.MonkeyPatch, first: list[tuple[int, Path]]) -> None:
    """The first listing of the log's files is ``first``, as if another process changed
    the directory just after it was read (the race _open_live_segment guards against)."""
    import security.audit as audit_mod

    real = audit_mod.segments.log_dir_files
    calls: list[int] = []

    def listing(path: Path) -> list[tuple[int, Path]]:
        calls.append(1)
        return first if len(calls) == 1 else real(path)

    monkeypatch.setattr(audit_mod.segments, "log_dir_files", listing)


def test_a_roll_over_by_another_writer_between_listing_and_locking_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process (the daemon) rolled over just after this one listed the files: the
    segment it listed as live is no longer locked, but a newer one is. Opening refuses
    (AuditLogBusy) rather than writing into the older segment, which would fork the log."""
    from security.audit import AuditLogBusy

    path = tmp_path / AUDIT_FILE
    with AuditLog(path, KEY, boot=1, checkpoint_every=5, segment_bytes=2048) as log:
        for i in range(40):
            log.record("link_up", host=f"h{i}", port=i)
    daemon = AuditLog(path, KEY, boot=2, checkpoint_every=5, segment_bytes=2048)
    try:
        files = log_dir_files(path)
        sizes = [f.stat().st_size for _, f in files]
        _stale_listing(monkeypatch, files[:-1])
        with pytest.raises(AuditLogBusy, match="rolled over to a new segment by another"):
            AuditLog(path, KEY, boot=3, checkpoint_every=5, segment_bytes=2048)
        assert [f.stat().st_size for _, f in log_dir_files(path)] == sizes
    finally:
        daemon.close()


def test_a_segment_file_gone_between_listing_and_opening_is_looked_for_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The newest file listed is gone when it is opened (removed meanwhile, e.g. an
    unfinished segment another open cleaned up): the open lists the files again and goes
    on in the live segment."""
    path = tmp_path / AUDIT_FILE
    with AuditLog(path, KEY, boot=1, checkpoint_every=5, segment_bytes=2048) as log:
        for i in range(40):
            log.record("link_up", host=f"h{i}", port=i)
        live = log.segment
    files = log_dir_files(path)
    _stale_listing(monkeypatch, [*files, (live + 1, segment_path(path, live + 1))])
    with AuditLog(path, KEY, boot=2, checkpoint_every=5, segment_bytes=2048) as log:
        assert (log.segment, log.size) == (live, 40)


@pytest.mark.parametrize(
    ("first", "rest"),
    [(b"\xff", True), (b"\x00", True), (b"\x00", False)],  # not CBOR; CBOR, not an entry
)
def test_a_live_segment_whose_first_byte_is_damaged_is_refused_not_removed(
    tmp_path: Path, first: bytes, rest: bool
) -> None:
    """Only a segment that a crash left empty or with its first checkpoint cut short is
    removed at open. One whose first byte is damaged (not CBOR at all) holds records: the
    open refuses it and leaves it in place, every byte, rather than dropping them; so
    does one that holds nothing but a whole CBOR item that is not an entry."""
    path = tmp_path / AUDIT_FILE
    with AuditLog(path, KEY, boot=1, checkpoint_every=5, segment_bytes=2048) as log:
        for i in range(40):
            log.record("link_up", host=f"h{i}", port=i)
    live = log_dir_files(path)[-1][1]
    assert records(live.read_bytes())
    data = first + (live.read_bytes()[1:] if rest else b"")
    live.write_bytes(data)
    resume.remove(path)
    with pytest.raises(AuditLogCorrupt, match=live.name):
        AuditLog(path, KEY, boot=2, segment_bytes=2048)
    assert live.read_bytes() == data
    assert list(tmp_path.glob("*.torn-*")) == []


def test_a_forged_key_rotation_after_a_clean_close_is_cut_off_not_fatal(tmp_path: Path) -> None:
    """While edgegw was stopped someone appended a key_rotated record whose certificate
    another device's key signed. The certificate is passed over (it vouches for nothing);
    the record is a forged tail, cut off and kept beside the log, and the log opens: a
    bad certificate in the log does not stop the daemon."""
    from security.keyring import certify

    path = tmp_path / AUDIT_FILE
    with AuditLog(path, KEY, boot=1, checkpoint_every=5) as log:
        for i in range(7):
            log.record("link_up", host=f"h{i}", port=i)
    stranger = DeviceKey(Ed25519PrivateKey.generate())
    last = records(path.read_bytes())[-1]
    cert = certify(stranger, DeviceKey(Ed25519PrivateKey.generate()).public_key, 1)
    with open(path, "ab") as f:
        f.write(
            encode_record(
                seq=last.seq + 1,
                boot=last.boot,
                ts_ns=last.ts_ns + 1,
                mono_ns=None,
                event="key_rotated",
                detail={"old_kid": KEY.kid.hex(), "new_kid": "00" * 8, "n": 1, "cert": cert},
                prev=last.hash,
            )
        )
    resume.remove(path)
    with AuditLog(path, KEY, boot=2, trusted_keys=TRUST) as log:
        assert log.size == 8  # 7, and tail_quarantined
    assert len(list(tmp_path.glob(f"{AUDIT_FILE}.forged-*"))) == 1
    assert [r.event for r in records(path.read_bytes())][-1] == "tail_quarantined"


def test_each_log_set_aside_is_kept(tmp_path: Path) -> None:
    """A damaged log set aside, a new one started, and that one set aside too: both are
    kept, each under its own name (the second does not replace the first)."""
    path = tmp_path / AUDIT_FILE
    kept: list[bytes] = []
    for boot in (1, 2):
        with AuditLog(path, KEY, boot=boot) as log:
            log.record("link_up", host="::1", port=boot)
        kept.append(path.read_bytes())
        aside = AuditLog.set_aside(path)
        assert aside.read_bytes() == kept[-1] and not path.exists()
    assert sorted(p.read_bytes() for p in tmp_path.glob(f"{AUDIT_FILE}.bad-*")) == sorted(kept)


def test_a_live_file_of_several_mebibytes_is_read_whole(tmp_path: Path) -> None:
    """Without the resume file an open reads the whole live file, which can be several
    MiB (one file, or large segments): in chunks, every byte once, in order."""
    path = tmp_path / AUDIT_FILE
    note = "n" * 60_000
    with AuditLog(path, KEY, boot=1, checkpoint_every=10) as log:
        for i in range(45):
            log.record("link_up", host=f"h{i}", note=note)
    assert path.stat().st_size > 5 * 2**20 // 2
    resume.remove(path)
    with AuditLog(path, KEY, boot=2) as log:
        assert log.resumed_from is None and log.size == 45
    rep = verify_bytes(path.read_bytes(), [KEY.public_key])
    assert rep.ok and rep.records == 45, rep.summary()


def test_the_interval_runs_from_the_oldest_unsealed_record(tmp_path: Path) -> None:
    """An "interval" checkpoint is due when the oldest unsealed record has waited the
    interval, however often records follow it (each must not restart the wait)."""
    path = tmp_path / AUDIT_FILE
    with AuditLog(path, KEY, boot=1, checkpoint_interval_s=1.0) as log:
        log.record("link_up", host="::1", port=1)
        time.sleep(0.6)
        log.record("link_up", host="::1", port=2)
        time.sleep(0.6)  # the first has now waited 1.2 s, the second 0.6 s
        log.record("link_up", host="::1", port=3)
        # sealed at the third record (or, had a sleep overrun, at the second)
        assert log.unsealed in (0, 1)
    whys = [c.why for c in checkpoints(path.read_bytes())]
    assert whys == ["open", "interval", "close"]


def test_an_unsealed_record_that_does_not_link_is_refused_not_sealed(tmp_path: Path) -> None:
    """After a crash (no close checkpoint) the last record's ``prev`` was altered; its seq
    is still right. The next open refuses the log (the chain is broken) instead of
    sealing the altered record under a checkpoint of its own."""
    path = tmp_path / AUDIT_FILE
    with AuditLog(path, KEY, boot=1, checkpoint_every=5) as log:
        for i in range(7):
            log.record("link_up", host=f"h{i}", port=i)
    entries = parse_entries(path.read_bytes()).entries
    assert entries[-1].record is None and entries[-2].record is not None  # the close
    last = entries[-2].record
    data = path.read_bytes()[: entries[-1].offset]  # as if it crashed before the close
    at = data.rindex(last.prev)
    data = data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]
    path.write_bytes(data)
    resume.remove(path)
    with pytest.raises(AuditLogCorrupt, match="breaks the chain"):
        AuditLog(path, KEY, boot=2)
    assert path.read_bytes() == data


# -- verification: what only a stolen key can produce ---------------------------------------


def _signed_log(records: int, first_prev: bytes | None = None) -> tuple[bytes, bytes]:
    """A whole log signed with the device's key by hand (as whoever holds the key can):
    genesis, ``records`` records, a close checkpoint that vouches for them. The first
    record links to ``first_prev`` instead of the genesis head when given. Returns the
    bytes and the raw close checkpoint."""
    log_id = os.urandom(LOG_ID_LEN)
    frontier = MerkleFrontier()
    genesis = sign_checkpoint(
        KEY,
        log_id=log_id,
        size=0,
        root=frontier.root(),
        head=genesis_head(log_id),
        prev=ZERO_HASH,
        boot=1,
        ts_ns=1,
        why="open",
    ).encoded
    out, head = [genesis], first_prev or genesis_head(log_id)
    for i in range(records):
        raw = encode_record(
            seq=i,
            boot=1,
            ts_ns=2 + i,
            mono_ns=None,
            event="link_up",
            detail={"port": i},
            prev=head,
        )
        head = decode_record(raw).hash
        frontier.append(head)
        out.append(raw)
    close = sign_checkpoint(
        KEY,
        log_id=log_id,
        size=records,
        root=frontier.root(),
        head=head,
        prev=checkpoint_hash(genesis),
        boot=1,
        ts_ns=99,
        why="close",
    ).encoded
    return b"".join([*out, close]), close


def test_a_signed_first_record_that_does_not_link_to_the_genesis_is_named(
    tmp_path: Path,
) -> None:
    """Every checkpoint is validly signed and vouches for the records, but the first
    record does not link to the log's genesis head: verify names seq 0 (not seq -1,
    and not "OK")."""
    data, _ = _signed_log(7, first_prev=bytes(32))
    assert verify_bytes(_signed_log(7)[0], [KEY.public_key]).ok
    rep = verify_bytes(data, [KEY.public_key])
    assert rep.outcome is Outcome.TAMPERED and rep.problem is Problem.EDITED, rep
    assert (rep.first_bad, rep.last_bad) == (0, 0), rep


def test_a_signed_checkpoint_naming_another_head_at_the_same_size_names_the_last_record(
    tmp_path: Path,
) -> None:
    """Right after the close checkpoint, a second one (validly signed, chained to it)
    seals the same 7 records but names another head: no record came between the two, so
    the record it contradicts is seq 6, and only that one is named."""
    data, close = _signed_log(7)
    cp = peek_checkpoint(close)
    other = sign_checkpoint(
        KEY,
        log_id=cp.log_id,
        size=7,
        root=cp.root,
        head=bytes(32),
        prev=checkpoint_hash(close),
        boot=1,
        ts_ns=100,
        why="close",
    ).encoded
    rep = verify_bytes(data + other, [KEY.public_key])
    assert rep.outcome is Outcome.TAMPERED and rep.problem is Problem.EDITED, rep
    assert (rep.first_bad, rep.last_bad) == (6, 6), rep
    assert rep.message.startswith("seq 6: record altered"), rep.message


def _entries_with_stranger(
    tmp_path: Path, seq: int, before: int, close: bool, linked: bool = False
) -> bytes:
    """Records 0..11 of a real log (a checkpoint every 5: genesis, 0..4, cp, 5..9, cp,
    10, 11, close), with a record claiming ``seq`` that links to nothing in it (from
    another log) inserted before entry ``before``; without the close when not ``close``
    (a crash: 10 and 11 unsealed). With ``linked`` it links to the record before it
    instead, as a forger who read the log would make it."""
    path = tmp_path / AUDIT_FILE
    with AuditLog(path, KEY, boot=1, checkpoint_every=5) as log:
        for i in range(12):
            log.record("link_up", host="::1", port=i)
    raws = [e.raw for e in parse_entries(path.read_bytes()).entries]
    if not close:
        raws = raws[:-1]
    stranger = encode_record(
        seq=seq,
        boot=1,
        ts_ns=1,
        mono_ns=None,
        event="link_up",
        detail={"port": -1},
        prev=records(b"".join(raws))[seq - 1].hash if linked else bytes(32),
    )
    return b"".join([*raws[:before], stranger, *raws[before:]])


@pytest.mark.parametrize("linked", [False, True])
def test_a_stranger_inserted_just_before_the_checkpoint_that_counts_it_is_named(
    tmp_path: Path, linked: bool
) -> None:
    """A record claiming seq 5 (linking to nothing here, or to seq 4) is inserted just
    before the checkpoint that seals 5 records: the record scan and that checkpoint both
    name seq 5. verify reports the inserted record (it does not fail on the tie)."""
    data = _entries_with_stranger(tmp_path, seq=5, before=6, close=True, linked=linked)
    rep = verify_bytes(data, [KEY.public_key])
    assert rep.outcome is Outcome.TAMPERED and rep.problem is Problem.INSERTED, rep
    assert (rep.first_bad, rep.last_bad) == (5, 5), rep
    assert rep.message.startswith("seq 5: forged record inserted"), rep.message


def test_a_stranger_inserted_in_the_unsealed_tail_is_named_as_inserted(tmp_path: Path) -> None:
    """After a crash, seq 10 and 11 are unsealed; a record claiming seq 11 that links to
    nothing here is inserted before the real seq 11. Neither is vouched for, but the
    real one follows: verify names an insertion at seq 11, not an edit."""
    data = _entries_with_stranger(tmp_path, seq=11, before=14, close=False)
    rep = verify_bytes(data, [KEY.public_key])
    assert rep.outcome is Outcome.TAMPERED and rep.problem is Problem.INSERTED, rep
    assert (rep.first_bad, rep.last_bad) == (11, 11), rep


def test_an_edit_when_a_checkpoint_follows_every_record_is_named_once(tmp_path: Path) -> None:
    """With a checkpoint after every record, record 3 is altered (same length): the record
    scan and the checkpoint after it both name seq 3. verify names it (and does not fail
    on the tie)."""
    path = tmp_path / AUDIT_FILE
    with AuditLog(path, KEY, boot=1, checkpoint_every=1) as log:
        for i in range(6):
            log.record("link_up", host="::1", note=f"r{i}")
    data = path.read_bytes()
    raw = records(data)[3].encoded
    data = data.replace(raw, raw.replace(b"r3", b"x3"))
    rep = verify_bytes(data, [KEY.public_key])
    assert rep.outcome is Outcome.TAMPERED and rep.problem is Problem.EDITED, rep
    assert (rep.first_bad, rep.last_bad, rep.sealed) == (3, 3, 3), rep


def test_a_run_from_a_segment_whose_signed_start_names_another_head_names_its_first_record(
    tmp_path: Path,
) -> None:
    """A run of segments from the middle whose first checkpoint (validly signed: a stolen
    key) states another head than the record before the segment: the segment's first
    record does not link to it, and verify names that record, not a later checkpoint."""
    path = tmp_path / AUDIT_FILE
    with AuditLog(path, KEY, boot=1, checkpoint_every=5, segment_bytes=2048) as log:
        for i in range(60):
            log.record("link_up", host=f"h{i}", port=i)
    segs = [f.read_bytes() for _, f in log_dir_files(path)][2:]
    first = parse_entries(segs[0]).entries[0].raw
    cp = peek_checkpoint(first)
    assert cp.seg == 2 and cp.at is not None
    forged = sign_checkpoint(
        KEY,
        log_id=cp.log_id,
        size=cp.size,
        root=cp.root,
        head=bytes(32),
        prev=cp.prev,
        boot=cp.boot,
        ts_ns=cp.ts_ns,
        why=cp.why,
        segment=SegmentStart(cp.seg, cp.at, cp.compact, cp.certs),
    ).encoded
    assert verify_bytes(b"".join(segs), [KEY.public_key]).ok
    rep = verify_bytes(b"".join([forged + segs[0][len(first) :], *segs[1:]]), [KEY.public_key])
    assert rep.outcome is Outcome.TAMPERED and rep.problem is Problem.EDITED, rep
    assert (rep.first_bad, rep.last_bad) == (cp.size, cp.size), rep


def test_a_record_deleted_from_the_unsealed_tail_is_named_as_deleted(tmp_path: Path) -> None:
    """After a crash seq 10..12 are unsealed; seq 11 is cut out. Nothing vouches for the
    tail, but seq 12 follows seq 10: verify names seq 11 as deleted (not seq 12 as
    altered)."""
    path = tmp_path / AUDIT_FILE
    with AuditLog(path, KEY, boot=1, checkpoint_every=5) as log:
        for i in range(13):
            log.record("link_up", host="::1", port=i)
    entries = parse_entries(path.read_bytes()).entries
    raws = [e.raw for e in entries[:-1]]  # no close: a crash
    gone = records(path.read_bytes())[11].encoded
    rep = verify_bytes(b"".join(r for r in raws if r != gone), [KEY.public_key])
    assert rep.outcome is Outcome.TAMPERED and rep.problem is Problem.DELETED, rep
    assert (rep.first_bad, rep.last_bad) == (11, 11), rep


def test_records_swapped_in_the_unsealed_tail_are_named_as_reordered(tmp_path: Path) -> None:
    """After a crash seq 10..12 are unsealed; seq 11 and 12 swapped places. Nothing
    vouches for them, but the real seq 11 follows: verify names seq 11 as out of order
    (not as deleted)."""
    path = tmp_path / AUDIT_FILE
    with AuditLog(path, KEY, boot=1, checkpoint_every=5) as log:
        for i in range(13):
            log.record("link_up", host="::1", port=i)
    raws = [e.raw for e in parse_entries(path.read_bytes()).entries[:-1]]  # a crash
    r11, r12 = (r.encoded for r in records(path.read_bytes())[11:13])
    assert raws[-2:] == [r11, r12]
    rep = verify_bytes(b"".join([*raws[:-2], r12, r11]), [KEY.public_key])
    assert rep.outcome is Outcome.TAMPERED and rep.problem is Problem.REORDERED, rep
    assert (rep.first_bad, rep.last_bad) == (11, 11), rep


def test_a_run_from_a_segment_whose_merkle_range_was_damaged_is_named(tmp_path: Path) -> None:
    """One byte of the Merkle range in a run's first checkpoint is flipped (no key
    needed): the range no longer gives the root it states. verify names that checkpoint
    (the run's first seq), with nothing verified."""
    path = tmp_path / AUDIT_FILE
    with AuditLog(path, KEY, boot=1, checkpoint_every=5, segment_bytes=2048) as log:
        for i in range(60):
            log.record("link_up", host=f"h{i}", port=i)
    segs = [f.read_bytes() for _, f in log_dir_files(path)][2:]
    cp = peek_checkpoint(parse_entries(segs[0]).entries[0].raw)
    assert cp.seg == 2 and cp.compact
    at = segs[0].index(cp.compact[0])
    segs[0] = segs[0][:at] + bytes([segs[0][at] ^ 1]) + segs[0][at + 1 :]
    rep = verify_bytes(b"".join(segs), [KEY.public_key])
    assert rep.outcome is Outcome.TAMPERED and rep.problem is Problem.BAD_CHECKPOINT, rep
    assert (rep.first_seq, rep.first_bad, rep.last_bad) == (cp.size, cp.size, cp.size), rep
    assert rep.message.startswith("the first checkpoint of segment 2"), rep.message


def test_an_empty_log_is_reported_as_such_with_nothing_sealed() -> None:
    rep = verify_bytes(b"", [KEY.public_key])
    assert rep.outcome is Outcome.TAMPERED and rep.problem is Problem.EMPTY, rep
    assert (rep.first_bad, rep.last_bad, rep.sealed, rep.records) == (0, 0, 0, 0), rep


def test_the_report_of_a_run_from_the_middle_states_its_segment_checkpoints_and_origin(
    tmp_path: Path,
) -> None:
    path = tmp_path / AUDIT_FILE
    with AuditLog(path, KEY, boot=1, checkpoint_every=5, segment_bytes=2048, origin="gw-7") as log:
        for i in range(60):
            log.record("link_up", host=f"h{i}", port=i)
    segs = [f.read_bytes() for _, f in log_dir_files(path)][2:]
    data = b"".join(segs)
    rep = verify_bytes(data, [KEY.public_key])
    assert rep.ok and rep.segment == 2 and rep.origin == "gw-7", rep
    assert rep.checkpoints == len(checkpoints(data)) and rep.checkpoints >= 3, rep
    assert (
        rep.sealed == 60
        and rep.first_seq == peek_checkpoint(parse_entries(segs[0]).entries[0].raw).size
    ), rep


def test_a_given_certificate_that_does_not_verify_is_an_error_for_a_whole_log(
    tmp_path: Path,
) -> None:
    """A certificate passed to verify (``--chain``) that no trusted key signed is an error
    that says so, not silently left out (for a whole log; a run from the middle passes
    over the certificates its first checkpoint carries)."""
    from security.keyring import KeyChainError, certify

    data, _ = _signed_log(3)
    stranger = DeviceKey(Ed25519PrivateKey.generate())
    cert = certify(stranger, DeviceKey(Ed25519PrivateKey.generate()).public_key, 1)
    with pytest.raises(KeyChainError, match="not signed by a trusted key"):
        verify_bytes(data, [KEY.public_key], certificates=[cert])
