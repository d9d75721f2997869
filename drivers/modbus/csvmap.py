"""Register maps from spreadsheets: a CSV file -> a validated device -> a YAML device block.

Engineers keep register maps in spreadsheets. One row per tag, a header row naming the
columns (any order, case and spaces ignored, ``,`` ``;`` or tab separated, UTF-8 with
or without BOM). Empty cells take the defaults; rows that are empty or whose first cell
starts with ``#`` are skipped, and so are columns whose header starts with ``#``
(notes). Every bad row is reported, as ``FILE:LINE: column: problem``.
"""

from __future__ import annotations

import csv
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
from .types import MAX_STRING_LENGTH

__all__ = ["COLUMNS", "CsvProblem", "RegisterMap", "device_yaml", "read_register_map"]

# column -> (tag field, parser, documentation). The README's table is generated from it.
COLUMNS: dict[str, tuple[str, str, str]] = {
    "name": ("name", "text", "tag name, unique: letters, digits and _ . : - (required)"),
    "address": ("address", "int", "0-based address 0..65535 (or give `register`)"),
    "register": ("register", "text", "register number as in manuals: 40001, 30001, 10001, 00001"),
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
}
_BY_FIELD = {field: column for column, (field, _, _) in COLUMNS.items()}
_BY_FIELD |= {"byte_order": "order", "word_order": "order", "register_number": "register"}
_TAG = TypeAdapter(ModbusTag)


def columns_markdown() -> str:
    """The column table for the README (a test keeps them equal)."""
    lines = ["| column | meaning |", "|---|---|"]
    lines += [f"| `{c}` | {doc} |" for c, (_, _, doc) in COLUMNS.items()]
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


def _header(cell: str) -> str:
    return re.sub(r"[\s-]+", "_", cell.strip().lower())


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


def read_register_map(path: str | Path, text: str | None = None) -> RegisterMap:
    """Read a CSV register map; ``problems`` lists every bad header, cell and row."""
    file = str(path)
    if text is None:
        text = Path(path).read_text(encoding="utf-8-sig")
    out = RegisterMap(file, [], [], [])
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
        close = difflib.get_close_matches(name, list(COLUMNS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(
            CsvProblem(
                file,
                line,
                name or f"column {i + 1}",
                f"unknown column{hint}; accepted: {', '.join(COLUMNS)} "
                "(columns starting with # are ignored)",
            )
        )
    return problems


def _row(
    out: RegisterMap, file: str, line: int, header: list[str], row: list[str]
) -> list[CsvProblem]:
    problems = []
    if len(row) > len(header) and any(c.strip() for c in row[len(header) :]):
        problems.append(
            CsvProblem(file, line, "row", f"{len(row)} cells but the header has {len(header)}")
        )
    entry: dict[str, Any] = {}
    for column, value in zip(header, row, strict=False):
        value = value.strip()
        if not value or column.startswith("#") or column not in COLUMNS:
            continue
        field, kind, _ = COLUMNS[column]
        try:
            entry[field] = _cell(kind, value)
        except ValueError as exc:
            problems.append(CsvProblem(file, line, column, str(exc)))
    if not problems:
        try:
            _TAG.validate_python(entry)
        except ValidationError as exc:
            problems += _located(file, exc, {(): line}, ())
    if not problems:
        out.tags.append(entry)
        out.lines.append(line)
    return problems


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


def _unique(rmap: RegisterMap) -> list[CsvProblem]:
    seen: dict[str, int] = {}
    problems = []
    for entry, line in zip(rmap.tags, rmap.lines, strict=True):
        name = str(entry.get("name"))
        if name in seen:
            problems.append(
                CsvProblem(rmap.file, line, "name", f"{name!r} is also on line {seen[name]}")
            )
        seen.setdefault(name, line)
    return problems


def build_device(rmap: RegisterMap, fields: Mapping[str, Any]) -> tuple[Any, list[CsvProblem]]:
    """The device of ``fields`` (protocol, name, host, ...) with the map's tags, validated
    as the gateway will; problems in device fields have line 0 and the field as column."""
    problems = _unique(rmap)
    if problems:
        return None, problems
    try:
        return validate_device({**fields, "tags": rmap.tags}), []
    except ValidationError as exc:
        lines = {("tags", i): line for i, line in enumerate(rmap.lines)}
        return None, _device_problems(rmap.file, exc, lines)


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
    fields: Mapping[str, Any], rmap: RegisterMap, *, comment: Iterable[str] = ()
) -> str:
    """A YAML list holding one device: ``fields`` then ``tags:``, one flow mapping per tag,
    as written in the CSV (register numbers stay register numbers)."""
    lines = [f"# {c}" for c in comment]
    head = yaml.safe_dump([dict(fields)], sort_keys=False, allow_unicode=True).rstrip("\n")
    lines += head.splitlines()
    lines.append("  tags:")
    for entry in rmap.tags:
        ordered = {k: _yaml_value(k, entry[k]) for k in _ORDER if k in entry}
        lines.append(f"    - {_flow(ordered)}")
    return "\n".join(lines) + "\n"
