"""An audit log kept as several files: segment 0 is the log's own path (``audit.cborseq``),
segment k >= 1 is ``audit.<k:06d>.cborseq`` beside it (or in an archive directory).

The log is the concatenation of its segments, byte for byte: offsets are the log's
(what the uplink publishes, what the platform's copy holds). A segment after the first
starts with a signed checkpoint (why = "segment") that restates the one ending the
segment before it (same size, root and head; ``prev`` is that checkpoint's hash) and adds
the segment's number, the log offset where it starts, the Merkle compact range and the
key certificates so far (security/checkpoint.py). So one segment, or a run of them from
the middle, is checked from its first checkpoint alone, and a segment dropped, swapped or
cut short breaks a binding that names it.

Pure file reading here: the writer is security/audit.py.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import cbor2

from security.checkpoint import Checkpoint, FormatError, LogState, peek_checkpoint

__all__ = [
    "SegmentFile",
    "SegmentReader",
    "head_of",
    "log_dir_files",
    "read_head",
    "segment_number",
    "segment_path",
]

HEAD_READ = 64 * 1024  # a segment's first checkpoint fits (its certificates are few)


def _split(log: Path) -> tuple[str, str]:
    name = log.name
    stem, dot, suffix = name.rpartition(".")
    return (stem, "." + suffix) if dot and stem else (name, "")


def segment_path(log: Path, k: int, directory: Path | None = None) -> Path:
    """Where segment ``k`` of the log at ``log`` lives (in ``directory`` if given)."""
    if k == 0:
        name = log.name
    else:
        stem, suffix = _split(log)
        name = f"{stem}.{k:06d}{suffix}"
    return (directory or log.parent) / name


def segment_number(log: Path, name: str) -> int | None:
    """The segment number a file name stands for (None: not a segment name of this log)."""
    if name == log.name:
        return 0
    stem, suffix = _split(log)
    m = re.fullmatch(re.escape(stem) + r"\.(\d{6,})" + re.escape(suffix), name)
    if m is None or int(m.group(1)) == 0:
        return None
    return int(m.group(1))


def log_dir_files(log: Path, directory: Path | None = None) -> list[tuple[int, Path]]:
    """The segment files of ``log`` in its directory (or ``directory``), by number."""
    d = directory or log.parent
    out: list[tuple[int, Path]] = []
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return []
    for name in names:
        k = segment_number(log, name)
        if k is not None:
            out.append((k, d / name))
    out.sort()
    return out


def read_head(data: bytes) -> Checkpoint:
    """The checkpoint a segment's bytes start with, unverified. FormatError if none."""
    fp = io.BytesIO(data)
    try:
        cbor2.CBORDecoder(fp).decode()
    except Exception as exc:  # cbor2 raises many types on damaged input
        raise FormatError(f"no complete entry at its start: {exc}") from None
    return peek_checkpoint(data[: fp.tell()])


def head_of(path: Path) -> Checkpoint:
    """The first checkpoint of a segment file, unverified (reads its first 64 KiB)."""
    with open(path, "rb") as f:
        return read_head(f.read(HEAD_READ))


@dataclass(slots=True)
class SegmentFile:
    """One segment file as found: its number, where it starts in the log, its length."""

    k: int
    path: Path
    start: int
    length: int
    state: LogState  # the log's state at ``start``

    @property
    def end(self) -> int:
        return self.start + self.length


class SegmentReader:
    """Reads the log by log offset across its segment files in one directory (the live
    ones): for the uplink, which publishes from the files. Segments are found by their
    first checkpoint, so this works after the ones before have been archived. One open
    file at a time; the live segment's length is what the writer says is durable."""

    def __init__(self, log: Path, log_id: bytes) -> None:
        self.log = log
        self.log_id = log_id
        self._fd: int | None = None
        self._fd_k = -1
        self._heads: dict[Path, tuple[int, LogState]] = {}  # path -> (inode, state)

    def segments(self) -> list[SegmentFile]:
        """The segments of this log in the directory, in order (files that do not start
        with a checkpoint of this log are left out: the writer refuses those)."""
        out: list[SegmentFile] = []
        for k, p in log_dir_files(self.log):
            try:
                st = os.stat(p)
                cached = self._heads.get(p)
                if cached is not None and cached[0] == st.st_ino:
                    state = cached[1]
                else:
                    state = self._start_state(k, p)
                    if state is not None:  # a segment being created is read again
                        self._heads[p] = (st.st_ino, state)
            except OSError:
                continue
            if state is not None:
                out.append(SegmentFile(k, p, state.offset, st.st_size, state.copy()))
        return out

    def _start_state(self, k: int, p: Path) -> LogState | None:
        if k == 0:
            return LogState.genesis(self.log_id)
        try:
            cp = head_of(p)
            if cp.log_id != self.log_id or cp.seg != k:
                return None
            return LogState.before_segment(cp)
        except FormatError:
            return None

    def segment_at(self, offset: int) -> SegmentFile | None:
        """The segment that holds log byte ``offset`` (or starts there); None if none."""
        found = None
        for s in self.segments():
            if s.start <= offset:
                found = s
        return found

    def read(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes from log offset ``offset``, never past the end of the segment
        that holds it (entries never span two segments)."""
        seg = self.segment_at(offset)
        if seg is None:
            raise FileNotFoundError(f"{self.log}: no segment holds log byte {offset}")
        if self._fd_k != seg.k or self._fd is None:
            self.close()
            self._fd = os.open(seg.path, os.O_RDONLY | os.O_CLOEXEC)
            self._fd_k = seg.k
        return os.pread(self._fd, n, offset - seg.start)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._fd_k = None, -1
