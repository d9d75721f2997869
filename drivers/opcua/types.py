"""The one table of OPC UA built-in types: what each becomes in a reading (pure, no asyncua).

The config validator (``type:`` of a tag), the decoder, the simulator, the browse
command and the README all read :data:`TYPES`. Ids are the built-in type ids of
OPC UA Part 6 §5.1.2, which are also asyncua's ``VariantType`` values.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["TYPES", "TYPE_BY_ID", "TypeSpec", "lookup_type", "type_table_markdown"]


@dataclass(frozen=True, slots=True)
class TypeSpec:
    name: str
    """Built-in type name as OPC UA writes it (and as ``type:`` accepts it)."""
    id: int
    value: str
    """What the reading's value is, for the docs."""
    numeric: bool = False
    """A deadband applies (the server compares numbers)."""


TYPES: tuple[TypeSpec, ...] = (
    TypeSpec("Boolean", 1, "bool"),
    TypeSpec("SByte", 2, "int", True),
    TypeSpec("Byte", 3, "int", True),
    TypeSpec("Int16", 4, "int", True),
    TypeSpec("UInt16", 5, "int", True),
    TypeSpec("Int32", 6, "int", True),
    TypeSpec("UInt32", 7, "int", True),
    TypeSpec("Int64", 8, "int", True),
    TypeSpec("UInt64", 9, "int", True),
    TypeSpec("Float", 10, "float (the single-precision value, exactly)", True),
    TypeSpec("Double", 11, "float", True),
    TypeSpec("String", 12, "str (a null string is '')"),
    TypeSpec(
        "DateTime",
        13,
        "int: ns since the Unix epoch, UTC, in whole µs (asyncua drops the last 100-ns "
        "tick); the null DateTime (1601-01-01) is -11644473600000000000",
    ),
    TypeSpec("Guid", 14, "str, e.g. '72962b91-fa75-4ae6-8d28-b404dc7daf63'"),
    TypeSpec("ByteString", 15, "str: lowercase hex, e.g. '0a1b' (a null ByteString is '')"),
    TypeSpec("NodeId", 17, "str, e.g. 'ns=2;s=Pump1'"),
    TypeSpec("ExpandedNodeId", 18, "str, like NodeId"),
    TypeSpec("StatusCode", 19, "int: the 32-bit code, e.g. 2150891520 for BadNodeIdUnknown"),
    TypeSpec("QualifiedName", 20, "str: '<namespace index>:<name>'"),
    TypeSpec("LocalizedText", 21, "str: the text, without its locale"),
)
"""Supported scalar types. ExtensionObject (structures), DataValue, Variant and
DiagnosticInfo values, and arrays of any type, are reported with quality BAD_CONFIG.
XmlElement (deprecated since OPC UA 1.04) is missing: asyncua cannot decode it."""

TYPE_BY_ID: dict[int, TypeSpec] = {t.id: t for t in TYPES}
_BY_LOWER: dict[str, TypeSpec] = {t.name.lower(): t for t in TYPES}
# Names engineers bring from PLC and Modbus maps, mapped to the OPC UA name.
_ALIASES: dict[str, str] = {
    "bool": "Boolean",
    "int8": "SByte",
    "uint8": "Byte",
    "float32": "Float",
    "real": "Float",
    "float64": "Double",
    "lreal": "Double",
    "str": "String",
}


def lookup_type(name: str) -> TypeSpec:
    """The spec of a type name (case-insensitive); ``ValueError`` lists the accepted names."""
    spec = _BY_LOWER.get(name.strip().lower())
    if spec is not None:
        return spec
    message = f"unknown type {name!r}; accepted: {', '.join(t.name for t in TYPES)}"
    alias = _ALIASES.get(name.strip().lower())
    close = [alias] if alias else difflib.get_close_matches(name, [t.name for t in TYPES], n=2)
    if close:
        message += f" (did you mean {' or '.join(map(repr, close))}?)"
    raise ValueError(message)


def type_table_markdown() -> str:
    """The README's type table."""
    rows = ["| OPC UA type | reading value | deadband |", "|---|---|---|"]
    for t in TYPES:
        rows.append(f"| `{t.name}` | {t.value} | {'yes' if t.numeric else 'no'} |")
    return "\n".join(rows)


# Device settings' choices (here, not in config.py: the daemon runs without pydantic)
class Mode(StrEnum):
    SUBSCRIBE = "subscribe"
    """The server samples and pushes changes: least traffic, no missed short changes
    between polls; falls back to polling where the server refuses."""
    POLL = "poll"
    """Read every node each poll_interval_ms: one Read request per MaxNodesPerRead nodes."""


class DeadbandType(StrEnum):
    ABSOLUTE = "absolute"
    """Report a change only when it exceeds ``value`` in engineering units."""
    PERCENT = "percent"
    """Report a change only when it exceeds ``value`` % of the node's EURange (the server
    must know the range; many do not support percent deadbands)."""


class SecurityPolicy(StrEnum):
    NONE = "None"
    BASIC256SHA256 = "Basic256Sha256"
    AES128SHA256RSAOAEP = "Aes128Sha256RsaOaep"


class SecurityMode(StrEnum):
    NONE = "None"
    SIGN = "Sign"
    """Messages are signed (tamper-proof) but readable on the wire."""
    SIGN_AND_ENCRYPT = "SignAndEncrypt"
    """Signed and encrypted; costs a little more CPU per message."""
