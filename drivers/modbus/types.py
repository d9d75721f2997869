"""The one table of Modbus data types, tables and order notations.

The config validator, the decoder, the simulator and the README all read these tables,
so a type is described in exactly one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class DataType(StrEnum):
    """How the raw bits of a tag are interpreted."""

    BOOL = "bool"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"


class Table(StrEnum):
    """The four Modbus data tables."""

    HOLDING = "holding"
    INPUT = "input"
    COIL = "coil"
    DISCRETE = "discrete"


class Order(StrEnum):
    """Byte order within a register, or word order of a multi-register value."""

    BIG = "big"
    LITTLE = "little"


@dataclass(frozen=True, slots=True)
class TypeSpec:
    """Everything the package knows about one data type."""

    registers: int
    """16-bit registers one value occupies in a holding/input table (0: from ``length``)."""
    code: str
    """``struct`` code of the raw value."""
    lo: int | float
    """Smallest raw value."""
    hi: int | float
    """Largest raw value."""
    demo: tuple[float, float]
    """Raw range the simulator's waveforms sweep: inside ``lo..hi``, readable on a chart."""
    note: str

    @property
    def is_bool(self) -> bool:
        return self.code == "?"

    @property
    def is_float(self) -> bool:
        return self.code in ("f", "d")

    @property
    def is_string(self) -> bool:
        return self.code == "s"

    @property
    def is_number(self) -> bool:
        return not (self.is_bool or self.is_string)


_F32 = 3.4028234663852886e38
_F64 = 1.7976931348623157e308

TYPES: dict[DataType, TypeSpec] = {
    DataType.BOOL: TypeSpec(
        1,
        "?",
        0,
        1,
        (0, 1),
        "coil/discrete: one bit; holding/input: register != 0, or one bit with `bit: 0..15`",
    ),
    DataType.INT16: TypeSpec(1, "h", -(2**15), 2**15 - 1, (-1000, 1000), "signed"),
    DataType.UINT16: TypeSpec(1, "H", 0, 2**16 - 1, (0, 1000), "unsigned"),
    DataType.INT32: TypeSpec(2, "i", -(2**31), 2**31 - 1, (-100_000, 100_000), "signed"),
    DataType.UINT32: TypeSpec(2, "I", 0, 2**32 - 1, (0, 100_000), "unsigned"),
    DataType.INT64: TypeSpec(4, "q", -(2**63), 2**63 - 1, (-1e6, 1e6), "signed"),
    DataType.UINT64: TypeSpec(4, "Q", 0, 2**64 - 1, (0, 1e6), "unsigned"),
    DataType.FLOAT32: TypeSpec(2, "f", -_F32, _F32, (-100.0, 100.0), "IEEE 754 single"),
    DataType.FLOAT64: TypeSpec(4, "d", -_F64, _F64, (-100.0, 100.0), "IEEE 754 double"),
    DataType.STRING: TypeSpec(
        0,
        "s",
        0,
        0,
        (0, 0),
        "ASCII text of `length` characters, 2 per register; cut at the first NUL, "
        "trailing spaces stripped",
    ),
}

MAX_STRING_LENGTH = 250
"""Characters: 125 registers, the most one request can read."""


@dataclass(frozen=True, slots=True)
class TableSpec:
    bits: bool
    """True for the single-bit tables (coil, discrete)."""
    function: int
    """Modbus read function code."""
    unit: str
    """What ``count`` counts, for messages: "regs" or "bits"."""
    prefix: int
    """Leading digit of the table in register-number notation (4 in 40001)."""
    note: str


TABLES: dict[Table, TableSpec] = {
    Table.HOLDING: TableSpec(False, 3, "regs", 4, "16-bit read/write registers"),
    Table.INPUT: TableSpec(False, 4, "regs", 3, "16-bit read-only registers"),
    Table.COIL: TableSpec(True, 1, "bits", 0, "read/write bits; type must be bool"),
    Table.DISCRETE: TableSpec(True, 2, "bits", 1, "read-only bits; type must be bool"),
}

# Vendor notation of byte/word order: the bytes of a value, most significant = A, in the
# order the device sends them. 2 letters for 16-bit values and strings, 4 for 32-bit,
# 4 or 8 for 64-bit values (the 4-letter form then applies to each pair of words).
ORDER_NOTATION: dict[str, tuple[Order, Order]] = {
    "ABCD": (Order.BIG, Order.BIG),
    "CDAB": (Order.BIG, Order.LITTLE),
    "BADC": (Order.LITTLE, Order.BIG),
    "DCBA": (Order.LITTLE, Order.LITTLE),
}
ORDER_NOTATION_16: dict[str, Order] = {"AB": Order.BIG, "BA": Order.LITTLE}
ORDER_NOTATION_64: dict[str, tuple[Order, Order]] = {
    "ABCDEFGH": (Order.BIG, Order.BIG),
    "GHEFCDAB": (Order.BIG, Order.LITTLE),
    "BADCFEHG": (Order.LITTLE, Order.BIG),
    "HGFEDCBA": (Order.LITTLE, Order.LITTLE),
}


def order_name(byte: Order, word: Order, registers: int) -> str:
    """The vendor notation of a resolved order, e.g. ``CDAB``; for messages and tools."""
    if registers <= 1:
        return "AB" if byte is Order.BIG else "BA"
    table = ORDER_NOTATION_64 if registers == 4 else ORDER_NOTATION
    return next(k for k, v in table.items() if v == (byte, word))


def string_registers(length: int) -> int:
    """Registers holding ``length`` characters (2 per register, the last maybe half used)."""
    return (length + 1) // 2


def register_count(table: Table, dtype: DataType, length: int | None = None) -> int:
    """Registers (or bits, in a bit table) one tag of this type occupies."""
    if TABLES[table].bits:
        return 1
    if dtype is DataType.STRING:
        if length is None:
            raise ValueError("a string's register count needs its length")
        return string_registers(length)
    return TYPES[dtype].registers


def type_table_markdown() -> str:
    """The type table as Markdown; the README embeds it and a test keeps them equal."""
    yes_no = ("no", "yes")
    lines = [
        "| type | registers | scale, offset | byte order | word order | values |",
        "|---|---|---|---|---|---|",
    ]
    for dtype, spec in TYPES.items():
        if spec.is_bool or spec.is_string:
            values = spec.note
        elif spec.is_float:
            values = f"{spec.note}, ±{spec.hi:.4g}"
        else:
            values = f"{spec.lo}..{spec.hi}"
        registers = "`length`/2, rounded up" if spec.is_string else str(spec.registers)
        byte = "no" if spec.is_bool else ("AB/BA" if spec.registers <= 1 else "yes")
        lines.append(
            f"| `{dtype.value}` | {registers} | {yes_no[spec.is_number]} "
            f"| {byte} | {yes_no[spec.registers > 1]} | {values} |"
        )
    return "\n".join(lines)


# Device settings' choices (here, not in config.py: the daemon runs without pydantic)
class OnIllegalAddress(StrEnum):
    """What a refused request (Modbus exception 2, or 3 on some devices) of several tags
    does. ``split`` (default): bisect it until every readable tag is read again and the
    refused addresses are isolated, and remember that (a few extra requests once, then a
    plan that avoids them). ``fail``: every tag of the request is bad while it is refused
    (the device map must then avoid unmapped addresses, e.g. with ``max_gap: 0``)."""

    SPLIT = "split"
    FAIL = "fail"


class WriteFunctions(StrEnum):
    """Which Modbus functions write tags. ``single`` (default): 5 for a coil, 6 for a
    one-register value, 16 for wider values, 22 (mask write) for a bit of a register.
    ``multiple``: 15 and 16 always, for devices that implement only those."""

    SINGLE = "single"
    MULTIPLE = "multiple"


class Parity(StrEnum):
    """Serial parity; the Modbus serial line standard's default is even."""

    NONE = "N"
    EVEN = "E"
    ODD = "O"
