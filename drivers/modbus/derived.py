"""What the running gateway derives from a validated Modbus tag or device: written once
for the pydantic models (tags.py, config.py) and the daemon's plain copies of them
(gateway/plainconfig.py), which run without pydantic. Pure: no pydantic, no protocol
library."""

from __future__ import annotations

from ..write import WriteKind
from .types import TYPES, register_count


class TagDerived:
    """Of a Modbus tag."""

    __slots__ = ()

    @property
    def registers(self) -> int:
        """Registers (or bits) the tag occupies."""
        return register_count(self.table, self.type, self.length)

    def write_kind(self) -> WriteKind:
        """What a command's value must be for this tag (see drivers/write.py)."""
        spec = TYPES[self.type]
        if spec.is_bool:
            return "bool"
        if spec.is_string:
            return "string"
        if spec.is_float or self.scale != 1 or self.offset != 0:
            return "float"
        return "int"


class RtuDerived:
    """Of a Modbus RTU device on a serial port."""

    __slots__ = ()

    @property
    def line(self) -> str:
        """e.g. ``19200 8E1``."""
        return f"{self.baudrate} {self.bytesize}{self.parity.value}{self.stopbits}"
