"""Read responses for the RTU links' pymodbus clients.

pymodbus decodes a read-registers response one register at a time and formats every
response for a debug log line even when debug logging is off; on a 125-register
response that is about half the client's CPU per request. These classes replace its
function 3 and 4 responses on our clients (``client.register``): same data, plus
``raw`` (the register bytes) that the plan's decoders read directly. Every read
response keeps its byte count and the data bytes it really had, for
``pdu.reply_mismatch``.
"""

from __future__ import annotations

import struct
from typing import Any

from pymodbus.pdu.bit_message import ReadCoilsResponse, ReadDiscreteInputsResponse
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
)
from pymodbus.pdu.utils import unpack_bitstring

__all__ = ["register_fast_responses"]

_UNPACK = {n: struct.Struct(f">{n}H").unpack_from for n in range(126)}


class _Fast:
    raw: bytes = b""
    function_code: int
    byte_count = -1  # as the answer says
    data_len = -1  # data bytes the answer really holds

    def decode(self, data: bytes) -> None:
        n = data[0] if data else -1
        self.byte_count, self.data_len = n, len(data) - 1
        if n != self.data_len or n & 1:  # reply_mismatch says what is wrong
            self.raw, self.registers = b"", []  # type: ignore[attr-defined]
            return
        self.raw = data[1 : 1 + n]
        unpack = _UNPACK.get(n // 2) or struct.Struct(f">{n // 2}H").unpack_from
        self.registers = list(unpack(data, 1))  # type: ignore[attr-defined]

    def __str__(self) -> str:
        return f"{type(self).__name__}(fc {self.function_code}, {len(self.raw) // 2} registers)"


class FastHoldingResponse(_Fast, ReadHoldingRegistersResponse):
    """Function 3 response."""


class FastInputResponse(_Fast, ReadInputRegistersResponse):
    """Function 4 response."""


class _CountedBits:
    function_code: int
    byte_count = -1
    data_len = -1

    def decode(self, data: bytes) -> None:
        self.byte_count = data[0] if data else -1
        self.data_len = len(data) - 1
        self.bits = unpack_bitstring(data[1:])  # type: ignore[attr-defined]


class CountedCoilsResponse(_CountedBits, ReadCoilsResponse):
    """Function 1 response, with its byte count."""


class CountedDiscreteResponse(_CountedBits, ReadDiscreteInputsResponse):
    """Function 2 response, with its byte count."""


def register_fast_responses(client: Any) -> None:
    """Use these responses on one pymodbus client (its decoder's own table)."""
    client.register(FastHoldingResponse)
    client.register(FastInputResponse)
    client.register(CountedCoilsResponse)
    client.register(CountedDiscreteResponse)
