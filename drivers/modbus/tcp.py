"""A Modbus TCP client connection: MBAP frames on an asyncio protocol, one request at a
time, with the calls the driver makes (reads of the four tables, the writes).

Why not pymodbus's client (which the RTU links still use): a request through it costs
about 50 µs of CPU (request and response objects, a ``wait_for``, framers, trace hooks),
four times what the frame itself needs; at one request per device a second that was a
third of the gateway's CPU. Here a request is one ``struct.pack``, one write, one future
and one timer; the answer's PDU is checked by ``pdu.reply_mismatch`` as before.

What arrives instead of the answer is noted in ``heard`` (frames of another transaction
or unit id, bytes that are not MBAP, an incomplete frame), so a request that times out
can say what came instead. A frame with transaction id 0 is handed over as the answer:
the driver refuses it by name (``reply_mismatch``).
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

__all__ = ["LinkLost", "NoAnswer", "Reply", "TcpLink"]

_MBAP = struct.Struct(">HHHB")  # transaction id, protocol id (0), length, unit id
_READ = struct.Struct(">BHH")  # function code, address, count
_WRITE1 = struct.Struct(">BHH")  # function code, address, value
_MASK = struct.Struct(">BHHH")  # function 22: address, and mask, or mask
_UNPACK = {n: struct.Struct(f">{n}H").unpack_from for n in range(126)}
MAX_PDU = 253


class NoAnswer(Exception):
    """No answer to a request within the timeout (after its retries)."""


class LinkLost(ConnectionError):
    """The connection closed while a request waited for its answer."""


class Reply:
    """One answer, as the driver reads it (the attributes of pymodbus's responses that
    ``pdu.reply_mismatch`` and the driver use)."""

    __slots__ = (
        "bits",
        "byte_count",
        "data_len",
        "dev_id",
        "exception_code",
        "function_code",
        "raw",
        "transaction_id",
    )

    def __init__(self, tid: int, unit: int, pdu: bytes) -> None:
        self.transaction_id = tid
        self.dev_id = unit
        self.raw: bytes | None = None  # register reads: the registers' bytes as sent
        self.bits: list[bool] = []
        self.byte_count = self.data_len = -1
        self.exception_code = 0
        fc = self.function_code = pdu[0] if pdu else -1
        if fc & 0x80:
            self.exception_code = pdu[1] if len(pdu) > 1 else 0
        elif fc == 3 or fc == 4:
            n = pdu[1] if len(pdu) > 1 else -1
            self.byte_count, self.data_len = n, len(pdu) - 2
            # else reply_mismatch says what is wrong
            self.raw = pdu[2:] if n == self.data_len and not n & 1 else b""
        elif fc == 1 or fc == 2:
            self.byte_count = pdu[1] if len(pdu) > 1 else -1
            self.data_len = len(pdu) - 2
            self.bits = [bool(b >> i & 1) for b in pdu[2:] for i in range(8)]

    @property
    def registers(self) -> list[int]:
        """The register values (the poll reads ``raw`` instead: built only when asked)."""
        raw = self.raw or b""
        n = len(raw) // 2
        unpack = _UNPACK.get(n) or struct.Struct(f">{n}H").unpack_from
        return list(unpack(raw))

    def isError(self) -> bool:  # pymodbus's name, which the driver calls
        return bool(self.function_code & 0x80)

    def __repr__(self) -> str:
        return f"Reply(fc {self.function_code}, unit {self.dev_id}, tid {self.transaction_id})"


class TcpLink(asyncio.Protocol):
    """One TCP connection to a Modbus TCP server (``connect`` opens it)."""

    def __init__(self, heard: list[tuple[int, int]]) -> None:
        self.heard = heard
        """What arrived that was not the answer: (transaction id, unit id) of a frame,
        (-1, protocol id) of bytes that are not MBAP, (-2, bytes) of an incomplete frame."""
        self.tid = 0
        """Transaction id of the last request."""
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._waiter: asyncio.Future[Reply] | None = None
        self._unit = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.timeout_s = 1.0
        self.retries = 0

    @classmethod
    async def connect(
        cls, host: str, port: int, timeout_s: float, retries: int, heard: list[tuple[int, int]]
    ) -> TcpLink:
        """Open the connection; raises OSError (TimeoutError after ``timeout_s``)."""
        loop = asyncio.get_running_loop()
        link = cls(heard)
        link._loop = loop
        link.timeout_s, link.retries = timeout_s, retries
        await asyncio.wait_for(loop.create_connection(lambda: link, host, port), timeout_s)
        return link

    @property
    def connected(self) -> bool:
        t = self._transport
        return t is not None and not t.is_closing()

    def close(self) -> None:
        t, self._transport = self._transport, None
        if t is not None:
            t.abort()  # nothing of ours is waiting to be sent that still matters
        self._fail(LinkLost("connection closed"))

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail(LinkLost("connection lost"))

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        heard = self.heard
        while len(buf) >= 7:
            tid, pid, length, unit = _MBAP.unpack_from(buf)
            if pid != 0:  # not MBAP: nothing after it can be trusted to start a frame
                heard.append((-1, pid))
                buf.clear()
                break
            end = 6 + length
            if len(buf) < end:
                heard.append((-2, len(buf)))
                if len(buf) > 7 + MAX_PDU:  # a length no answer has: drop it
                    buf.clear()
                break
            pdu = bytes(buf[7:end])
            del buf[:end]
            waiter = self._waiter
            if waiter is None or waiter.done():
                continue  # nothing asked: a late answer after a timeout (the link drops)
            if (tid == self.tid or tid == 0) and (unit == self._unit or not self._unit):
                heard.clear()  # the answer: what came before it does not matter
                waiter.set_result(Reply(tid, unit, pdu))
            else:
                heard.append((tid, unit))
        else:
            if buf:
                heard.append((-2, len(buf)))
        if len(heard) > 8:
            del heard[:-4]

    # -- requests ------------------------------------------------------------------

    def _fail(self, exc: Exception) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    async def request(self, unit: int, pdu: bytes) -> Reply:
        """Send ``pdu`` to ``unit`` and return the answer; re-sent with the same
        transaction id after each timeout, ``retries`` times. Raises NoAnswer or
        LinkLost."""
        t = self._transport
        if t is None or t.is_closing():
            raise LinkLost("not connected")
        loop = self._loop
        assert loop is not None
        self.tid = tid = self.tid % 0xFFFF + 1  # 1..65535: 0 is what a broken server sends
        self._unit = unit
        frame = _MBAP.pack(tid, 0, len(pdu) + 1, unit) + pdu
        for _ in range(self.retries + 1):
            waiter = self._waiter = loop.create_future()
            t.write(frame)
            timer = loop.call_later(self.timeout_s, _time_up, waiter)
            try:
                return await waiter
            except NoAnswer:
                t = self._transport
                if t is None or t.is_closing():
                    raise LinkLost("connection lost") from None
            finally:
                timer.cancel()
                self._waiter = None
        raise NoAnswer(f"no answer within {self.timeout_s * 1000:.0f} ms")

    # the calls of pymodbus's client that the driver makes (same names and arguments)

    def read_coils(self, address: int, *, count: int = 1, device_id: int = 1) -> Any:
        return self.request(device_id, _READ.pack(1, address, count))

    def read_discrete_inputs(self, address: int, *, count: int = 1, device_id: int = 1) -> Any:
        return self.request(device_id, _READ.pack(2, address, count))

    def read_holding_registers(self, address: int, *, count: int = 1, device_id: int = 1) -> Any:
        return self.request(device_id, _READ.pack(3, address, count))

    def read_input_registers(self, address: int, *, count: int = 1, device_id: int = 1) -> Any:
        return self.request(device_id, _READ.pack(4, address, count))

    def write_coil(self, address: int, value: bool, *, device_id: int = 1) -> Any:
        return self.request(device_id, _WRITE1.pack(5, address, 0xFF00 if value else 0))

    def write_register(self, address: int, value: int, *, device_id: int = 1) -> Any:
        return self.request(device_id, _WRITE1.pack(6, address, value))

    def write_coils(self, address: int, values: list[bool], *, device_id: int = 1) -> Any:
        packed = bytearray((len(values) + 7) // 8)
        for i, v in enumerate(values):
            if v:
                packed[i // 8] |= 1 << (i % 8)
        head = struct.pack(">BHHB", 15, address, len(values), len(packed))
        return self.request(device_id, head + bytes(packed))

    def write_registers(self, address: int, values: list[int], *, device_id: int = 1) -> Any:
        n = len(values)
        pdu = struct.pack(f">BHHB{n}H", 16, address, n, 2 * n, *values)
        return self.request(device_id, pdu)

    def mask_write_register(
        self, *, address: int, and_mask: int, or_mask: int, device_id: int = 1
    ) -> Any:
        return self.request(device_id, _MASK.pack(22, address, and_mask, or_mask))


def _time_up(waiter: asyncio.Future[Reply]) -> None:
    if not waiter.done():
        waiter.set_exception(NoAnswer())
