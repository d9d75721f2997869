"""Register maps from spreadsheets: a CSV file -> a validated device -> a YAML device file.

Engineers keep register maps in spreadsheets. One row per tag, a header row naming the
columns (any order, case and spaces ignored, ``,`` ``;`` or tab separated, UTF-8 with
or without BOM). Vendors' own words are met halfway (``csvcells.py``): column aliases
(``Data Type``, ``Register``, ``Access``), type words (``FLOAT``, ``UINT32 CDAB``,
``STRING(16)``), hex and ``4x00001`` addresses, ranges (``40001-40002``). Empty cells
take the defaults; rows that are empty or whose first cell starts with ``#`` are
skipped, and so are columns whose header starts with ``#`` (notes) and write-only rows.
Every problem of every row is reported, as ``FILE:LINE: column: problem``.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import io
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from .config import ModbusTag, validate_device
from .csvcells import (
    COLUMN_ALIASES,
    TYPE_ALIASES,
    parse_access,
    parse_address,
    parse_register,
    parse_type,
    slugify,
    valid_name,
)
from .types import MAX_STRING_LENGTH, TYPES, DataType

__all__ = ["COLUMNS", "CsvProblem", "RegisterMap", "device_yaml", "read_register_map"]

# column -> (tag field, parser, documentation). The README's table is generated from it.
COLUMNS: dict[str, tuple[str, str, str]] = {
    "name": ("name", "text", "tag name, unique: letters, digits and _ . : - (required)"),
    "address": (
        "address",
        "int",
        "0-based address 0..65535, decimal or hex (`0x0010`); or give `register`",
    ),
    "register": (
        "register",
        "text",
        "register number as in manuals: 40001 or 400001 (also 30001, 10001, 00001), or "
        "`4x00001`/`3x`/`1x`/`0x`; a range `40001-40002` must match the type's size",
    ),
    "table": ("table", "text", "holding (default), input, coil, discrete; implied by register"),
    "type": (
        "type",
        "text",
        "bool, int16, uint16 (default), int32, uint32, int64, uint64, float32, float64, string",
    ),
    "order": ("order", "text", "AB/BA (16-bit, string), ABCD/CDAB/BADC/DCBA (32/64-bit)"),
    "scale": ("scale", "float", "value = raw * scale + offset (default 1)"),
    "offset": ("offset", "float", "added after scaling (default 0)"),
    "unit": ("unit", "text", "engineering unit, e.g. kWh"),
    "length": ("length", "int", f"string length in characters, 1..{MAX_STRING_LENGTH}"),
    "bit": ("bit", "int", "bit 0..15 of a holding/input register, with type bool"),
    "poll_ms": ("poll_interval_ms", "int", "this tag's poll interval, ms (default: device's)"),
    "description": ("description", "text", "free text"),
    "access": ("", "access", "R, RO, R/W, RW: read; W, WO (write-only): the row is skipped"),
}
_BY_FIELD = {field: column for column, (field, _, _) in COLUMNS.items() if field}
_BY_FIELD |= {"byte_order": "order", "word_order": "order", "register_number": "register"}
_TAG = TypeAdapter(ModbusTag)


def columns_markdown() -> str:
    """The column table for the README (a test keeps them equal)."""
    aliases: dict[str, list[str]] = {}
    for alias, column in COLUMN_ALIASES.items():
        aliases.setdefault(column, []).append(alias)
    lines = ["| column | meaning | also accepted |", "|---|---|---|"]
    lines += [
        f"| `{c}` | {doc} | {', '.join(f'`{a}`' for a in aliases.get(c, [])) or '-'} |"
        for c, (_, _, doc) in COLUMNS.items()
    ]
    return "\n".join(lines)


def types_markdown() -> str:
    """The type words accepted in the ``type`` column, for the README (kept equal)."""
    words: dict[DataType, list[str]] = {}
    for word, dtype in TYPE_ALIASES.items():
        if word != dtype.value:
            words.setdefault(dtype, []).append(word.upper())
    lines = ["| type | also accepted |", "|---|---|"]
    lines += [f"| `{t.value}` | {', '.join(words.get(t, [])) or '-'} |" for t in DataType]
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class CsvProblem:
    """One bad cell (or row, or header) of a CSV file."""

    file: str
    line: int
    column: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.column}: {self.message}"


@dataclass(slots=True)
class RegisterMap:
    """Tag entries read from a CSV file, as written there (not yet resolved)."""

    file: str
    tags: list[dict[str, Any]]
    lines: list[int]
    """The line number of each entry in ``tags``."""
    problems: list[CsvProblem]
    skipped: list[CsvProblem] = dataclasses.field(default_factory=list)
    """Rows left out on purpose (write-only registers), to say so."""
    names: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    """The name of every row that gives one (line), bad rows included, so a duplicate
    name is reported in the same run as the rows' other problems."""
    slugify: bool = False
    """Turn names the gateway does not accept into ones it does."""


def _header(cell: str) -> str:
    text = cell.strip()
    if text.startswith("#"):
        return text
    name = re.sub(r"[^a-z0-9#]+", "_", text.lower()).strip("_")
    return COLUMN_ALIASES.get(name, name)


def _cell(kind: str, text: str) -> Any:
    if kind == "int":
        try:
            return int(text.replace("_", ""), 10)
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
    if kind == "float":
        try:
            return float(text.replace(",", ".") if text.count(",") == 1 else text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
    return text


def read_register_map(
    path: str | Path, text: str | None = None, *, slugify: bool = False
) -> RegisterMap:
    """Read a CSV register map; ``problems`` lists every bad header, cell and row.
    ``slugify``: names with spaces or other characters become accepted names."""
    file = str(path)
    if text is None:
        text = Path(path).read_text(encoding="utf-8-sig")
    out = RegisterMap(file, [], [], [], slugify=slugify)
    first = next((ln for ln in text.splitlines() if ln.strip() and ln[:1] != "#"), "")
    try:
        dialect: Any = csv.Sniffer().sniff(first, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text), dialect)
    header: list[str] | None = None
    start = 1
    for row in reader:
        line, start = start, reader.line_num + 1
        if not any(c.strip() for c in row) or row[0].strip().startswith("#"):
            continue
        if header is None:
            header = [_header(c) for c in row]
            out.problems += _check_header(file, line, header)
            if not any(p.line == line for p in out.problems) and "name" not in header:
                out.problems.append(CsvProblem(file, line, "name", "the header has no 'name'"))
            continue
        out.problems += _row(out, file, line, header, row)
    if header is None:
        out.problems.append(CsvProblem(file, 1, "header", "the file has no header row"))
    elif not out.tags and not out.problems:
        out.problems.append(CsvProblem(file, start - 1, "name", "no tag rows after the header"))
    return out


def _check_header(file: str, line: int, header: list[str]) -> list[CsvProblem]:
    problems = []
    for i, name in enumerate(header):
        if name.startswith("#") or name in COLUMNS:
            if name in header[:i] and not name.startswith("#"):
                problems.append(CsvProblem(file, line, name, "this column appears twice"))
            continue
        close = difflib.get_close_matches(name, [*COLUMNS, *COLUMN_ALIASES], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(
            CsvProblem(
                file,
                line,
                name or f"column {i + 1}",
                f"unknown column{hint}; accepted: {', '.join(COLUMNS)} and the aliases in "
                "the README (columns starting with # are ignored)",
            )
        )
    return problems


def _row(
    out: RegisterMap, file: str, line: int, header: list[str], row: list[str]
) -> list[CsvProblem]:
    """One row: every problem of every cell, then of the tag as a whole (for the cells
    that parsed), so one run shows all there is to fix."""
    problems = []
    if len(row) > len(header) and any(c.strip() for c in row[len(header) :]):
        problems.append(
            CsvProblem(file, line, "row", f"{len(row)} cells but the header has {len(header)}")
        )
    entry: dict[str, Any] = {}
    origin: dict[str, str] = {}  # tag field -> the column it came from
    span: int | None = None
    for column, value in zip(header, row, strict=False):
        value = value.strip()
        if not value or column.startswith("#") or column not in COLUMNS:
            continue
        try:
            fields = _cell_fields(column, value, out.slugify)
        except ValueError as exc:
            problems.append(CsvProblem(file, line, column, str(exc)))
            continue
        if fields is None:  # a write-only register: the gateway only reads
            out.skipped.append(
                CsvProblem(
                    file, line, column, f"{value!r}: write-only, skipped (the gateway reads)"
                )
            )
            return []
        span = fields.pop("_span", span)
        for key, v in fields.items():
            if key in entry and entry[key] != v:
                problems.append(
                    CsvProblem(
                        file,
                        line,
                        column,
                        f"{key} {v!r} contradicts {key} {entry[key]!r} from column {origin[key]!r}",
                    )
                )
                continue
            entry[key] = v
            origin.setdefault(key, column)
    if "name" in entry:
        out.names.append((str(entry["name"]), line))
    reported = {p.column for p in problems}
    tag = None
    try:
        tag = _TAG.validate_python(entry)
    except ValidationError as exc:
        problems += [p for p in _located(file, exc, {(): line}, ()) if p.column not in reported]
    if tag is not None and span is not None and span != tag.registers:
        column = origin.get("register_number", origin.get("register", "address"))
        fits = [t.value for t, spec in TYPES.items() if spec.registers == span]
        hint = f" (types of {span}: {', '.join(fits)})" if fits and "type" not in entry else ""
        problems.append(
            CsvProblem(
                file,
                line,
                column,
                f"the range covers {span} register(s) but {tag.type.value} takes "
                f"{tag.registers}; fix the range or give the type{hint}",
            )
        )
    if not problems:
        out.tags.append(entry)
        out.lines.append(line)
    return problems


def _cell_fields(column: str, value: str, slug: bool) -> dict[str, Any] | None:
    """The tag fields one cell gives; None for a write-only access mark."""
    if column == "type":
        return parse_type(value)
    if column == "address":
        return parse_address(value)
    if column == "register":
        return parse_register(value)
    if column == "access":
        return {} if parse_access(value) else None
    if column == "name":
        if slug:  # every name, so they read alike
            return {"name": slugify(value)}
        if valid_name(value):
            return {"name": value}
        raise ValueError(
            f"tag name {value!r} is not allowed; accepted: letters, digits and _ . : - "
            f"(--slugify makes it {slugify(value)!r})"
        )
    field, kind, _ = COLUMNS[column]
    return {field: _cell(kind, value)}


def _located(
    file: str, exc: ValidationError, lines: Mapping[tuple[Any, ...], int], prefix: tuple[Any, ...]
) -> list[CsvProblem]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])[len(prefix) :]
        key = loc[:1] if loc and isinstance(loc[0], int) else ()
        line = lines.get(key, 0)
        field = next((str(p) for p in loc if isinstance(p, str)), "name")
        column = _BY_FIELD.get(field, field)
        msg = "required" if err["type"] == "missing" else err["msg"]
        problems.append(CsvProblem(file, line, column, msg))
    return problems


def _unique(rmap: RegisterMap) -> tuple[list[CsvProblem], set[int]]:
    """Names given twice (on any rows, bad ones too), and the lines that repeat one."""
    seen: dict[str, int] = {}
    problems = []
    for name, line in rmap.names:
        if name in seen:
            problems.append(
                CsvProblem(rmap.file, line, "name", f"{name!r} is also on line {seen[name]}")
            )
        seen.setdefault(name, line)
    return problems, {p.line for p in problems}


# A device check stops at its first problem; the tag it names is left out and the device
# checked again, this many times at most, so one run shows the problems of many rows.
_DEVICE_ROUNDS = 100


def build_device(rmap: RegisterMap, fields: Mapping[str, Any]) -> tuple[Any, list[CsvProblem]]:
    """The device of ``fields`` (protocol, name, host, ...) with the map's tags, validated
    as the gateway will, and every problem found in one run: the rows' own (``rmap.
    problems``), names given twice, and the device's checks (intervals, sizes) on the
    rows that are otherwise good. Problems in device fields have line 0 and the field
    as column. Sorted by line; the device is None when there is any problem."""
    problems = list(rmap.problems)
    dup_problems, repeats = _unique(rmap)
    problems += dup_problems
    kept = [(t, ln) for t, ln in zip(rmap.tags, rmap.lines, strict=True) if ln not in repeats]
    device = None
    for _ in range(_DEVICE_ROUNDS):
        if not kept and problems:
            break  # every row is bad already: "no tags" would say nothing new
        try:
            device = validate_device({**fields, "tags": [t for t, _ in kept]})
            break
        except ValidationError as exc:
            lines = {("tags", i): line for i, (_, line) in enumerate(kept)}
            found = _device_problems(rmap.file, exc, lines)
            problems += found
            bad = {p.line for p in found if p.line}
            if not bad:
                break  # the device's own fields: its checks of the tags need them right
            kept = [(t, ln) for t, ln in kept if ln not in bad]
    else:
        problems.append(
            CsvProblem(rmap.file, 0, "device", "more problems may follow: fix these first")
        )
    problems.sort(key=lambda p: p.line or 10**9)
    return (None if problems else device), problems


def _device_problems(
    file: str, exc: ValidationError, lines: Mapping[tuple[Any, ...], int]
) -> list[CsvProblem]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = list(err["loc"])
        if len(loc) >= 2 and loc[0] == "tags" and isinstance(loc[1], int):
            field = next((str(p) for p in loc[2:] if isinstance(p, str)), "name")
            line = lines.get(("tags", loc[1]), 0)
            problems.append(CsvProblem(file, line, _BY_FIELD.get(field, field), err["msg"]))
        else:
            msg = "required" if err["type"] == "missing" else err["msg"]
            problems.append(CsvProblem(file, 0, ".".join(map(str, loc)) or "device", msg))
    return problems


_ORDER = ("name", "register", "address", "table", "type", "length", "bit", "order")
_ORDER += ("scale", "offset", "unit", "poll_interval_ms", "description")


def _yaml_value(key: str, value: Any) -> Any:
    if key == "register" and isinstance(value, str):
        digits = value.strip()
        if digits.isdigit() and not digits.startswith("0"):
            return int(digits)
    return value


def _flow(entry: Mapping[str, Any]) -> str:
    text: str = yaml.safe_dump(
        dict(entry), default_flow_style=True, sort_keys=False, width=10**6, allow_unicode=True
    )
    return text.strip()


def device_yaml(
    fields: Mapping[str, Any],
    rmap: RegisterMap,
    *,
    comment: Iterable[str] = (),
    gateway: Mapping[str, Any] | None = None,
) -> str:
    """A device file: ``devices:`` holding one device, ``fields`` then ``tags:``, one flow
    mapping per tag, as written in the CSV (register numbers stay register numbers). It
    goes in a config's ``devices_dir`` as it is. With ``gateway`` (the ``gateway:``
    section), a complete config instead."""
    lines = [f"# {c}" for c in comment]
    if gateway is not None:
        lines += yaml.safe_dump({"gateway": dict(gateway)}, sort_keys=False).splitlines()
    lines.append("devices:")
    head = yaml.safe_dump([dict(fields)], sort_keys=False, allow_unicode=True).rstrip("\n")
    lines += [f"  {line}" for line in head.splitlines()]
    lines.append("    tags:")
    for entry in rmap.tags:
        ordered = {k: _yaml_value(k, entry[k]) for k in _ORDER if k in entry}
        lines.append(f"      - {_flow(ordered)}")
    return "\n".join(lines) + "\n"
