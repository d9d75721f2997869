"""What the running gateway derives from a validated OPC UA tag or device: written once
for the pydantic models (config.py, connection.py) and the daemon's plain copies of them
(gateway/plainconfig.py), which run without pydantic. Pure: no pydantic, no protocol
library."""

from __future__ import annotations

from urllib.parse import urlsplit

from ..write import WriteKind

DEFAULT_PORT = 4840

# OPC UA types a command can write, and what the command's value must be.
_WRITE_KINDS: dict[str, WriteKind] = {
    "Boolean": "bool",
    **dict.fromkeys(
        ("SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64"), "int"
    ),
    "Float": "float",
    "Double": "float",
    "String": "string",
}


class TagDerived:
    """Of an OPC UA tag."""

    __slots__ = ()

    def write_kind(self) -> WriteKind:
        """What a command's value must be for this tag (see drivers/write.py)."""
        if self.type is None:
            return "any"
        return _WRITE_KINDS.get(self.type, "any")


class ConnectionDerived:
    """Of an OPC UA server's connection settings."""

    __slots__ = ()

    @property
    def host(self) -> str:
        return urlsplit(self.endpoint).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.endpoint).port or DEFAULT_PORT

    def read_password(self) -> str | None:
        """The password, from the config or the first line of password_file (read now)."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            text = self.password_file.read_text(encoding="utf-8")
            return text.splitlines()[0] if text else ""
        return None


class DeviceDerived(ConnectionDerived):
    """Of an OPC UA device."""

    __slots__ = ()

    @property
    def publishing_ms(self) -> int:
        return self.publishing_interval_ms or self.poll_interval_ms

    @property
    def sampling_ms(self) -> int:
        s = self.sampling_interval_ms
        return self.publishing_ms if s is None else s
