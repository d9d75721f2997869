"""Config models of an OPC UA device (pydantic v2); no asyncua import, so loading is cheap.

Everything that can be checked without the server is checked here (and in
``connection.py``): endpoint syntax, node id and browse path syntax, type names,
security combinations, that credential and certificate files exist. Namespace URIs
and browse paths are resolved at connect. Every message quotes the bad value and
lists what is accepted; locations are precise (``tags[3].node``) so the gateway can
point at the YAML line.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, TypeAdapter, field_validator, model_validator

from ..common import CompactFields, read_device_list
from ..write import WriteSpec, spec_problem
from .connection import (
    Connection,
    Model,
    SecurityMode,
    SecurityPolicy,
    config_error,
    fail_at,
    parse_enum,
)
from .derived import _WRITE_KINDS, DeviceDerived, TagDerived
from .nodeid import NodeSyntaxError, parse_node
from .types import DeadbandType, Mode, lookup_type

__all__ = [
    "Connection",
    "Deadband",
    "DeadbandType",
    "Mode",
    "OpcuaDevice",
    "OpcuaTag",
    "SecurityMode",
    "SecurityPolicy",
    "load_device_map",
    "resolve_paths",
]

_TAG_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")
_DEVICE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class Deadband(Model):
    """A data-change filter: the server reports a change only when it is large enough."""

    type: DeadbandType = Field(description="absolute | percent (of the node's EURange)")
    value: float = Field(ge=0, allow_inf_nan=False, description="threshold: >= 0; percent: 0..100")

    @field_validator("type", mode="before")
    @classmethod
    def _parse_type(cls, v: Any) -> DeadbandType:
        return parse_enum(DeadbandType, v, "deadband type")

    @model_validator(mode="after")
    def _check_percent(self) -> Deadband:
        if self.type is DeadbandType.PERCENT and self.value > 100:
            fail_at(
                "Deadband",
                ("value",),
                self.value,
                f"percent deadband {self.value} is out of range; accepted: 0..100",
            )
        return self


class OpcuaTag(TagDerived, CompactFields, Model):
    """One variable read from the server."""

    name: str = Field(description="tag name, unique within the device; [A-Za-z0-9_.:-]+")
    node: str = Field(
        description="ns=2;i=1001 | ns=2;s=Boiler.Temp | ns=2;g=<guid> | ns=2;b=<base64> | "
        "i=2258 | nsu=<uri>;s=... | /Objects/2:Plant/2:Boiler/2:Temperature (browse path)"
    )
    type: str | None = Field(
        None,
        description="expected OPC UA type (e.g. Double), optional; a value of another type "
        "is reported BAD_CONFIG instead of being passed on",
    )
    index: int | None = Field(
        None,
        ge=0,
        description="element of an array variable to read (0-based); arrays themselves are "
        "not carried by the wire format",
    )
    deadband: Deadband | None = Field(None, description="overrides the device's deadband")
    unit: str | None = Field(None, description="engineering unit, informational")
    write: WriteSpec | None = Field(
        None,
        description="makes the tag writable by signed commands (written with the node's "
        "data type); see drivers/write.py",
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not _TAG_NAME.match(v):
            raise config_error(
                f"tag name {v!r} is not allowed; accepted: letters, digits and _ . : -"
            )
        return v

    @field_validator("node")
    @classmethod
    def _check_node(cls, v: str) -> str:
        try:
            return str(parse_node(v))  # canonical form, e.g. GUIDs in lowercase
        except NodeSyntaxError as exc:
            raise config_error(str(exc)) from None

    @field_validator("type")
    @classmethod
    def _check_type(cls, v: str | None) -> str | None:
        if v is None:
            return None
        try:
            return lookup_type(v).name
        except ValueError as exc:
            raise config_error(str(exc)) from None

    @model_validator(mode="after")
    def _check_deadband(self) -> OpcuaTag:
        if self.deadband is not None and self.type and not lookup_type(self.type).numeric:
            fail_at(
                "OpcuaTag",
                ("deadband",),
                self.deadband.type.value,
                f"tag {self.name!r}: a deadband compares numbers but the tag's type is "
                f"{self.type!r}; remove the deadband or correct the type",
            )
        if self.write is not None:
            self._check_write(self.write)
        return self

    def _check_write(self, write: WriteSpec) -> None:
        def fail(message: str) -> None:
            fail_at("OpcuaTag", ("write",), write, f"tag {self.name!r}: {message}")

        if self.index is not None:
            fail("writing one element of an array is not supported; remove write or index")
        if self.type is not None and self.type not in _WRITE_KINDS:
            fail(
                f"writing type {self.type} is not supported; writable types: "
                + ", ".join(_WRITE_KINDS)
            )
        if problem := spec_problem(write, self.write_kind(), None, None):
            fail(problem)


# Bounds of the device's timing fields: one table read by the validator and the docs.
_RANGES: dict[str, tuple[int, int]] = {
    "poll_interval_ms": (10, 86_400_000),
    "publishing_interval_ms": (10, 86_400_000),
    "sampling_interval_ms": (0, 86_400_000),
}


class OpcuaDevice(DeviceDerived, Connection):
    """One OPC UA server (one session) and the variables read from it."""

    protocol: Literal["opcua"] = Field(description="selects this driver")
    name: str = Field(description="device name, unique in the gateway; [A-Za-z0-9_.-]+")
    mode: Mode = Field(Mode.SUBSCRIBE, description="subscribe | poll")
    poll_interval_ms: int = Field(
        1000,
        description="poll mode: time between reads; subscribe mode: how often nodes the "
        "server will not monitor are read instead",
    )
    publishing_interval_ms: int | None = Field(
        None,
        description="subscribe mode: how often the server sends the changes it collected; "
        "default: poll_interval_ms",
    )
    sampling_interval_ms: int | None = Field(
        None,
        description="subscribe mode: how often the server samples each node (0: as fast as "
        "it can); default: publishing interval",
    )
    max_value_bytes: int = Field(
        65536,
        ge=16,
        le=16 * 2**20,
        description="largest string or byte string value passed on (LocalizedText, names "
        "too); a larger one becomes a BAD_CONFIG reading saying so (never a giant message). "
        "It also bounds the answers taken from the server: 4 times this, at least 4 MiB",
    )
    deadband: Deadband | None = Field(
        None, description="subscribe mode: default data-change filter of numeric tags"
    )
    tags: list[OpcuaTag] = Field(description="at least one tag; names unique")

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not _DEVICE_NAME.match(v):
            raise config_error(
                f"device name {v!r} is not allowed; accepted: letters, digits and _ . -"
            )
        return v

    @field_validator("mode", mode="before")
    @classmethod
    def _parse_mode(cls, v: Any) -> Mode:
        return parse_enum(Mode, v, "mode")

    @field_validator(*_RANGES, mode="after")
    @classmethod
    def _check_range(cls, v: int | None, info: Any) -> int | None:
        lo, hi = _RANGES[info.field_name]
        if v is not None and not lo <= v <= hi:
            raise config_error(f"{info.field_name} {v} is out of range; accepted: {lo}..{hi}")
        return v

    @field_validator("tags")
    @classmethod
    def _check_tags(cls, v: list[OpcuaTag]) -> list[OpcuaTag]:
        if not v:
            raise config_error("a device needs at least one tag; 'tags' is empty")
        first: dict[str, int] = {}
        for i, tag in enumerate(v):
            if tag.name in first:
                fail_at(
                    "OpcuaDevice",
                    (i, "name"),
                    tag.name,
                    f"duplicate tag name {tag.name!r}: tags[{first[tag.name]}] has it too; "
                    "tag names must be unique within a device",
                )
            first[tag.name] = i
        return v

    @model_validator(mode="after")
    def _check_mode(self) -> OpcuaDevice:
        if self.mode is Mode.POLL:
            where = [("deadband",)] if self.deadband else []
            where += [("tags", i, "deadband") for i, t in enumerate(self.tags) if t.deadband]
            if where:
                fail_at(
                    "OpcuaDevice",
                    where[0],
                    "deadband",
                    "a deadband is applied by the server to subscriptions; in mode 'poll' "
                    "every read reports every value: remove it or set mode: subscribe",
                )
        return self


def load_device_map(path: str | Path) -> list[OpcuaDevice]:
    """Load a YAML file holding ``devices:`` (a list) or a bare list of devices.

    Relative ``password_file`` and ``server_certificate`` paths are taken relative to
    the file's folder. Raises ``ValidationError`` or ``ValueError`` (wrong shape).
    """
    data = read_device_list(path)
    resolve_paths(data, Path(path).resolve().parent)
    return _device_list().validate_python(data)


def resolve_paths(devices: Any, base: Path) -> None:
    """Make the relative file paths of raw (not yet validated) OPC UA device dicts
    relative to ``base``, the config file's folder (in place; other devices untouched)."""
    for d in devices if isinstance(devices, list) else ():
        if isinstance(d, dict) and d.get("protocol") == "opcua":
            for key in ("password_file", "server_certificate"):
                if isinstance(d.get(key), str) and not Path(d[key]).is_absolute():
                    d[key] = str(base / d[key])


@cache
def _device_list() -> TypeAdapter[list[OpcuaDevice]]:
    """Built when first used: only the tools load device files (the daemon validates its
    whole config at once), and a validator costs memory."""
    return TypeAdapter(list[OpcuaDevice])
