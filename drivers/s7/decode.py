"""Decoding whole byte ranges into readings, and the inverse (for the simulator).

All per-tag decisions are taken once, when the plan is compiled. The numbers of a range
are unpacked by one precompiled big-endian ``Struct.unpack_from`` per group of like tags,
straight out of the response PDU (no slicing); bits are a byte index and a mask; strings
are sliced. The per-point work left is building the tuple.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from drivers.contract import Quality, Reading

from .types import TYPES, DataType

if TYPE_CHECKING:
    from .config import S7Tag

__all__ = ["Field", "RangeDecoder", "decode_value", "encode_raw", "encode_value", "field_of"]

_GOOD = int(Quality.GOOD)
_BAD_CONFIG = int(Quality.BAD_CONFIG)
ENCODING = "latin-1"
"""Characters of an S7 STRING: one byte each; latin-1 maps every byte and never fails."""

# Post-processing of a raw number.
RAW, LINEAR = 0, 1


@dataclass(frozen=True, slots=True)
class Field:
    """How one tag sits in a byte range, resolved once."""

    name: str
    """Full name ``"<device>/<tag>"``."""
    offset: int
    """Bytes from the start of the range."""
    size: int
    dtype: DataType
    bit: int | None
    length: int | None
    scale: float
    shift: float


def field_of(tag: S7Tag, name: str, offset: int) -> Field:
    return Field(
        name,
        offset,
        tag.size,
        tag.data_type,
        tag.location.bit,
        tag.length,
        tag.scale,
        tag.offset,
    )


@dataclass(frozen=True, slots=True)
class _Group:
    """Numbers decoded by one struct call: same post-processing, no overlaps."""

    start: int
    unpack: Any  # Struct.unpack_from, bound
    names: tuple[str, ...]
    kind: int
    scales: tuple[float, ...]
    shifts: tuple[float, ...]


def _groups(fields: Sequence[Field]) -> tuple[_Group, ...]:
    # Tags may overlap (a DWORD and its high WORD): a struct format reads strictly
    # forward, so overlapping tags go to separate chains of the same kind.
    chains: dict[int, list[list[Field]]] = {}
    for f in sorted(fields, key=lambda x: x.offset):
        kind = RAW if f.scale == 1 and f.shift == 0 else LINEAR
        for chain in chains.setdefault(kind, []):
            if chain[-1].offset + chain[-1].size <= f.offset:
                chain.append(f)
                break
        else:
            chains[kind].append([f])
    groups = []
    for kind, kind_chains in chains.items():
        for chain in kind_chains:
            fmt, pos = ">", chain[0].offset
            for f in chain:
                gap = f.offset - pos
                fmt += (f"{gap}x" if gap else "") + TYPES[f.dtype].code
                pos = f.offset + f.size
            groups.append(
                _Group(
                    chain[0].offset,
                    struct.Struct(fmt).unpack_from,
                    tuple(f.name for f in chain),
                    kind,
                    tuple(f.scale for f in chain),
                    tuple(f.shift for f in chain),
                )
            )
    return tuple(groups)


@dataclass(frozen=True, slots=True)
class RangeDecoder:
    """Turns the bytes of one range (area, DB, start, size) into readings."""

    size: int
    groups: tuple[_Group, ...]
    bools: tuple[tuple[str, int, int], ...]
    """(name, byte offset, bit mask) of each BOOL."""
    strings: tuple[tuple[str, int, int], ...]
    """(name, byte offset, declared length) of each STRING."""

    @classmethod
    def compile(cls, size: int, fields: Sequence[Field]) -> RangeDecoder:
        numbers = [f for f in fields if TYPES[f.dtype].numeric]
        bools = tuple(
            (f.name, f.offset, 1 << (f.bit or 0)) for f in fields if f.dtype is DataType.BOOL
        )
        strings = tuple(
            (f.name, f.offset, f.length or 0) for f in fields if f.dtype is DataType.STRING
        )
        return cls(size, _groups(numbers), bools, strings)

    def decode(self, buf: bytes, base: int, ts: int) -> list[Reading]:
        """Readings of the range whose first byte is ``buf[base]``."""
        out: list[Reading] = []
        for g in self.groups:
            values = g.unpack(buf, base + g.start)
            if g.kind == RAW:
                out += [(n, ts, v, _GOOD) for n, v in zip(g.names, values, strict=True)]
            else:
                out += [
                    (n, ts, v * s + o, _GOOD)
                    for n, v, s, o in zip(g.names, values, g.scales, g.shifts, strict=True)
                ]
        if self.bools:
            out += [(n, ts, buf[base + o] & m != 0, _GOOD) for n, o, m in self.bools]
        for n, o, cap in self.strings:
            p = base + o
            actual = buf[p + 1]
            if actual > cap:  # not a string of this length: wrong address or length
                out.append((n, ts, None, _BAD_CONFIG, _string_reason(cap, buf[p], actual)))
            else:
                out.append((n, ts, buf[p + 2 : p + 2 + actual].decode(ENCODING), _GOOD))
        return out


def _string_reason(cap: int, max_byte: int, actual: int) -> str:
    return (
        f"STRING header says {actual} characters (max-length byte {max_byte}) but the tag's "
        f"length is {cap}: check the tag's address and length"
    )


def decode_value(tag: S7Tag, data: bytes) -> Any:
    """Decode one tag from its own bytes with the driver's code path."""
    reading = RangeDecoder.compile(tag.size, [field_of(tag, tag.name, 0)]).decode(data, 0, 0)[0]
    if reading[3] != _GOOD:
        raise ValueError(reading[4])
    return reading[2]


def to_raw(tag: S7Tag, value: bool | int | float | str) -> bool | int | float | str:
    """Engineering value -> raw value (inverse of scale/offset); ValueError if out of range."""
    spec = TYPES[tag.data_type]
    if tag.data_type is DataType.BOOL:
        return bool(value)
    if tag.data_type is DataType.STRING:
        return str(value)
    if isinstance(value, str):
        raise ValueError(f"{value!r} is not a number, for {tag.name!r}")
    raw: int | float = value
    if tag.scale != 1 or tag.offset != 0:
        raw = (value - tag.offset) / tag.scale
    if spec.is_float:
        return float(raw)
    raw = round(raw)
    if not spec.lo <= raw <= spec.hi:
        raise ValueError(f"{value!r} is outside the range of {tag.data_type} for {tag.name!r}")
    return raw


def encode_raw(tag: S7Tag, raw: bool | int | float | str) -> bytes:
    """Raw value -> the bytes the PLC holds (a BOOL: its byte with only its bit set)."""
    dtype = tag.data_type
    if dtype is DataType.BOOL:
        return bytes([(1 << (tag.location.bit or 0)) if raw else 0])
    if dtype is DataType.STRING:
        cap = tag.length or 0
        text = str(raw).encode(ENCODING, errors="replace")[:cap]
        return bytes([cap, len(text)]) + text.ljust(cap, b"\0")
    try:
        return struct.pack(">" + TYPES[dtype].code, raw)
    except (struct.error, OverflowError) as exc:
        raise ValueError(f"{raw!r} does not fit {dtype} for {tag.name!r}") from exc


def encode_value(tag: S7Tag, value: bool | int | float | str) -> bytes:
    """Engineering value -> bytes: the inverse of the decoder."""
    return encode_raw(tag, to_raw(tag, value))
