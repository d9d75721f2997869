"""Register responses decoded with one ``struct`` call, keeping the bytes as sent.

pymodbus decodes a read-registers response one register at a time and formats every
response for a debug log line even when debug logging is off; on a 125-register
response that is about half the client's CPU per request. These classes replace its
function 3 and 4 responses on our clients (``client.register``): same data, plus
``raw`` (the register bytes) that the plan's decoders read directly.
"""

from __future__ import annotations

import struct
from typing import Any

from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
)

__all__ = ["register_fast_responses"]

_UNPACK = {n: struct.Struct(f">{n}H").unpack_from for n in range(126)}


class _Fast:
    raw: bytes = b""
    function_code: int

    def decode(self, data: bytes) -> None:
        n = data[0]
        if n >= len(data) or n & 1:
            raise ModbusIOException(
                f"byte_count {n} does not fit a packet of {len(data)} bytes",
                function_code=self.function_code,
            )
        self.raw = data[1 : 1 + n]
        unpack = _UNPACK.get(n // 2) or struct.Struct(f">{n // 2}H").unpack_from
        self.registers = list(unpack(data, 1))  # type: ignore[attr-defined]

    def __str__(self) -> str:
        return f"{type(self).__name__}(fc {self.function_code}, {len(self.raw) // 2} registers)"


class FastHoldingResponse(_Fast, ReadHoldingRegistersResponse):
    """Function 3 response."""


class FastInputResponse(_Fast, ReadInputRegistersResponse):
    """Function 4 response."""


def register_fast_responses(client: Any) -> None:
    """Use these responses on one pymodbus client (its decoder's own table)."""
    client.register(FastHoldingResponse)
    client.register(FastInputResponse)
