"""Archiving acknowledged audit segments (gateway/audit_archive.py), in one process with a
real outbox file, the real audit uplink and a real audit log in segments. Acknowledgement
is what the forwarder does on a PUBACK: it deletes the row (``Outbox.ack``); a row the
outbox set aside is not acknowledged. A segment is moved or deleted exactly when every
audit message carrying its bytes is acknowledged, never the live one, each time with a
``segment_archived`` record naming its range and SHA-256; keep changes nothing."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cbor2
import pytest

from gateway.audit_archive import AuditArchiver
from gateway.audit_uplink import MARK_OFFSET, AuditUplink, acknowledged_offset
from gateway.outbox_thread import OutboxThread
from gateway.pipeline import Pipeline
from security import AUDIT_FILE, DeviceKey
from security.audit import AuditLog
from security.checkpoint import parse_entries
from security.cose import parse1
from security.segments import head_of, log_dir_files
from security.segverify import read_files, verify_files

SEG = 2048


class Rig:
    """What the daemon wires together for the audit log, minus MQTT."""

    def __init__(self, state: Path, mode: str, archive: Path) -> None:
        self.state, self.mode, self.archive_dir = state, mode, archive
        self.key, _ = DeviceKey.load_or_create(state)
        self.ex = ThreadPoolExecutor(1, thread_name_prefix="audit")

    async def open(self) -> None:
        self.ob = OutboxThread(self.state / "outbox.db")
        await self.ob.open()
        pipe = Pipeline(
            gw_id="gw1",
            boot=1,
            topic="edgegw/gw1/telemetry",
            notice_topic="edgegw/gw1/notice",
            key=self.key,
            outbox=self.ob,
            flush_window_s=0.05,
            max_points=100,
        )
        self.up = AuditUplink(pipe, self.ob, "edgegw/gw1/audit")
        self.audit = AuditLog(
            self.state / AUDIT_FILE,
            self.key,
            boot=1,
            checkpoint_every=3,
            segment_bytes=SEG,
            on_append=lambda e: self.up.wake(),
        )
        await self.up.start(self.audit)
        self.task = asyncio.create_task(self.up.run())
        self.arch = AuditArchiver(
            self.audit, self.ob, self.ex, lambda: (self.mode, self.archive_dir), check_s=3600
        )

    async def record(self, n: int) -> None:
        loop = asyncio.get_running_loop()
        for i in range(n):
            await loop.run_in_executor(
                self.ex, lambda i=i: self.audit.record("link_up", host=f"h{i}", port=i)
            )
        await self.caught_up()

    async def caught_up(self) -> None:
        assert self.ob.outbox is not None
        for _ in range(600):  # a bound that catches a hang only
            if await self.ob.run(self.ob.outbox.mark, MARK_OFFSET) == self.audit.length:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the uplink never caught up")

    async def audit_rows(self) -> list[tuple[int, int, int]]:
        """(outbox seq, first log byte, end log byte) of each audit message pending."""
        assert self.ob.outbox is not None
        rows = await self.ob.run(self.ob.outbox.pending, 0, 100_000)
        out = []
        for r in rows:
            body = cbor2.loads(parse1(r.body).payload)
            if body["kind"] == "audit":
                size = sum(len(e) for e in body["entries"])
                out.append((r.seq, body["offset"], body["offset"] + size))
        return out

    async def ack(self, seqs: list[int]) -> None:
        assert self.ob.outbox is not None
        await self.ob.run(self.ob.outbox.ack, seqs)  # what the forwarder does on PUBACK

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self.ex, self.audit.close)
        await self.up.stop(self.task)
        await self.ob.close()
        self.ex.shutdown()

    def segments(self) -> list[tuple[int, Path]]:
        return log_dir_files(self.state / AUDIT_FILE)


def run(state: Path, mode: str, body: Callable[[Rig], Awaitable[Any]]) -> Any:
    rig = Rig(state, mode, state / "audit-archive")

    async def main() -> Any:
        await rig.open()
        try:
            return await body(rig)
        finally:
            await rig.close()

    return asyncio.run(main())


def archived_records(files: list[Path]) -> list[dict[str, Any]]:
    data = b"".join(i.data for i in read_files(files))  # in log order
    return [
        dict(e.record.detail)
        for e in parse_entries(data).entries
        if e.record is not None and e.record.event == "segment_archived"
    ]


def all_files(state: Path) -> list[Path]:
    live = [f for _, f in log_dir_files(state / AUDIT_FILE)]
    return live + sorted((state / "audit-archive").rglob("*.cborseq"))


@pytest.mark.parametrize("mode", ["move", "delete"])
def test_a_segment_goes_exactly_when_its_bytes_are_acknowledged(tmp_path: Path, mode: str) -> None:
    async def body(rig: Rig) -> dict[int, bytes]:
        await rig.record(40)
        assert len(rig.segments()) >= 5
        assert await rig.arch.pass_once() == 0  # nothing acknowledged: nothing moves
        closed: dict[int, bytes] = {}  # every segment once closed (its bytes are final)
        starts: dict[int, int] = {}  # segment -> the log byte it starts at
        acked_to = 0
        for _ in range(500):  # the archive records add rows (and segments) as we go
            for k, f in rig.segments():
                starts.setdefault(k, head_of_start(f))
                if k < rig.audit.segment:
                    closed.setdefault(k, f.read_bytes())
            rows = await rig.audit_rows()
            if not rows:
                break
            seq, start, end = rows[0]  # one PUBACK at a time, in order
            assert start == acked_to
            await rig.ack([seq])
            acked_to = end
            ob = rig.ob.outbox
            assert await rig.ob.run(acknowledged_offset, ob, rig.audit.log_id) == acked_to
            await rig.arch.pass_once()
            await rig.caught_up()
            here = {k for k, _ in rig.segments()}
            gone = set(starts) - here
            should = {
                k
                for k in starts
                if k + 1 in starts and starts[k + 1] <= acked_to and k < rig.audit.segment
            }
            assert gone == should, (acked_to, gone, should)
        else:
            raise AssertionError("the outbox never emptied")
        live = rig.audit.segment
        assert [k for k, _ in rig.segments()] == [live]  # all acknowledged: the live one stays
        assert set(closed) == set(range(live))
        return closed

    before = run(tmp_path, mode, body)
    recs = archived_records(all_files(tmp_path))
    live = max(before) + 1
    assert [r["segment"] for r in recs] == list(range(live))
    at = 0
    for r in recs:
        data = before[r["segment"]]
        assert r["sha256"] == hashlib.sha256(data).hexdigest() and r["bytes"] == len(data)
        assert (r["log_start"], r["log_end"], r["action"]) == (at, at + len(data), mode)
        assert r["first_seq"] == head_of_bytes(data)
        at += len(data)
    archive = tmp_path / "audit-archive"
    if mode == "move":
        (logdir,) = archive.iterdir()
        assert logdir.stat().st_mode & 0o777 == 0o750
        for r in recs:
            moved = logdir / r["file"]
            assert moved.read_bytes() == before[r["segment"]] and r["to"] == str(moved)
            assert moved.stat().st_mode & 0o777 == 0o600
        rep, infos = verify_files(all_files(tmp_path), {})  # structure; keys below
        assert [i.seg for i in infos] == list(range(live + 1))
    else:
        assert not archive.exists()
    key, _ = DeviceKey.load_or_create(tmp_path)
    rep, _ = verify_files(all_files(tmp_path), [key.public_key])
    if mode == "move":
        assert rep.ok and rep.first_seq == 0, rep.summary()
    else:  # the live segment alone still verifies, from its first checkpoint
        assert rep.ok and rep.first_seq > 0, rep.summary()


def head_of_bytes(data: bytes) -> int:
    from security.segments import read_head

    cp = read_head(data)
    return cp.size


def test_keep_leaves_every_segment(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await rig.record(40)
        await rig.ack([s for s, _, _ in await rig.audit_rows()])
        names = rig.segments()
        assert await rig.arch.pass_once() == 0
        assert rig.segments() == names and len(names) >= 5

    run(tmp_path, "keep", body)
    assert archived_records(all_files(tmp_path)) == []


def test_a_message_set_aside_is_not_an_acknowledgement(tmp_path: Path) -> None:
    """The broker refused an audit message for good (the outbox moved it to quarantine):
    its bytes never reached the platform, so nothing from there on is archived."""

    async def body(rig: Rig) -> None:
        await rig.record(40)
        rows = await rig.audit_rows()
        aside = rows[1]
        ob = rig.ob.outbox
        assert ob is not None
        await rig.ob.run(ob.set_aside, [aside[0]], "test_refused")
        await rig.ack([s for s, _, _ in rows if s != aside[0]])
        assert await rig.ob.run(acknowledged_offset, ob, rig.audit.log_id) == aside[1]
        await rig.arch.pass_once()
        left = rig.segments()  # what remains starts before the hole
        assert left[0][1].stat().st_size + head_of_start(left[0][1]) > aside[1]

    run(tmp_path, "delete", body)


def head_of_start(f: Path) -> int:
    cp = head_of(f)
    return cp.at if cp.seg is not None else 0


def test_a_segment_changed_after_it_was_closed_is_not_archived(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(rig: Rig) -> None:
        await rig.record(40)
        await rig.ack([s for s, _, _ in await rig.audit_rows()])
        k, f = rig.segments()[1]
        data = bytearray(f.read_bytes())
        data[-3] ^= 1  # in its last checkpoint's signature: the binding breaks
        f.write_bytes(bytes(data))
        assert await rig.arch.pass_once() == 1  # segment 0 only
        assert rig.segments()[0] == (k, f)
        assert await rig.arch.pass_once() == 0  # and it stays, said once

    run(tmp_path, "move", body)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "do not end with the checkpoint" in errors[0]


def test_a_move_across_filesystems_copies_and_syncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    def no_link(src: Any, dst: Any) -> None:
        raise OSError(18, "Invalid cross-device link")

    DeviceKey.load_or_create(tmp_path)  # (its own creation links a file too)
    monkeypatch.setattr(os, "link", no_link)

    async def body(rig: Rig) -> list[bytes]:
        await rig.record(20)
        before = [f.read_bytes() for _, f in rig.segments()[:-1]]
        await rig.ack([s for s, _, _ in await rig.audit_rows()])
        assert await rig.arch.pass_once() == len(before)
        return before

    before = run(tmp_path, "move", body)
    moved = read_files((tmp_path / "audit-archive").rglob("*.cborseq"))  # by segment
    assert [m.data for m in moved] == before
    assert not list((tmp_path / "audit-archive").rglob("*.part"))


def test_the_uplink_publishes_from_the_first_segment_left_when_its_marker_is_gone(
    tmp_path: Path,
) -> None:
    """A new outbox (the old one set aside) after segments were deleted: the log is
    published from the first segment still there, with the state it states."""

    async def body(rig: Rig) -> None:
        await rig.record(30)
        await rig.ack([s for s, _, _ in await rig.audit_rows()])
        assert await rig.arch.pass_once() >= 2

    run(tmp_path, "delete", body)
    shutil.move(tmp_path / "outbox.db", tmp_path / "old-outbox.db")
    for extra in tmp_path.glob("outbox.db-*"):
        extra.unlink()

    async def again(rig: Rig) -> None:
        rows = await rig.audit_rows()
        first = min(rows)
        assert first[1] == head_of_start(rig.segments()[0][1]) > 0

    run(tmp_path, "keep", again)


def test_export_split_cuts_the_upstream_copy_into_the_gateways_segments(tmp_path: Path) -> None:
    """`edgegw audit export --split`: the platform's copy (the log end to end) cut where
    each segment's first checkpoint says it starts gives the gateway's files, byte for
    byte, so their SHA-256 are the ones its segment_archived records state."""
    from gateway.commands.audit import _split_segments

    key, _ = DeviceKey.load_or_create(tmp_path)
    path = tmp_path / AUDIT_FILE
    with AuditLog(path, key, boot=1, checkpoint_every=3, segment_bytes=SEG) as log:
        for i in range(60):
            log.record("link_up", host=f"h{i}", port=i)
    segs = log_dir_files(path)
    assert len(segs) >= 5
    copy = b"".join(f.read_bytes() for _, f in segs)
    assert _split_segments(copy) == [(k, f.read_bytes()) for k, f in segs]
    assert _split_segments(path.read_bytes()) == [(0, path.read_bytes())]
