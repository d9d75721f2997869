"""Where an audit log can be resumed without reading it all: the writer's state just after
its last checkpoint, kept beside the log (``<log>.resume``).

Opening a log used to parse and replay every entry (60,000 records: 0.7 s at each start,
growing forever). With this file an open reads only from the last checkpoint on. The file
is a hint, never trusted: it is used only when the log's bytes up to the end of the
checkpoint it names still have the SHA-256 it names (hashing is ~30 times faster than
parsing and replaying the entries), and that checkpoint says the same log id, size, chain
head and Merkle root. A log that was cut, replaced, or edited anywhere (the gateway must
never seal over tampering done while it was stopped) is read in full as before, which
refuses it.

Written atomically (rename) after each checkpoint, without an fsync: the log is append
only, so an older resume file that survived a power cut still names a checkpoint the log
holds, and one that does not match is ignored.

A log in segments (security/segments.py) has one resume file, beside the log's own path;
it names the live segment (its number and the log offset where it starts), and its
offsets and digest are that segment file's: an open hashes one segment, never the log.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2

from security.checkpoint import LogState, MerkleFrontier

VERSION = 2  # 1: no segments (read as segment 0)


@dataclass(slots=True)
class Resume:
    log_id: bytes
    cp_offset: int  # where the checkpoint starts in the log
    state: LogState  # the log's state just after it (state.offset: where it ends)
    digest: bytes  # SHA-256 of the log's bytes up to state.offset
    certs: list[bytes] = field(default_factory=list)  # key_rotated certificates before it
    seg: int = 0  # the live segment's number; offsets above are inside its file
    at: int = 0  # the log offset where that segment starts


def path_for(log: Path) -> Path:
    return log.with_name(log.name + ".resume")


def save(log: Path, r: Resume) -> None:
    st = r.state
    body = cbor2.dumps(
        [
            VERSION,
            r.log_id,
            r.cp_offset,
            st.offset,
            st.size,
            st.head,
            st.cp_prev,
            st.frontier.size,
            list(st.frontier._stack),
            r.certs,
            r.digest,
            r.seg,
            r.at,
        ]
    )
    dest = path_for(log)
    tmp = dest.with_name(dest.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, body)
    finally:
        os.close(fd)
    os.replace(tmp, dest)


def load(log: Path) -> Resume | None:
    """The resume file beside ``log``, or None when there is none or it is not readable
    (then the log is read in full)."""
    try:
        raw = path_for(log).read_bytes()
        fields = cbor2.loads(raw)
        if fields[0] == 1 and len(fields) == 11:
            fields = [*fields, 0, 0]
        (v, log_id, cp_offset, end, size, head, cp_prev, fsize, stack, certs, digest, seg, at) = (
            fields
        )
        if v not in (1, VERSION) or not (0 <= cp_offset < end and 0 <= size == fsize):
            return None
        if not (type(seg) is int and type(at) is int and seg >= 0 and at >= 0):
            return None
        frontier = MerkleFrontier()
        frontier.size, frontier._stack = fsize, [bytes(h) for h in stack]
        if len(frontier._stack) != bin(fsize).count("1"):
            return None
        state = LogState(end, size, bytes(head), bytes(cp_prev), frontier)
        return Resume(
            bytes(log_id), cp_offset, state, bytes(digest), [bytes(c) for c in certs], seg, at
        )
    except (OSError, ValueError, TypeError, IndexError, KeyError, cbor2.CBORDecodeError):
        return None


def prefix_digest(fd: int, end: int) -> Any:
    """A running SHA-256 of the file's bytes ``[0, end)`` (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    pos = 0
    while pos < end:
        chunk = os.pread(fd, min(1 << 20, end - pos), pos)
        if not chunk:
            break
        h.update(chunk)
        pos += len(chunk)
    return h


def remove(log: Path) -> None:
    with contextlib.suppress(OSError):
        path_for(log).unlink()
