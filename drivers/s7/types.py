"""The one table of S7 data types, size letters and memory areas.

The address parser, the config validator, the decoder, the simulator and the README all
read these tables, so a type or an area is described in exactly one place. No snap7
import: the gateway loads this with every config.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class DataType(StrEnum):
    """How the bytes of a tag are interpreted (S7 names; all big-endian in the PLC)."""

    BOOL = "BOOL"
    BYTE = "BYTE"
    WORD = "WORD"
    DWORD = "DWORD"
    INT = "INT"
    DINT = "DINT"
    REAL = "REAL"
    LREAL = "LREAL"
    STRING = "STRING"


class Area(StrEnum):
    """The memory areas a tag can live in."""

    DB = "DB"
    M = "M"
    I = "I"  # noqa: E741 - the S7 name of the input area
    Q = "Q"


@dataclass(frozen=True, slots=True)
class TypeSpec:
    """Everything the package knows about one data type."""

    size: int
    """Bytes one value occupies; 0 for STRING, whose size is 2 + its length."""
    code: str
    """``struct`` code of the raw value ("" for BOOL and STRING, decoded by hand)."""
    letters: str
    """Size letters of an address that may hold this type (``DBD`` -> "D")."""
    lo: int | float
    hi: int | float
    demo: tuple[float, float]
    """Raw range the simulator's waveforms sweep."""
    note: str

    @property
    def numeric(self) -> bool:
        """Scale and offset apply."""
        return self.code != ""

    @property
    def is_float(self) -> bool:
        return self.code in ("f", "d")


_F32 = 3.4028234663852886e38
_F64 = 1.7976931348623157e308

TYPES: dict[DataType, TypeSpec] = {
    DataType.BOOL: TypeSpec(1, "", "X", 0, 1, (0, 1), "one bit of a byte"),
    DataType.BYTE: TypeSpec(1, "B", "B", 0, 255, (0, 200), "unsigned 8 bits"),
    DataType.WORD: TypeSpec(2, "H", "W", 0, 65535, (0, 1000), "unsigned 16 bits"),
    DataType.DWORD: TypeSpec(4, "I", "D", 0, 2**32 - 1, (0, 100_000), "unsigned 32 bits"),
    DataType.INT: TypeSpec(2, "h", "W", -(2**15), 2**15 - 1, (-1000, 1000), "signed 16 bits"),
    DataType.DINT: TypeSpec(
        4, "i", "D", -(2**31), 2**31 - 1, (-100_000, 100_000), "signed 32 bits"
    ),
    DataType.REAL: TypeSpec(4, "f", "D", -_F32, _F32, (-100.0, 100.0), "IEEE 754 single"),
    DataType.LREAL: TypeSpec(8, "d", "B", -_F64, _F64, (-100.0, 100.0), "IEEE 754 double"),
    DataType.STRING: TypeSpec(
        0, "", "B", 0, 254, (0, 0), "max-length byte, actual-length byte, then the characters"
    ),
}

STRING_MAX = 254
"""Longest S7 STRING (characters); it then occupies 256 bytes."""


@dataclass(frozen=True, slots=True)
class LetterSpec:
    """A size letter of an address (``X``, ``B``, ``W``, ``D``)."""

    default: DataType
    width: str
    """What the letter reads, for messages."""


LETTERS: dict[str, LetterSpec] = {
    "X": LetterSpec(DataType.BOOL, "a bit"),
    "B": LetterSpec(DataType.BYTE, "a byte"),
    "W": LetterSpec(DataType.WORD, "a word (2 bytes)"),
    "D": LetterSpec(DataType.DWORD, "a double word (4 bytes)"),
}


@dataclass(frozen=True, slots=True)
class AreaSpec:
    code: int
    """S7 protocol area code in a read request."""
    mnemonics: tuple[str, ...]
    """Prefixes accepted in an address: international first, then German."""
    note: str


AREAS: dict[Area, AreaSpec] = {
    Area.DB: AreaSpec(0x84, ("DB",), "data blocks; non-optimized access (S7-1200/1500)"),
    Area.M: AreaSpec(0x83, ("M",), "bit memory (Merker)"),
    Area.I: AreaSpec(0x81, ("I", "E"), "process image of the inputs (German: E)"),
    Area.Q: AreaSpec(0x82, ("Q", "A"), "process image of the outputs (German: A)"),
}

MNEMONICS: dict[str, Area] = {m: area for area, spec in AREAS.items() for m in spec.mnemonics}

MAX_BYTE = 65535
"""Highest byte offset: non-optimized DBs and the I/Q/M areas end at 64 KiB."""


# Names other tools use for S7 types, for a "did you mean" hint.
TYPE_ALIASES: dict[str, str] = {
    "FLOAT": "REAL",
    "FLOAT32": "REAL",
    "SINGLE": "REAL",
    "DOUBLE": "LREAL",
    "FLOAT64": "LREAL",
    "INT16": "INT",
    "INT32": "DINT",
    "UINT8": "BYTE",
    "UINT16": "WORD",
    "UINT32": "DWORD",
    "BIT": "BOOL",
    "BOOLEAN": "BOOL",
    "STR": "STRING",
}
UNSUPPORTED = ("SINT", "USINT", "UINT", "UDINT", "LINT", "ULINT", "LWORD", "CHAR", "WSTRING")


def parse_type(value: Any) -> DataType:
    """A type name, case-insensitive; ValueError naming the accepted ones and a hint."""
    if isinstance(value, DataType):
        return value
    text = str(value).strip().upper()
    if text in DataType.__members__:
        return DataType[text]
    accepted = ", ".join(t.value for t in DataType)
    message = f"unknown type {value!r}; accepted: {accepted}"
    if text in TYPE_ALIASES:
        message += f" (S7 calls it {TYPE_ALIASES[text]})"
    elif text in UNSUPPORTED:
        message += f" ({text} is an S7 type this driver does not decode yet)"
    else:
        close = difflib.get_close_matches(text, [t.value for t in DataType], n=2)
        if close:
            message += f" (did you mean {' or '.join(close)}?)"
    raise ValueError(message)


def type_size(dtype: DataType, length: int | None = None) -> int:
    """Bytes one value of this type occupies (STRING: 2 + length)."""
    if dtype is DataType.STRING:
        return 2 + (length or 0)
    return TYPES[dtype].size


def types_for_letter(letter: str) -> tuple[DataType, ...]:
    return tuple(t for t, spec in TYPES.items() if letter in spec.letters)


def type_table_markdown() -> str:
    """The type table as Markdown; the README embeds it and a test keeps them equal."""
    lines = [
        "| type | bytes | address letter | scale, offset | values |",
        "|---|---|---|---|---|",
    ]
    for dtype, spec in TYPES.items():
        if dtype is DataType.STRING:
            size, values = "2 + length", f"{spec.note}; length 1..{STRING_MAX}"
        elif dtype is DataType.BOOL:
            size, values = "1 bit", spec.note
        elif spec.is_float:
            size, values = str(spec.size), f"{spec.note}, ±{spec.hi:.4g}"
        else:
            size, values = str(spec.size), f"{spec.lo}..{spec.hi}"
        letters = ", ".join(spec.letters)
        scale = "yes" if spec.numeric else "no"
        lines.append(f"| `{dtype.value}` | {size} | {letters} | {scale} | {values} |")
    return "\n".join(lines)
