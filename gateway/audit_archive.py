"""Old audit log segments out of the state directory, once the platform has them.

The audit log rolls over to a new segment file at a checkpoint (``audit.segment_mib``,
security/segments.py). A segment that is not the live one, whose bytes the platform has
acknowledged (every audit message carrying them PUBACKed, see
:func:`gateway.audit_uplink.acknowledged_offset`), and whose bytes still end with the
checkpoint the next segment is bound to, is then (``audit.archive``):

- ``keep``: left where it is (the default: nothing changes unless asked);
- ``move``: moved to ``audit.archive_dir/<log id>/`` under the same name (a hard link on
  the same filesystem, else a synced copy), then removed from the state directory;
- ``delete``: removed (the platform's copy is the record).

Each is audited (``segment_archived``: the file, its segment number, its records and log
bytes, its SHA-256, what was done), in the audit thread, never on the event loop. A crash
at any point leaves the segment whole in at least one place; the next pass finishes the
job (and may record it a second time). The live segment, which holds the writer's resume
point, is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import os
import shutil
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from security.audit import AuditLog
from security.checkpoint import FormatError, checkpoint_hash, iter_entries
from security.keys import fsync_dir
from security.segments import SegmentFile, SegmentReader

from .audit_uplink import acknowledged_offset
from .outbox_thread import OutboxThread

log = logging.getLogger("edgegw.audit_archive")

CHECK_S = 5.0  # how often acknowledgements are looked for while segments wait for them
ARCHIVE_MODES = ("keep", "move", "delete")


class AuditArchiver:
    """Runs as a supervised task of the daemon. ``settings()`` returns the current
    ``(mode, archive_dir)`` (a reload may change them); ``executor`` is the audit thread,
    where the file work and the audit record happen, in order with every other record."""

    def __init__(
        self,
        audit: AuditLog,
        outbox: OutboxThread,
        executor: Executor,
        settings: Callable[[], tuple[str, Path]],
        check_s: float = CHECK_S,
    ) -> None:
        self.audit = audit
        self.outbox = outbox
        self.executor = executor
        self.settings = settings
        self.check_s = check_s
        self.archived = 0  # segments moved or deleted by this process
        self.waiting = 0  # closed segments the last pass left (not acknowledged yet, ...)
        self._reader = SegmentReader(audit.path, audit.log_id)
        self._wake = asyncio.Event()
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # a tool driving it from a thread, without a loop
            self._loop = None
        self._said: dict[int, str] = {}  # segment -> the problem last logged about it

    def wake(self) -> None:
        """Look now (any thread): e.g. the log rolled over."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        """A pass soon after the start (segments may be left from before), then at each
        ``wake()`` (a roll-over, a reload) and every ``check_s`` only while closed segments
        wait: with none waiting, nothing wakes this task."""
        waiting = True
        while True:
            if waiting:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.check_s)
            else:
                await self._wake.wait()
            self._wake.clear()
            await self.pass_once()
            waiting = self.waiting > 0

    async def pass_once(self) -> int:
        """Archive every segment that may be; returns how many were."""
        self.waiting = 0
        mode, directory = self.settings()
        if mode == "keep":
            return 0
        loop = asyncio.get_running_loop()
        todo = await loop.run_in_executor(self.executor, self._candidates)
        self.waiting = len(todo)
        if not todo:
            return 0
        ob = self.outbox.outbox
        assert ob is not None
        acked = await self.outbox.run(acknowledged_offset, ob, self.audit.log_id)
        done = 0
        for seg, nxt in todo:
            if nxt.start > acked:
                break  # in log order: the rest are not acknowledged either
            ok = await loop.run_in_executor(self.executor, self._archive, seg, nxt, mode, directory)
            if not ok:
                break
            done += 1
        self.waiting = len(todo) - done
        return done

    # -- in the audit thread -------------------------------------------------------------

    def _candidates(self) -> list[tuple[SegmentFile, SegmentFile]]:
        """Each segment before the live one, with the segment after it (which states where
        it ends), in order, up to the first that does not meet its successor."""
        live = self.audit.segment
        segs = self._reader.segments()
        out: list[tuple[SegmentFile, SegmentFile]] = []
        for a, b in itertools.pairwise(segs):
            if a.k >= live or b.k != a.k + 1:
                break
            if a.end != b.start:
                self._say(
                    a.k,
                    f"{a.path}: {a.length} bytes, but segment {b.k} ({b.path.name}) says it "
                    f"ends at log byte {b.start}, not {a.end}: left in place (check the log "
                    "with `edgegw audit verify`)",
                )
                break
            out.append((a, b))
        return out

    def _archive(self, seg: SegmentFile, nxt: SegmentFile, mode: str, directory: Path) -> bool:
        """Move or delete one acknowledged segment, audited. False: left in place (why is
        logged once)."""
        try:
            data = seg.path.read_bytes()
            last = _last_entry(data)
        except (OSError, FormatError) as exc:
            self._say(seg.k, f"{seg.path}: cannot read it ({exc}): left in place")
            return False
        if len(data) != nxt.start - seg.start or checkpoint_hash(last) != nxt.state.cp_prev:
            self._say(
                seg.k,
                f"{seg.path}: its bytes do not end with the checkpoint segment {nxt.k} is "
                "bound to (changed since it was closed?): left in place; check the log with "
                "`edgegw audit verify`",
            )
            return False
        digest = hashlib.sha256(data).hexdigest()
        detail: dict[str, Any] = {
            "file": seg.path.name,
            "segment": seg.k,
            "first_seq": seg.state.size,
            "last_seq": nxt.state.size - 1,
            "log_start": seg.start,
            "log_end": nxt.start,
            "bytes": len(data),
            "sha256": digest,
            "action": mode,
        }
        try:
            if mode == "move":
                dest = self._copy_out(seg.path, directory / self.audit.log_id.hex(), digest)
                detail["to"] = str(dest)
            self.audit.record("segment_archived", **detail)
            os.unlink(seg.path)
            fsync_dir(seg.path.parent)
        except (OSError, ValueError) as exc:
            self._say(seg.k, f"{seg.path}: cannot {mode} it ({exc}): left in place, retried")
            return False
        self._said.pop(seg.k, None)
        self.archived += 1
        log.info(
            "audit segment %d (%s, seq %d..%d, %d bytes, sha256 %s) %s",
            seg.k,
            seg.path.name,
            detail["first_seq"],
            detail["last_seq"],
            len(data),
            digest[:16],
            f"moved to {detail['to']}" if mode == "move" else "deleted",
        )
        return True

    def _copy_out(self, src: Path, directory: Path, digest: str) -> Path:
        """``src`` whole in ``directory`` (same name), synced. An earlier attempt's complete
        copy is kept; a different file of that name is never replaced."""
        for d in (directory.parent, directory):  # the archive folder and its log's folder
            if not d.is_dir():
                d.mkdir(mode=0o750, parents=True, exist_ok=True)
                fsync_dir(d.parent)
        dest = directory / src.name
        if dest.exists():
            if hashlib.sha256(dest.read_bytes()).hexdigest() == digest:
                return dest  # a move interrupted after its copy: finish it
            raise ValueError(f"{dest} exists with other bytes; it is not replaced")
        part = dest.with_name(dest.name + ".part")
        with contextlib.suppress(FileNotFoundError):
            part.unlink()  # what a crash left of an earlier copy
        try:
            os.link(src, dest)  # same filesystem: no copy, and atomic
        except OSError:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
            os.rename(part, dest)
        fsync_dir(directory)
        return dest

    def _say(self, k: int, what: str) -> None:
        if self._said.get(k) != what:
            log.error("%s", what)
            self._said[k] = what


def _last_entry(data: bytes) -> bytes:
    last = b""
    for _, raw in iter_entries(data):
        last = raw
    return last
