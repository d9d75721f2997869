"""Cells of vendor register maps, as vendors write them: the column names, data types,
register notations and access marks found in exported spreadsheets, each turned into
tag fields (pure; ``csvmap.py`` reads the file).

Every table here is documented in the README (generated, kept in sync by a test).
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from .notation import parse_register as parse_register_number
from .notation import register_number
from .types import ORDER_NOTATION, ORDER_NOTATION_16, ORDER_NOTATION_64, DataType, Table

__all__ = [
    "COLUMN_ALIASES",
    "TYPE_ALIASES",
    "parse_access",
    "parse_address",
    "parse_register",
    "parse_type",
    "slugify",
]

# Header as vendors write it (normalised: lower case, runs of non-alphanumerics -> "_")
# -> our column.
COLUMN_ALIASES: dict[str, str] = {
    "tag": "name",
    "tag_name": "name",
    "point": "name",
    "point_name": "name",
    "signal": "name",
    "variable": "name",
    "parameter": "name",
    "addr": "address",
    "modbus_address": "address",
    "offset_address": "address",
    "reg": "register",
    "register_number": "register",
    "register_address": "register",
    "modbus_register": "register",
    "start_register": "register",
    "registers": "register",
    "function": "table",
    "function_code": "table",
    "fc": "table",
    "area": "table",
    "register_type": "table",
    "object_type": "table",
    "data_type": "type",
    "datatype": "type",
    "format": "type",
    "data_format": "type",
    "value_type": "type",
    "byte_order": "order",
    "word_order": "order",
    "endianness": "order",
    "endian": "order",
    "swap": "order",
    "factor": "scale",
    "multiplier": "scale",
    "gain": "scale",
    "scaling": "scale",
    "resolution": "scale",
    "bias": "offset",
    "units": "unit",
    "eng_unit": "unit",
    "engineering_unit": "unit",
    "uom": "unit",
    "len": "length",
    "size": "length",
    "characters": "length",
    "chars": "length",
    "bit_number": "bit",
    "bit_index": "bit",
    "poll_interval_ms": "poll_ms",
    "poll_interval": "poll_ms",
    "interval_ms": "poll_ms",
    "scan_rate": "poll_ms",
    "desc": "description",
    "comment": "description",
    "comments": "description",
    "remark": "description",
    "remarks": "description",
    "read_write": "access",
    "rw": "access",
    "permission": "access",
}

# Data type words vendors use (lower case) -> our type.
TYPE_ALIASES: dict[str, DataType] = {
    **{t.value: t for t in DataType},
    "float": DataType.FLOAT32,
    "real": DataType.FLOAT32,
    "single": DataType.FLOAT32,
    "f32": DataType.FLOAT32,
    "ieee754": DataType.FLOAT32,
    "double": DataType.FLOAT64,
    "lreal": DataType.FLOAT64,
    "f64": DataType.FLOAT64,
    "int": DataType.INT16,
    "short": DataType.INT16,
    "integer": DataType.INT16,
    "s16": DataType.INT16,
    "i16": DataType.INT16,
    "signed": DataType.INT16,
    "word": DataType.UINT16,
    "uint": DataType.UINT16,
    "ushort": DataType.UINT16,
    "u16": DataType.UINT16,
    "unsigned": DataType.UINT16,
    "dint": DataType.INT32,
    "long": DataType.INT32,
    "s32": DataType.INT32,
    "i32": DataType.INT32,
    "dword": DataType.UINT32,
    "udint": DataType.UINT32,
    "ulong": DataType.UINT32,
    "u32": DataType.UINT32,
    "lint": DataType.INT64,
    "s64": DataType.INT64,
    "i64": DataType.INT64,
    "ulint": DataType.UINT64,
    "qword": DataType.UINT64,
    "u64": DataType.UINT64,
    "boolean": DataType.BOOL,
    "bit": DataType.BOOL,
    "binary": DataType.BOOL,
    "str": DataType.STRING,
    "ascii": DataType.STRING,
    "char": DataType.STRING,
    "text": DataType.STRING,
}

_ORDERS = {*ORDER_NOTATION, *ORDER_NOTATION_16, *ORDER_NOTATION_64}
_TOKENS = re.compile(r"[^A-Za-z0-9]+")
_MODICON = re.compile(r"^([0134])[xX](\d{1,6})$")
_MODICON_TABLE = {"0": Table.COIL, "1": Table.DISCRETE, "3": Table.INPUT, "4": Table.HOLDING}
_RANGE = re.compile(r"^\s*(\S+?)\s*(?:-|\.\.|–|to)\s*(\S+)\s*$", re.IGNORECASE)
_TAG_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")


def parse_type(text: str) -> dict[str, Any]:
    """``FLOAT`` -> float32; ``UINT32 CDAB`` -> uint32 + order; ``STRING(16)`` -> string of
    16 characters. ValueError lists what is accepted."""
    tokens = [t for t in _TOKENS.split(text.strip()) if t]
    if not tokens:
        raise ValueError("empty type")
    word = tokens[0].lower()
    dtype = TYPE_ALIASES.get(word)
    if dtype is None:
        m = re.fullmatch(r"([a-z]+)(\d+)", word)  # STRING16, CHAR20
        if m and TYPE_ALIASES.get(m.group(1)) is DataType.STRING:
            dtype, tokens = DataType.STRING, [m.group(1), m.group(2), *tokens[1:]]
    if dtype is None:
        known = ", ".join(t.value for t in DataType)
        close = difflib.get_close_matches(word, list(TYPE_ALIASES), n=2)
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        raise ValueError(
            f"unknown type {text.strip()!r}{hint}; accepted: {known}, or a vendor word such "
            "as FLOAT, REAL, DOUBLE, INT, WORD, DINT, DWORD, STRING(16) (see the README)"
        )
    out: dict[str, Any] = {"type": dtype.value}
    for token in tokens[1:]:
        if token.isdigit() and dtype is DataType.STRING and "length" not in out:
            out["length"] = int(token)
        elif token.upper() in _ORDERS and "order" not in out:
            out["order"] = token.upper()
        else:
            raise ValueError(
                f"type {text.strip()!r}: {token!r} is neither an order (AB, ABCD, CDAB, ...) "
                "nor a string length"
            )
    return out


def _number(text: str, what: str) -> int:
    t = text.strip().replace("_", "")
    try:
        return int(t, 16) if t.lower().startswith("0x") else int(t, 10)
    except ValueError:
        raise ValueError(
            f"{text.strip()!r} is not {what}; accepted: decimal, 0x hex, 4x00001-style"
        ) from None


def _range(text: str) -> tuple[str, str | None]:
    m = _RANGE.match(text)
    return (m.group(1), m.group(2)) if m else (text.strip(), None)


def parse_address(text: str) -> dict[str, Any]:
    """The ``address`` column: 0-based, decimal or ``0x`` hex; ``4x00001`` notation (table
    and 1-based number); a range ``16-17`` gives its first address and its size."""
    first, last = _range(text)
    out = _one_address(first, "an address")
    if last is not None:
        end = _one_address(last, "an address")
        out["_span"] = _span(out, end, text)
    return out


def _one_address(text: str, what: str) -> dict[str, Any]:
    m = _MODICON.match(text.strip())
    if m and m.group(1) != "0":  # 0x is hex in an address column
        number = int(m.group(2))
        if number < 1:
            raise ValueError(f"{text.strip()!r}: register numbers start at 1")
        return {"table": _MODICON_TABLE[m.group(1)].value, "address": number - 1}
    return {"address": _number(text, what)}


def parse_register(text: str) -> dict[str, Any]:
    """The ``register`` column: ``40001``/``400001`` as manuals print them (kept as
    written), ``4x00001``/``0x00001`` Modicon notation (``0x`` with 5 or 6 digits; with
    fewer, ``0x0010``, it is a hex address), or a range ``40001-40002``."""
    first, last = _range(text)
    out = _one_register(first)
    if last is not None:
        end = _one_register(last)
        out["_span"] = _span(_resolved(out), _resolved(end), text)
    return out


def _one_register(text: str) -> dict[str, Any]:
    t = text.strip()
    m = _MODICON.match(t)
    # 0x is Modicon (a coil) with 5 or 6 digits (0x00003), hex otherwise (0x0010)
    if m and (m.group(1) != "0" or len(m.group(2)) >= 5):
        number = int(m.group(2))
        if number < 1:
            raise ValueError(f"{t!r}: register numbers start at 1")
        table = _MODICON_TABLE[m.group(1)]
        return {"register": register_number(table, number - 1)}
    if t.lower().startswith("0x"):
        return {"address": _number(t, "a register")}
    return {"register": t}


def _resolved(fields: dict[str, Any]) -> dict[str, Any]:
    """Table and address of a ``register`` value (for ranges)."""
    if "register" not in fields:
        return fields
    table, address = parse_register_number(fields["register"])
    return {"table": table.value, "address": address}


def _span(first: dict[str, Any], last: dict[str, Any], text: str) -> int:
    if first.get("table") != last.get("table") or last["address"] < first["address"]:
        raise ValueError(f"range {text.strip()!r} does not go upwards within one table")
    return int(last["address"] - first["address"] + 1)


_READ = {"r", "ro", "read", "read_only", "readonly", "input", "get"}
_READ_WRITE = {"rw", "r_w", "w_r", "read_write", "readwrite", "all", "r_w_"}
_WRITE_ONLY = {"w", "wo", "write", "write_only", "writeonly", "set", "command"}


def parse_access(text: str) -> bool:
    """True when the gateway can read it (R, RO, R/W, ...); False for write-only (W, WO)."""
    word = "_".join(t for t in _TOKENS.split(text.strip().lower()) if t)
    if word in _READ or word in _READ_WRITE:
        return True
    if word in _WRITE_ONLY:
        return False
    raise ValueError(f"unknown access {text.strip()!r}; accepted: R, RO, R/W, RW, W, WO")


def slugify(name: str) -> str:
    """A tag name the gateway accepts: ``Active Power (L1)`` -> ``active_power_l1``."""
    slug = re.sub(r"[^a-z0-9_.:-]+", "_", name.strip().lower()).strip("_")
    return slug or "tag"


def valid_name(name: str) -> bool:
    return bool(_TAG_NAME.match(name))
