"""The gateway's audit log: append-only, hash-chained, sealed by signed checkpoints.

Writing::

    log = AuditLog(state_dir / AUDIT_FILE, device_key, boot=boot, on_append=publish)
    log.record("config_load", path="/etc/edgegw/config.yaml", sha256=digest)
    ...
    log.tick()    # now and then: seals records older than checkpoint_interval_s
    log.close()   # clean stop: a final "close" checkpoint

Checking, offline, with public keys only: :func:`verify` (``edgegw audit verify``).

The file format is in :mod:`security.checkpoint`; docs/security.md explains the design, what
is detected (an edited, deleted, reordered or inserted record; a checkpoint signed by an
unknown key) and what is not (a tail cut exactly at a checkpoint, without an outside anchor).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from security import resume, segments
from security.checkpoint import (
    LOG_ID_LEN,
    ZERO_HASH,
    Checkpoint,
    Damage,
    Entry,
    FormatError,
    LogState,
    MerkleFrontier,
    ParsedLog,
    Record,
    SegmentStart,
    checkpoint_hash,
    decode_record,
    encode_record,
    genesis_head,
    open_checkpoint,
    parse_entries,
    peek_checkpoint,
    sign_checkpoint,
)
from security.cose import CoseError, Signer, UnknownKid
from security.keyring import learn_keys
from security.keys import fsync_dir, kid_for

__all__ = [
    "AUDIT_FILE",
    "AuditEvent",
    "AuditLog",
    "AuditLogBusy",
    "AuditLogCorrupt",
    "AuditLogError",
    "AuditRecord",
    "Checkpoint",
    "ExitCode",
    "Outcome",
    "Problem",
    "VerifyReport",
    "last_boot",
    "read_log",
    "verify",
    "verify_bytes",
]

log = logging.getLogger(__name__)

AUDIT_FILE = "audit.cborseq"  # under the state directory

AuditRecord = Record


class AuditEvent(StrEnum):
    """What is audited. ``detail`` keys the gateway is expected to send are in brackets."""

    START = "start"  # the daemon started [version, config]
    STOP = "stop"  # clean stop [reason]
    CONFIG_LOAD = "config_load"  # config read at start [path, sha256]
    CONFIG_CHANGE = "config_change"  # config reloaded with different content [path, sha256, old]
    KEY_CREATED = "key_created"  # a device key was generated [kid]
    KEY_ROTATED = "key_rotated"  # [old_kid, new_kid, n, cert]: cert lets verify follow it
    TLS_FAILURE = "tls_failure"  # handshake or certificate failure [host, port, error]
    AUTH_FAILURE = "auth_failure"  # the broker refused our credentials [host, reason_code]
    LINK_UP = "link_up"  # uplink connected [host, port]
    LINK_DOWN = "link_down"  # uplink lost [host, port, error]
    # The broker refuses what an operator must fix (rights, Maximum QoS 0, protocol
    # version): the first at once, then summaries [reason | repeated, over_s, reasons]
    BROKER_REFUSAL = "broker_refusal"
    # Stored messages the broker refuses for good, set aside with a signed notice
    # [reason (the seqs) | repeated, over_s, reasons]
    MESSAGE_SET_ASIDE = "message_set_aside"
    BUFFER_DROP = "buffer_drop"  # data dropped [count, reason, intentional]
    MODEL_LOADED = "model_loaded"  # [name, sha256]
    MODEL_REFUSED = "model_refused"  # a model failed its checks [name, sha256, reason]
    CLOCK_JUMP = "clock_jump"  # wall clock moved against the monotonic clock [delta_ns]
    TASK_FAILED = "task_failed"  # a task of the daemon failed and was restarted [task, reason
    # | repeated, over_s, reasons]
    AUDIT_RESET = "audit_reset"  # a damaged log was set aside [file, reason]
    TAIL_QUARANTINED = "tail_quarantined"  # entries edgegw did not write were cut off at
    # open and kept beside the log [file, records, bytes, reason]
    SEGMENT_ARCHIVED = "segment_archived"  # a segment the platform acknowledged was moved
    # or deleted [file, segment, first_seq, last_seq, log_start, log_end, bytes, sha256,
    # action, to]
    # Signed commands from the platform, one record each, with what the command result
    # says [id, op, key, kid, digest, outcome, reason, detail, tag, value, before, after,
    # version, done, again, verified]; refusals before verification are digested
    # [reason, verified: false, detail | repeated, over_s, reasons]
    COMMAND_DONE = "command_done"  # executed: a tag written and read back, a config applied
    COMMAND_REFUSED = "command_refused"  # not executed: unverified, out of scope, out of range...
    COMMAND_FAILED = "command_failed"  # tried: the device refused or failed, or rolled back


class AuditLogError(Exception):
    """The audit log cannot be opened or written."""


class AuditLogBusy(AuditLogError):
    """Another process (normally the running daemon) has the log open."""


class AuditLogCorrupt(AuditLogError):
    """The existing log is not a well-formed, consistent audit log; see :meth:`set_aside`."""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class AuditLog:
    """One audit log file, held open (and locked) by one process.

    ``record()`` appends and fsyncs before returning, so a returned record survives a crash
    or power loss. It is thread-safe. Every appended record and checkpoint is also handed to
    ``on_append`` (for publishing upstream), in file order, after it is durable; the callback
    runs under the log's lock in the caller's thread, so it should only queue the bytes.

    Checkpoints are written at open, every ``checkpoint_every`` records, when the oldest
    unsealed record has waited ``checkpoint_interval_s`` (checked by ``record()`` and by
    ``tick()``, which the owner calls periodically), on ``checkpoint()`` and at ``close()``.

    Opening cuts off a tail that edgegw did not write (records after a clean close with no
    checkpoint after them; with ``trusted_keys``, kid -> public key of this device, also
    trailing checkpoints that do not verify and what they seal), keeps it beside the log as
    ``<name>.forged-<ns>``, warns, and records ``tail_quarantined``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        signer: Signer,
        *,
        boot: int,
        checkpoint_every: int = 100,
        checkpoint_interval_s: float = 300.0,
        origin: str | None = None,
        on_append: Callable[[Record | Checkpoint], None] | None = None,
        trusted_keys: Mapping[bytes, Ed25519PublicKey] | None = None,
        segment_bytes: int | None = None,
    ) -> None:
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be at least 1")
        if segment_bytes is not None and segment_bytes < 1:
            raise ValueError("segment_bytes must be at least 1")
        self.segment_bytes = segment_bytes
        """Roll over to a new segment at the first checkpoint after the live segment
        passes this size (None: one file, never rolled)."""
        self.path = Path(path)
        self.signer = signer
        self.boot = boot
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval_s = checkpoint_interval_s
        self.origin = origin
        self.on_append = on_append
        self._trusted = None if trusted_keys is None else dict(trusted_keys)
        self._lock = threading.RLock()  # on_append may record (e.g. a publish failure)
        self._fd: int | None = None
        self._length = self._loaded_length = 0
        self._quarantined: _Quarantined | None = None
        self._certs: list[bytes] = []  # key_rotated certificates in the log, in order
        self._hasher: Any = None  # SHA-256 of the file's bytes up to self._length
        self.resumed_from: LogState | None = None
        """The log's state at the checkpoint this open resumed from (None: read in full);
        readers that need the state at a later offset can start there."""
        self._seg = 0  # the live segment's number (security/segments.py)
        self._seg_path = self.path
        self._seg_start = 0  # the log offset where the live segment starts
        self._roll_error: str | None = None
        fd = self._open_live_segment()
        try:
            self._fd = fd
            torn = self._load()
            self._write_checkpoint("open", torn)
            if self._quarantined is not None:
                q = self._quarantined
                self.record(
                    "tail_quarantined",
                    file=q.file.name,
                    records=q.records,
                    bytes=q.nbytes,
                    reason=q.reason,
                )
        except BaseException:
            fd, self._fd = self._fd or fd, None
            os.close(fd)
            raise

    # -- opening ---------------------------------------------------------------------------

    def _open_live_segment(self) -> int:
        """Open and lock the highest-numbered segment file (the log's own path when there
        is none). A segment that a crash left without its first checkpoint (a roll-over
        cut short) is removed, its bytes kept beside it, and the one before is live."""
        for _ in range(8):  # each pass removes one unfinished segment, or another writer rolled
            found = segments.log_dir_files(self.path)
            k, path = found[-1] if found else (0, self.path)
            flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | (os.O_CREAT if k == 0 else 0)
            try:
                fd = os.open(path, flags, 0o600)
            except FileNotFoundError:
                continue  # archived or removed meanwhile: look again
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise AuditLogBusy(
                        f"{path}: the audit log is in use by another process (is edgegw "
                        "running?); stop it first"
                    ) from None
                later = segments.log_dir_files(self.path)
                if later and later[-1][0] > k:
                    raise AuditLogBusy(
                        f"{later[-1][1]}: the audit log was rolled over to a new segment by "
                        "another process (is edgegw running?); stop it first"
                    )
                if k > 0 and self._unfinished_segment(fd, path):
                    os.close(fd)
                    continue
            except BaseException:
                os.close(fd)
                raise
            self._seg, self._seg_path = k, path
            return fd
        raise AuditLogError(f"{self.path}: cannot find the audit log's live segment")

    def _unfinished_segment(self, fd: int, path: Path) -> bool:
        """A segment file that does not hold even its first checkpoint whole: a crash
        during a roll-over. It is removed (any bytes kept beside it as ``.torn-<ns>``)."""
        data = os.pread(fd, segments.HEAD_READ, 0)
        if data:
            try:
                cbor2.CBORDecoder(io.BytesIO(data)).decode()
                return False  # whole: damaged or not, _load judges it
            except cbor2.CBORDecodeEOF:
                if len(data) == segments.HEAD_READ:
                    return False
            except Exception:
                return False
            keep = _keep_beside(path, "torn", data)
            log.warning(
                "%s: a segment whose first checkpoint was cut off by a crash during a roll-over "
                "(%d bytes, kept in %s); it is removed and the segment before it goes on",
                path,
                len(data),
                keep,
            )
        else:
            log.warning("%s: an empty segment left by a crash during a roll-over: removed", path)
        os.unlink(path)
        fsync_dir(path.parent)
        return True

    def _load(self) -> int:
        """Read the live segment: state to continue from; a torn final entry is removed
        (and kept beside it). Returns the number of bytes removed. From the last
        checkpoint on when the resume file beside the log matches it (security/resume.py),
        else all of the live segment (a segment after the first starts with a checkpoint
        that states the log's state there)."""
        assert self._fd is not None
        hint = resume.load(self.path)
        if hint is not None and hint.seg == self._seg:
            torn = self._load_from(hint)
            if torn is not None:
                return torn
        return self._load_from_start()

    def _load_from(self, hint: resume.Resume) -> int | None:
        """Load from the checkpoint the resume file names; None if the log does not hold
        it there (then the whole segment is read)."""
        assert self._fd is not None
        base = hint.cp_offset
        st = hint.state
        end = os.fstat(self._fd).st_size
        if st.offset > end:
            return None
        hasher = resume.prefix_digest(self._fd, st.offset)
        if hasher.digest() != hint.digest:
            return None  # edited, cut or replaced: read it all (which says what is wrong)
        data = os.pread(self._fd, end - base, base)
        parsed = parse_entries(data)
        if not parsed.entries:
            return None
        first = parsed.entries[0]
        if first.record is not None or len(first.raw) != st.offset - base:
            return None
        try:
            cp = _unverified_checkpoint(first.raw)
        except Exception:
            return None
        if checkpoint_hash(first.raw) != st.cp_prev or (
            cp.log_id,
            cp.size,
            cp.head,
            cp.root,
        ) != (hint.log_id, st.size, st.head, st.frontier.root()):
            return None
        if self._trusted is not None:  # the resume point must be ours, or read it all
            try:
                open_checkpoint(first.raw, learn_keys(self._trusted, hint.certs, strict=False))
            except (CoseError, FormatError):
                return None
        if self._seg > 0:  # the segment's own first checkpoint must say where it starts
            try:
                head = segments.read_head(os.pread(self._fd, segments.HEAD_READ, 0))
            except FormatError:
                return None
            if (head.log_id, head.seg, head.at) != (hint.log_id, self._seg, hint.at):
                return None
        parsed = ParsedLog(
            [Entry(e.offset + base, e.raw, e.record) for e in parsed.entries],
            parsed.good_length + base,
            parsed.torn,
            [Damage(d.offset + base, d.length, d.records_before, d.why) for d in parsed.damage],
        )
        self._seg_start = hint.at
        self._certs = list(hint.certs)
        self._log_id, self._size, self._head = hint.log_id, st.size, st.head
        self._frontier, self._cp_prev, self._sealed = st.frontier.copy(), st.cp_prev, st.size
        torn = self._continue(parsed, data, base, start=1)
        hasher.update(data[st.offset - base : self._length - base])
        self._hasher = hasher
        self.resumed_from = st.copy()
        self.resumed_from.offset += self._seg_start
        return torn

    def _load_from_start(self) -> int:
        assert self._fd is not None
        data = _read_fd(self._fd)
        parsed = parse_entries(data)
        self._log_id = b""
        self._size = 0
        self._head = b""
        self._frontier = MerkleFrontier()
        self._cp_prev = ZERO_HASH
        self._sealed = 0
        self._certs = []
        start = 0
        if self._seg > 0:
            self._start_segment(parsed)
            start = 1
        torn = self._continue(parsed, data, 0, start=start)
        self._hasher = hashlib.sha256(data[: self._length])
        return torn

    def _start_segment(self, parsed: ParsedLog) -> None:
        """The state at the start of the live segment, from its first checkpoint."""
        first = parsed.entries[0] if parsed.entries else None
        why = "it does not start with a checkpoint"
        if first is not None and first.record is None:
            try:
                cp = peek_checkpoint(first.raw)
                if (cp.seg, cp.why) != (self._seg, "segment"):
                    why = f"its first checkpoint is not that of segment {self._seg} (seg {cp.seg})"
                else:
                    st = LogState.before_segment(cp)
                    self._log_id, self._size, self._head = cp.log_id, st.size, st.head
                    self._frontier, self._sealed = st.frontier, st.size
                    self._cp_prev = cp.prev
                    self._seg_start = st.offset
                    self._certs = list(cp.certs)
                    if self._trusted is not None:
                        keys = learn_keys(self._trusted, self._certs, strict=False)
                        open_checkpoint(first.raw, keys)
                    self._replay_entries(parsed.entries[:1])
                    return
            except (CoseError, FormatError) as exc:
                why = f"its first checkpoint is not valid ({exc})"
        raise AuditLogCorrupt(
            f"{self._seg_path}: not a segment of an audit log: {why}; check it with `edgegw "
            "audit verify`, then move it away (AuditLog.set_aside) so a new log can start"
        )

    def _continue(self, parsed: ParsedLog, data: bytes, base: int, start: int) -> int:
        """Cut a torn or forged tail, then replay ``parsed.entries[start:]`` onto the state
        set up by the caller. ``data`` holds the file from byte ``base`` on."""
        assert self._fd is not None
        if parsed.malformed_at is not None:
            raise AuditLogCorrupt(
                f"{self._seg_path}: damaged entry at byte {parsed.malformed_at} "
                f"({parsed.malformed_why}); check it with `edgegw audit verify`, then move it "
                "away (AuditLog.set_aside) so a new log can start"
            )
        torn = 0
        if parsed.torn:
            torn = len(data) + base - parsed.good_length
            keep = self._keep_beside("torn", data[parsed.good_length - base :])
            os.ftruncate(self._fd, parsed.good_length)
            os.fsync(self._fd)
            log.warning(
                "%s: removed a torn final entry of %d bytes (kept in %s)",
                self._seg_path,
                torn,
                keep,
            )
        self._length = parsed.good_length
        cut = self._forged_tail(parsed.entries)
        if cut is not None:
            at, reason = cut
            parsed = self._quarantine(parsed, data, at, reason, base)
        self._loaded_length = self._length
        self._unsealed_since = time.monotonic()
        if not parsed.entries:
            self._log_id = os.urandom(LOG_ID_LEN)
            self._head = genesis_head(self._log_id)
            fsync_dir(self.path.parent)
            return torn
        if start == 0:
            self._replay(parsed)
        else:
            self._replay_entries(parsed.entries[start:])
        return torn

    def _keep_beside(self, what: str, data: bytes) -> Path:
        return _keep_beside(self._seg_path, what, data)

    def _forged_tail(self, entries: list[Entry]) -> tuple[int, str] | None:
        """Where entries that edgegw did not write begin (and why), if anywhere.

        Every program that appends while the daemon is stopped opens and closes the log, so
        it writes checkpoints: records after a "close" checkpoint with none after them were
        added by something else. (After an "open", "count", "interval" or "manual" checkpoint
        they are the tail of a crash, and are adopted.) With trusted keys, the checkpoints at
        the end must also verify: from the last one that does, what follows is cut if it ends
        in a checkpoint that does not."""
        cps = [i for i, e in enumerate(entries) if e.record is None]
        if not cps:
            return None  # _replay refuses a log that does not start with a checkpoint
        last = cps[-1]
        if self._trusted is not None:
            good = self._last_verified(entries, cps)
            if good != last:
                e = entries[last]
                return good + 1, (
                    f"the checkpoint at byte {e.offset} is not signed by a key of this device"
                )
        if last + 1 < len(entries) and _unverified_checkpoint(entries[last].raw).why == "close":
            return last + 1, "records after a clean close that no checkpoint seals"
        return None

    def _last_verified(self, entries: list[Entry], cps: list[int]) -> int:
        """Index of the last checkpoint signed by a trusted key (or one the log's key_rotated
        records certify from a trusted key)."""
        assert self._trusted is not None
        certs = [
            e.record.detail["cert"]
            for e in entries
            if e.record is not None
            and e.record.event == "key_rotated"
            and type(e.record.detail.get("cert")) is bytes
        ]
        keys = learn_keys(self._trusted, [*self._certs, *certs], strict=False)
        for i in reversed(cps):
            try:
                open_checkpoint(entries[i].raw, keys)
            except (CoseError, FormatError):
                continue
            return i
        raise AuditLogCorrupt(
            f"{self._seg_path}: no checkpoint in the log is signed by a key of this device (the "
            "log belongs to another key, or was rewritten); check it with `edgegw audit "
            "verify`, then move it away (AuditLog.set_aside) so a new log can start"
        )

    def _quarantine(
        self, parsed: ParsedLog, data: bytes, at: int, reason: str, base: int = 0
    ) -> ParsedLog:
        """Cut entries ``at``.. off the log, keeping them beside it, and say so loudly.
        ``data`` holds the file from byte ``base`` on."""
        assert self._fd is not None
        start = parsed.entries[at].offset
        tail = parsed.entries[at:]
        records = sum(e.record is not None for e in tail)
        nbytes = parsed.good_length - start
        keep = self._keep_beside("forged", data[start - base : parsed.good_length - base])
        os.ftruncate(self._fd, start)
        os.fsync(self._fd)
        fsync_dir(self.path.parent)
        self._length = start
        self._quarantined = _Quarantined(keep, records, nbytes, reason)
        log.warning(
            "%s: %s: cut off %d record(s) (%d bytes) from byte %d that edgegw did not write; "
            "they are kept in %s. Find out who wrote them (they were added while edgegw was "
            "stopped)",
            self._seg_path,
            reason,
            records,
            nbytes,
            start,
            keep,
        )
        return ParsedLog(parsed.entries[:at], start, False, [])

    def _replay(self, parsed: ParsedLog) -> None:
        """Recompute the state from the entries, checking that they are consistent (not that
        the signatures are good: that is verify's job, with public keys)."""
        first = parsed.entries[0]
        if first.record is not None:
            raise AuditLogCorrupt(f"{self._seg_path}: does not start with a checkpoint")
        self._replay_entries(parsed.entries)

    def _replay_entries(self, entries: list[Entry]) -> None:
        for e in entries:
            if e.record is None:
                cp = _unverified_checkpoint(e.raw)
                if not self._log_id:
                    self._log_id, self._head = cp.log_id, genesis_head(cp.log_id)
                if (cp.log_id, cp.size, cp.head, cp.root, cp.prev) != (
                    self._log_id,
                    self._size,
                    self._head,
                    self._frontier.root(),
                    self._cp_prev,
                ):
                    raise AuditLogCorrupt(
                        f"{self._seg_path}: checkpoint at byte {e.offset} does not match the "
                        "records before it; check it with `edgegw audit verify`"
                    )
                self._cp_prev = checkpoint_hash(e.raw)
                self._sealed = self._size
            else:
                r = e.record
                if r.seq != self._size or r.prev != self._head:
                    raise AuditLogCorrupt(
                        f"{self._seg_path}: record at byte {e.offset} breaks the chain (seq "
                        f"{r.seq}); check it with `edgegw audit verify`"
                    )
                self._head = r.hash
                self._frontier.append(r.hash)
                self._size += 1
                self._note_cert(r.event, r.detail)

    def _note_cert(self, event: str, detail: Mapping[str, Any]) -> None:
        if event == AuditEvent.KEY_ROTATED and type(detail.get("cert")) is bytes:
            self._certs.append(detail["cert"])

    @staticmethod
    def set_aside(path: str | os.PathLike[str]) -> Path:
        """Rename a damaged log to ``<name>.bad-<ns>`` so a new one can start; returns the new
        name (of its live segment, when it has several: each is renamed the same way).
        Record an ``audit_reset`` in the new log, naming it."""
        p = Path(path)
        ns = time.time_ns()
        dest = p.with_name(f"{p.name}.bad-{ns}")
        for _, f in segments.log_dir_files(p):
            dest = f.with_name(f"{f.name}.bad-{ns}")
            os.rename(f, dest)
        resume.remove(p)
        fsync_dir(p.parent)
        return dest

    # -- writing ---------------------------------------------------------------------------

    @property
    def log_id(self) -> bytes:
        return self._log_id

    @property
    def size(self) -> int:
        """Number of records."""
        return self._size

    @property
    def length(self) -> int:
        """Bytes of the log up to the end of the last durable (fsynced) entry: everything
        before it is final and may be read and published. A log offset: the segments
        before the live one count (security/segments.py)."""
        return self._seg_start + self._length

    @property
    def loaded_length(self) -> int:
        """Bytes of the log as this open found it (less a torn or forged tail it removed),
        before its "open" checkpoint."""
        return self._seg_start + self._loaded_length

    @property
    def segment(self) -> int:
        """The live segment's number (0: the log's own path)."""
        return self._seg

    @property
    def segment_path(self) -> Path:
        """The live segment's file, the one appended to."""
        return self._seg_path

    @property
    def segment_start(self) -> int:
        """The log offset where the live segment starts."""
        return self._seg_start

    @property
    def head(self) -> bytes:
        return self._head

    @property
    def unsealed(self) -> int:
        """Records not yet covered by a checkpoint."""
        return self._size - self._sealed

    def record(self, event: str, /, **detail: Any) -> Record:
        """Append one record (durably) and return it; may also write a checkpoint."""
        ev = AuditEvent(event)  # ValueError for a name not in the documented set
        with self._lock:
            fd = self._require_open()
            data = encode_record(
                seq=self._size,
                boot=self.boot,
                ts_ns=time.time_ns(),
                mono_ns=time.monotonic_ns(),
                event=ev.value,
                detail=detail,
                prev=self._head,
            )
            self._append(fd, data)
            rec = decode_record(data)  # the stored form, as verify will read it
            if self.unsealed == 0:
                self._unsealed_since = time.monotonic()
            self._head = rec.hash
            self._frontier.append(rec.hash)
            self._size += 1
            self._note_cert(ev.value, detail)
            self._emit(rec)
            if self.unsealed >= self.checkpoint_every or self._interval_due():
                why = "count" if self.unsealed >= self.checkpoint_every else "interval"
                self._write_checkpoint(why)
        return rec

    def _interval_due(self) -> bool:
        return (
            self.unsealed > 0
            and time.monotonic() - self._unsealed_since >= self.checkpoint_interval_s
        )

    def tick(self) -> Checkpoint | None:
        """Write a checkpoint if records have waited ``checkpoint_interval_s`` unsealed. Cheap
        when nothing is due: call it every few seconds from a housekeeping loop."""
        with self._lock:
            if self._fd is None or not self._interval_due():
                return None
            return self._write_checkpoint("interval")

    def checkpoint(self) -> Checkpoint:
        """Write a checkpoint now (why = "manual")."""
        with self._lock:
            self._require_open()
            return self._write_checkpoint("manual")

    def close(self) -> Checkpoint | None:
        """Seal everything with a final "close" checkpoint and release the file. Idempotent:
        returns None when already closed."""
        with self._lock:
            if self._fd is None:
                return None
            try:
                cp = self._write_checkpoint("close")
            finally:
                fd, self._fd = self._fd, None
                os.close(fd)  # also releases the lock
            return cp

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require_open(self) -> int:
        if self._fd is None:
            raise AuditLogError(f"{self.path}: the audit log is closed")
        return self._fd

    def _write_checkpoint(self, why: str, torn: int = 0) -> Checkpoint:
        fd = self._require_open()
        cp = sign_checkpoint(
            self.signer,
            log_id=self._log_id,
            size=self._size,
            root=self._frontier.root(),
            head=self._head,
            prev=self._cp_prev,
            boot=self.boot,
            ts_ns=time.time_ns(),
            why=why,
            origin=self.origin,
            torn_bytes=torn,
        )
        start = self._length
        self._append(fd, cp.encoded)
        self._cp_prev = checkpoint_hash(cp.encoded)
        self._sealed = self._size
        self._save_resume(start)
        self._unsealed_since = time.monotonic()
        self._emit(cp)
        if why != "close" and self.segment_bytes is not None and self._length >= self.segment_bytes:
            self._roll()
        return cp

    def _roll(self) -> None:
        """Go on in a new segment file: its first entry is a checkpoint restating the one
        just written (same size, root, head; ``prev`` its hash) with the segment's number,
        its log offset, the Merkle compact range and the key certificates so far. Once that
        checkpoint is durable (file and directory synced) the new file is live; until then a
        crash leaves an unfinished file that the next open removes. A failure leaves the
        log in the current segment (nothing written is lost) and is retried at the next
        checkpoint."""
        assert self._fd is not None
        k = self._seg + 1
        path = segments.segment_path(self.path, k)
        at = self._seg_start + self._length
        try:
            fd = os.open(
                path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
            )
        except OSError as exc:
            self._roll_failed(path, exc)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            cp = sign_checkpoint(
                self.signer,
                log_id=self._log_id,
                size=self._size,
                root=self._frontier.root(),
                head=self._head,
                prev=self._cp_prev,
                boot=self.boot,
                ts_ns=time.time_ns(),
                why="segment",
                origin=self.origin,
                segment=SegmentStart(k, at, self._frontier.compact, tuple(self._certs)),
            )
            _write_all(fd, cp.encoded)
            os.fsync(fd)
            fsync_dir(path.parent)
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            self._roll_failed(path, exc)
            return
        old, self._fd = self._fd, fd
        os.close(old)  # after the new file holds the lock: no other writer slips in between
        self._seg, self._seg_path, self._seg_start = k, path, at
        self._length = len(cp.encoded)
        self._hasher = hashlib.sha256(cp.encoded)
        self._cp_prev = checkpoint_hash(cp.encoded)
        self._save_resume(0)
        if self._roll_error is not None:
            log.info("%s: the audit log rolled over to a new segment again", path)
            self._roll_error = None
        log.info("audit log: segment %d starts at log byte %d (%s)", k, at, path.name)
        self._emit(cp)

    def _roll_failed(self, path: Path, exc: OSError) -> None:
        what = f"{path}: cannot start a new audit log segment ({exc.strerror or exc})"
        if what != self._roll_error:
            log.error(
                "%s; the log goes on in %s, retried at the next checkpoint", what, self._seg_path
            )
        self._roll_error = what

    def _save_resume(self, cp_offset: int) -> None:
        """The state just after the checkpoint at ``cp_offset`` of the live segment: the
        next open reads from there (security/resume.py). A hint only: failing to write it
        costs time, not data."""
        state = LogState(self._length, self._size, self._head, self._cp_prev, self._frontier.copy())
        if self._hasher is None:
            return
        digest = self._hasher.digest()
        r = resume.Resume(
            self._log_id, cp_offset, state, digest, self._certs, self._seg, self._seg_start
        )
        try:
            resume.save(self.path, r)
        except OSError as exc:
            log.debug("%s: cannot write the resume file: %s", self.path, exc)

    def _append(self, fd: int, data: bytes) -> None:
        end = os.lseek(fd, 0, os.SEEK_END)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except OSError as exc:
            # A partial write (disk full) would leave a damaged entry in the middle of the
            # log once the next one lands after it: cut it off again.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, end)
            raise AuditLogError(f"{self._seg_path}: cannot append ({exc.strerror})") from exc
        self._length = end + len(data)
        if self._hasher is not None:
            self._hasher.update(data)

    def _emit(self, item: Record | Checkpoint) -> None:
        if self.on_append is None:
            return
        try:
            self.on_append(item)
        except Exception:  # the entry is durable; a failing publisher must not undo that
            log.exception("audit on_append callback failed")


@dataclass(frozen=True, slots=True)
class _Quarantined:
    file: Path
    records: int
    nbytes: int
    reason: str


def _keep_beside(path: Path, what: str, data: bytes) -> Path:
    """Keep cut-off bytes beside a log file as ``<name>.<what>-<ns>`` (0600, synced)."""
    keep = path.with_name(f"{path.name}.{what}-{time.time_ns()}")
    fd = os.open(keep, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return keep


def _read_fd(fd: int) -> bytes:
    chunks: list[bytes] = []
    off = 0
    while True:
        chunk = os.pread(fd, 1 << 20, off)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        off += len(chunk)


def _unverified_checkpoint(raw: bytes) -> Checkpoint:
    try:
        return peek_checkpoint(raw)
    except FormatError as exc:
        raise AuditLogCorrupt(str(exc)) from None


# -- verification ---------------------------------------------------------------------------


class Outcome(StrEnum):
    OK = "ok"
    TAMPERED = "tampered"
    UNSEALED_TAIL = "unsealed_tail"
    UNKNOWN_KEY = "unknown_key"


class ExitCode(IntEnum):
    """``edgegw audit verify`` exit status per outcome (2 is bad input: usage, files)."""

    OK = 0
    TAMPERED = 1
    UNSEALED_TAIL = 3
    UNKNOWN_KEY = 4


class Problem(StrEnum):
    EDITED = "edited"  # a record's bytes differ from what the chain or a checkpoint commits to
    DELETED = "deleted"  # records (or a checkpoint) missing
    REORDERED = "reordered"  # records out of order
    INSERTED = "inserted"  # a record that was never part of the log, or a copy of one
    MALFORMED = "malformed"  # bytes that are not a record or a checkpoint
    BAD_CHECKPOINT = "bad_checkpoint"  # a checkpoint whose signature or content is wrong
    UNKNOWN_KEY = "unknown_key"  # a checkpoint signed by a key not trusted
    FOREIGN_LOG = "foreign_log"  # a checkpoint of another log (another device)
    EMPTY = "empty"  # no log at all


@dataclass(slots=True)
class VerifyReport:
    """The result of :func:`verify`. ``sealed`` records (seq 0 .. sealed-1) are verified;
    on failure ``first_bad`` is the seq (position) of the first bad record.

    When the evidence cannot single out one record (a run of records was re-linked after
    an edit, so they agree with each other but not with the checkpoint), ``first_bad`` is
    the first record not vouched for and ``last_bad`` the last one that may be the culprit;
    otherwise ``last_bad == first_bad``."""

    outcome: Outcome
    records: int = 0
    checkpoints: int = 0
    sealed: int = 0
    problem: Problem | None = None
    first_bad: int | None = None
    last_bad: int | None = None
    message: str = ""
    log_id: bytes = b""
    origin: str | None = None
    kids: list[bytes] = field(default_factory=list)
    first_ts_ns: int | None = None
    last_ts_ns: int | None = None
    warnings: list[str] = field(default_factory=list)
    first_seq: int = 0  # seq of the first record checked (not 0: from a segment on)
    segment: int | None = None  # the segment the bytes start with, when not the first
    bad_offset: int | None = None  # byte (in the bytes checked) of the first bad entry
    file: str | None = None  # which file holds it (verify_files)
    file_offset: int | None = None  # and where in that file

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK

    @property
    def exit_code(self) -> int:
        return int(ExitCode[self.outcome.name])

    def summary(self) -> str:
        if self.outcome is Outcome.OK:
            return (
                f"OK: {self.records} records (seq {self.first_seq}.."
                f"{self.first_seq + self.records - 1}) verified by {self.checkpoints} checkpoints"
            )
        where = f" [{self.file}]" if self.file else ""
        return f"{self.outcome.value.upper()}: {self.message}{where}"


@dataclass(slots=True)
class _Cp:
    """A checkpoint entry during verification."""

    index: int  # position among entries
    after: int  # the seq after the records before it (their count for a whole log)
    raw: bytes
    cp: Checkpoint | None = None  # set when the signature verified with a trusted key
    error: Problem | None = None
    why: str = ""


@dataclass(order=True, slots=True)
class _Found:
    at: int  # the record position named
    rank: int  # tie-break at one position: damage, then records, then checkpoints
    problem: Problem = field(compare=False)
    message: str = field(compare=False)
    outcome: Outcome = field(compare=False, default=Outcome.TAMPERED)
    last: int | None = field(compare=False, default=None)  # end of an ambiguous range
    offset: int | None = field(compare=False, default=None)  # the bad entry's byte, if known
    file: str | None = field(compare=False, default=None)  # set by verify_files


def _as_keyset(
    public_keys: Mapping[bytes, Ed25519PublicKey] | Iterable[Ed25519PublicKey],
) -> dict[bytes, Ed25519PublicKey]:
    if isinstance(public_keys, Mapping):
        return dict(public_keys)
    return {kid_for(k): k for k in public_keys}


def read_log(path: str | os.PathLike[str]) -> ParsedLog:
    return parse_entries(Path(path).read_bytes())


def last_boot(path: str | os.PathLike[str]) -> int:
    """The boot number of the newest entry (0 for a missing or empty log): for tools that
    append to the log between daemon runs, such as ``edgegw keys rotate``. Reads the live
    (last) segment only."""
    files = segments.log_dir_files(Path(path))
    try:
        parsed = read_log(files[-1][1] if files else path)
    except FileNotFoundError:
        return 0
    for e in reversed(parsed.entries):
        if e.record is not None:
            return e.record.boot
        try:
            return _unverified_checkpoint(e.raw).boot
        except AuditLogCorrupt:
            continue
    return 0


def verify(
    path: str | os.PathLike[str],
    public_keys: Mapping[bytes, Ed25519PublicKey] | Iterable[Ed25519PublicKey],
    *,
    certificates: Iterable[bytes] = (),
) -> VerifyReport:
    """Verify an audit log file offline with public keys only.

    ``public_keys`` are trusted (normally the device's enrolled key). Keys the device rotated
    to are trusted when a key certificate signed by a trusted key vouches for them: those in
    the log's ``key_rotated`` records, and any passed as ``certificates``.
    """
    return verify_bytes(Path(path).read_bytes(), public_keys, certificates=certificates)


def verify_bytes(
    data: bytes,
    public_keys: Mapping[bytes, Ed25519PublicKey] | Iterable[Ed25519PublicKey],
    *,
    certificates: Iterable[bytes] = (),
) -> VerifyReport:
    """Verify a log's bytes: the whole log, or a run of its segments (then from the
    checkpoint the first of them starts with: ``first_seq`` says where)."""
    return _verify(parse_entries(data), _as_keyset(public_keys), certificates, [])[0]


def _start_of(parsed: ParsedLog) -> Checkpoint | None:
    """The checkpoint a segment after the first starts with (None for a whole log)."""
    if not parsed.entries or parsed.entries[0].record is not None:
        return None
    try:
        cp = peek_checkpoint(parsed.entries[0].raw)
    except FormatError:
        return None
    return cp if cp.seg is not None else None


def _verify(
    parsed: ParsedLog,
    trusted: dict[bytes, Ed25519PublicKey],
    certificates: Iterable[bytes],
    extra: list[_Found],
) -> tuple[VerifyReport, list[_Found]]:
    """The verdict on parsed log bytes, with ``extra`` findings (from the files' layout)
    weighed with those found here. Returns the report and every finding."""
    start = _start_of(parsed)
    certs = [*certificates, *(start.certs if start is not None else ())]
    keys = learn_keys(trusted, certs) if start is None else learn_keys(trusted, certs, strict=False)
    base: LogState | None = None
    if start is not None:
        try:
            base = LogState.before_segment(start)
        except FormatError as exc:
            rep = VerifyReport(Outcome.TAMPERED, first_seq=start.size)
            rep.problem, rep.first_bad, rep.last_bad = (
                Problem.BAD_CHECKPOINT,
                start.size,
                start.size,
            )
            rep.message = f"the first checkpoint of segment {start.seg}: {exc}"
            return rep, []
    b = base.size if base is not None else 0
    records = [e.record for e in parsed.entries if e.record is not None]
    rep = VerifyReport(Outcome.OK, records=len(records), first_seq=b, sealed=b)
    if start is not None:
        rep.segment = start.seg
    if not parsed.entries and parsed.malformed_at is None and not extra:
        rep.outcome, rep.problem, rep.first_bad = Outcome.TAMPERED, Problem.EMPTY, 0
        rep.last_bad = 0
        rep.message = "the log is empty: a log always starts with a signed checkpoint"
        return rep, []
    cps = _check_signatures(parsed.entries, keys, b)
    rep.checkpoints = len(cps)
    valid = [c for c in cps if c.cp is not None]
    log_id = _log_id(valid)
    rep.log_id = log_id
    if valid and valid[0].cp is not None:
        rep.origin = valid[0].cp.origin
    for c in valid:  # checkpoints of another log do not vouch for this one
        assert c.cp is not None
        if c.cp.log_id != log_id:
            c.why = f"belongs to another log ({c.cp.log_id.hex()}, not {log_id.hex()})"
            c.cp, c.error = None, Problem.FOREIGN_LOG
    valid = [c for c in cps if c.cp is not None]

    found: list[_Found] = list(extra)
    found += _scan_records(records, valid, log_id, base)
    found += _check_checkpoints(parsed.entries, cps, log_id, base)
    for d in parsed.damage:
        at = d.records_before + b
        msg = f"damaged entry at byte {d.offset}, after seq {at - 1} ({d.why})"
        found.append(_Found(at, 0, Problem.MALFORMED, msg, offset=d.offset))
    sealed = _sealed_prefix(cps, found, b)
    rep.sealed = sealed
    rep.kids = sorted({c.cp.kid for c in cps if c.cp is not None and c.after <= sealed})
    if records[: sealed - b]:
        rep.first_ts_ns, rep.last_ts_ns = records[0].ts_ns, records[sealed - b - 1].ts_ns
    rep.warnings = _warnings(cps)
    if start is not None:
        rep.warnings.insert(
            0,
            f"verified from segment {start.seg} on (seq {b}, log byte {start.at}): the "
            "segments before it were not given",
        )
    if found:
        first = min(found)
        if first.last is not None:  # a range: a finding that names one record in it is better
            inside = [f for f in found if f.last is None and first.at <= f.at <= first.last]
            first = min(inside, default=first)
        rep.outcome, rep.problem, rep.first_bad = first.outcome, first.problem, first.at
        rep.last_bad = first.at if first.last is None else first.last
        rep.message = first.message
        rep.bad_offset = first.offset
        return rep, found
    end = b + len(records)
    if parsed.torn or sealed < end:
        rep.outcome = Outcome.UNSEALED_TAIL
        rep.first_bad = sealed
        tail = f"records seq {sealed}..{end - 1}" if sealed < end else ""
        torn = "a torn (incomplete) final entry" if parsed.torn else ""
        rep.last_bad = max(end - 1, sealed)
        what = " and ".join(x for x in (tail, torn) if x)
        before = f"seq {b}..{sealed - 1} sealed" if sealed > b else "nothing sealed"
        rep.message = (
            f"{what} after the last checkpoint ({before}); the tail cannot be checked for "
            "truncation or edits"
        )
        rep.bad_offset = parsed.good_length if parsed.torn and sealed >= end else None
    return rep, found


def _check_signatures(
    entries: list[Entry], keys: dict[bytes, Ed25519PublicKey], base: int = 0
) -> list[_Cp]:
    """Verify every checkpoint, learning rotated keys from key_rotated records on the way."""
    out: list[_Cp] = []
    n = base
    for i, e in enumerate(entries):
        if e.record is not None:
            n += 1
            cert = e.record.detail.get("cert") if e.record.event == "key_rotated" else None
            if type(cert) is bytes:
                keys.update(learn_keys(keys, [cert], strict=False))
            continue
        c = _Cp(i, n, e.raw)
        try:
            c.cp = open_checkpoint(e.raw, keys)
        except UnknownKid as exc:
            c.error, c.why = Problem.UNKNOWN_KEY, f"signed by {exc}"
        except (CoseError, FormatError) as exc:
            c.error, c.why = Problem.BAD_CHECKPOINT, str(exc)
        out.append(c)
    return out


def _log_id(valid: list[_Cp]) -> bytes:
    """The log's id: that of its genesis checkpoint, else of the first valid one."""
    for c in valid:
        assert c.cp is not None
        if c.index == 0:
            return c.cp.log_id
    return valid[0].cp.log_id if valid and valid[0].cp is not None else b""


def _authentic(records: list[Record], valid: list[_Cp], base: int = 0) -> set[int]:
    """Positions of records a valid checkpoint vouches for: walk back from each head."""
    by_hash: dict[bytes, list[int]] = {}
    for p, r in enumerate(records):
        by_hash.setdefault(r.hash, []).append(p)
    auth: set[int] = set()
    for c in valid:
        assert c.cp is not None
        h, seq = c.cp.head, c.cp.size - 1
        while seq >= base:
            positions = by_hash.get(h)
            if not positions or records[positions[0]].seq != seq:
                break
            if positions[0] in auth:
                break  # the rest of this chain is already walked
            auth.update(positions)
            h, seq = records[positions[0]].prev, seq - 1
    return auth


def _scan_records(
    records: list[Record], valid: list[_Cp], log_id: bytes, base: LogState | None = None
) -> list[_Found]:
    """The first record that is not where the authenticated chain says it should be.

    A record is authentic when a valid checkpoint's head reaches it through ``prev`` links.
    Naming the culprit, not just the place where the chain breaks, uses that: when seq s is
    authentic but does not link to the record before it, that record (s-1) was altered.
    Records are numbered from ``base`` (a run of segments from the middle) or from 0.
    """
    b = base.size if base is not None else 0
    auth = _authentic(records, valid, b)
    tail = max((c.after for c in valid), default=b)  # no valid checkpoint from here on
    positions: dict[int, list[int]] = {}
    for p, r in enumerate(records):
        positions.setdefault(r.seq, []).append(p)

    def later(seq: int, p: int, *, authentic: bool) -> bool:
        return any(q > p and (q in auth or not authentic) for q in positions.get(seq, ()))

    def edited(s: int, why: str) -> list[_Found]:
        return [_Found(s, 1, Problem.EDITED, f"seq {s}: record altered ({why})")]

    if base is not None:
        prev: bytes | None = base.head
    else:
        prev = genesis_head(log_id) if log_id else None
    for p, r in enumerate(records):
        s = b + p
        here = p in auth
        links = prev is None or r.prev == prev
        if r.seq != s:
            if not here and links:
                return edited(s, f"it says seq {r.seq}")
            if r.seq > s and later(s, p, authentic=False):
                msg = f"seq {s}: out of order (seq {r.seq} is in its place)"
                return [_Found(s, 1, Problem.REORDERED, msg)]
            if r.seq > s:
                msg = f"seq {s}..{r.seq - 1} deleted (seq {r.seq} follows seq {s - 1})"
                return [_Found(s, 1, Problem.DELETED, msg)]
            msg = f"seq {s}: a record claiming seq {r.seq} was inserted here"
            return [_Found(s, 1, Problem.INSERTED, msg)]
        if not links:
            if here and p > 0 and (p - 1) not in auth:
                return edited(s - 1, f"seq {s} does not link to it")
            if not here and later(s, p, authentic=False):
                msg = f"seq {s}: forged record inserted before the real seq {s}"
                return [_Found(s, 1, Problem.INSERTED, msg)]
            if s >= tail and p + 1 < len(records) and records[p + 1].prev == r.hash:
                # In the unsealed tail nothing vouches for either side; seq s agrees with its
                # successor, so the likelier story is that seq s-1 was altered.
                return edited(s - 1, f"seq {s} does not link to it; not sealed")
            return edited(s, f"it does not link to seq {s - 1}")
        if not here and later(s, p, authentic=True):
            msg = f"seq {s}: forged record inserted before the real seq {s}"
            return [_Found(s, 1, Problem.INSERTED, msg)]
        prev = r.hash
    return []


def _check_checkpoints(
    entries: list[Entry], cps: list[_Cp], log_id: bytes, base: LogState | None = None
) -> list[_Found]:
    """Each checkpoint against the records before it in the file, and the checkpoint chain
    (from ``base``, the state a run of segments from the middle starts at, if given)."""
    found: list[_Found] = []
    if base is not None:
        frontier, head, cp_prev = base.frontier.copy(), base.head, base.cp_prev
        n = vouched = base.size
    else:
        frontier, head, cp_prev = MerkleFrontier(), genesis_head(log_id), ZERO_HASH
        n = vouched = 0
    if not cps or cps[0].index != 0:
        what = "genesis checkpoint" if base is None else "segment's first checkpoint"
        found.append(_Found(n, 2, Problem.DELETED, f"the {what} (the first entry) is missing"))
    by_index = {c.index: c for c in cps}
    for i, e in enumerate(entries):
        if e.record is not None:
            frontier.append(e.record.hash)
            head = e.record.hash
            n += 1
            continue
        c = by_index[i]
        where = f"checkpoint after seq {n - 1}" if n else "first checkpoint"
        cp = c.cp
        if cp is None:
            problem = c.error or Problem.BAD_CHECKPOINT
            outcome = Outcome.UNKNOWN_KEY if problem is Problem.UNKNOWN_KEY else Outcome.TAMPERED
            found.append(_Found(n, 2, problem, f"{where}: {c.why}", outcome, offset=e.offset))
        elif cp.size > n:
            msg = f"{where} seals {cp.size} records: seq {n}..{cp.size - 1} deleted"
            found.append(_Found(n, 2, Problem.DELETED, msg, offset=e.offset))
        elif cp.size < n:
            msg = f"{where} seals {cp.size} records, but {n} precede it"
            found.append(_Found(cp.size, 2, Problem.INSERTED, msg, offset=e.offset))
        elif cp.head != head:
            # The records link up but end in another head: either seq n-1 was altered, or
            # an earlier one was and everything after it was re-linked. Name the range.
            first = vouched if vouched < n else n - 1
            msg = (
                f"seq {first}..{n - 1}: altered ({where} names another head; the records "
                "after the change were re-linked, so which one cannot be told)"
                if first < n - 1
                else f"seq {n - 1}: record altered ({where} names another head)"
            )
            found.append(_Found(first, 2, Problem.EDITED, msg, last=n - 1))
        elif cp.root != frontier.root():
            msg = f"{where}: its Merkle root does not match the records"
            found.append(_Found(n, 2, Problem.BAD_CHECKPOINT, msg, offset=e.offset))
        elif cp.prev != cp_prev:
            msg = f"{where}: the checkpoint before it is missing or was replaced"
            found.append(_Found(n, 2, Problem.DELETED, msg, offset=e.offset))
        if cp is not None and cp.size == n and cp.head == head:
            vouched = n
        cp_prev = checkpoint_hash(e.raw)
    return found


def _sealed_prefix(cps: list[_Cp], found: list[_Found], base: int = 0) -> int:
    """Records covered by the last valid, consistent checkpoint before the first problem
    (the seq after the last one)."""
    limit = min(found).at if found else None
    sealed = base
    for c in cps:
        if c.cp is None or c.cp.size != c.after:
            continue
        if limit is not None and c.after > limit:
            break
        sealed = c.after
    return sealed


def _warnings(cps: list[_Cp]) -> list[str]:
    out: list[str] = []
    good = [c.cp for c in cps if c.cp is not None]
    for prev, cp in itertools.pairwise(good):
        if cp.why == "open" and prev.why != "close":
            adopted = cp.size - prev.size
            found = (
                f"; it found seq {prev.size}..{cp.size - 1} unsealed and sealed them: written "
                "before a crash, or added while edgegw was stopped (an outside anchor tells)"
                if adopted > 0
                else ""
            )
            out.append(
                f"boot {prev.boot} did not end with a clean close (a crash, a power loss, or "
                f"its last records were cut off) before boot {cp.boot} started{found}"
            )
        if cp.torn_bytes:
            out.append(f"boot {cp.boot}: a torn final entry of {cp.torn_bytes} bytes was removed")
    if good and good[-1].why != "close":
        out.append(
            "the log does not end with a clean-close checkpoint: the daemon is running or "
            "crashed, or the log was cut at a checkpoint (only an outside anchor can tell)"
        )
    return out
