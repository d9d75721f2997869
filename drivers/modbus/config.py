"""Config models of a Modbus TCP device map (pydantic v2).

Everything is checked at load time, so a map that loads can be compiled into a read plan
without further errors. Every message quotes the bad value and lists what is accepted;
errors carry the precise location (``tags[3].type``) so the gateway can point at the
YAML line.
"""

from __future__ import annotations

import difflib
import re
from enum import Enum
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from ..common import check_device_name, check_host
from .types import ORDER_NOTATION, TABLES, TYPES, DataType, Order, Table, register_count

__all__ = [
    "DataType",
    "ModbusTag",
    "ModbusTcpDevice",
    "Order",
    "Table",
    "load_device_map",
]

_TAG_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")

E = TypeVar("E", bound=Enum)


def _error(message: str) -> PydanticCustomError:
    # The message is passed as context so braces in quoted values are not templates.
    return PydanticCustomError("modbus_config", "{message}", {"message": message})


def _fail_at(title: str, loc: tuple[str | int, ...], value: Any, message: str) -> NoReturn:
    """Raise an error located at a nested field (e.g. ``tags[3].name``)."""
    detail = InitErrorDetails(type=_error(message), loc=loc, input=value)
    raise ValidationError.from_exception_data(title, [detail])


def _accepted(enum: type[Enum]) -> str:
    return ", ".join(repr(m.value) for m in enum)


def _enum(enum: type[E], value: Any, what: str) -> E:
    """Parse an enum value case-insensitively, with a precise error."""
    if isinstance(value, enum):
        return value
    if isinstance(value, str):
        for member in enum:
            if member.value == value.lower():
                return member
    message = f"unknown {what} {value!r}; accepted: {_accepted(enum)}"
    if isinstance(value, str):
        if enum is Order and value.upper() in ORDER_NOTATION:
            byte, word = ORDER_NOTATION[value.upper()]
            message += (
                f" ({value.upper()} is a 4-byte order: write byte_order: {byte.value} and "
                f"word_order: {word.value})"
            )
        else:
            close = difflib.get_close_matches(value.lower(), [m.value for m in enum], n=2)
            if close:
                message += f" (did you mean {' or '.join(map(repr, close))}?)"
    raise _error(message)


def _bounded(default: int, lo: int, hi: int | None, description: str) -> Any:
    """A bounded int field; the bound check itself is in ``_RANGES`` for a quoting message."""
    extra: dict[str, Any] = {"minimum": lo}
    if hi is not None:
        extra["maximum"] = hi
    span = f"{lo}..{hi}" if hi is not None else f">= {lo}"
    return Field(default, description=f"{description} ({span})", json_schema_extra=extra)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=False)


class ModbusTag(_Model):
    """One value read from a device."""

    name: str = Field(description="tag name, unique within the device; [A-Za-z0-9_.:-]+")
    table: Table = Field(
        Table.HOLDING, description="holding | input (16-bit registers) or coil | discrete (bits)"
    )
    address: int = Field(
        description="0-based protocol address (0..65535); manuals that number registers "
        "from 1, or as 40001-style references, need 1 (or 40001) subtracted"
    )
    type: DataType = Field(
        DataType.UINT16,
        description="bool, int16, uint16, int32, uint32, int64, uint64, float32, float64; "
        "default uint16 in holding/input, bool in coil/discrete",
    )
    byte_order: Order | None = Field(
        None,
        description="byte order within each 16-bit register; big is the Modbus standard; "
        "unset: the device's byte_order",
    )
    word_order: Order | None = Field(
        None,
        description="order of the 16-bit words of a 32/64-bit value; big = most significant "
        "word first; unset: the device's word_order",
    )
    scale: float = Field(
        1.0,
        allow_inf_nan=False,
        description="value = raw * scale + offset; with scale 1 and offset 0 integers stay "
        "integers",
    )
    offset: float = Field(0.0, allow_inf_nan=False, description="added after scaling")
    unit: str | None = Field(None, description="engineering unit, informational (e.g. 'degC')")

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not _TAG_NAME.match(v):
            raise _error(f"tag name {v!r} is not allowed; accepted: letters, digits and _ . : -")
        return v

    @field_validator("table", mode="before")
    @classmethod
    def _parse_table(cls, v: Any) -> Table:
        return _enum(Table, v, "table")

    @field_validator("type", mode="before")
    @classmethod
    def _parse_type(cls, v: Any) -> DataType:
        return _enum(DataType, v, "type")

    @field_validator("byte_order", "word_order", mode="before")
    @classmethod
    def _parse_order(cls, v: Any) -> Order | None:
        return None if v is None else _enum(Order, v, "order")

    @field_validator("address")
    @classmethod
    def _check_address(cls, v: int) -> int:
        if not 0 <= v <= 65535:
            raise _error(f"address {v} is out of range; accepted: 0..65535")
        return v

    @model_validator(mode="after")
    def _check_combination(self) -> ModbusTag:
        bits = TABLES[self.table].bits
        if bits and "type" not in self.model_fields_set:
            self.type = DataType.BOOL
        if bits and self.type is not DataType.BOOL:
            _fail_at(
                "ModbusTag",
                ("type",),
                self.type.value,
                f"tag {self.name!r}: the {self.table.value} table holds single bits, so type "
                f"{self.type.value!r} is not possible; accepted: 'bool' (or move the tag to "
                "table 'holding' or 'input')",
            )
        spec = TYPES[self.type]
        # (field, does it apply to this tag?, why not) - one row per option.
        rules: tuple[tuple[str, bool, str], ...] = (
            ("scale", not spec.is_bool, "a bool has no scale"),
            ("offset", not spec.is_bool, "a bool has no offset"),
            ("byte_order", not spec.is_bool and not bits, "a bool has no byte order"),
            (
                "word_order",
                spec.registers > 1 and not bits,
                f"{self.type.value} is a single register",
            ),
        )
        for field, applies, why in rules:
            if not applies and field in self.model_fields_set:
                value = getattr(self, field)
                if (field, value) in (("scale", 1.0), ("offset", 0.0)):
                    continue
                _fail_at(
                    "ModbusTag",
                    (field,),
                    value,
                    f"tag {self.name!r}: {field} {getattr(value, 'value', value)!r} has no "
                    f"effect on type {self.type.value!r} ({why}); remove it",
                )
        if self.scale == 0:
            _fail_at(
                "ModbusTag",
                ("scale",),
                self.scale,
                f"tag {self.name!r}: scale 0 would make every value equal to offset; "
                "accepted: any non-zero number",
            )
        count = register_count(self.table, self.type)
        if self.address + count > 65536:
            _fail_at(
                "ModbusTag",
                ("address",),
                self.address,
                f"tag {self.name!r}: {self.type.value} at address {self.address} needs "
                f"{count} registers ({self.address}..{self.address + count - 1}) but the "
                f"last address is 65535; accepted: address 0..{65536 - count}",
            )
        return self


# Bounds of the device's integer fields: one table read by the validator and the docs.
_RANGES: dict[str, tuple[int, int | None]] = {
    "port": (1, 65535),
    "unit_id": (0, 255),
    "poll_interval_ms": (10, None),
    "timeout_ms": (10, 600_000),
    "max_registers_per_request": (1, 125),
    "max_bits_per_request": (1, 2000),
    "max_gap": (0, 125),
}


class ModbusTcpDevice(_Model):
    """One Modbus TCP device (one unit id behind one host:port) and its tags."""

    protocol: Literal["modbus_tcp"] = Field(description="selects this driver")
    name: str = Field(description="device name, unique in the gateway; [A-Za-z0-9_.-]+")
    host: str = Field(description="IPv4 or IPv6 literal (e.g. '::1') or host name")
    port: int = _bounded(502, *_RANGES["port"], "TCP port")
    unit_id: int = _bounded(
        1,
        *_RANGES["unit_id"],
        "Modbus unit (slave) id; gateways to serial buses route by it; "
        "many TCP-only devices accept any value, some only 1, 0 or 255",
    )
    poll_interval_ms: int = _bounded(1000, *_RANGES["poll_interval_ms"], "time between reads")
    timeout_ms: int = _bounded(
        1000, *_RANGES["timeout_ms"], "how long to wait to connect and for each response"
    )
    max_registers_per_request: int = _bounded(
        125,
        *_RANGES["max_registers_per_request"],
        "largest register read; 125 is the protocol maximum, some devices accept less",
    )
    max_bits_per_request: int = _bounded(
        2000,
        *_RANGES["max_bits_per_request"],
        "largest coil/discrete read; 2000 is the protocol maximum",
    )
    max_gap: int = _bounded(
        8,
        *_RANGES["max_gap"],
        "unused registers (or bits) read to merge two requests into one: fewer round trips, "
        "slightly larger responses; set 0 for devices that reject reads of unmapped addresses",
    )
    byte_order: Order = Field(Order.BIG, description="default byte order of the device's tags")
    word_order: Order = Field(Order.BIG, description="default word order of the device's tags")
    tags: list[ModbusTag] = Field(description="at least one tag; names unique")

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        try:
            return check_device_name(v)
        except ValueError as exc:
            raise _error(str(exc)) from None

    @field_validator("host")
    @classmethod
    def _check_host(cls, v: str) -> str:
        try:
            return check_host(v)
        except ValueError as exc:
            raise _error(str(exc)) from None

    @field_validator("byte_order", "word_order", mode="before")
    @classmethod
    def _parse_order(cls, v: Any) -> Order:
        return _enum(Order, v, "order")

    @field_validator(*_RANGES, mode="after")
    @classmethod
    def _check_range(cls, v: int, info: Any) -> int:
        lo, hi = _RANGES[info.field_name]
        if v < lo or (hi is not None and v > hi):
            accepted = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise _error(f"{info.field_name} {v} is out of range; accepted: {accepted}")
        return v

    @field_validator("tags")
    @classmethod
    def _check_tags(cls, v: list[ModbusTag]) -> list[ModbusTag]:
        if not v:
            raise _error("a device needs at least one tag; 'tags' is empty")
        first: dict[str, int] = {}
        for i, tag in enumerate(v):
            if tag.name in first:
                _fail_at(
                    "ModbusTcpDevice",
                    (i, "name"),
                    tag.name,  # under ("tags",)
                    f"duplicate tag name {tag.name!r}: tags[{first[tag.name]}] has it too; "
                    "tag names must be unique within a device",
                )
            first[tag.name] = i
        return v

    @model_validator(mode="after")
    def _check_limits(self) -> ModbusTcpDevice:
        for i, tag in enumerate(self.tags):
            count = register_count(tag.table, tag.type)
            if not TABLES[tag.table].bits and count > self.max_registers_per_request:
                _fail_at(
                    "ModbusTcpDevice",
                    ("tags", i, "type"),
                    tag.type.value,
                    f"tag {tag.name!r} is {tag.type.value} ({count} registers) but "
                    f"max_registers_per_request is {self.max_registers_per_request}; "
                    f"accepted: max_registers_per_request >= {count}",
                )
        return self


def load_device_map(path: str | Path) -> list[ModbusTcpDevice]:
    """Load a YAML file holding ``devices:`` (a list) or a bare list of devices.

    Raises ``ValidationError`` (locations start with the list index) or ``ValueError``
    for a file of the wrong shape.
    """
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if isinstance(data, dict) and "devices" in data:
        data = data["devices"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of devices or a mapping with 'devices'")
    return _DEVICE_LIST.validate_python(data)


_DEVICE_LIST = TypeAdapter(list[ModbusTcpDevice])
