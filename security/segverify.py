"""Verifying an audit log kept in several files (security/segments.py): the live segments
and any archived ones, or a run of them from the middle.

The files are put in order by the segment number their first (signed) checkpoint states,
and checked as one log: the bytes of consecutive segments must meet exactly (segment k+1
starts at the log offset where segment k ends, and its first checkpoint restates k's
last). On top of what :func:`security.audit.verify_bytes` finds, the files' layout is
checked so that the verdict names the file: a segment missing between two given ones, a
file cut short or grown after it was closed, a file named for one segment holding another
(swapped or renamed), two files holding one segment, a file of another log.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from security.audit import Outcome, Problem, VerifyReport, _as_keyset, _Found, _verify
from security.checkpoint import Checkpoint, FormatError, ParsedLog, parse_entries
from security.segments import read_head

__all__ = ["SegmentInfo", "read_files", "verify_files"]

_NUMBERED = re.compile(r".+\.(\d{6,})(\.[^.]*)?")


@dataclass(slots=True)
class SegmentInfo:
    """One file as checked: the segment it holds and where it sits in the log."""

    path: Path
    seg: int | None  # as its first checkpoint states (None: unreadable start)
    named: int | None  # the number its name gives, if it follows the segment pattern
    head: Checkpoint | None
    data: bytes
    start: int = 0  # offset in the checked bytes
    first_seq: int = 0  # seq of its first record (or of the next, if it holds none)
    records: int = 0

    @staticmethod
    def numbered(path: Path) -> bool:
        """Whether the name follows the segment pattern ``<stem>.NNNNNN<suffix>``."""
        return _named(path) is not None

    @property
    def at(self) -> int | None:
        """The log offset where it starts, as its first checkpoint states."""
        if self.head is None:
            return None
        return self.head.at if self.head.seg is not None else 0


def _named(path: Path) -> int | None:
    m = _NUMBERED.fullmatch(path.name)
    return int(m.group(1)) if m else None


def _info(path: Path, data: bytes) -> SegmentInfo:
    try:
        head: Checkpoint | None = read_head(data)
    except FormatError:
        head = None
    seg = None
    if head is not None:
        seg = head.seg if head.seg is not None else (0 if head.size == 0 else None)
    return SegmentInfo(path, seg, _named(path), head, data)


def read_files(paths: Iterable[str | Path]) -> list[SegmentInfo]:
    """The files read and put in log order (by the segment each one's first checkpoint
    states, or its name's number), without checking anything: for display."""

    def key(f: SegmentInfo) -> tuple[int, str]:
        k = f.seg if f.seg is not None else f.named
        return (k if k is not None else -1, str(f.path))

    return sorted((_info(Path(p), Path(p).read_bytes()) for p in paths), key=key)


def verify_files(
    paths: Iterable[str | Path],
    public_keys: Mapping[bytes, Ed25519PublicKey] | Iterable[Ed25519PublicKey],
    *,
    certificates: Iterable[bytes] = (),
) -> tuple[VerifyReport, list[SegmentInfo]]:
    """Verify the segment files of one log, given in any order. Returns the report (with
    ``file`` and ``file_offset`` naming where the first problem is) and the files in the
    order checked. Raises OSError for a file that cannot be read."""
    files = [_info(Path(p), Path(p).read_bytes()) for p in paths]
    extra: list[_Found] = []
    files = _one_log(files, extra)
    files = _in_order(files, extra)
    data = b"".join(f.data for f in files)
    pos = 0
    for f in files:
        f.start, pos = pos, pos + len(f.data)
    parsed = parse_entries(data)
    _count_records(files, parsed)
    extra += _layout(files)
    rep, _ = _verify(parsed, _as_keyset(public_keys), certificates, extra)
    if rep.outcome is not Outcome.OK:
        _place(rep, files, extra, parsed)
    if not files:
        rep.outcome, rep.problem, rep.message = Outcome.TAMPERED, Problem.EMPTY, "no files"
    return rep, files


def _one_log(files: list[SegmentInfo], extra: list[_Found]) -> list[SegmentInfo]:
    """Keep the files of the log most of them belong to; the others are findings."""
    ids = Counter(f.head.log_id for f in files if f.head is not None)
    if len(ids) <= 1:
        return files
    top = max(ids.values())
    # ties: the log of the lowest segment given
    main = min(
        (f for f in files if f.head is not None and ids[f.head.log_id] == top),
        key=lambda f: f.seg if f.seg is not None else 1 << 62,
    ).head
    assert main is not None
    keep = []
    for f in files:
        if f.head is not None and f.head.log_id != main.log_id:
            extra.append(
                _Found(
                    f.head.size,
                    -1,
                    Problem.FOREIGN_LOG,
                    f"{f.path.name} is a segment of another log ({f.head.log_id.hex()}, not "
                    f"{main.log_id.hex()}): swapped in from another log or device",
                    file=str(f.path),
                )
            )
        else:
            keep.append(f)
    return keep


def _in_order(files: list[SegmentInfo], extra: list[_Found]) -> list[SegmentInfo]:
    """By the segment each file holds (its name's number where its start is unreadable);
    a second file for one segment is left out (the same bytes twice: silently)."""

    def key(f: SegmentInfo) -> tuple[int, int, str]:
        k = f.seg if f.seg is not None else f.named
        return (k if k is not None else -1, 0 if f.named == f.seg else 1, str(f.path))

    out: list[SegmentInfo] = []
    for f in sorted(files, key=key):
        k = f.seg if f.seg is not None else f.named
        if (
            out
            and k is not None
            and k == (out[-1].seg if out[-1].seg is not None else out[-1].named)
        ):
            if f.data != out[-1].data:
                first_seq = f.head.size if f.head is not None else 0
                extra.append(
                    _Found(
                        first_seq,
                        -1,
                        Problem.INSERTED,
                        f"{out[-1].path.name} and {f.path.name} both hold segment {k}, with "
                        "different bytes: one of them was replaced",
                        file=str(f.path),
                    )
                )
            continue
        out.append(f)
    return out


def _count_records(files: list[SegmentInfo], parsed: ParsedLog) -> None:
    entries = parsed.entries
    first = files[0].head if files else None
    seq = first.size if first is not None and first.seg is not None else 0
    i = 0
    for f in files:
        end = f.start + len(f.data)
        f.first_seq = seq
        while i < len(entries) and entries[i].offset < end:
            if entries[i].record is not None:
                f.records += 1
                seq += 1
            i += 1


def _layout(files: list[SegmentInfo]) -> list[_Found]:
    """Where consecutive files do not meet as the segments of one log do."""
    found: list[_Found] = []
    for f in files:
        if f.named is not None and f.seg is not None and f.named != f.seg:
            found.append(
                _Found(
                    f.first_seq,
                    -1,
                    Problem.REORDERED,
                    f"{f.path.name} is named for segment {f.named} but holds segment {f.seg}: "
                    "files swapped or renamed",
                    file=str(f.path),
                )
            )
        if f.head is None:
            found.append(
                _Found(
                    f.first_seq,
                    -1,
                    Problem.MALFORMED,
                    f"{f.path.name} does not start with a checkpoint: not a whole segment of "
                    "an audit log (its start was cut off or damaged)",
                    file=str(f.path),
                    offset=f.start,
                )
            )
        elif f.head.seg is None and f.head.size > 0:
            found.append(
                _Found(
                    f.first_seq,
                    -1,
                    Problem.MALFORMED,
                    f"{f.path.name} starts with a checkpoint that opens no segment: its start "
                    "was cut off",
                    file=str(f.path),
                    offset=f.start,
                )
            )
    for a, b in itertools.pairwise(files):
        if a.seg is None or b.seg is None or a.at is None or b.head is None or b.at is None:
            continue
        a_end = a.at + len(a.data)
        end_seq = a.first_seq + a.records
        if b.head.size > end_seq + 1:
            gone = f"records seq {end_seq}..{b.head.size - 1}"
        elif b.head.size == end_seq + 1:
            gone = f"record seq {end_seq}"
        else:
            gone = "no records, only checkpoints"
        if b.seg > a.seg + 1:
            missing = f"{a.seg + 1}" if b.seg == a.seg + 2 else f"{a.seg + 1}..{b.seg - 1}"
            found.append(
                _Found(
                    end_seq,
                    -1,
                    Problem.DELETED,
                    f"segment {missing} missing between {a.path.name} and {b.path.name} (log "
                    f"bytes {a_end}..{b.at}: {gone})",
                    file=str(b.path),
                    offset=b.start,
                )
            )
        elif b.at > a_end:
            found.append(
                _Found(
                    end_seq,
                    -1,
                    Problem.DELETED,
                    f"{a.path.name} is cut short: it ends at log byte {a_end}, but segment "
                    f"{b.seg} ({b.path.name}) starts at byte {b.at}: {b.at - a_end} bytes "
                    f"missing at its end ({gone})",
                    file=str(a.path),
                    offset=a.start + len(a.data),
                )
            )
        elif b.at < a_end:
            found.append(
                _Found(
                    min(end_seq, b.head.size),
                    -1,
                    Problem.INSERTED,
                    f"{a.path.name} holds {a_end - b.at} bytes past log byte {b.at}, where "
                    f"segment {b.seg} ({b.path.name}) starts: added after it was closed",
                    file=str(a.path),
                    offset=a.start + (b.at - a.at),
                )
            )
    return found


def _place(
    rep: VerifyReport, files: list[SegmentInfo], extra: list[_Found], parsed: ParsedLog
) -> None:
    """Name the file (and the byte in it) that holds the first problem."""
    named = next((f for f in extra if f.message == rep.message and f.file is not None), None)
    offset = rep.bad_offset
    if named is not None:
        rep.file = named.file
        holder = next((f for f in files if str(f.path) == named.file), None)
        if holder is not None and named.offset is not None:
            rep.file_offset = named.offset - holder.start
        return
    if offset is None and rep.first_bad is not None and rep.outcome is not Outcome.UNSEALED_TAIL:
        p = rep.first_bad - rep.first_seq  # the record's position among those checked
        recs = [e for e in parsed.entries if e.record is not None]
        if 0 <= p < len(recs):
            offset = recs[p].offset
    holder = None
    if offset is not None:
        holder = next((f for f in reversed(files) if f.start <= offset), None)
    elif rep.outcome is Outcome.UNSEALED_TAIL and files:
        holder = files[-1]
    elif rep.first_bad is not None:
        inside = [f for f in files if f.first_seq <= rep.first_bad]
        holder = inside[-1] if inside else (files[0] if files else None)
    if holder is not None and rep.file is None:
        rep.file = str(holder.path)
    if holder is not None and offset is not None and str(holder.path) == rep.file:
        rep.file_offset = offset - holder.start
