"""The config model of one Modbus tag (pydantic v2), and the error helpers the device
models share.

Every message quotes the bad value and lists what is accepted; errors carry the precise
location (``tags[3].type``) so the gateway can point at the YAML line. Options that
cannot apply to a tag are refused rather than ignored (one table of rules below).
"""

from __future__ import annotations

import difflib
import re
from enum import Enum
from typing import Any, NoReturn, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from ..common import CompactFields
from ..write import WriteSpec, spec_problem
from .derived import TagDerived
from .notation import order_for_width, parse_order, parse_register
from .types import (
    MAX_STRING_LENGTH,
    ORDER_NOTATION,
    TABLES,
    TYPES,
    DataType,
    Order,
    Table,
)

__all__ = ["ModbusTag"]

_TAG_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")

E = TypeVar("E", bound=Enum)


def error(message: str) -> PydanticCustomError:
    # The message is passed as context so braces in quoted values are not templates.
    return PydanticCustomError("modbus_config", "{message}", {"message": message})


def fail_at(title: str, loc: tuple[str | int, ...], value: Any, message: str) -> NoReturn:
    """Raise an error located at a nested field (e.g. ``tags[3].name``)."""
    detail = InitErrorDetails(type=error(message), loc=loc, input=value)
    raise ValidationError.from_exception_data(title, [detail])


def accepted(enum: type[Enum]) -> str:
    return ", ".join(repr(m.value) for m in enum)


def parse_enum(enum: type[E], value: Any, what: str) -> E:
    """Parse an enum value case-insensitively, with a precise error."""
    if isinstance(value, enum):
        return value
    if isinstance(value, str):
        for member in enum:
            if member.value == value.lower():
                return member
    message = f"unknown {what} {value!r}; accepted: {accepted(enum)}"
    if isinstance(value, str):
        if enum is Order and value.upper() in ORDER_NOTATION:
            byte, word = ORDER_NOTATION[value.upper()]
            message += (
                f" ({value.upper()} is a 4-byte order: write order: {value.upper()}, or "
                f"byte_order: {byte.value} and word_order: {word.value})"
            )
        else:
            close = difflib.get_close_matches(value.lower(), [m.value for m in enum], n=2)
            if close:
                message += f" (did you mean {' or '.join(map(repr, close))}?)"
    raise error(message)


class Model(BaseModel):
    # defer_build: no validator of its own until one is used directly; the gateway's
    # config validator holds this model's checks too (0.6 MiB for every protocol's models)
    model_config = ConfigDict(extra="forbid", use_enum_values=False, defer_build=True)


class ModbusTag(TagDerived, CompactFields, Model):
    """One value read from a device."""

    name: str = Field(description="tag name, unique within the device; [A-Za-z0-9_.:-]+")
    table: Table = Field(
        Table.HOLDING,
        description="holding | input (16-bit registers) or coil | discrete (bits); "
        "implied by `register`",
    )
    address: int | None = Field(
        None,
        description="0-based protocol address (0..65535); or give `register` instead",
    )
    register_number: int | str | None = Field(
        None,
        alias="register",
        description="register number as manuals write it, instead of table + address: "
        "40001 = holding address 0, 30001 input, 10001 discrete, '00001' coil (quoted); "
        "6 digits (400001) reach 65536",
    )
    type: DataType = Field(
        DataType.UINT16,
        description="bool, int16, uint16, int32, uint32, int64, uint64, float32, float64, "
        "string; default uint16 in holding/input, bool in coil/discrete",
    )
    length: int | None = Field(
        None, description=f"string length in characters, 2 per register (1..{MAX_STRING_LENGTH})"
    )
    bit: int | None = Field(
        None, description="type bool in a holding/input register: which bit, 0 (LSB)..15"
    )
    order: str | None = Field(
        None,
        description="vendor notation of byte and word order: AB/BA (16-bit, string), "
        "ABCD/CDAB/BADC/DCBA (32/64-bit), ABCDEFGH/GHEFCDAB/BADCFEHG/HGFEDCBA (64-bit)",
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
    description: str | None = Field(None, description="free text, informational")
    poll_interval_ms: int | None = Field(
        None,
        description="read this tag every N ms (>= 10); unset: the device's poll_interval_ms. "
        "Must be a whole multiple of the device's fastest interval",
    )
    write: WriteSpec | None = Field(
        None,
        description="makes the tag writable by signed commands (holding and coil tables "
        "only): {min, max} or values, min_interval_s; see drivers/write.py",
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not _TAG_NAME.match(v):
            raise error(f"tag name {v!r} is not allowed; accepted: letters, digits and _ . : -")
        return v

    @field_validator("table", mode="before")
    @classmethod
    def _parse_table(cls, v: Any) -> Table:
        return parse_enum(Table, v, "table")

    @field_validator("type", mode="before")
    @classmethod
    def _parse_type(cls, v: Any) -> DataType:
        return parse_enum(DataType, v, "type")

    @field_validator("byte_order", "word_order", mode="before")
    @classmethod
    def _parse_order(cls, v: Any) -> Order | None:
        return None if v is None else parse_enum(Order, v, "order")

    @field_validator("address")
    @classmethod
    def _check_address(cls, v: int | None) -> int | None:
        if v is not None and not 0 <= v <= 65535:
            raise error(f"address {v} is out of range; accepted: 0..65535")
        return v

    @field_validator("register_number", mode="before")
    @classmethod
    def _check_register(cls, v: Any) -> Any:
        if v is None:
            return v
        try:
            parse_register(v)
        except ValueError as exc:
            raise error(str(exc)) from None
        return v

    @field_validator("order", mode="before")
    @classmethod
    def _check_order(cls, v: Any) -> Any:
        return check_order(v)

    @field_validator("length")
    @classmethod
    def _check_length(cls, v: int | None) -> int | None:
        if v is not None and not 1 <= v <= MAX_STRING_LENGTH:
            raise error(
                f"length {v} is out of range; accepted: 1..{MAX_STRING_LENGTH} characters "
                "(2 per register)"
            )
        return v

    @field_validator("bit")
    @classmethod
    def _check_bit(cls, v: int | None) -> int | None:
        if v is not None and not 0 <= v <= 15:
            raise error(f"bit {v} is out of range; accepted: 0 (least significant)..15")
        return v

    @field_validator("poll_interval_ms")
    @classmethod
    def _check_interval(cls, v: int | None) -> int | None:
        if v is not None and v < 10:
            raise error(f"poll_interval_ms {v} is out of range; accepted: >= 10")
        return v

    def _fail(self, field: str, value: Any, message: str) -> NoReturn:
        fail_at("ModbusTag", (field,), value, f"tag {self.name!r}: {message}")

    def _resolve_register(self, given: set[str]) -> None:
        if self.register_number is None:
            if self.address is None:
                self._fail(
                    "address",
                    None,
                    "give address (0-based, 0..65535) or register (40001-style)",
                )
            return
        register = self.register_number
        table, address = parse_register(register)
        if self.address is not None:
            self._fail(
                "register",
                register,
                f"give register or address, not both: register {register} is "
                f"{table.value} address {address}",
            )
        if "table" in given and self.table is not table:
            self._fail(
                "table",
                self.table.value,
                f"register {register} is in the {table.value} table but table "
                f"{self.table.value!r} is also given; remove table",
            )
        self.table, self.address = table, address

    @model_validator(mode="after")
    def _check_combination(self) -> ModbusTag:
        given = {"register" if f == "register_number" else f for f in self.model_fields_set}
        self._resolve_register(given)
        assert self.address is not None
        bits = TABLES[self.table].bits
        if bits and "type" not in given:
            self.type = DataType.BOOL
        if bits and self.type is not DataType.BOOL:
            self._fail(
                "type",
                self.type.value,
                f"the {self.table.value} table holds single bits, so type "
                f"{self.type.value!r} is not possible; accepted: 'bool' (or move the tag to "
                "table 'holding' or 'input')",
            )
        spec = TYPES[self.type]
        if spec.is_string and self.length is None:
            self._fail(
                "length",
                None,
                "type 'string' needs length: its number of characters "
                f"(2 per register, 1..{MAX_STRING_LENGTH})",
            )
        kind = "a bool" if spec.is_bool else ("a string" if spec.is_string else self.type.value)
        single = f"{self.type.value} is a single register"
        if spec.is_string:
            single = "a string is read register by register (its byte order is AB or BA)"
        # (field, does it apply to this tag?, why not) - one row per option.
        rules: tuple[tuple[str, bool, str], ...] = (
            ("scale", spec.is_number, f"{kind} has no scale"),
            ("offset", spec.is_number, f"{kind} has no offset"),
            ("byte_order", not spec.is_bool and not bits, f"{kind} has no byte order"),
            ("order", not spec.is_bool and not bits, f"{kind} has no byte order"),
            ("word_order", spec.registers > 1 and not bits, single),
            ("length", spec.is_string, "length applies to type 'string' only"),
            ("bit", not bits, f"a {self.table.value} is a single bit already"),
        )
        if self.bit is not None and not bits and not spec.is_bool:
            self._fail(
                "bit",
                self.bit,
                f"bit {self.bit} is read as type 'bool' (one bit of the register); set "
                f"type: bool, or remove bit to read the whole register as {self.type.value}",
            )
        for field, applies, why in rules:
            if not applies and field in given:
                value = getattr(self, field)
                if value is None or (field, value) in (("scale", 1.0), ("offset", 0.0)):
                    continue
                self._fail(
                    field,
                    value,
                    f"{field} {getattr(value, 'value', value)!r} has no effect on type "
                    f"{self.type.value!r} ({why}); remove it",
                )
        if self.order is not None:
            self._apply_order(given)
        if self.scale == 0:
            self._fail(
                "scale",
                self.scale,
                "scale 0 would make every value equal to offset; accepted: any non-zero number",
            )
        count = self.registers
        if self.address + count > 65536:
            self._fail(
                "address",
                self.address,
                f"{self.type.value} at address {self.address} needs {count} registers "
                f"({self.address}..{self.address + count - 1}) but the last address is "
                f"65535; accepted: address 0..{65536 - count}",
            )
        if self.write is not None:
            self._check_write(self.write)
        return self

    def _check_write(self, write: WriteSpec) -> None:
        if self.table in (Table.INPUT, Table.DISCRETE):
            self._fail(
                "write",
                write,
                f"the {self.table.value} table is read-only in Modbus; only holding "
                "registers and coils can be written: remove write",
            )
        spec = TYPES[self.type]
        lo: float | None = None
        hi: float | None = None
        if spec.is_number:
            ends = (spec.lo * self.scale + self.offset, spec.hi * self.scale + self.offset)
            lo, hi = min(ends), max(ends)
        if problem := spec_problem(write, self.write_kind(), lo, hi):
            self._fail("write", write, problem)

    def _apply_order(self, given: set[str]) -> None:
        registers = 1 if TYPES[self.type].is_string else self.registers
        try:
            byte, word = order_for_width(self.order, registers, self.type.value)
        except ValueError as exc:
            self._fail("order", self.order, str(exc))
        for field, value in (("byte_order", byte), ("word_order", word)):
            mine = getattr(self, field)
            if value is not None and field in given and mine is not value:
                self._fail(
                    "order",
                    self.order,
                    f"order {self.order} means {field} {value.value}, but {field} "
                    f"{mine.value} is also given; give one of them",
                )
        self.byte_order = byte
        if word is not None:
            self.word_order = word


def check_order(v: Any) -> Any:
    """An ``order:`` value (ABCD, CDAB, ...), checked and upper-cased; None stays None."""
    if v is None:
        return v
    try:
        parse_order(v)
    except ValueError as exc:
        raise error(str(exc)) from None
    return str(v).strip().upper()
