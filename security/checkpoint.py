"""The audit log's file format: records, the hash chain, the Merkle tree, signed checkpoints.

A log file is a CBOR sequence (RFC 8742) of two kinds of entries, told apart by their
first byte:

* a **record**: a deterministic CBOR map (RFC 8949 section 4.2.1)
  ``{"seq", "boot", "ts_ns", "mono_ns"?, "event", "detail", "prev"}``, where ``prev`` is
  the hash of the record before it (the first record links to the log's genesis hash);
* a **checkpoint**: a COSE_Sign1 (tag 18, made by :func:`security.cose.sign1`) over a CBOR
  map ``{"v", "log", "size", "root", "head", "prev", "boot", "ts_ns", "why", ...}``: the
  number of records so far, the RFC 9162 Merkle tree hash over them, the chain head, and
  the hash of the previous checkpoint, signed with the device key.

Hashes follow RFC 9162 section 2.1.1: a record's hash is ``SHA-256(0x00 || record)``
(the Merkle leaf hash, also the chain link), an inner node ``SHA-256(0x01 || l || r)``.
Everything here is pure: no file I/O, no clock.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from security.cose import CoseError, Signer, peek_kid, sign1, verify1
from security.strictcbor import CborError, strict_loads

__all__ = [
    "CHECKPOINT_AAD",
    "EMPTY_ROOT",
    "FORMAT_VERSION",
    "Checkpoint",
    "Damage",
    "Entry",
    "FormatError",
    "LogState",
    "MerkleFrontier",
    "ParsedLog",
    "Record",
    "SegmentStart",
    "checkpoint_hash",
    "decode_checkpoint_payload",
    "decode_record",
    "encode_record",
    "genesis_head",
    "iter_entries",
    "leaf_hash",
    "merkle_root",
    "node_hash",
    "open_checkpoint",
    "parse_entries",
    "peek_checkpoint",
    "sign_checkpoint",
    "state_at",
]

FORMAT_VERSION = 1
HASH_LEN = 32
LOG_ID_LEN = 16
ZERO_HASH = bytes(HASH_LEN)
# External AAD of checkpoint signatures: a device key also signs telemetry (AAD = topic) and
# key certificates; the distinct AAD keeps a checkpoint from being passed off as either.
# It has no "/", so it can never equal a topic "<prefix>/<gateway>/<kind>".
CHECKPOINT_AAD = b"edgegw audit checkpoint v1"
_GENESIS_DOMAIN = b"edgegw audit genesis v1\x00"
EMPTY_ROOT = hashlib.sha256(b"").digest()  # RFC 9162: the hash of an empty tree
MAX_RECORD_BYTES = 64 * 1024  # a record is an event, not a payload
RECORD_MAX_DEPTH = 16  # record map, detail map, and nested lists/maps in detail values
_COSE_SIGN1_HEAD = 0xD2  # tag 18


class FormatError(ValueError):
    """Bytes that are not a well-formed record, checkpoint or log file."""


def leaf_hash(record: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + record).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def genesis_head(log_id: bytes) -> bytes:
    """The ``prev`` of record 0: binds the chain to one log, so another log's records or a
    segment of them never link into this one."""
    return hashlib.sha256(_GENESIS_DOMAIN + log_id).digest()


def checkpoint_hash(encoded: bytes) -> bytes:
    """What the next checkpoint's ``prev`` holds: SHA-256 over the whole COSE message."""
    return hashlib.sha256(encoded).digest()


class MerkleFrontier:
    """An RFC 9162 Merkle tree kept as its compact range: the roots of the perfect subtrees
    that make up the tree, left to right (one per set bit of the size). O(log n) memory."""

    __slots__ = ("_stack", "size")

    def __init__(self) -> None:
        self.size = 0
        self._stack: list[bytes] = []

    def append(self, leaf: bytes) -> None:
        h, n = leaf, self.size
        while n & 1:  # merge equal-sized subtrees, as a binary counter carries
            h = node_hash(self._stack.pop(), h)
            n >>= 1
        self._stack.append(h)
        self.size += 1

    def root(self) -> bytes:
        if not self._stack:
            return EMPTY_ROOT
        h = self._stack[-1]
        for left in reversed(self._stack[:-1]):
            h = node_hash(left, h)
        return h

    def copy(self) -> MerkleFrontier:
        c = MerkleFrontier()
        c.size, c._stack = self.size, list(self._stack)
        return c

    @property
    def compact(self) -> tuple[bytes, ...]:
        """The compact range: what :meth:`from_compact` takes back."""
        return tuple(self._stack)

    @classmethod
    def from_compact(cls, size: int, compact: Iterable[bytes]) -> MerkleFrontier:
        c = cls()
        c.size, c._stack = size, [bytes(h) for h in compact]
        if len(c._stack) != bin(size).count("1"):
            raise FormatError(f"a compact range of {size} leaves holds {bin(size).count('1')}")
        return c


def merkle_root(leaves: list[bytes]) -> bytes:
    """MTH of RFC 9162 section 2.1.1 by its recursive definition (a reference for tests)."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[0]
    k = 1 << ((n - 1).bit_length() - 1)  # the largest power of two smaller than n
    return node_hash(merkle_root(leaves[:k]), merkle_root(leaves[k:]))


# -- records --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    """One audit record as stored. ``encoded`` is the exact bytes in the file (and what is
    published upstream); ``hash`` is its leaf hash, which the next record's ``prev`` holds."""

    seq: int
    boot: int
    ts_ns: int
    mono_ns: int | None
    event: str
    detail: Mapping[str, Any]
    prev: bytes
    encoded: bytes
    hash: bytes


_SCALARS = (str, bytes, int, float, bool, type(None))


def _check_value(value: Any, where: str) -> None:
    if isinstance(value, _SCALARS):
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_value(v, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if type(k) is not str:
                raise TypeError(f"audit detail {where}: map keys must be str, got {k!r}")
            _check_value(v, f"{where}.{k}")
        return
    raise TypeError(
        f"audit detail {where}: {type(value).__name__} cannot be recorded; use str, bytes, "
        "int, float, bool, None, or lists and str-keyed maps of them"
    )


def encode_record(
    *,
    seq: int,
    boot: int,
    ts_ns: int,
    mono_ns: int | None,
    event: str,
    detail: Mapping[str, Any],
    prev: bytes,
) -> bytes:
    """Deterministic CBOR of a record (canonical: shortest forms, sorted keys)."""
    _check_value(dict(detail), "detail")
    body: dict[str, Any] = {
        "seq": seq,
        "boot": boot,
        "ts_ns": ts_ns,
        "event": event,
        "detail": dict(detail),
        "prev": prev,
    }
    if mono_ns is not None:
        body["mono_ns"] = mono_ns
    data = cbor2.dumps(body, canonical=True)
    if len(data) > MAX_RECORD_BYTES:
        raise ValueError(f"audit record of {len(data)} bytes exceeds {MAX_RECORD_BYTES}")
    return data


_RECORD_KEYS = frozenset({"seq", "boot", "ts_ns", "event", "detail", "prev"})


def _uint(value: Any) -> bool:
    return type(value) is int and 0 <= value < 2**64


def decode_record(data: bytes, obj: Any = None) -> Record:
    """Parse and check one record (``obj``: its already-decoded CBOR, if at hand)."""
    if obj is None:
        try:
            obj = strict_loads(data, max_depth=RECORD_MAX_DEPTH)
        except CborError as exc:
            raise FormatError(f"record is not valid CBOR: {exc}") from None
    if not isinstance(obj, Mapping):
        raise FormatError("record is not a CBOR map")
    keys = set(obj)
    if not keys >= _RECORD_KEYS or keys - _RECORD_KEYS - {"mono_ns"}:
        raise FormatError(f"record has keys {sorted(map(str, keys))}, not the record fields")
    seq, boot, ts_ns, mono = obj["seq"], obj["boot"], obj["ts_ns"], obj.get("mono_ns")
    event, detail, prev = obj["event"], obj["detail"], obj["prev"]
    if not (_uint(seq) and _uint(boot) and _uint(ts_ns) and (mono is None or _uint(mono))):
        raise FormatError("record seq, boot, ts_ns and mono_ns must be unsigned integers")
    if type(event) is not str or not isinstance(detail, Mapping):
        raise FormatError("record event must be text and detail a map")
    if type(prev) is not bytes or len(prev) != HASH_LEN:
        raise FormatError("record prev must be a 32-byte hash")
    return Record(seq, boot, ts_ns, mono, event, detail, prev, data, leaf_hash(data))


# -- checkpoints ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement: "this log had ``size`` records, with this root and head".

    ``encoded`` is the COSE_Sign1 as stored (and published upstream)."""

    log_id: bytes
    size: int
    root: bytes
    head: bytes
    prev: bytes  # checkpoint_hash() of the checkpoint before it; zeros for the first
    boot: int
    ts_ns: int
    why: str  # open | count | interval | close | manual | segment
    origin: str | None
    torn_bytes: int  # bytes of a torn final entry removed when the log was opened
    kid: bytes
    encoded: bytes
    # Only on the first entry of a segment file after the first (why = "segment"): what a
    # reader needs to check the segment without the files before it.
    seg: int | None = None  # the segment's number (1, 2, ...)
    at: int | None = None  # the log byte offset where the segment (this checkpoint) starts
    compact: tuple[bytes, ...] = ()  # the Merkle compact range at ``size`` (RFC 9162)
    certs: tuple[bytes, ...] = ()  # key certificates recorded in the log before it


@dataclass(frozen=True, slots=True)
class SegmentStart:
    """What the checkpoint that opens segment ``seg`` states beyond an ordinary one."""

    seg: int
    at: int
    compact: tuple[bytes, ...]
    certs: tuple[bytes, ...] = ()


def sign_checkpoint(
    signer: Signer,
    *,
    log_id: bytes,
    size: int,
    root: bytes,
    head: bytes,
    prev: bytes,
    boot: int,
    ts_ns: int,
    why: str,
    origin: str | None = None,
    torn_bytes: int = 0,
    segment: SegmentStart | None = None,
) -> Checkpoint:
    payload: dict[str, Any] = {
        "v": FORMAT_VERSION,
        "log": log_id,
        "size": size,
        "root": root,
        "head": head,
        "prev": prev,
        "boot": boot,
        "ts_ns": ts_ns,
        "why": why,
    }
    if origin is not None:
        payload["origin"] = origin
    if torn_bytes:
        payload["torn"] = torn_bytes
    if segment is not None:
        payload["seg"] = segment.seg
        payload["at"] = segment.at
        payload["range"] = list(segment.compact)
        if segment.certs:
            payload["certs"] = list(segment.certs)
    body = cbor2.dumps(payload, canonical=True)
    return decode_checkpoint_payload(body, signer.kid, sign1(body, signer, CHECKPOINT_AAD))


def decode_checkpoint_payload(payload: bytes, kid: bytes, encoded: bytes) -> Checkpoint:
    """Parse a checkpoint payload; the signature must have been checked (or is not needed)."""
    try:
        obj = strict_loads(payload, max_depth=2)
    except CborError as exc:
        raise FormatError(f"checkpoint payload is not valid CBOR: {exc}") from None
    if not isinstance(obj, Mapping) or obj.get("v") != FORMAT_VERSION:
        raise FormatError("checkpoint payload is not a version 1 checkpoint map")
    m: Any = obj  # values are checked one by one below
    log_id, root, head, prev = m.get("log"), m.get("root"), m.get("head"), m.get("prev")
    size, boot, ts_ns, why = m.get("size"), m.get("boot"), m.get("ts_ns"), m.get("why")
    origin, torn = m.get("origin"), m.get("torn", 0)
    if type(log_id) is not bytes or len(log_id) != LOG_ID_LEN:
        raise FormatError("checkpoint log id must be 16 bytes")
    if any(type(h) is not bytes or len(h) != HASH_LEN for h in (root, head, prev)):
        raise FormatError("checkpoint root, head and prev must be 32-byte hashes")
    if not (_uint(size) and _uint(boot) and _uint(ts_ns) and _uint(torn)):
        raise FormatError("checkpoint size, boot, ts_ns and torn must be unsigned integers")
    if type(why) is not str or (origin is not None and type(origin) is not str):
        raise FormatError("checkpoint why and origin must be text")
    seg, at, compact, certs = m.get("seg"), m.get("at"), m.get("range"), m.get("certs", [])
    if seg is None and at is None and compact is None and not certs:
        return Checkpoint(
            log_id, size, root, head, prev, boot, ts_ns, why, origin, torn, kid, encoded
        )
    if not (_uint(seg) and seg >= 1 and _uint(at) and type(compact) is list):
        raise FormatError("a segment checkpoint needs seg >= 1, at and range")
    if len(compact) != bin(size).count("1") or any(
        type(h) is not bytes or len(h) != HASH_LEN for h in compact
    ):
        raise FormatError("a segment checkpoint's range must hold one hash per set bit of size")
    if type(certs) is not list or any(type(c) is not bytes for c in certs):
        raise FormatError("a segment checkpoint's certs must be a list of byte strings")
    return Checkpoint(
        log_id,
        size,
        root,
        head,
        prev,
        boot,
        ts_ns,
        why,
        origin,
        torn,
        kid,
        encoded,
        seg,
        at,
        tuple(compact),
        tuple(certs),
    )


def open_checkpoint(encoded: bytes, keys: Mapping[bytes, Ed25519PublicKey]) -> Checkpoint:
    """Verify a checkpoint's signature against ``keys`` and parse it.

    Raises :class:`security.cose.CoseError` (UnknownKid, BadSignature, MalformedMessage) or
    :class:`FormatError`."""
    v = verify1(encoded, keys, CHECKPOINT_AAD)
    return decode_checkpoint_payload(v.payload, v.kid, encoded)


def peek_checkpoint(encoded: bytes) -> Checkpoint:
    """A checkpoint's content WITHOUT checking its signature: for display, and for the
    writer reopening its own log. Raises FormatError."""
    try:
        kid = peek_kid(encoded)
        payload = cbor2.loads(encoded).value[2]
    except (CoseError, AttributeError, IndexError, TypeError) as exc:
        raise FormatError(f"checkpoint is not a COSE_Sign1: {exc}") from None
    return decode_checkpoint_payload(payload, kid, encoded)


# -- the file -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of a log file: a record (``record`` set) or a checkpoint (``record`` None)."""

    offset: int
    raw: bytes
    record: Record | None


@dataclass(frozen=True, slots=True)
class Damage:
    """Bytes that are not an entry, between entries (or up to the end)."""

    offset: int
    length: int
    records_before: int
    why: str


@dataclass(frozen=True, slots=True)
class ParsedLog:
    entries: list[Entry]
    good_length: int  # bytes up to the end of the last complete entry (or of the file)
    torn: bool  # the file ends inside an entry (a torn write, or a byte-level truncation)
    damage: list[Damage]

    @property
    def malformed_at(self) -> int | None:
        return self.damage[0].offset if self.damage else None

    @property
    def malformed_why(self) -> str:
        return self.damage[0].why if self.damage else ""


def _entry_at(data: bytes, offset: int) -> tuple[Entry, int]:
    """Decode the entry at ``offset``; returns it and the offset after it."""
    fp = io.BytesIO(data)
    fp.seek(offset)
    obj = cbor2.CBORDecoder(fp).decode()
    end = fp.tell()
    raw = data[offset:end]
    if isinstance(obj, cbor2.CBORTag):
        if obj.tag != 18 or raw[0] != _COSE_SIGN1_HEAD:
            raise FormatError(f"CBOR tag {obj.tag} is neither a record nor a checkpoint")
        try:
            peek_kid(raw)  # the COSE_Sign1 structure, so that stray bytes are never one
        except CoseError as exc:
            raise FormatError(f"checkpoint is not a COSE_Sign1: {exc}") from None
        return Entry(offset, raw, None), end
    return Entry(offset, raw, decode_record(raw, obj)), end


def _next_entry(data: bytes, start: int) -> int | None:
    """The first offset after ``start`` where a well-formed entry begins, if any."""
    for off in range(start + 1, len(data)):
        if data[off] != _COSE_SIGN1_HEAD and data[off] >> 5 != 5:  # tag 18 or a map
            continue
        try:
            _entry_at(data, off)
        except Exception:
            continue
        return off
    return None


def parse_entries(data: bytes) -> ParsedLog:
    """Split a log file into entries. Damaged bytes are skipped up to the next well-formed
    entry (and reported), so what follows damage can still be checked; an entry cut off by
    the end of the file, with nothing well-formed after it, is a torn tail."""
    entries: list[Entry] = []
    damage: list[Damage] = []
    off = n = 0
    while off < len(data):
        try:
            entry, end = _entry_at(data, off)
        except Exception as exc:  # cbor2 raises many types on damaged input
            nxt = _next_entry(data, off)
            if nxt is None and isinstance(exc, cbor2.CBORDecodeEOF):
                return ParsedLog(entries, off, True, damage)
            why = str(exc) if isinstance(exc, FormatError) else f"not valid CBOR: {exc}"
            stop = len(data) if nxt is None else nxt
            damage.append(Damage(off, stop - off, n, why))
            off = stop
            continue
        entries.append(entry)
        n += entry.record is not None
        off = end
    return ParsedLog(entries, off, False, damage)


def iter_entries(data: bytes, offset: int = 0) -> Iterator[tuple[int, bytes]]:
    """``(offset, raw)`` of each entry of well-formed log bytes from ``offset``, in one
    linear pass. For a log this process wrote or already checked (the writer's own file up
    to its durable length): anything that is not a complete entry raises FormatError, and
    nothing is searched for past it (that is :func:`parse_entries`' job)."""
    fp = io.BytesIO(data)
    fp.seek(offset)
    decoder = cbor2.CBORDecoder(fp)
    while offset < len(data):
        try:
            decoder.decode()
        except Exception as exc:  # cbor2 raises many types on damaged input
            raise FormatError(f"no complete entry at byte {offset}: {exc}") from None
        end = fp.tell()
        yield offset, data[offset:end]
        offset = end


@dataclass(slots=True)
class LogState:
    """A log's state just before the entry at ``offset``: what a witness needs to check the
    entries from there on without the ones before (``base`` of an audit message).

    ``size`` records so far, the chain ``head`` (the genesis hash before any record),
    ``cp_prev`` the hash of the last checkpoint (zeros before any), and ``frontier`` the
    RFC 9162 compact range over the records' hashes."""

    offset: int
    size: int
    head: bytes
    cp_prev: bytes
    frontier: MerkleFrontier

    @classmethod
    def genesis(cls, log_id: bytes) -> LogState:
        return cls(0, 0, genesis_head(log_id), ZERO_HASH, MerkleFrontier())

    def feed(self, raw: bytes) -> None:
        """Step over one entry, as stored."""
        if raw[:1] == bytes((_COSE_SIGN1_HEAD,)):
            self.cp_prev = checkpoint_hash(raw)
        else:
            self.head = leaf_hash(raw)
            self.frontier.append(self.head)
            self.size += 1
        self.offset += len(raw)

    def base(self) -> list[Any]:
        """``[size, head, cp_prev, [frontier...]]``, as an audit message carries it."""
        return [self.size, self.head, self.cp_prev, list(self.frontier._stack)]

    def copy(self) -> LogState:
        return LogState(self.offset, self.size, self.head, self.cp_prev, self.frontier.copy())

    @classmethod
    def before_segment(cls, cp: Checkpoint) -> LogState:
        """The state just before the checkpoint that opens a segment (``cp.seg`` set),
        from that checkpoint alone. Raises FormatError when its range does not give its
        Merkle root (then the checkpoint vouches for nothing)."""
        if cp.seg is None or cp.at is None:
            raise FormatError("not a segment checkpoint")
        frontier = MerkleFrontier.from_compact(cp.size, cp.compact)
        if frontier.root() != cp.root:
            raise FormatError("the segment checkpoint's range does not give its root")
        return cls(cp.at, cp.size, cp.head, cp.prev, frontier)


def state_at(data: bytes, log_id: bytes, offset: int) -> LogState:
    """The state of the log ``data`` (with id ``log_id``) after its entries that end at or
    before ``offset``. Its ``offset`` is ``offset`` itself when that is an entry boundary,
    else the start of the entry that holds it. Linear; raises FormatError for damage."""
    st = LogState.genesis(log_id)
    for start, raw in iter_entries(data):
        if start + len(raw) > offset:
            break
        st.feed(raw)
    return st


def iter_records(data: bytes) -> Iterator[Record]:
    for e in parse_entries(data).entries:
        if e.record is not None:
            yield e.record
