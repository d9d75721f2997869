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

Offsets are the log's, across its segment files (security/segments.py): the uplink reads
each entry from the segment that holds it, so a roll-over changes nothing upstream.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2

from buffer import Outbox
from security.audit import AuditLog
from security.checkpoint import FormatError, LogState, iter_entries
from security.cose import CoseError, parse1
from security.segments import SegmentReader

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
ACK_SCAN_ROWS = 256  # pending urgent rows looked at per page for the first audit one
ACK_SCAN_PAGES = 64


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
        self._reader: SegmentReader | None = None
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
        self._reader = SegmentReader(audit.path, audit.log_id)
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
            return self._first_state(audit)
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
        assert self._reader is not None
        start = audit.resumed_from
        if start is None or start.offset > offset:
            seg = self._reader.segment_at(offset)
            if seg is None:
                return self._first_state(audit, offset)
            start = seg.state
        # from the checkpoint the log resumed at, or the start of the segment that holds
        # the marker: start-up does not grow with the log
        st = start.copy()
        for _, raw in iter_entries(self._read_span(st.offset, offset)):
            st.feed(raw)
        if st.offset != offset:
            log.error(
                "%s: byte %d, up to which the audit log was published, is inside an entry: "
                "the file was rewritten below it; publishing again from byte %d",
                audit.path,
                offset,
                st.offset,
            )
        return st

    def _first_state(self, audit: AuditLog, published: int | None = None) -> LogState:
        """Where to publish a log from that the outbox has no (usable) marker for: its
        start, or the first segment still in the directory (those before were archived:
        the platform's witness starts from the state that segment states)."""
        assert self._reader is not None
        segs = self._reader.segments()
        if not segs or segs[0].start == 0:
            return LogState.genesis(audit.log_id)
        first = segs[0]
        log.error(
            "%s: the audit log before byte %d (segment %d) is not in the state directory%s; "
            "publishing from there",
            audit.path,
            first.start,
            first.k,
            "" if published is None else f", and was published only up to byte {published}",
        )
        return first.state.copy()

    def _read_span(self, start: int, end: int) -> bytes:
        """Log bytes ``[start, end)`` (within one segment, or across several)."""
        assert self._reader is not None
        out = bytearray()
        while start + len(out) < end:
            chunk = self._reader.read(start + len(out), end - start - len(out))
            if not chunk:
                raise FormatError(f"the audit log ends before byte {end}")
            out += chunk
        return bytes(out)

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
            if self._reader is not None:
                self._reader.close()

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
        """Whole entries from the current offset: at most MAX_ENTRIES_BYTES of them, and
        no more than a message within the pipeline's body limit holds (at least one)."""
        assert self._reader is not None and self._state is not None
        pos = self._state.offset
        budget = self._entries_budget()
        window = self._reader.read(pos, min(end - pos, MAX_ENTRIES_BYTES))
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
        empty = p.sign(payload, self.topic)
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
        if self._reset is not None:  # the first message of this log (offset 0 unless archived)
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


# -- what the platform has acknowledged --------------------------------------------------


def _audit_position(body: bytes) -> tuple[bytes, int] | None:
    """(log id, offset) of an ``audit`` message's first entry; None for another kind."""
    try:
        payload = cbor2.loads(parse1(body).payload)
    except (CoseError, ValueError, cbor2.CBORDecodeError):
        return None
    if not isinstance(payload, dict) or payload.get("kind") != "audit":
        return None
    log_id, offset = payload.get("log"), payload.get("offset")
    if type(log_id) is not bytes or type(offset) is not int:
        return None
    return log_id, offset


def acknowledged_offset(ob: Outbox, log_id: bytes) -> int:
    """How much of the log the platform has acknowledged: the log bytes below which every
    ``audit`` message is gone from the outbox because its PUBACK came (the forwarder
    deletes a row only then), and none was set aside instead. In the outbox's thread.

    Audit messages are committed in log order with rising seqs, so the first one still
    pending says where acknowledgement stops; with none pending, everything committed
    (the marker) is acknowledged. A message the outbox set aside (the broker refused it
    for good, or its bytes were damaged at rest) was never acknowledged: nothing from its
    offset on counts as acknowledged until a later start publishes it again.
    """
    hi, lo, off = ob.mark(MARK_LOG_HI), ob.mark(MARK_LOG_LO), ob.mark(MARK_OFFSET)
    if hi is None or lo is None or off is None or _join_id(hi, lo) != log_id:
        return 0
    acked = off
    after = 0
    for _ in range(ACK_SCAN_PAGES):  # urgent rows are few; bounded all the same
        rows = ob.pending(after, ACK_SCAN_ROWS, urgent=True)
        for row in rows:
            pos = _audit_position(row.body)
            if pos is not None and pos[0] == log_id:
                acked = min(acked, pos[1])
                break
        else:
            if len(rows) == ACK_SCAN_ROWS:
                after = rows[-1].seq
                continue
        break
    else:
        return 0  # more urgent rows than we look through: say nothing is acknowledged
    for body in _set_aside_bodies(ob.path):
        pos = _audit_position(body)
        if pos is not None and pos[0] == log_id:
            acked = min(acked, pos[1])
    return acked


def _set_aside_bodies(path: Path) -> list[bytes]:
    """The messages the outbox set aside (its ``quarantine`` table, read-only)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return [bytes(r[0]) for r in conn.execute("SELECT body FROM quarantine")]
    finally:
        conn.close()
