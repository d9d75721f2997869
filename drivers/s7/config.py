"""Config models of a Siemens S7 device (pydantic v2); no snap7 import.

Everything is checked at load time, so a device that loads can be compiled into a read
plan without further errors. Every message names the tag, quotes the bad value, lists
what is accepted and says how to fix it; locations are precise (``tags[3].type``) so the
gateway can point at the YAML line.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any, Literal, NoReturn

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from ..common import (
    CompactFields,
    check_device_name,
    check_host,
    duplicate_tag,
    range_problem,
    read_device_list,
)
from ..write import WriteSpec, spec_problem
from .address import Address, AddressError, parse_address, parse_tsap
from .derived import DeviceDerived, TagDerived
from .types import (
    LETTERS,
    MAX_BYTE,
    STRING_MAX,
    TYPES,
    Area,
    DataType,
    parse_type,
    types_for_letter,
)

__all__ = ["DeviceConfig", "S7Tag", "load_devices"]

_TAG_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")
_STRING_TYPE = re.compile(r"^\s*STRING\s*\[\s*(\d+)\s*\]\s*$", re.IGNORECASE)


def _error(message: str) -> PydanticCustomError:
    # The message is passed as context so braces in quoted values are not templates.
    return PydanticCustomError("s7_config", "{message}", {"message": message})


def _fail_at(title: str, loc: tuple[str | int, ...], value: Any, message: str) -> NoReturn:
    """Raise an error located at a nested field (e.g. ``tags[3].type``)."""
    detail = InitErrorDetails(type=_error(message), loc=loc, input=value)
    raise ValidationError.from_exception_data(title, [detail])


def _bounded(default: int, lo: int, hi: int | None, description: str) -> Any:
    """A bounded int field; the bound check itself is in ``_RANGES`` for a quoting message."""
    extra: dict[str, Any] = {"minimum": lo}
    if hi is not None:
        extra["maximum"] = hi
    span = f"{lo}..{hi}" if hi is not None else f">= {lo}"
    return Field(default, description=f"{description} ({span})", json_schema_extra=extra)


class _Model(BaseModel):
    # defer_build: no validator of its own until one is used directly; the gateway's
    # config validator holds this model's checks too (0.6 MiB for every protocol's models)
    model_config = ConfigDict(extra="forbid", use_enum_values=False, defer_build=True)


class S7Tag(TagDerived, CompactFields, _Model):
    """One value read from the PLC."""

    name: str = Field(description="tag name, unique within the device; [A-Za-z0-9_.:-]+")
    address: str = Field(
        description="STEP 7 absolute address: DB10.DBD4, DB1.DBX0.3, DB1.DBB2, DB1.DBW6, "
        "DB3.STRING10.20, MW10, MD20, MB5, M0.1, I0.1/E0.1, IB0, IW2/EW2, Q0.0/A0.0, QB1, "
        "QW4/AW4; case-insensitive, optional leading %"
    )
    type: DataType | None = Field(
        None,
        description="BOOL, BYTE, WORD, DWORD, INT, DINT, REAL, LREAL, STRING; default: "
        "implied by the address's size letter (X BOOL, B BYTE, W WORD, D DWORD); LREAL and "
        "STRING are addressed by their first byte (DB1.DBB8)",
    )
    length: int | None = Field(
        None,
        description=f"STRING only: its declared length in characters (1..{STRING_MAX}), "
        "as in STRING[20]; the value occupies length + 2 bytes",
    )
    scale: float = Field(
        1.0,
        allow_inf_nan=False,
        description="value = raw * scale + offset; with scale 1 and offset 0 integers stay "
        "integers; numeric types only",
    )
    offset: float = Field(0.0, allow_inf_nan=False, description="added after scaling")
    unit: str | None = Field(None, description="engineering unit, informational (e.g. 'degC')")
    write: WriteSpec | None = Field(
        None,
        description="makes the tag writable by signed commands (DB, M and Q areas): "
        "{min, max} or values, min_interval_s; see drivers/write.py",
    )

    _location: Address = PrivateAttr()

    @model_validator(mode="before")
    @classmethod
    def _string_type_notation(cls, data: Any) -> Any:
        # TIA Portal writes "String[20]": accept it as type STRING with length 20.
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            return data
        if m := _STRING_TYPE.match(data["type"]):
            length = int(m[1])
            if data.get("length") not in (None, length):
                raise _error(
                    f"type {data['type']!r} says length {length} but length is "
                    f"{data['length']!r}; give the length once"
                )
            data = {**data, "type": "STRING", "length": length}
        return data

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not _TAG_NAME.match(v):
            raise _error(f"tag name {v!r} is not allowed; accepted: letters, digits and _ . : -")
        return v

    @field_validator("address")
    @classmethod
    def _check_address(cls, v: str) -> str:
        try:
            parse_address(v)
        except AddressError as exc:
            raise _error(str(exc)) from None
        return v.strip()

    @field_validator("type", mode="before")
    @classmethod
    def _check_type(cls, v: Any) -> DataType | None:
        try:
            return None if v is None else parse_type(v)
        except ValueError as exc:
            raise _error(str(exc)) from None

    @model_validator(mode="after")
    def _resolve(self) -> S7Tag:
        at = parse_address(self.address)
        self._location = at
        where = f"tag {self.name!r}: address {self.address!r}"
        if at.string_length is not None:  # DB3.STRING10.20
            if self.type not in (None, DataType.STRING):
                self._fail(
                    "type", self.type.value, f"{where} is a STRING; remove type or set it to STRING"
                )
            if self.length not in (None, at.string_length):
                self._fail(
                    "length",
                    self.length,
                    f"{where} says length {at.string_length} but length is {self.length}; "
                    "give the length once",
                )
            self.type, self.length = DataType.STRING, at.string_length
        if self.type is None:
            self.type = LETTERS[at.letter].default
        spec = TYPES[self.type]
        if at.letter not in spec.letters:
            self._fail("type", self.type.value, self._contradiction(at))
        if self.type is DataType.STRING and self.length is None:
            self._fail(
                "type",
                "STRING",
                f"tag {self.name!r}: a STRING needs its declared length; add length: N "
                f"(1..{STRING_MAX}, as in STRING[N]) or write the address as "
                f"DB{at.db}.STRING{at.byte}.N",
            )
        if self.type is not DataType.STRING and self.length is not None:
            message = f"tag {self.name!r}: length applies to STRING only; remove it"
            self._fail("length", self.length, message)
        if self.length is not None and not 1 <= self.length <= STRING_MAX:
            self._fail(
                "length",
                self.length,
                f"tag {self.name!r}: STRING length {self.length} is out of range; "
                f"accepted: 1..{STRING_MAX}",
            )
        for field, neutral in (("scale", 1.0), ("offset", 0.0)):
            value = getattr(self, field)
            if not spec.numeric and field in self.model_fields_set and value != neutral:
                self._fail(
                    field,
                    value,
                    f"tag {self.name!r}: {field} {value!r} has no effect on type "
                    f"{self.type.value} (not a number); remove it",
                )
        if self.scale == 0:
            self._fail(
                "scale",
                self.scale,
                f"tag {self.name!r}: scale 0 would make every value equal to offset; "
                "accepted: any non-zero number",
            )
        if at.byte + self.size > MAX_BYTE + 1:
            last = MAX_BYTE + 1 - self.size
            self._fail(
                "address",
                self.address,
                f"{where}: {self.type.value} needs {self.size} bytes "
                f"({at.byte}..{at.byte + self.size - 1}) but the area ends at byte {MAX_BYTE}; "
                f"accepted: start byte 0..{last}",
            )
        if self.write is not None:
            self._check_write(self.write, at)
        return self

    def _check_write(self, write: WriteSpec, at: Address) -> None:
        if at.area is Area.I:
            self._fail(
                "write",
                write,
                f"tag {self.name!r}: the input area (I/E) is written by the PLC's inputs, not "
                "by clients; only DB, M and Q tags can be written: remove write",
            )
        spec = TYPES[self.data_type]
        lo: float | None = None
        hi: float | None = None
        if spec.numeric:
            ends = (spec.lo * self.scale + self.offset, spec.hi * self.scale + self.offset)
            lo, hi = min(ends), max(ends)
        if problem := spec_problem(write, self.write_kind(), lo, hi):
            self._fail("write", write, f"tag {self.name!r}: {problem}")

    def _contradiction(self, at: Address) -> str:
        assert self.type is not None
        dtype, spec = self.type, TYPES[self.type]
        letter = LETTERS[at.letter]
        if dtype is DataType.BOOL:
            need, fix = "is a single bit", at.with_letter("X")
        elif not spec.size or dtype is DataType.LREAL:
            need = "has no size letter of its own: address its first byte with B"
            fix = at.with_letter("B")
        else:
            need, fix = f"needs {spec.size} bytes", at.with_letter(spec.letters[0])
        accepted = ", ".join(t.value for t in types_for_letter(at.letter))
        return (
            f"tag {self.name!r}: address {self.address!r} reads {letter.width} but type "
            f"{dtype.value} {need}; accepted with {at.letter}: {accepted}; for "
            f"{dtype.value} write {fix}"
        )

    def _fail(self, field: str, value: Any, message: str) -> NoReturn:
        _fail_at("S7Tag", (field,), value, message)


# Bounds of the device's integer fields: one table read by the validator and the docs.
_RANGES: dict[str, tuple[int, int | None]] = {
    "port": (1, 65535),
    "rack": (0, 7),
    "slot": (0, 31),
    "pdu_size": (64, 960),
    "poll_interval_ms": (10, None),
    "timeout_ms": (10, 600_000),
    "max_gap": (0, 960),
    "max_items_per_request": (1, 20),
}


class DeviceConfig(DeviceDerived, _Model):
    """One S7 PLC (one connection to host:port, rack/slot or TSAPs) and its tags."""

    protocol: Literal["s7"] = Field(description="selects this driver")
    name: str = Field(description="device name, unique in the gateway; [A-Za-z0-9_.-]+")
    host: str = Field(description="IPv4 or IPv6 literal (e.g. '::1') or host name")
    port: int = _bounded(102, *_RANGES["port"], "TCP port (ISO-on-TCP)")
    rack: int = _bounded(0, *_RANGES["rack"], "rack of the CPU; 0 on nearly every PLC")
    slot: int = _bounded(
        1, *_RANGES["slot"], "slot of the CPU: S7-1200/1500 1, S7-300 2, S7-400 see hardware"
    )
    local_tsap: int | None = Field(
        None,
        description="instead of rack/slot: our TSAP, hex ('0x0100' or '01.00'); default 0x0100",
    )
    remote_tsap: int | None = Field(
        None,
        description="instead of rack/slot: the PLC's TSAP, hex ('0x0200' or '02.00'), e.g. "
        "for LOGO! or S7-200; with rack/slot it is 0x0100 + rack * 32 + slot",
    )
    pdu_size: int = _bounded(
        480,
        *_RANGES["pdu_size"],
        "PDU size to request; the PLC may grant less (S7-1200: 240, S7-300: 240, "
        "S7-400/1500: 480 or 960), and the plan is re-packed for the granted size",
    )
    poll_interval_ms: int = _bounded(1000, *_RANGES["poll_interval_ms"], "time between reads")
    timeout_ms: int = _bounded(
        1000, *_RANGES["timeout_ms"], "how long to wait to connect and for each response"
    )
    max_gap: int = _bounded(
        16,
        *_RANGES["max_gap"],
        "unused bytes read to merge two tags of one area/DB into one item; 16 is about what "
        "a separate item costs on the wire (12 request + 4 response bytes)",
    )
    max_items_per_request: int = _bounded(
        20,
        *_RANGES["max_items_per_request"],
        "items (address ranges) in one multi-variable read; 20 is the S7 CPUs' limit",
    )
    tags: list[S7Tag] = Field(description="at least one tag; names unique")

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

    @field_validator("local_tsap", "remote_tsap", mode="before")
    @classmethod
    def _check_tsap(cls, v: Any) -> int | None:
        try:
            return None if v is None else parse_tsap(v)
        except AddressError as exc:
            raise _error(str(exc)) from None

    @field_validator(*_RANGES, mode="after")
    @classmethod
    def _check_range(cls, v: int, info: Any) -> int:
        if problem := range_problem(info.field_name, v, *_RANGES[info.field_name]):
            raise _error(problem)
        return v

    @field_validator("tags")
    @classmethod
    def _check_tags(cls, v: list[S7Tag]) -> list[S7Tag]:
        if not v:
            raise _error("a device needs at least one tag; 'tags' is empty")
        if dup := duplicate_tag(v):
            i, message = dup
            _fail_at("DeviceConfig", (i, "name"), v[i].name, message)  # under ("tags",)
        return v

    @model_validator(mode="after")
    def _check_tsaps(self) -> DeviceConfig:
        given = {"rack", "slot"} & self.model_fields_set
        if self.remote_tsap is not None and given:
            field = sorted(given)[0]
            _fail_at(
                "DeviceConfig",
                (field,),
                getattr(self, field),
                "rack/slot and remote_tsap are two ways to name the PLC's end of the "
                f"connection; give rack and slot (most PLCs) or remote_tsap (LOGO!, S7-200, a "
                f"configured connection), not both: remove {' and '.join(sorted(given))} or "
                "remote_tsap",
            )
        if self.local_tsap is not None and self.remote_tsap is None:
            _fail_at(
                "DeviceConfig",
                ("local_tsap",),
                f"0x{self.local_tsap:04X}",
                "local_tsap needs remote_tsap: TSAPs replace rack/slot as a pair; add "
                "remote_tsap, or remove local_tsap (with rack/slot ours is 0x0100)",
            )
        return self


def load_devices(path: str | Path) -> list[DeviceConfig]:
    """Load a YAML file holding ``devices:`` (a list) or a bare list of devices.

    Raises ``ValidationError`` (locations start with the list index) or ``ValueError``
    for a file of the wrong shape.
    """
    data = read_device_list(path)
    return _device_list().validate_python(data)


@cache
def _device_list() -> TypeAdapter[list[DeviceConfig]]:
    """Built when first used: only the tools load device files (the daemon validates its
    whole config at once), and a validator costs memory."""
    return TypeAdapter(list[DeviceConfig])
