"""A hostile Modbus TCP device on a raw socket: it answers each request in one chosen
wrong way (or closes, or drips), so tests can show no wrong answer is ever taken as GOOD.

Only loopback. Every mode answers function 3/4 (registers) and 1/2 (bits) requests;
the good answer is register ``i`` = ``GOOD_BASE + address + i`` (bits: address parity).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from dataclasses import dataclass, field

GOOD_BASE = 1000

MODES = (
    "good",
    "wrong_function",  # a valid answer of another read function (3 <-> 4, 1 <-> 2)
    "exception_other_function",  # an exception answer naming another function
    "wrong_tid",  # the right answer under another transaction id
    "tid_zero",  # the right answer under transaction id 0
    "wrong_unit",  # the right answer from another unit id
    "short_byte_count",  # fewer registers than asked, frame consistent
    "long_byte_count",  # more registers than asked, frame consistent
    "byte_count_lies",  # byte count says n, the frame holds other than n bytes
    "truncated",  # half a frame, then silence
    "oversized",  # the MBAP length announces more than is sent
    "accept_then_close",  # accepts TCP, closes at once
    "close_after_request",  # reads the request, closes
    "drip",  # the right answer, one byte per second
    "garbage",  # random bytes instead of an MBAP frame
    # not hostile: a TCP-to-serial gateway with nothing answering behind it, as sold
    "gateway_path_unavailable",  # exception 10 for every request
    "gateway_no_response",  # exception 11 for every request
)
_GATEWAY_EXCEPTIONS = {"gateway_path_unavailable": 10, "gateway_no_response": 11}


@dataclass
class HostileDevice:
    mode: str
    host: str = "127.0.0.1"
    port: int = 0
    requests: int = 0
    _server: asyncio.base_events.Server | None = field(default=None, init=False)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set, init=False)

    async def start(self) -> HostileDevice:
        if self.mode not in MODES:
            raise ValueError(self.mode)
        self._server = await asyncio.start_server(self._client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        for w in list(self._writers):
            w.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if self.mode == "accept_then_close":
                return
            while True:
                head = await reader.readexactly(7)
                tid, _, length, unit = struct.unpack(">HHHB", head)
                pdu = await reader.readexactly(length - 1)
                self.requests += 1
                if self.mode == "close_after_request":
                    return
                await self._answer(writer, tid, unit, pdu)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            # ends normally: asyncio 3.11's stream callback logs a cancelled handler
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, writer: asyncio.StreamWriter, tid: int, unit: int, pdu: bytes) -> None:
        fc = pdu[0]
        address, count = struct.unpack(">HH", pdu[1:5])
        m = self.mode
        if m in _GATEWAY_EXCEPTIONS:
            frame_pdu = bytes([fc | 0x80, _GATEWAY_EXCEPTIONS[m]])
            writer.write(struct.pack(">HHHB", tid, 0, len(frame_pdu) + 1, unit) + frame_pdu)
            await writer.drain()
            return
        if fc in (3, 4):
            regs = [(GOOD_BASE + address + i) & 0xFFFF for i in range(count)]
            if m == "short_byte_count":
                regs = regs[:-1]
            elif m == "long_byte_count":
                regs = [*regs, 0xDEAD]
            data = b"".join(struct.pack(">H", r) for r in regs)
            body = bytes([len(data)]) + data
            if m == "byte_count_lies":
                body = bytes([len(data) - 2]) + data
        elif fc in (1, 2):
            bits = [(address + i) % 2 == 1 for i in range(count)]
            data = bytearray((count + 7) // 8)
            for i, b in enumerate(bits):
                if b:
                    data[i // 8] |= 1 << (i % 8)
            if m == "short_byte_count" and len(data) > 1:
                data = data[:-1]
            elif m in ("long_byte_count", "byte_count_lies"):
                data = data + b"\xff"
            n = len(data) - (1 if m == "byte_count_lies" else 0)
            body = bytes([n]) + bytes(data)
        else:
            body = b"\x01"  # illegal function, as an exception answer below
            fc |= 0x80
        out_fc = fc
        if m == "wrong_function":
            out_fc = {3: 4, 4: 3, 1: 2, 2: 1}.get(fc, fc)
        if m == "exception_other_function":
            out_fc, body = ({3: 4, 4: 3, 1: 2, 2: 1}.get(fc, fc)) | 0x80, b"\x02"
        out_tid = tid
        if m == "wrong_tid":
            out_tid = (tid + 7) & 0xFFFF or 1
        elif m == "tid_zero":
            out_tid = 0
        out_unit = (unit % 247) + 1 if m == "wrong_unit" else unit
        frame_pdu = bytes([out_fc]) + body
        length = len(frame_pdu) + 1
        if m == "oversized":
            length += 40
        frame = struct.pack(">HHHB", out_tid, 0, length, out_unit) + frame_pdu
        if m == "garbage":
            frame = bytes((i * 37 + 11) & 0xFF for i in range(len(frame)))
        if m == "truncated":
            writer.write(frame[: len(frame) // 2])
            await writer.drain()
            return
        if m == "drip":
            for i in range(len(frame)):
                writer.write(frame[i : i + 1])
                await writer.drain()
                await asyncio.sleep(1.0)
            return
        writer.write(frame)
        await writer.drain()
