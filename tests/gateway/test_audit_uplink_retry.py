"""The audit uplink in one process, with a real outbox file and a real audit log: a commit
that fails (here: the signer fails, as a full disk or an I/O error would make the commit
fail) is logged and retried from the same entry, and the marker moves only with a
committed message, so the outbox ends up holding the log file exactly, once."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import cbor2
import pytest

from gateway.audit_uplink import MARK_OFFSET, AuditUplink
from gateway.outbox_thread import OutboxThread
from gateway.pipeline import Pipeline
from security import AUDIT_FILE, DeviceKey
from security.audit import AuditLog
from security.cose import parse1


class FailingSigner:
    """The device key, but the first ``fail`` signatures raise."""

    def __init__(self, key: DeviceKey, fail: int) -> None:
        self.key, self.kid, self.fail = key, key.kid, fail

    def sign(self, data: bytes) -> bytes:
        if self.fail > 0:
            self.fail -= 1
            raise OSError(28, "No space left on device")
        return self.key.sign(data)


def outbox_copy(ob: OutboxThread) -> tuple[bytes, list[dict[str, object]]]:
    assert ob.outbox is not None
    bodies = [cbor2.loads(parse1(r.body).payload) for r in ob.outbox.pending(limit=10_000)]
    audits = [b for b in bodies if b["kind"] == "audit"]
    copy = bytearray()
    for b in audits:
        assert b["offset"] == len(copy), "each entry once, in order"
        copy += b"".join(b["entries"])
    return bytes(copy), audits


async def caught_up(ob: OutboxThread, audit: AuditLog) -> None:
    """Until the marker reaches the log's end (the bound only catches a hang)."""
    assert ob.outbox is not None
    for _ in range(600):
        if await ob.run(ob.outbox.mark, MARK_OFFSET) == audit.length:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the uplink never caught up with the log")


async def session(
    state: Path, signer: FailingSigner, records: int, *, fail_at_stop: int = 0
) -> OutboxThread:
    """One daemon-like run: open the log, publish, record, close, publish the rest."""
    ob = OutboxThread(state / "outbox.db")
    await ob.open()
    pipe = Pipeline(
        gw_id="gw1",
        boot=1,
        topic="edgegw/gw1/telemetry",
        notice_topic="edgegw/gw1/notice",
        key=signer,  # type: ignore[arg-type]
        outbox=ob,
        flush_window_s=0.05,
        max_points=100,
    )
    up = AuditUplink(pipe, ob, "edgegw/gw1/audit")
    audit = AuditLog(state / AUDIT_FILE, signer.key, boot=1, on_append=lambda e: up.wake())
    await up.start(audit)
    task = asyncio.create_task(up.run())
    for i in range(records):
        audit.record("link_up", host=f"h{i}", port=i, pad="x" * 3000)
        await asyncio.sleep(0)
    await caught_up(ob, audit)
    signer.fail = fail_at_stop
    audit.close()
    await up.stop(task)
    return ob


def test_a_failing_commit_is_retried_and_nothing_is_lost_or_repeated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key, _ = DeviceKey.load_or_create(tmp_path)
    signer = FailingSigner(key, fail=3)

    async def main() -> None:
        ob = await session(tmp_path, signer, records=40)
        try:
            data = (tmp_path / AUDIT_FILE).read_bytes()
            copy, audits = outbox_copy(ob)
            assert copy == data
            assert len(audits) >= 2  # > 64 KiB of entries: more than one message
            assert all(len(b"".join(b["entries"])) <= 64 * 1024 for b in audits)
            assert ob.outbox is not None and ob.outbox.mark(MARK_OFFSET) == len(data)
        finally:
            await ob.close()
        # the next start publishes only what is new (its own "open" checkpoint onwards)
        ob = await session(tmp_path, FailingSigner(key, fail=0), records=1)
        try:
            copy, audits = outbox_copy(ob)
            assert copy == (tmp_path / AUDIT_FILE).read_bytes()
            assert sum(b["offset"] == 0 for b in audits) == 1
        finally:
            await ob.close()

    with caplog.at_level(logging.INFO, logger="edgegw.audit_uplink"):
        asyncio.run(main())
    assert signer.fail == 0
    # logged once (not at every retry), and the recovery is said too
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "No space left on device" in error and str(tmp_path / AUDIT_FILE) in error
    assert "retrying" in error
    assert any("publishing the audit log again" in r.getMessage() for r in caplog.records)


def test_what_fails_to_go_at_stop_goes_at_the_next_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key, _ = DeviceKey.load_or_create(tmp_path)

    async def main() -> None:
        ob = await session(tmp_path, FailingSigner(key, 0), records=3, fail_at_stop=1)
        try:
            closed = (tmp_path / AUDIT_FILE).read_bytes()
            assert ob.outbox is not None
            assert ob.outbox.mark(MARK_OFFSET) < len(closed)  # the close checkpoint waits
        finally:
            await ob.close()
        ob = await session(tmp_path, FailingSigner(key, 0), records=0)
        try:
            copy, _ = outbox_copy(ob)
            assert copy == (tmp_path / AUDIT_FILE).read_bytes()
            assert copy.startswith(closed)
        finally:
            await ob.close()

    with caplog.at_level(logging.ERROR, logger="edgegw.audit_uplink"):
        asyncio.run(main())
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "it goes at the next start" in error
