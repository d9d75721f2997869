"""A tail that edgegw did not write is cut off at open, kept beside the log and named.

Every edgegw program that appends while the daemon is stopped opens and closes the log, so
it writes checkpoints; records after a clean close with no checkpoint after them were
added by something else. A crash tail (records after an open/count/interval checkpoint)
is genuine and adopted. With the device's keys, trailing checkpoints must verify too.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from security.audit import (
    AUDIT_FILE,
    AuditLog,
    AuditLogCorrupt,
    Outcome,
    verify,
    verify_bytes,
)
from security.checkpoint import (
    encode_record,
    parse_entries,
    peek_checkpoint,
    sign_checkpoint,
)
from security.keyring import rotate
from security.keys import DeviceKey

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> DeviceKey:
    return DeviceKey.load_or_create(tmp_path_factory.mktemp("key"))[0]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / AUDIT_FILE


def forged_record(path: Path, event: str = "config_change", **detail: object) -> bytes:
    """A record that links correctly onto the log's last record: the best forgery someone
    with write access but no key can make."""
    entries = parse_entries(path.read_bytes()).entries
    records = [e.record for e in entries if e.record is not None]
    data = encode_record(
        seq=len(records),
        boot=records[-1].boot,
        ts_ns=time.time_ns(),
        mono_ns=None,
        event=event,
        detail=detail or {"path": "/etc/edgegw/config.yaml", "sha256": "00" * 32},
        prev=records[-1].hash,
    )
    with open(path, "ab") as f:
        f.write(data)
    return data


def quarantined(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.forged-*"))


def events(path: Path) -> list[tuple[str, dict[str, object]]]:
    return [
        (e.record.event, dict(e.record.detail))
        for e in parse_entries(path.read_bytes()).entries
        if e.record is not None
    ]


def test_records_after_a_clean_close_are_cut_kept_and_named(
    path: Path, key: DeviceKey, caplog: pytest.LogCaptureFixture
) -> None:
    with AuditLog(path, key, boot=1) as log:
        log.record("start", version="0.1.0")
    closed = path.read_bytes()
    forged = forged_record(path) + forged_record(path, "link_up", host="evil")
    with caplog.at_level(logging.WARNING), AuditLog(path, key, boot=2) as log:
        assert log.size == 2  # "start" and the tail_quarantined record; not the forgeries
    (kept,) = quarantined(path)
    assert kept.read_bytes() == forged
    assert kept.stat().st_mode & 0o777 == 0o600
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1
    assert str(kept) in warning[0] and "2 record(s)" in warning[0]
    assert f"{len(forged)} bytes" in warning[0]
    data = path.read_bytes()
    assert data.startswith(closed) and forged not in data
    ev = events(path)
    assert [e for e, _ in ev] == ["start", "tail_quarantined"]
    assert ev[1][1] == {
        "file": kept.name,
        "records": 2,
        "bytes": len(forged),
        "reason": "records after a clean close that no checkpoint seals",
    }
    rep = verify(path, [key.public_key])
    assert rep.ok, rep.summary()


def test_a_crash_tail_is_adopted(path: Path, key: DeviceKey, tmp_path: Path) -> None:
    crash = (
        "import os, sys\n"
        "from security.audit import AuditLog\n"
        "from security.keys import DeviceKey\n"
        "key = DeviceKey.load(sys.argv[2])\n"
        "log = AuditLog(sys.argv[1], key, boot=1)\n"
        "log.record('start', version='0.1.0')\n"
        "log.record('link_up', host='::1')\n"
        "os.kill(os.getpid(), 9)\n"
    )
    state = tmp_path / "crash-state"
    k = DeviceKey.load_or_create(state)[0]
    proc = subprocess.run(
        [sys.executable, "-c", crash, str(path), str(state / DeviceKey.PRIVATE_KEY_FILE)],
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == -9
    with AuditLog(path, k, boot=2, trusted_keys={k.kid: k.public_key}) as log:
        assert log.size == 2
    assert quarantined(path) == []
    assert [e for e, _ in events(path)] == ["start", "link_up"]
    assert verify(path, [k.public_key]).ok


@pytest.mark.parametrize("why", ["open", "count", "interval", "manual"])
def test_records_after_any_checkpoint_but_close_are_a_crash_tail(
    path: Path, key: DeviceKey, why: str
) -> None:
    with AuditLog(path, key, boot=1) as log:
        log.record("start", version="0.1.0")
    # Rewrite the log so that it ends with a checkpoint of this kind, then a record.
    entries = parse_entries(path.read_bytes()).entries
    cp = peek_checkpoint(entries[-1].raw)
    again = sign_checkpoint(
        key,
        log_id=cp.log_id,
        size=cp.size,
        root=cp.root,
        head=cp.head,
        prev=cp.prev,
        boot=cp.boot,
        ts_ns=cp.ts_ns,
        why=why,
    )
    path.write_bytes(path.read_bytes()[: entries[-1].offset] + again.encoded)
    forged_record(path)
    with AuditLog(path, key, boot=2, trusted_keys={key.kid: key.public_key}) as log:
        assert log.size == 2
    assert quarantined(path) == []


def test_a_checkpoint_by_another_key_and_what_it_seals_are_cut(
    path: Path, key: DeviceKey, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without keys a forger can append records and a "close" checkpoint of their own; the
    device's keys catch it."""
    with AuditLog(path, key, boot=1) as log:
        log.record("start", version="0.1.0")
    good = path.read_bytes()
    attacker = DeviceKey.load_or_create(tmp_path / "attacker")[0]
    with AuditLog(path, attacker, boot=1) as log:  # "open", a record, "close": all forged
        log.record("config_change", path="/etc/edgegw/config.yaml", sha256="00" * 32)
    tail = path.read_bytes()[len(good) :]
    with (
        caplog.at_level(logging.WARNING),
        AuditLog(path, key, boot=2, trusted_keys={key.kid: key.public_key}) as log,
    ):
        assert log.size == 2
    (kept,) = quarantined(path)
    assert kept.read_bytes() == tail
    reason = events(path)[-1][1]["reason"]
    assert isinstance(reason, str) and "not signed by a key of this device" in reason
    assert str(kept) in caplog.text
    assert verify(path, [key.public_key]).ok


def test_keys_rotated_in_the_log_are_trusted(path: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    from security.keyring import init_keys, load_keyring

    old, _ = init_keys(state)
    root = {old.kid: old.public_key}
    with AuditLog(path, old, boot=1) as log:
        rotate(state, audit=log)  # the close checkpoint is signed by the new key
    new = DeviceKey.load(state / DeviceKey.PRIVATE_KEY_FILE)
    with AuditLog(path, new, boot=2, trusted_keys=root) as log:  # learns it from the log
        log.record("start", version="0.1.0")
    with AuditLog(path, new, boot=3, trusted_keys=load_keyring(state)):
        pass
    assert quarantined(path) == []
    assert verify(path, root).ok


def test_a_log_no_trusted_key_signed_is_refused(path: Path, key: DeviceKey, tmp_path: Path) -> None:
    other = DeviceKey.load_or_create(tmp_path / "other")[0]
    with AuditLog(path, other, boot=1) as log:
        log.record("start", version="0.1.0")
    before = path.read_bytes()
    with pytest.raises(AuditLogCorrupt, match="no checkpoint in the log is signed by a key"):
        AuditLog(path, key, boot=2, trusted_keys={key.kid: key.public_key})
    assert path.read_bytes() == before and quarantined(path) == []


def test_a_torn_entry_and_a_forged_tail_are_both_removed(path: Path, key: DeviceKey) -> None:
    with AuditLog(path, key, boot=1) as log:
        log.record("start", version="0.1.0")
    forged = forged_record(path)
    with open(path, "ab") as f:
        f.write(forged[:7])
    with AuditLog(path, key, boot=2) as log:
        assert log.size == 2
    (kept,) = quarantined(path)
    assert kept.read_bytes() == forged
    assert len(list(path.parent.glob(f"{AUDIT_FILE}.torn-*"))) == 1
    rep = verify_bytes(path.read_bytes(), [key.public_key])
    assert rep.outcome is Outcome.OK, rep.summary()


def test_length_is_the_durable_end_of_the_file(path: Path, key: DeviceKey) -> None:
    with AuditLog(path, key, boot=1) as log:
        assert log.length == os.path.getsize(path)
        log.record("start", version="0.1.0")
        assert log.length == os.path.getsize(path)
        with open(path, "ab") as f:  # bytes that are not (yet) a durable entry of ours
            f.write(b"\xa1")
        assert log.length == os.path.getsize(path) - 1
