"""Decoding whole Modbus responses into readings, and the inverse (for the simulator).

All per-tag decisions are taken once, when the plan is compiled: the driver hands over a
register response's bytes as sent (``pdu.py`` keeps them; a list of register values is
packed into bytes with one ``struct`` call), a byte-swapped copy is made with two slice
assignments if some tag needs it, then each group of tags that share byte/word order
and post-processing is unpacked with one precompiled ``Struct.unpack_from``. The
per-point work left is building the tuple.

Byte and word orders map onto two buffers and a struct endianness: with the registers
packed big-endian, ABCD (big/big) is ``>`` and DCBA (little/little) is ``<``; with each
register's bytes swapped, CDAB (byte big, word little) is ``<`` and BADC is ``>``.

Strings are ``struct`` ``s`` fields of the same buffers (byte order little: the swapped
one), cut at the first NUL and stripped of trailing spaces. Bits of a register
(``type: bool`` with ``bit``) are taken from the register values directly: bit 0 is
the least significant bit of the register as sent (big-endian).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from drivers.contract import Quality, Reading, Value

from .types import TABLES, TYPES, DataType, Order

if TYPE_CHECKING:
    from .config import ModbusDevice, ModbusTag

_GOOD = int(Quality.GOOD)

# (byte_order, word_order) -> (use the byte-swapped buffer?, struct endianness)
_ORDERS: dict[tuple[Order, Order], tuple[bool, str]] = {
    (Order.BIG, Order.BIG): (False, ">"),
    (Order.LITTLE, Order.LITTLE): (False, "<"),
    (Order.BIG, Order.LITTLE): (True, "<"),
    (Order.LITTLE, Order.BIG): (True, ">"),
}

# Post-processing of a raw value.
RAW, BOOL, LINEAR, STRING, BIT = 0, 1, 2, 3, 4


def _text(raw: bytes) -> str:
    """Device text: ASCII up to the first NUL, trailing spaces stripped."""
    return raw.split(b"\0", 1)[0].decode("ascii", "replace").rstrip(" ")


class DecodeError(ValueError):
    """A response does not fit the request it answers (e.g. too few registers)."""


@dataclass(frozen=True, slots=True)
class Layout:
    """How one tag sits in a response, with the device defaults resolved."""

    name: str
    offset: int
    """Registers (or bits) from the start of the request."""
    registers: int
    swapped: bool
    fmt: str
    """Endianness + struct code, e.g. ``">f"``."""
    kind: int
    scale: float
    shift: float
    bit: int = 0


def layout(tag: ModbusTag, device: ModbusDevice, name: str, offset: int) -> Layout:
    """Resolve a tag's decoding once: orders, struct code, post-processing."""
    spec = TYPES[tag.type]
    if TABLES[tag.table].bits:
        return Layout(name, offset, 1, False, "", BOOL, 1.0, 0.0)
    if tag.bit is not None:
        return Layout(name, offset, 1, False, ">H", BIT, 1.0, 0.0, tag.bit)
    byte = tag.byte_order or device.byte_order
    # A single register has no word order: treat it as equal to the byte order.
    word = (tag.word_order or device.word_order) if spec.registers > 1 else byte
    swapped, endian = _ORDERS[byte, word]
    registers = tag.registers
    if spec.is_bool:
        kind, code = BOOL, "H"
    elif spec.is_string:  # bytes in sending order: only the byte order matters
        assert tag.length is not None
        kind, code = STRING, f"{tag.length}s" + ("x" if tag.length % 2 else "")
        swapped, endian = byte is Order.LITTLE, ">"
    else:
        kind = RAW if tag.scale == 1 and tag.offset == 0 else LINEAR
        code = spec.code
    return Layout(name, offset, registers, swapped, endian + code, kind, tag.scale, tag.offset)


@dataclass(frozen=True, slots=True)
class _Group:
    """Tags decoded by one struct call: same buffer, endianness and post-processing."""

    swapped: bool
    unpack: Any  # Struct.unpack_from, bound
    names: tuple[str, ...]
    kind: int
    scales: tuple[float, ...]
    shifts: tuple[float, ...]


def _groups(layouts: Sequence[Layout]) -> tuple[_Group, ...]:
    # Tags may overlap (a uint32 and its high word as uint16): a struct format reads
    # strictly forward, so overlapping tags go to separate groups of the same key.
    buckets: dict[tuple[bool, str, int], list[list[Layout]]] = {}
    for lay in sorted(layouts, key=lambda x: x.offset):
        if lay.kind == BIT:
            continue
        chains = buckets.setdefault((lay.swapped, lay.fmt[0], lay.kind), [])
        for chain in chains:
            last = chain[-1]
            if last.offset + last.registers <= lay.offset:
                chain.append(lay)
                break
        else:
            chains.append([lay])
    groups = []
    for (swapped, endian, kind), chains in buckets.items():
        for chain in chains:
            fmt, pos = endian, 0
            for lay in chain:
                gap = 2 * (lay.offset - pos)
                fmt += (f"{gap}x" if gap else "") + lay.fmt[1:]
                pos = lay.offset + lay.registers
            groups.append(
                _Group(
                    swapped,
                    struct.Struct(fmt).unpack_from,
                    tuple(x.name for x in chain),
                    kind,
                    tuple(x.scale for x in chain),
                    tuple(x.shift for x in chain),
                )
            )
    return tuple(groups)


@dataclass(frozen=True, slots=True)
class RegisterDecoder:
    """Turns the registers of one holding/input response into readings."""

    count: int
    groups: tuple[_Group, ...]
    pack_be: Any  # Struct.pack of count big-endian uint16
    swapped: bool
    """Some tag needs the registers' bytes swapped."""
    bits: tuple[tuple[str, int, int], ...] = ()
    """(name, byte index in the response, mask) of the bit-in-register tags."""

    @classmethod
    def compile(cls, count: int, layouts: Sequence[Layout]) -> RegisterDecoder:
        groups = _groups(layouts)
        # bit b of register o: bits 8..15 are in the register's first (high) byte
        bits = tuple(
            (x.name, 2 * x.offset + (x.bit < 8), 1 << (x.bit % 8)) for x in layouts if x.kind == BIT
        )
        return cls(
            count,
            groups,
            struct.Struct(f">{count}H").pack,
            any(g.swapped for g in groups),
            bits,
        )

    def decode(self, registers: Sequence[int], ts: int) -> list[Reading]:
        """Readings from register values."""
        if len(registers) != self.count:
            raise DecodeError(f"got {len(registers)} registers, expected {self.count}")
        return self.decode_bytes(self.pack_be(*registers), ts)

    def decode_bytes(self, be: bytes, ts: int) -> list[Reading]:
        """Readings from the response's bytes as sent (big-endian registers)."""
        if len(be) != 2 * self.count:
            raise DecodeError(f"got {len(be) // 2} registers, expected {self.count}")
        sw: bytes | bytearray = be
        if self.swapped:
            sw = bytearray(be)
            sw[0::2], sw[1::2] = be[1::2], be[0::2]
        out: list[Reading] = []
        for g in self.groups:
            values = g.unpack(sw if g.swapped else be)
            if g.kind == RAW:
                out += [(n, ts, v, _GOOD) for n, v in zip(g.names, values, strict=True)]
            elif g.kind == LINEAR:
                out += [
                    (n, ts, v * s + o, _GOOD)
                    for n, v, s, o in zip(g.names, values, g.scales, g.shifts, strict=True)
                ]
            elif g.kind == STRING:
                out += [(n, ts, _text(v), _GOOD) for n, v in zip(g.names, values, strict=True)]
            else:
                out += [(n, ts, v != 0, _GOOD) for n, v in zip(g.names, values, strict=True)]
        if self.bits:
            out += [(n, ts, bool(be[i] & m), _GOOD) for n, i, m in self.bits]
        return out


@dataclass(frozen=True, slots=True)
class BitDecoder:
    """Turns the bits of one coil/discrete response into readings."""

    count: int
    names: tuple[str, ...]
    indices: tuple[int, ...]

    @classmethod
    def compile(cls, count: int, layouts: Sequence[Layout]) -> BitDecoder:
        return cls(count, tuple(x.name for x in layouts), tuple(x.offset for x in layouts))

    def decode(self, bits: Sequence[int], ts: int) -> list[Reading]:
        # pymodbus pads bits to a multiple of 8; fewer than asked is a bad response.
        if len(bits) < self.count:
            raise DecodeError(f"got {len(bits)} bits, expected {self.count}")
        names, indices = self.names, self.indices
        return [(n, ts, bool(bits[i]), _GOOD) for n, i in zip(names, indices, strict=True)]


def decode_value(tag: ModbusTag, device: ModbusDevice, values: Sequence[int]) -> Value:
    """Decode one tag from its own registers (or bit) with the driver's code path."""
    lay = layout(tag, device, tag.name, 0)
    decoder: RegisterDecoder | BitDecoder
    if TABLES[tag.table].bits:
        decoder = BitDecoder.compile(1, [lay])
    else:
        decoder = RegisterDecoder.compile(lay.registers, [lay])
    value: Value = decoder.decode(values, 0)[0][2]
    return value


def to_raw(tag: ModbusTag, value: Value) -> Value:
    """Engineering value -> raw value (inverse of scale/offset); ValueError if out of range."""
    spec = TYPES[tag.type]
    if spec.is_bool:
        return bool(value)
    if spec.is_string != isinstance(value, str) or value is None:
        raise ValueError(f"{value!r} is not a value of {tag.type.value} for {tag.name!r}")
    if isinstance(value, str):
        return value
    raw: int | float = value
    if tag.scale != 1 or tag.offset != 0:
        raw = (value - tag.offset) / tag.scale
    if spec.is_float:
        return float(raw)
    raw = round(raw)
    if not spec.lo <= raw <= spec.hi:
        raise ValueError(f"{value!r} is outside the range of {tag.type.value} for {tag.name!r}")
    return raw


def encode_raw(tag: ModbusTag, device: ModbusDevice, raw: Value) -> list[int] | list[bool]:
    """Raw value -> the registers (or bit) a device would hold. For a bit of a register,
    the register with only that bit (set or not): merge it with the others' bits."""
    if TABLES[tag.table].bits:
        return [bool(raw)]
    if tag.type is DataType.BOOL:
        return [(1 << (tag.bit or 0) if tag.bit is not None else 1) if raw else 0]
    lay = layout(tag, device, tag.name, 0)
    if lay.kind == STRING:
        if not isinstance(raw, str) or not raw.isascii():
            raise ValueError(f"{raw!r} is not ASCII text for {tag.name!r}")
        data = raw.encode("ascii")[: tag.length].ljust(2 * lay.registers, b"\0")
        return list(struct.unpack(("<" if lay.swapped else ">") + "H" * lay.registers, data))
    try:
        data = struct.pack(lay.fmt, raw)
    except (struct.error, OverflowError) as exc:
        raise ValueError(f"{raw!r} does not fit {tag.type.value} for {tag.name!r}") from exc
    return list(struct.unpack(("<" if lay.swapped else ">") + "H" * lay.registers, data))


def encode_value(tag: ModbusTag, device: ModbusDevice, value: Value) -> list[int] | list[bool]:
    """Engineering value -> registers (or bit): the inverse of the decoder."""
    return encode_raw(tag, device, to_raw(tag, value))
