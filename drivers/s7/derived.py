"""What the running gateway derives from a validated S7 tag or device: written once
for the pydantic models (config.py) and the daemon's plain copies of them
(gateway/plainconfig.py), which run without pydantic. Pure: no pydantic, no snap7."""

from __future__ import annotations

from ..write import WriteKind
from .address import Address
from .types import TYPES, DataType, type_size


class TagDerived:
    """Of an S7 tag."""

    __slots__ = ()

    @property
    def location(self) -> Address:
        """The parsed address."""
        return self._location

    @property
    def data_type(self) -> DataType:
        """The resolved type (never None once validated)."""
        assert self.type is not None
        return self.type

    @property
    def size(self) -> int:
        """Bytes the tag occupies (a BOOL reads its whole byte)."""
        return type_size(self.data_type, self.length)

    def write_kind(self) -> WriteKind:
        """What a command's value must be for this tag (see drivers/write.py)."""
        dtype = self.data_type
        if dtype is DataType.BOOL:
            return "bool"
        if dtype is DataType.STRING:
            return "string"
        if TYPES[dtype].is_float or self.scale != 1 or self.offset != 0:
            return "float"
        return "int"


class DeviceDerived:
    """Of an S7 PLC."""

    __slots__ = ()

    @property
    def tsaps(self) -> tuple[int, int]:
        """(local, remote) TSAP; remote from rack/slot as a PG connection unless given."""
        local = 0x0100 if self.local_tsap is None else self.local_tsap
        if self.remote_tsap is not None:
            return local, self.remote_tsap
        return local, 0x0100 | self.rack << 5 | self.slot
