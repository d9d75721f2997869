"""Read responses as the driver checks them, and the check itself.

pymodbus decodes a read-registers response one register at a time and formats every
response for a debug log line even when debug logging is off; on a 125-register
response that is about half the client's CPU per request. These classes replace its
function 3 and 4 responses on our clients (``client.register``): same data, plus
``raw`` (the register bytes) that the plan's decoders read directly.

pymodbus takes any answer that arrives for a request: another function's (a holding
register read answered as an input register read), transaction id 0, a byte count that
is not what was asked, an exception answer for another function. Every read response
here keeps its byte count and the data bytes it really had, and :func:`reply_mismatch`
compares an answer with its request: a mismatch is never data (the driver makes the
request's readings bad, saying what did not match, and drops the link).
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

__all__ = ["ReplyMismatch", "register_fast_responses", "reply_mismatch"]

# client method -> the function code its answer must carry
FUNCTIONS = {
    "read_coils": 1,
    "read_discrete_inputs": 2,
    "read_holding_registers": 3,
    "read_input_registers": 4,
    "write_coil": 5,
    "write_register": 6,
    "write_coils": 15,
    "write_registers": 16,
    "mask_write_register": 22,
}
_REGISTER_READS = (3, 4)
_BIT_READS = (1, 2)


class ReplyMismatch(Exception):
    """An answer that does not answer the request (see :func:`reply_mismatch`)."""


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


def reply_mismatch(
    rsp: Any, function: int, count: int | None, unit: int, tid: int | None
) -> str | None:
    """What in ``rsp`` does not answer a request of ``function`` for ``count`` registers
    or bits (reads) to ``unit`` sent as transaction ``tid`` (None: no transaction ids, as
    on RTU); None when it answers it."""
    fc = getattr(rsp, "function_code", None)
    if not isinstance(fc, int):
        return f"an answer of unknown type {type(rsp).__name__}"
    error = fc & 0x80
    if fc & 0x7F != function:
        kind = "an exception answer" if error else "an answer"
        return f"{kind} for function {fc & 0x7F} to a function {function} request"
    if unit and getattr(rsp, "dev_id", unit) != unit:
        return f"unit id {rsp.dev_id} in the answer, {unit} asked"
    if tid is not None and getattr(rsp, "transaction_id", tid) != tid:
        return f"transaction id {rsp.transaction_id} in the answer, {tid} sent"
    if error or count is None or function not in (*_REGISTER_READS, *_BIT_READS):
        return None
    n, held = getattr(rsp, "byte_count", None), getattr(rsp, "data_len", None)
    if n is None:  # a response class that does not keep its byte count
        return None
    what = "registers" if function in _REGISTER_READS else "bits"
    want = 2 * count if function in _REGISTER_READS else (count + 7) // 8
    if n != held:
        return f"byte count {n}, but the answer holds {held} data bytes"
    if n != want:
        return f"byte count {n} for {count} {what} (expected {want})"
    return None
