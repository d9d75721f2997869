"""The audit log, published upstream from its file: every entry, in file order, once.

The position (the log's id and the byte offset up to which entries are committed as
``audit`` messages) is kept as outbox marks, set in the transaction that commits the
message carrying those entries. So whatever was appended while the daemon was stopped
(``keys init``, ``keys rotate``) or in the instant before a crash is published at the next
start, and nothing is published twice by a clean run. The upstream copy (the entries of
all audit messages, placed by ``offset``) is byte for byte the device's log file.

Each message says where its entries sit (``offset``) and the log's state just before
them (``base``: records, chain head, last checkpoint hash, Merkle compact range), so a
platform witness can check it without the messages before. The first message of a log
that replaces another carries ``reset``. See docs/wire-format.md and docs/security.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Any

from security import sign1
from security.audit import AuditLog
from security.checkpoint import FormatError, LogState, iter_entries, state_at

from .outbox_thread import OutboxThread
from .pipeline import Pipeline
from .wire import encode_payload

log = logging.getLogger("edgegw.audit_uplink")

MARK_LOG_HI = "audit_log_hi"  # the log id's first 8 bytes, as a signed 64-bit integer
MARK_LOG_LO = "audit_log_lo"  # its last 8 bytes
MARK_OFFSET = "audit_offset"  # bytes of that log committed to the outbox as audit messages
MAX_ENTRIES_BYTES = 64 * 1024  # per message; one entry (a record) is at most 64 KiB
# and never more than the pipeline's body limit (the broker's packet size) allows
_ENTRY_HEAD = 5  # CBOR byte-string head of one entry in the message, at most
_WIDEST = 2**63 - 1  # seq and time at their widest, to measure a message's overhead
RETRY_MAX_S = 10.0


def _split_id(log_id: bytes) -> tuple[int, int]:
    return (
        int.from_bytes(log_id[:8], "big", signed=True),
        int.from_bytes(log_id[8:], "big", signed=True),
    )


def _join_id(hi: int, lo: int) -> bytes:
    return hi.to_bytes(8, "big", signed=True) + lo.to_bytes(8, "big", signed=True)


@dataclass(frozen=True, slots=True)
class Marker:
    """Where publishing stopped, as the outbox remembers it."""

    log_id: bytes
    offset: int


class AuditUplink:
    """Publishes ``audit`` from its durable marker up to the log's durable end.

    ``start()`` finds the marker and publishes the backlog; ``run()`` then publishes
    whatever ``wake()`` (the log's ``on_append``, any thread) announces; ``stop()``
    publishes the rest (the close checkpoint) and ends ``run()``.
    """

    def __init__(self, pipeline: Pipeline, outbox: OutboxThread, topic: str) -> None:
        self.pipeline = pipeline
        self.outbox = outbox
        self.topic = topic
        self.messages = 0  # audit messages committed by this process
        self._audit: AuditLog | None = None
        self._fd: int | None = None
        self._state: LogState | None = None  # the log's state at the next entry to publish
        self._marks: dict[str, int] = {}
        self._reset: dict[str, Any] | None = None
        self._event = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self._error: str | None = None  # the failure last logged, until publishing resumes
        self._warned_big = -1  # offset of the last entry said to be too large for a message

    # -- start --------------------------------------------------------------------------

    async def start(self, audit: AuditLog, *, replaced: str | None = None) -> None:
        """Find where publishing stopped and publish what the log holds beyond it.

        ``replaced``: why this log replaces another (a damaged log set aside); the first
        message of a new log then carries ``reset``."""
        self._audit = audit
        self._fd = os.open(audit.path, os.O_RDONLY | os.O_CLOEXEC)
        marker = await self.outbox.run(self._read_marker)
        self._state = await self.outbox.run(self._locate, audit, marker, replaced)
        hi, lo = _split_id(audit.log_id)
        self._marks = {MARK_LOG_HI: hi, MARK_LOG_LO: lo}
        try:
            await self._publish_pending()
        except Exception as exc:  # the run loop retries; nothing is skipped meanwhile
            self._failed(exc, 0.2)
            self.wake()

    def _read_marker(self) -> Marker | None:
        ob = self.outbox.outbox
        assert ob is not None
        hi, lo, off = ob.mark(MARK_LOG_HI), ob.mark(MARK_LOG_LO), ob.mark(MARK_OFFSET)
        if hi is None or lo is None or off is None:
            return None
        return Marker(_join_id(hi, lo), off)

    def _locate(self, audit: AuditLog, marker: Marker | None, replaced: str | None) -> LogState:
        """The log's state at the first entry to publish (runs off the event loop: it reads
        the file up to the marker once)."""
        log_id = audit.log_id
        if marker is None or marker.log_id != log_id:
            old = marker.log_id if marker is not None else None
            if replaced is not None:
                self._reset = {"old_log": old, "reason": replaced}
            elif old is not None and marker is not None and marker.offset > 0:
                self._reset = {
                    "old_log": old,
                    "reason": (
                        f"the audit log {old.hex()} (published up to byte {marker.offset}) is "
                        f"gone; a new log {log_id.hex()} started"
                    ),
                }
            if self._reset is not None:
                was = old.hex() if old is not None else "(unknown)"
                why = self._reset["reason"]
                log.error("audit log %s replaces log %s: %s", log_id.hex(), was, why)
            return LogState.genesis(log_id)
        offset = marker.offset
        found = audit.loaded_length
        if offset > found:
            log.error(
                "%s: the audit log was cut: %d bytes of it were published, but the file had "
                "only %d bytes at start; going on from there (the platform's witness sees "
                "the rewrite)",
                audit.path,
                offset,
                found,
            )
            offset = found
        assert self._fd is not None
        start = audit.resumed_from
        if start is not None and start.offset <= offset:
            # from the checkpoint the log resumed at: start-up does not grow with the log
            st = start.copy()
            for _, raw in iter_entries(os.pread(self._fd, offset - st.offset, st.offset)):
                st.feed(raw)
        else:
            st = state_at(os.pread(self._fd, offset, 0), log_id, offset)
        if st.offset != offset:
            log.error(
                "%s: byte %d, up to which the audit log was published, is inside an entry: "
                "the file was rewritten below it; publishing again from byte %d",
                audit.path,
                offset,
                st.offset,
            )
        return st

    # -- publishing ---------------------------------------------------------------------

    def wake(self) -> None:
        """Entries were appended: publish them. Any thread (the log's ``on_append``)."""
        self._loop.call_soon_threadsafe(self._event.set)

    async def run(self) -> None:
        """Publish on every wake; a failing commit is retried (with backoff) from the same
        entry, so nothing is ever skipped."""
        delay = 0.2
        while True:
            await self._event.wait()
            self._event.clear()
            try:
                await self._publish_pending()
            except Exception as exc:
                if self._closing:
                    self._failed(exc, None)
                    return
                self._failed(exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                self._event.set()
                continue
            delay = 0.2
            if self._closing:
                return

    async def stop(self, task: asyncio.Task[None]) -> None:
        """Publish what is left (after the log's close) and end ``run()`` (one attempt:
        what fails stays in the file and goes at the next start)."""
        self._closing = True
        self.wake()
        try:
            await task
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _failed(self, exc: BaseException, retry_s: float | None) -> None:
        """Log a failure once (ERROR), and its repetitions quietly until it changes."""
        st, audit = self._state, self._audit
        where = f"byte {st.offset if st else 0} of {audit.path if audit else 'the audit log'}"
        then = "it goes at the next start" if retry_s is None else f"retrying in {retry_s:.1f} s"
        what = f"cannot publish the audit log from {where}: {exc}"
        level = logging.DEBUG if what == self._error and retry_s is not None else logging.ERROR
        log.log(level, "%s; %s", what, then)
        self._error = what

    async def _publish_pending(self) -> None:
        assert self._audit is not None and self._state is not None
        while self._state.offset < self._audit.length:
            entries = await self.outbox.run(self._read_entries, self._audit.length)
            await self._publish(entries)

    def _read_entries(self, end: int) -> list[bytes]:
        """Whole entries from the current offset (in the outbox thread): at most
        MAX_ENTRIES_BYTES of them, and no more than a message within the pipeline's
        body limit holds (at least one)."""
        assert self._fd is not None and self._state is not None
        pos = self._state.offset
        budget = self._entries_budget()
        window = os.pread(self._fd, min(end - pos, MAX_ENTRIES_BYTES), pos)
        out: list[bytes] = []
        used = 0
        try:
            for _, raw in iter_entries(window):
                used += len(raw) + _ENTRY_HEAD
                if out and used > budget:
                    break
                out.append(raw)
        except FormatError as exc:
            if not out:  # not even one entry in a window that always holds one
                raise FormatError(f"the audit log at byte {pos}: {exc}") from None
        if out and len(out[0]) + _ENTRY_HEAD > budget and self._warned_big != pos:
            self._warned_big = pos
            log.warning(
                "the audit entry at byte %d (%d bytes) does not fit a message the broker "
                "takes (%d bytes for entries): it is sent alone, and set aside with a notice "
                "if the broker refuses it; raise the broker's maximum packet size",
                pos,
                len(out[0]),
                max(budget, 0),
            )
        return out

    def _entries_budget(self) -> int:
        """Bytes of entries a message may carry: the pipeline's body limit for the topic
        less what the message adds around them (measured: sealed without entries)."""
        limit = self.pipeline.body_limit
        if limit is None:
            return MAX_ENTRIES_BYTES
        p = self.pipeline
        payload = encode_payload(
            gw=p.gw_id,
            seq=_WIDEST,
            boot=p.boot,
            kind="audit",
            t_ns=_WIDEST,
            version=p.payload_version,
            **self._fields([]),
        )
        empty = sign1(payload, p.key, self.topic.encode(), p._unprotected)
        return min(MAX_ENTRIES_BYTES, limit(self.topic) - len(empty) - 8)  # 8: the list head

    def _fields(self, entries: list[bytes]) -> dict[str, Any]:
        st = self._state
        assert st is not None and self._audit is not None
        fields: dict[str, Any] = {
            "log": self._audit.log_id,
            "offset": st.offset,
            "base": st.base(),
            "entries": entries,
        }
        if self._reset is not None and st.offset == 0:
            fields["reset"] = self._reset
        return fields

    async def _publish(self, entries: list[bytes]) -> None:
        st = self._state
        assert st is not None and self._audit is not None
        fields = self._fields(entries)
        nxt = st.copy()
        for raw in entries:
            nxt.feed(raw)
        marks = {**self._marks, MARK_OFFSET: nxt.offset}
        await self.pipeline.seal_message("audit", self.topic, fields, marks)
        self._state = nxt
        self._reset = None
        self.messages += 1
        if self._error is not None:
            log.info("publishing the audit log again (up to byte %d)", nxt.offset)
            self._error = None
