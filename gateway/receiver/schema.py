"""The signed payload, checked field by field against docs/wire-format.md.

Runs only after the signature verified. A genuine key that signs something outside this
schema is news (a bug, or a key in the wrong hands): the message is ``malformed`` and a
security event, never stored. Decoding is strict (no CBOR tags, bounded depth, text keys),
so even a hostile signed payload costs time linear in its size.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, NamedTuple

from security.strictcbor import CborError, strict_loads

VERSIONS = (1, 2)  # payload versions accepted (docs/wire-format.md); the gateway sends 2
PAYLOAD_VERSION = 2
KINDS = frozenset({"telemetry", "event", "notice", "audit", "command_result"})
GATEWAY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
U64 = 2**64
I63 = 2**63  # seq and boot are stored as signed 64-bit integers: 0 <= x < 2**63
MAX_TAG = 512  # characters in a reading's tag name
MAX_TEXT = 1024  # characters in a short text field (reason, model, ...)
MAX_PREFIX = 64  # characters of a version-2 tag set's common prefix
DROP_REASONS = frozenset(
    {
        "outbox_full",
        "disk_full",
        "corrupt_at_rest",
        "unclean_stop",
        "refused_outbox_full",
        "refused_disk_full",
        "refused_by_broker",
        "seal_failed",
    }
)
HASH = 32
LOG_ID = 16
MAX_FRONTIER = 64  # an RFC 9162 compact range has at most one hash per bit of the size
MAX_ENTRY = 64 * 1024 + 1024  # an audit record is at most 64 KiB; a checkpoint is small

_COMMON = frozenset({"v", "gw", "seq", "boot", "kind", "t"})
_FIELDS = {
    "telemetry": _COMMON | {"r"},
    "event": _COMMON | {"event"},
    "notice": _COMMON | {"notice", "drops"},
    "audit": _COMMON | {"log", "offset", "base", "entries", "reset"},
    "command_result": _COMMON | {"result"},
}
_REQUIRED = {
    "telemetry": _COMMON | {"r"},
    "event": _COMMON | {"event"},
    "notice": _COMMON | {"notice", "drops"},
    "audit": _COMMON | {"log", "offset", "base", "entries"},
    "command_result": _COMMON | {"result"},
}
# Version 2 differs in telemetry only: readings in columns (tag sets and blocks).
_FIELDS_V2 = {**_FIELDS, "telemetry": _COMMON | {"tags", "b"}}
_REQUIRED_V2 = {**_REQUIRED, "telemetry": _COMMON | {"tags", "b"}}
_EVENT_FIELDS = frozenset({"model", "kind", "ts_ns", "score", "peak", "window_end_ns", "inputs"})
_DROP_FIELDS = frozenset({"first_seq", "last_seq", "messages", "points", "bytes", "reason", "at"})
_VALUE_TYPES = frozenset({bool, int, float, str, bytes, type(None)})
_NONE = type(None)


class PayloadError(ValueError):
    """A payload that does not have the documented shape; the message says which field."""


@dataclass(frozen=True, slots=True)
class Drop:
    first_seq: int | None
    last_seq: int | None
    messages: int
    points: int
    bytes: int
    reason: str
    at_ns: int


@dataclass(frozen=True, slots=True)
class AuditBatch:
    """Entries of the gateway's audit log, as published (see docs/wire-format.md)."""

    log: bytes
    offset: int  # byte offset of the first entry in the device's log file
    base_size: int  # records before the first entry
    base_head: bytes  # the chain head before it
    base_cp_prev: bytes  # hash of the last checkpoint before it (zeros if none)
    base_frontier: list[bytes]  # RFC 9162 compact range over the records before it
    entries: list[bytes]
    reset_old_log: bytes | None = None
    reset_reason: str | None = None  # set when this log replaces another

    @property
    def is_reset(self) -> bool:
        return self.reset_reason is not None


class Block(NamedTuple):
    """One batch of a version-2 message, checked, kept in columns (the stores write it
    without a Python object per reading). A column with one value for every reading is
    that value (``ts``, ``quality``, ``reason``); ``server_ts`` is None when absent."""

    names: tuple[str, ...]  # the tag of each reading
    ts: int | list[int]
    values: list[Any]
    quality: int | list[int]
    reason: str | list[str | None] | None
    server_ts: list[int | None] | None
    width: int  # elements of the block on the wire (4..6): what readings() gives
    vtype: type | None = None  # the type of every value, when they all have one

    def readings(self) -> Iterator[tuple[Any, ...]]:
        """Its readings as version 1 has them: ``(tag, ts, value, quality[, reason[,
        server_ts]])``."""
        n = len(self.names)
        cols: list[Any] = [
            self.names,
            repeat(self.ts, n) if type(self.ts) is int else self.ts,
            self.values,
            repeat(self.quality, n) if type(self.quality) is int else self.quality,
        ]
        if self.width > 4:
            r = self.reason
            cols.append(r if type(r) is list else repeat(r, n))
        if self.width > 5:
            cols.append(self.server_ts)
        return zip(*cols, strict=False)  # lengths checked; one value for all: repeat()


@dataclass(frozen=True, slots=True)
class Payload:
    gw: str
    seq: int
    boot: int
    kind: str
    t_ns: int
    rows: list[Sequence[Any]] = field(default_factory=list)
    """Version 1: ``[tag, ts, value, quality, reason?, server_ts?]`` each, as sent."""
    blocks: list[Block] = field(default_factory=list)
    """Version 2: the readings in columns, one block per batch, in message order."""
    points: int = 0
    """Readings in the message."""
    version: int = 1
    event: dict[str, Any] | None = None
    drops: list[Drop] = field(default_factory=list)
    audit: AuditBatch | None = None
    command_result: dict[str, Any] | None = None
    """kind "command_result": the gateway's answer to a signed command (its ``result``)."""
    body: dict[str, Any] = field(repr=False, default_factory=dict)
    """The whole map, as decoded."""

    @property
    def tags(self) -> list[str]:
        """The distinct tag names of the readings, in order of first appearance."""
        if self.blocks:
            return list(dict.fromkeys([t for b in self.blocks for t in b.names]))
        return list(dict.fromkeys([r[0] for r in self.rows]))

    @property
    def readings(self) -> list[Sequence[Any]]:
        """Every reading, ``[tag, ts, value, quality, reason?, server_ts?]`` (lists from
        version 1, tuples from version 2), in message order. Version 2 makes them here,
        one object per reading: the hot path (the stores) reads ``blocks`` instead."""
        if not self.blocks:
            return self.rows
        out: list[Sequence[Any]] = []
        for b in self.blocks:
            out += b.readings()
        return out


def _uint(v: Any, limit: int = U64) -> bool:
    return type(v) is int and 0 <= v < limit


def _text(v: Any, limit: int = MAX_TEXT) -> bool:
    return type(v) is str and 0 < len(v) <= limit


def _hash(v: Any, size: int = HASH) -> bool:
    return type(v) is bytes and len(v) == size


def decode(data: bytes) -> Payload:
    """Decode and check a verified payload; raises PayloadError naming the field."""
    try:
        m = strict_loads(data, max_depth=6)
    except CborError as exc:
        raise PayloadError(f"payload is not strict CBOR: {exc}") from None
    if type(m) is not dict:
        raise PayloadError("payload is not a CBOR map")
    v = m.get("v")
    if type(v) is not int or v not in VERSIONS:
        shown = v if type(v) is int else type(v).__name__
        raise PayloadError(f"v: unsupported payload version ({shown}); accepted: 1, 2")
    kind = m.get("kind")
    if kind not in KINDS:
        raise PayloadError("kind: not one of " + ", ".join(sorted(KINDS)))
    keys = set(m)
    if missing := (_REQUIRED if v == 1 else _REQUIRED_V2)[kind] - keys:
        raise PayloadError(f"lacks field(s) {', '.join(sorted(missing))}")
    if extra := keys - (_FIELDS if v == 1 else _FIELDS_V2)[kind]:
        shown = ", ".join(sorted(repr(k)[:40] for k in extra)[:5])
        raise PayloadError(f"unknown field(s) for kind {kind}: {shown}")
    gw, seq, boot, t = m["gw"], m["seq"], m["boot"], m["t"]
    if type(gw) is not str or not GATEWAY_ID.fullmatch(gw):
        raise PayloadError("gw: not a gateway id")
    if not _uint(seq, I63):
        raise PayloadError("seq: must be an integer 0 <= seq < 2**63")
    if not _uint(boot, I63):
        raise PayloadError("boot: must be an integer 0 <= boot < 2**63")
    if not _uint(t):
        raise PayloadError("t: must be a uint64 (ns since the epoch)")
    if kind == "telemetry":
        if v == 1:
            r = m["r"]
            _check_readings(r)
            return Payload(gw, seq, boot, kind, t, rows=r, points=len(r), version=1, body=m)
        blocks, points = _columns(m["tags"], m["b"], len(data))
        return Payload(gw, seq, boot, kind, t, blocks=blocks, points=points, version=2, body=m)
    if kind == "event":
        return Payload(gw, seq, boot, kind, t, event=_event(m["event"]), version=v, body=m)
    if kind == "notice":
        if m["notice"] != "data_dropped":
            raise PayloadError("notice: must be 'data_dropped'")
        return Payload(gw, seq, boot, kind, t, drops=_drops(m["drops"], seq), version=v, body=m)
    if kind == "command_result":
        return Payload(
            gw, seq, boot, kind, t, command_result=_result(m["result"]), version=v, body=m
        )
    return Payload(gw, seq, boot, kind, t, audit=_audit(m), version=v, body=m)


def _check_readings(r: Any) -> None:
    if type(r) is not list:
        raise PayloadError("r: must be an array of readings")
    # One cheap test per reading (this runs for every point); the slow checker below only
    # runs to name what is wrong. Strict CBOR has no bignums: ints are within +-2**64.
    types, lo = _VALUE_TYPES, -I63
    for x in r:
        if (
            type(x) is not list
            or not 4 <= len(x) <= 6
            or type(x[0]) is not str
            or type(x[1]) is not int
            or x[1] < 0
            or type(x[3]) is not int
            or not 0 <= x[3] <= 4
            or type(x[2]) not in types
            or (type(x[2]) is int and x[2] < lo)
            or not 0 < len(x[0]) <= MAX_TAG
            or (len(x) > 4 and not _extras_ok(x))
        ):
            _explain_reading(r.index(x), x)


def _extras_ok(x: list[Any]) -> bool:
    reason = x[4]
    if reason is not None and not _text(reason):
        return False
    return len(x) < 6 or x[5] is None or _uint(x[5])


def _explain_reading(i: int, x: Any) -> None:
    if type(x) is not list or not 4 <= len(x) <= 6:
        raise PayloadError(f"r[{i}]: a reading is an array of 4 to 6 elements")
    tag, ts, value, q = x[0], x[1], x[2], x[3]
    if type(tag) is not str or not 0 < len(tag) <= MAX_TAG:
        raise PayloadError(f"r[{i}].tag: must be text of 1..{MAX_TAG} characters")
    if type(ts) is not int or not 0 <= ts < U64:
        raise PayloadError(f"r[{i}].ts: must be a uint64")
    tv = type(value)
    if tv not in _VALUE_TYPES:
        raise PayloadError(f"r[{i}].value: {tv.__name__} is not a reading value")
    if tv is int and not -I63 <= value < U64:
        raise PayloadError(f"r[{i}].value: integer outside int64/uint64")
    if type(q) is not int or not 0 <= q <= 4:
        raise PayloadError(f"r[{i}].quality: must be 0..4")
    if len(x) > 4 and x[4] is not None and not _text(x[4]):
        raise PayloadError(f"r[{i}].reason: must be text or null")
    raise PayloadError(f"r[{i}].server_ts: must be a uint64 or null")


def _columns(sets: Any, blocks: Any, size: int) -> tuple[list[Block], int]:
    """Version 2: check the tag sets and blocks; the blocks stay in columns. Checks are
    per block with C-level passes over each column (``map``, ``min``, ``count``); what a
    block costs is linear in its bytes, and nothing is made per reading."""
    if type(sets) is not list:
        raise PayloadError("tags: must be an array of tag sets")
    if type(blocks) is not list:
        raise PayloadError("b: must be an array of blocks")
    names: list[tuple[str, ...]] = []
    chars = 0
    cache = _names_cache
    for i, ts in enumerate(sets):
        if type(ts) is not list or len(ts) != 2 or type(ts[0]) is not str:
            raise PayloadError(f"tags[{i}]: a tag set is [prefix, [names]]")
        prefix, rest = ts
        try:
            known = cache.get((prefix, tuple(rest))) if type(rest) is list else None
        except TypeError:  # a name that is not even hashable: refused below
            known = None
        full, n = known if known is not None else _tag_set(i, prefix, rest)
        chars += n
        names.append(full)
    if chars > 64 * size:  # the prefixes cannot make the names much larger than the message
        raise PayloadError("tags: the tag names expand to more than 64 characters per byte")
    used = [False] * len(names)
    out: list[Block] = []
    points = 0
    for i, b in enumerate(blocks):
        if type(b) is not list or not 4 <= len(b) <= 6:
            raise PayloadError(
                f"b[{i}]: a block is [set, ts, values, quality, reason?, server_ts?]"
            )
        k, ts, values, q = b[0], b[1], b[2], b[3]
        if type(k) is not int or not 0 <= k < len(names):
            raise PayloadError(f"b[{i}].set: not an index into tags (0..{len(names) - 1})")
        used[k] = True
        tags = names[k]
        n = len(tags)
        if type(values) is not list or len(values) != n:
            raise PayloadError(
                f"b[{i}].values: must be an array of {n} values, one per tag of its set"
            )
        vtype = _check_values(i, values)
        width = len(b)
        out.append(
            Block(
                tags,
                ts if type(ts) is int and 0 <= ts < U64 else _column(i, "ts", ts, n, U64),
                values,
                q if type(q) is int and 0 <= q < 5 else _column(i, "quality", q, n, 5),
                _reasons(i, b[4], n) if width > 4 else None,
                _server_ts(i, b[5], n) if width > 5 else None,
                width,
                vtype,
            )
        )
        points += n
    if not all(used):
        raise PayloadError(f"tags[{used.index(False)}]: a tag set no block reads")
    return out, points


_NAMES_BUDGET = 4_000_000  # characters of names the cache holds at most (then it starts over)
_names_cache: dict[tuple[str, tuple[str, ...]], tuple[tuple[str, ...], int]] = {}
_names_chars = 0


def _tag_set(i: int, prefix: str, rest: Any) -> tuple[tuple[str, ...], int]:
    """Check a tag set not seen before; its full names and what they count against the
    message's size. Cached: a gateway sends the same sets in every message (and the
    stores key their series ids by the names' tuple)."""
    global _names_chars
    if len(prefix) > MAX_PREFIX:
        raise PayloadError(f"tags[{i}].prefix: more than {MAX_PREFIX} characters")
    if type(rest) is not list or not rest or set(map(type, rest)) != {str}:
        raise PayloadError(f"tags[{i}].names: must be a non-empty array of text")
    lens = list(map(len, rest))
    if min(lens) + len(prefix) < 1 or max(lens) + len(prefix) > MAX_TAG:
        raise PayloadError(
            f"tags[{i}].names: a tag name (prefix + name) is 1..{MAX_TAG} characters"
        )
    chars = len(prefix) * len(rest) + sum(lens)
    full = tuple([prefix + n for n in rest]) if prefix else tuple(rest)
    size = chars + sum(lens)  # the key's names and the full names
    if _names_chars + size > _NAMES_BUDGET:
        _names_cache.clear()
        _names_chars = 0
    if size <= _NAMES_BUDGET // 16:
        _names_cache[(prefix, tuple(rest))] = (full, chars)
        _names_chars += size
    return full, chars


def _check_values(i: int, values: list[Any]) -> type | None:
    """Checks the values; returns their type when they all have one (a device read)."""
    types = set(map(type, values))
    if not types <= _VALUE_TYPES:
        bad = sorted(t.__name__ for t in types - _VALUE_TYPES)[0]
        raise PayloadError(f"b[{i}].values: {bad} is not a reading value")
    if int in types and min([x for x in values if type(x) is int]) < -I63:
        raise PayloadError(f"b[{i}].values: integer outside int64/uint64")
    return types.pop() if len(types) == 1 else None


def _column(i: int, name: str, x: Any, n: int, limit: int) -> Any:
    """One uint below ``limit`` for every reading, or an array of ``n`` of them."""
    if type(x) is int:
        if not 0 <= x < limit:
            raise PayloadError(f"b[{i}].{name}: must be an integer 0..{limit - 1}")
        return x
    if (
        type(x) is not list
        or len(x) != n
        or set(map(type, x)) != {int}
        or min(x) < 0
        or max(x) >= limit
    ):
        raise PayloadError(f"b[{i}].{name}: must be an integer 0..{limit - 1} or an array of {n}")
    return x


def _reasons(i: int, x: Any, n: int) -> Any:
    if x is None or (type(x) is str and _text(x)):
        return x
    if type(x) is list and len(x) == n and set(map(type, x)) <= {str, _NONE}:
        texts = [r for r in x if r is not None]
        if not texts or (min(map(len, texts)) > 0 and max(map(len, texts)) <= MAX_TEXT):
            return x
    raise PayloadError(
        f"b[{i}].reason: must be text of 1..{MAX_TEXT} characters, null, or an array of {n}"
    )


def _server_ts(i: int, x: Any, n: int) -> Any:
    if type(x) is list and len(x) == n and set(map(type, x)) <= {int, _NONE}:
        ints = [t for t in x if t is not None]
        if not ints or min(ints) >= 0:
            return x
    raise PayloadError(f"b[{i}].server_ts: must be an array of {n} uint64 or null")


def _event(e: Any) -> dict[str, Any]:
    if type(e) is not dict or set(e) != _EVENT_FIELDS:
        raise PayloadError("event: must be a map of " + ", ".join(sorted(_EVENT_FIELDS)))
    if not _text(e["model"]) or e["kind"] not in ("start", "end"):
        raise PayloadError("event: model must be text and kind 'start' or 'end'")
    if not (_uint(e["ts_ns"]) and _uint(e["window_end_ns"])):
        raise PayloadError("event: ts_ns and window_end_ns must be uint64")
    if type(e["score"]) not in (float, int) or type(e["peak"]) not in (float, int):
        raise PayloadError("event: score and peak must be numbers")
    inputs = e["inputs"]
    if type(inputs) is not list or not all(_text(x, MAX_TAG) for x in inputs):
        raise PayloadError("event.inputs: must be an array of tag names")
    return e


def _drops(drops: Any, seq: int) -> list[Drop]:
    if type(drops) is not list or not drops:
        raise PayloadError("drops: must be a non-empty array")
    out: list[Drop] = []
    for i, d in enumerate(drops):
        if type(d) is not dict or set(d) != _DROP_FIELDS:
            raise PayloadError(f"drops[{i}]: must be a map of " + ", ".join(sorted(_DROP_FIELDS)))
        lo, hi = d["first_seq"], d["last_seq"]
        if (lo is None) != (hi is None):
            raise PayloadError(f"drops[{i}]: first_seq and last_seq are both set or both null")
        if lo is not None and not (_uint(lo, I63) and _uint(hi, I63) and 1 <= lo <= hi < seq):
            # A gateway can only drop seqs it allocated before it sealed this notice.
            raise PayloadError(f"drops[{i}]: seq range must satisfy 1 <= first <= last < {seq}")
        if not all(_uint(d[k], I63) for k in ("messages", "points", "bytes", "at")):
            raise PayloadError(f"drops[{i}]: messages, points, bytes and at must be uints")
        if d["reason"] not in DROP_REASONS:
            raise PayloadError(f"drops[{i}].reason: not a documented reason")
        out.append(Drop(lo, hi, d["messages"], d["points"], d["bytes"], d["reason"], d["at"]))
    return out


def _audit(m: dict[str, Any]) -> AuditBatch:
    log, offset, base, entries = m["log"], m["offset"], m["base"], m["entries"]
    if not _hash(log, LOG_ID):
        raise PayloadError("log: must be a 16-byte log id")
    if not _uint(offset, I63):
        raise PayloadError("offset: must be a uint")
    if (
        type(base) is not list
        or len(base) != 4
        or not _uint(base[0], I63)
        or not _hash(base[1])
        or not _hash(base[2])
        or type(base[3]) is not list
        or len(base[3]) > MAX_FRONTIER
        or not all(_hash(h) for h in base[3])
    ):
        raise PayloadError("base: must be [size, head, cp_prev, [frontier hashes]]")
    if (
        type(entries) is not list
        or not entries
        or not all(type(e) is bytes and 0 < len(e) <= MAX_ENTRY for e in entries)
    ):
        raise PayloadError("entries: must be a non-empty array of byte strings")
    old: bytes | None = None
    reason: str | None = None
    if "reset" in m:
        r = m["reset"]
        if (
            type(r) is not dict
            or set(r) != {"old_log", "reason"}
            or not (r["old_log"] is None or _hash(r["old_log"], LOG_ID))
            or not _text(r["reason"])
        ):
            raise PayloadError("reset: must be {old_log: 16 bytes or null, reason: text}")
        if offset != 0:
            raise PayloadError("reset: only the first message of a log (offset 0) carries it")
        old, reason = r["old_log"], r["reason"]
    return AuditBatch(log, offset, base[0], base[1], base[2], base[3], entries, old, reason)


_RESULT_FIELDS = frozenset(
    {
        "id",
        "digest",
        "kid",
        "op",
        "outcome",
        "reason",
        "detail",
        "tag",
        "value",
        "before",
        "after",
        "version",
        "received",
        "done",
        "again",
    }
)
COMMAND_OUTCOMES = frozenset({"done", "refused", "failed", "rolled_back"})
_SHORT = 128  # reason codes, command ids


def _opt(v: Any, ok: Any) -> bool:
    return v is None or ok(v)


def _result(r: Any) -> dict[str, Any]:
    """The ``result`` of a command_result (docs/wire-format.md, "Commands")."""
    if type(r) is not dict or set(r) != _RESULT_FIELDS:
        raise PayloadError("result: must be a map of " + ", ".join(sorted(_RESULT_FIELDS)))
    if r["outcome"] not in COMMAND_OUTCOMES:
        raise PayloadError("result.outcome: not one of " + ", ".join(sorted(COMMAND_OUTCOMES)))
    if not _hash(r["digest"]):
        raise PayloadError("result.digest: must be 32 bytes")
    if not _opt(r["kid"], lambda v: _hash(v, 16)):
        raise PayloadError("result.kid: must be 16 bytes or null")
    if not _opt(r["op"], lambda v: v in ("write", "config")):
        raise PayloadError("result.op: must be 'write', 'config' or null")
    for k in ("id", "reason"):
        if not _opt(r[k], lambda v: _text(v, _SHORT)):
            raise PayloadError(f"result.{k}: must be short text or null")
    if not _opt(r["detail"], lambda v: type(v) is str and len(v) <= 4 * MAX_TEXT):
        raise PayloadError("result.detail: must be text or null")
    if not _opt(r["tag"], lambda v: _text(v, MAX_TAG)):
        raise PayloadError("result.tag: must be a tag name or null")
    for k in ("value", "before", "after"):
        v = r[k]
        if type(v) not in _VALUE_TYPES or (type(v) is int and not -I63 <= v < U64):
            raise PayloadError(f"result.{k}: not a reading value")
        if type(v) in (str, bytes) and len(v) > 4 * MAX_TEXT:
            raise PayloadError(f"result.{k}: too long")
    if not _opt(r["version"], lambda v: _uint(v, I63)):
        raise PayloadError("result.version: must be a uint or null")
    if not (_uint(r["received"]) and _uint(r["done"])):
        raise PayloadError("result.received and result.done: must be uint64 (ns)")
    if type(r["again"]) is not bool:
        raise PayloadError("result.again: must be a bool")
    return r
