"""Audit messages made from an audit log file exactly as the wire format describes them,
written here from the format (not with the daemon's publisher), so the witness is tested
against the documented contract."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.wire import encode_payload
from security import DeviceKey, sign1
from security.checkpoint import (
    ZERO_HASH,
    MerkleFrontier,
    checkpoint_hash,
    genesis_head,
    parse_entries,
    peek_checkpoint,
)


@dataclass
class Published:
    offset: int
    body: bytes
    seq: int


def log_id_of(data: bytes) -> bytes:
    return peek_checkpoint(parse_entries(data).entries[0].raw).log_id


def audit_messages(
    data: bytes,
    key: DeviceKey,
    *,
    gw: str = "gw1",
    first_seq: int = 1,
    boot: int = 1,
    offset: int = 0,
    per_message: int = 3,
    reset: dict[str, Any] | None = None,
    prefix: str = "edgegw",
) -> list[Published]:
    """The log's entries from ``offset`` on, ``per_message`` entries per signed message."""
    parsed = parse_entries(data)
    assert not parsed.damage and not parsed.torn
    log_id = log_id_of(data)
    frontier, head, cp_prev, size = MerkleFrontier(), genesis_head(log_id), ZERO_HASH, 0
    topic = f"{prefix}/{gw}/audit"
    out: list[Published] = []
    batch: list[bytes] = []
    base: list[Any] = []
    batch_offset = 0
    seq = first_seq

    def flush() -> None:
        nonlocal batch, seq
        if not batch:
            return
        extra: dict[str, Any] = {
            "log": log_id,
            "offset": batch_offset,
            "base": base,
            "entries": batch,
        }
        if reset is not None and batch_offset == 0:
            extra["reset"] = reset
        p = encode_payload(gw=gw, seq=seq, boot=boot, kind="audit", t_ns=1, **extra)
        out.append(Published(batch_offset, sign1(p, key, topic.encode()), seq))
        seq += 1
        batch = []

    for e in parsed.entries:
        if e.offset >= offset:
            if not batch:
                batch_offset = e.offset
                base = [size, head, cp_prev, list(frontier._stack)]
            batch.append(e.raw)
            if len(batch) == per_message:
                flush()
        if e.record is not None:
            frontier.append(e.record.hash)
            head, size = e.record.hash, size + 1
        else:
            cp_prev = checkpoint_hash(e.raw)
    flush()
    return out
