"""The one table of Modbus data types and tables.

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
    """16-bit registers one value occupies in a holding/input table."""
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
        return self.code in "fd"


_F32 = 3.4028234663852886e38
_F64 = 1.7976931348623157e308

TYPES: dict[DataType, TypeSpec] = {
    DataType.BOOL: TypeSpec(
        1, "?", 0, 1, (0, 1), "coil/discrete: one bit; holding/input: register != 0"
    ),
    DataType.INT16: TypeSpec(1, "h", -(2**15), 2**15 - 1, (-1000, 1000), "signed"),
    DataType.UINT16: TypeSpec(1, "H", 0, 2**16 - 1, (0, 1000), "unsigned"),
    DataType.INT32: TypeSpec(2, "i", -(2**31), 2**31 - 1, (-100_000, 100_000), "signed"),
    DataType.UINT32: TypeSpec(2, "I", 0, 2**32 - 1, (0, 100_000), "unsigned"),
    DataType.INT64: TypeSpec(4, "q", -(2**63), 2**63 - 1, (-1e6, 1e6), "signed"),
    DataType.UINT64: TypeSpec(4, "Q", 0, 2**64 - 1, (0, 1e6), "unsigned"),
    DataType.FLOAT32: TypeSpec(2, "f", -_F32, _F32, (-100.0, 100.0), "IEEE 754 single"),
    DataType.FLOAT64: TypeSpec(4, "d", -_F64, _F64, (-100.0, 100.0), "IEEE 754 double"),
}


@dataclass(frozen=True, slots=True)
class TableSpec:
    bits: bool
    """True for the single-bit tables (coil, discrete)."""
    function: int
    """Modbus read function code."""
    unit: str
    """What ``count`` counts, for messages: "regs" or "bits"."""
    note: str


TABLES: dict[Table, TableSpec] = {
    Table.HOLDING: TableSpec(False, 3, "regs", "16-bit read/write registers"),
    Table.INPUT: TableSpec(False, 4, "regs", "16-bit read-only registers"),
    Table.COIL: TableSpec(True, 1, "bits", "read/write bits; type must be bool"),
    Table.DISCRETE: TableSpec(True, 2, "bits", "read-only bits; type must be bool"),
}

# Telegraf/vendor notation for the four orders of a 32-bit value, for error hints.
ORDER_NOTATION: dict[str, tuple[Order, Order]] = {
    "ABCD": (Order.BIG, Order.BIG),
    "CDAB": (Order.BIG, Order.LITTLE),
    "BADC": (Order.LITTLE, Order.BIG),
    "DCBA": (Order.LITTLE, Order.LITTLE),
}


def register_count(table: Table, dtype: DataType) -> int:
    """Registers (or bits, in a bit table) one tag of this type occupies."""
    return 1 if TABLES[table].bits else TYPES[dtype].registers


def type_table_markdown() -> str:
    """The type table as Markdown; the README embeds it and a test keeps them equal."""
    yes_no = ("no", "yes")
    lines = [
        "| type | registers | scale, offset, byte_order | word_order | values |",
        "|---|---|---|---|---|",
    ]
    for dtype, spec in TYPES.items():
        if spec.is_bool:
            values = spec.note
        elif spec.is_float:
            values = f"{spec.note}, ±{spec.hi:.4g}"
        else:
            values = f"{spec.lo}..{spec.hi}"
        lines.append(
            f"| `{dtype.value}` | {spec.registers} | {yes_no[not spec.is_bool]} "
            f"| {yes_no[spec.registers > 1]} | {values} |"
        )
    return "\n".join(lines)
