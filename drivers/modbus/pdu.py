"""The check of an answer against its request (pure: the TCP driver needs no pymodbus;
the RTU links' pymodbus response classes are in ``responses.py``).

pymodbus takes any answer that arrives for a request: another function's (a holding
register read answered as an input register read), transaction id 0, a byte count that
is not what was asked, an exception answer for another function. Every read response
(tcp.py's, and responses.py's on the RTU links) keeps its byte count and the data bytes
it really had, and :func:`reply_mismatch` compares an answer with its request: a
mismatch is never data (the driver makes the request's readings bad, saying what did
not match, and drops the link).
"""

from __future__ import annotations

from typing import Any

__all__ = ["FUNCTIONS", "ReplyMismatch", "reply_mismatch"]

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
