"""Config models of Modbus devices (pydantic v2): TCP, RTU on a serial port, RTU framing
over TCP (serial device servers).

Everything is checked at load time, so a map that loads can be compiled into a read plan
without further errors. Every message quotes the bad value and lists what is accepted;
errors carry the precise location (``tags[3].type``) so the gateway can point at the
YAML line. The tag model is in ``tags.py``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from ..common import check_device_name, check_host, duplicate_tag, range_problem, read_device_list
from .derived import RtuDerived
from .links import check_shared_links
from .notation import parse_order
from .tags import ModbusTag, Model, check_order, error, fail_at, parse_enum
from .types import TABLES, DataType, OnIllegalAddress, Order, Parity, Table, WriteFunctions

__all__ = [
    "DataType",
    "ModbusDevice",
    "ModbusRtuDevice",
    "ModbusRtuTcpDevice",
    "ModbusTag",
    "ModbusTcpDevice",
    "OnIllegalAddress",
    "Order",
    "Parity",
    "Table",
    "WriteFunctions",
    "check_shared_links",
    "load_device_map",
    "validate_device",
]

Range = tuple[int, int | None]

# Bounds of the device's integer fields: one table read by the validator and the docs.
_RANGES: dict[str, Range] = {
    "unit_id": (0, 255),
    "poll_interval_ms": (10, None),
    "timeout_ms": (10, 600_000),
    "retries": (0, 10),
    "inter_request_delay_ms": (0, 10_000),
    "max_registers_per_request": (1, 125),
    "max_bits_per_request": (1, 2000),
    "max_gap": (0, 125),
}
_TCP_RANGES: dict[str, Range] = {**_RANGES, "port": (1, 65535)}
_RTU_RANGES: dict[str, Range] = {
    **_RANGES,
    "unit_id": (1, 247),
    "baudrate": (50, 4_000_000),
    "bytesize": (7, 8),
    "stopbits": (1, 2),
}


def _bounded(default: int, span: Range, description: str) -> Any:
    """A bounded int field; the bound check itself is in the ranges table."""
    lo, hi = span
    extra: dict[str, Any] = {"minimum": lo}
    if hi is not None:
        extra["maximum"] = hi
    text = f"{lo}..{hi}" if hi is not None else f">= {lo}"
    return Field(default, description=f"{description} ({text})", json_schema_extra=extra)


_PARITY_WORDS = {"none": Parity.NONE, "even": Parity.EVEN, "odd": Parity.ODD}


class ModbusDevice(Model):
    """What every Modbus device has: unit id, timing, request limits, orders and tags."""

    RANGES: ClassVar[dict[str, Range]] = _RANGES

    name: str = Field(description="device name, unique in the gateway; [A-Za-z0-9_.-]+")
    unit_id: int = _bounded(
        1,
        _RANGES["unit_id"],
        "Modbus unit (slave) id; gateways to serial buses route by it; "
        "many TCP-only devices accept any value, some only 1, 0 or 255",
    )
    poll_interval_ms: int = _bounded(
        1000,
        _RANGES["poll_interval_ms"],
        "time between reads; after loading, the fastest of the device's and its tags' "
        "intervals (what the gateway schedules)",
    )
    timeout_ms: int = _bounded(
        1000, _RANGES["timeout_ms"], "how long to wait to connect and for each response"
    )
    retries: int = _bounded(
        0, _RANGES["retries"], "requests sent again after a timeout before the tags go bad"
    )
    inter_request_delay_ms: int = _bounded(
        0,
        _RANGES["inter_request_delay_ms"],
        "quiet time on the link before each request to this device (slow devices, radio modems)",
    )
    max_registers_per_request: int = _bounded(
        125,
        _RANGES["max_registers_per_request"],
        "largest register read; 125 is the protocol maximum, some devices accept less",
    )
    max_bits_per_request: int = _bounded(
        2000, _RANGES["max_bits_per_request"], "largest coil/discrete read; 2000 is the maximum"
    )
    max_gap: int = _bounded(
        8,
        _RANGES["max_gap"],
        "unused registers (or bits) read to merge two requests into one: fewer round trips, "
        "slightly larger responses; a device that refuses unmapped addresses is handled by "
        "on_illegal_address",
    )
    on_illegal_address: OnIllegalAddress = Field(
        OnIllegalAddress.SPLIT,
        description="a request of several tags refused with exception 2/3: 'split' "
        "(bisect, read every readable tag, remember the refused addresses) or 'fail'",
    )
    write_functions: WriteFunctions = Field(
        WriteFunctions.SINGLE,
        description="writes of tags with a write block: 'single' (functions 5/6 where one "
        "coil or register, 16 otherwise) or 'multiple' (15/16 always)",
    )
    order: str | None = Field(
        None, description="vendor notation of the default orders, e.g. CDAB (or AB/BA)"
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
            raise error(str(exc)) from None

    @field_validator("byte_order", "word_order", mode="before")
    @classmethod
    def _parse_order(cls, v: Any) -> Order:
        return parse_enum(Order, v, "order")

    @field_validator("on_illegal_address", mode="before")
    @classmethod
    def _parse_on_illegal(cls, v: Any) -> OnIllegalAddress:
        return parse_enum(OnIllegalAddress, v, "on_illegal_address")

    @field_validator("write_functions", mode="before")
    @classmethod
    def _parse_write_functions(cls, v: Any) -> WriteFunctions:
        return parse_enum(WriteFunctions, v, "write_functions")

    @field_validator("order", mode="before")
    @classmethod
    def _check_order(cls, v: Any) -> Any:
        return check_order(v)

    @field_validator("*", mode="after")
    @classmethod
    def _check_range(cls, v: Any, info: Any) -> Any:
        span = cls.RANGES.get(info.field_name)
        if span is not None and (problem := range_problem(info.field_name, v, *span)):
            raise error(problem)
        return v

    @field_validator("tags")
    @classmethod
    def _check_tags(cls, v: list[ModbusTag]) -> list[ModbusTag]:
        if not v:
            raise error("a device needs at least one tag; 'tags' is empty")
        if dup := duplicate_tag(v):
            i, message = dup
            fail_at(cls.__name__, (i, "name"), v[i].name, message)  # under ("tags",)
        return v

    @model_validator(mode="after")
    def _check_device(self) -> ModbusDevice:
        title = type(self).__name__
        if self.order is not None:
            _, byte, word = parse_order(self.order)
            for field, value in (("byte_order", byte), ("word_order", word)):
                if value is None:
                    continue
                if field in self.model_fields_set and getattr(self, field) is not value:
                    fail_at(
                        title,
                        ("order",),
                        self.order,
                        f"order {self.order} means {field} {value.value}, but {field} "
                        f"{getattr(self, field).value} is also given; give one of them",
                    )
                setattr(self, field, value)
        for i, tag in enumerate(self.tags):
            count = tag.registers
            if not TABLES[tag.table].bits and count > self.max_registers_per_request:
                what = "length" if tag.type is DataType.STRING else "type"
                fail_at(
                    title,
                    ("tags", i, what),
                    tag.length if what == "length" else tag.type.value,
                    f"tag {tag.name!r} is {tag.type.value} ({count} registers) but "
                    f"max_registers_per_request is {self.max_registers_per_request}; "
                    f"accepted: max_registers_per_request >= {count}",
                )
        self._resolve_intervals(title)
        return self

    def _resolve_intervals(self, title: str) -> None:
        """Per-tag intervals: each tag gets its own (or the device's), and the device's
        becomes the fastest, which the gateway schedules; the plan reads slower tags
        every N-th cycle, so each must be a whole multiple of the fastest."""
        own = [t.poll_interval_ms for t in self.tags]
        intervals = [v or self.poll_interval_ms for v in own]
        fastest = min(intervals)
        for i, (tag, interval) in enumerate(zip(self.tags, intervals, strict=True)):
            if interval % fastest:
                lower = interval // fastest * fastest
                fits = f"{lower} or {lower + fastest}" if lower else str(fastest)
                where = f"tag {tag.name!r}: poll_interval_ms" if own[i] else "poll_interval_ms"
                loc: tuple[str | int, ...] = (
                    ("tags", i, "poll_interval_ms") if own[i] else ("poll_interval_ms",)
                )
                fail_at(
                    title,
                    loc,
                    interval,
                    f"{where} {interval} is not a whole multiple of the fastest interval "
                    f"of the device ({fastest} ms): slower tags are read every N-th cycle "
                    f"of the fastest; accepted: {fits}",
                )
            tag.poll_interval_ms = interval
        self.poll_interval_ms = fastest


class _TcpHost(ModbusDevice):
    host: str = Field(description="IPv4 or IPv6 literal (e.g. '::1') or host name")

    @field_validator("host")
    @classmethod
    def _check_host(cls, v: str) -> str:
        try:
            return check_host(v)
        except ValueError as exc:
            raise error(str(exc)) from None


class ModbusTcpDevice(_TcpHost):
    """One Modbus TCP device (one unit id behind one host:port) and its tags."""

    RANGES: ClassVar[dict[str, Range]] = _TCP_RANGES

    protocol: Literal["modbus_tcp"] = Field(description="selects this driver")
    port: int = _bounded(502, _TCP_RANGES["port"], "TCP port")


class ModbusRtuTcpDevice(_TcpHost):
    """One Modbus RTU device behind a serial device server: RTU frames (with CRC, no
    MBAP header) over a TCP connection. Devices on one host:port share one connection
    and take turns, like devices on one serial bus."""

    RANGES: ClassVar[dict[str, Range]] = {**_TCP_RANGES, "unit_id": (1, 247)}

    protocol: Literal["modbus_rtu_tcp"] = Field(description="selects this driver")
    port: int = _bounded(502, _TCP_RANGES["port"], "TCP port of the serial device server")


class ModbusRtuDevice(RtuDerived, ModbusDevice):
    """One Modbus RTU device on a serial line (RS-485/RS-232). Devices on one port share
    one connection and one bus lock, so their requests never interleave."""

    RANGES: ClassVar[dict[str, Range]] = _RTU_RANGES

    protocol: Literal["modbus_rtu"] = Field(description="selects this driver")
    port: str = Field(description="serial port, e.g. /dev/ttyUSB0 or /dev/serial/by-id/...")
    baudrate: int = _bounded(19200, _RTU_RANGES["baudrate"], "bits per second")
    parity: Parity = Field(Parity.EVEN, description="N (none), E (even, the default), O (odd)")
    stopbits: int = _bounded(1, _RTU_RANGES["stopbits"], "stop bits")
    bytesize: int = _bounded(8, _RTU_RANGES["bytesize"], "data bits; RTU uses 8")

    @field_validator("port")
    @classmethod
    def _check_port(cls, v: str) -> str:
        if not v.strip() or "\0" in v:
            raise error(f"port {v!r} is not a serial port; accepted: a path like /dev/ttyUSB0")
        return v.strip()

    @field_validator("parity", mode="before")
    @classmethod
    def _parse_parity(cls, v: Any) -> Parity:
        if isinstance(v, str):
            word = _PARITY_WORDS.get(v.strip().lower())
            if word is not None:
                return word
            for p in Parity:
                if v.strip().upper() == p.value:
                    return p
        raise error(f"unknown parity {v!r}; accepted: 'N' (none), 'E' (even), 'O' (odd)")


Device = ModbusTcpDevice | ModbusRtuDevice | ModbusRtuTcpDevice


def load_device_map(path: str | Path) -> list[Device]:
    """Load a YAML file holding ``devices:`` (a list) or a bare list of devices.

    Raises ``ValidationError`` (locations start with the list index) or ``ValueError``
    for a file of the wrong shape.
    """
    data = read_device_list(path)
    try:
        devices = _device_list().validate_python(data)
    except ValidationError as exc:
        raise _without_protocol(exc) from None
    problems = check_shared_links(devices)
    if problems:
        raise ValidationError.from_exception_data(
            "device map",
            [
                InitErrorDetails(type=error(msg), loc=(i, field), input=getattr(devices[i], field))
                for i, field, msg in problems
            ],
        )
    return devices


def validate_device(data: Any) -> Device:
    """One device of any Modbus protocol (by its ``protocol``); errors located from the
    device down (``("tags", 3, "type")``), as a device map's are."""
    try:
        device: Device = _device().validate_python(data)
    except ValidationError as exc:
        raise _without_protocol(exc, at=0) from None
    return device


def _without_protocol(exc: ValidationError, at: int = 1) -> ValidationError:
    """The union's member name (``modbus_tcp``) out of error locations: ``(1, "tags", 3)``."""
    details = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        if len(loc) > at and loc[at] in _PROTOCOLS:
            loc = (*loc[:at], *loc[at + 1 :])
        kind = error(err["msg"]) if err["type"] == "modbus_config" else err["type"]
        detail = InitErrorDetails(type=kind, loc=loc, input=err.get("input"))
        if "ctx" in err and not isinstance(kind, PydanticCustomError):
            detail["ctx"] = err["ctx"]
        details.append(detail)
    return ValidationError.from_exception_data(exc.title, details)


_PROTOCOLS = ("modbus_tcp", "modbus_rtu", "modbus_rtu_tcp")


# Built when first used: only the tools load device files (the daemon validates its whole
# config at once), and a validator costs memory.
@cache
def _device() -> TypeAdapter[Device]:
    return TypeAdapter(Annotated[Device, Field(discriminator="protocol")])


@cache
def _device_list() -> TypeAdapter[list[Device]]:
    return TypeAdapter(list[Annotated[Device, Field(discriminator="protocol")]])
