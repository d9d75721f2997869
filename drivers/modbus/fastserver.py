"""A lean Modbus TCP server for the simulator's memory, for benchmarks.

pymodbus's server costs about 100 µs of CPU a request (request objects, its datastore,
trace hooks); on the 2-core machines benchmarks run on, a simulator serving a gateway
at its limit took as much CPU as the gateway and became the limit. This one answers
from the same register lists (``ModbusSimulator._memory``) in a few µs: MBAP frames,
reads of the four tables (functions 1-4), writes (5, 6, 15, 16, 22), holes and unknown
unit ids as ``ModbusSimulator`` defines them. Anything else is answered with exception
1 (illegal function). ``ModbusSimulator(server="fast")`` uses it.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

from .types import Table

__all__ = ["FastServer"]

_MBAP = struct.Struct(">HHHB")
_TABLES = {1: Table.COIL, 2: Table.DISCRETE, 3: Table.HOLDING, 4: Table.INPUT}
_LIMITS = {1: 2000, 2: 2000, 3: 125, 4: 125}


class FastServer:
    """Serves ``memory[(unit, table)]`` (registers; bits packed 16 a register, bit 0
    first) of ``size`` addresses a table; ``hole(table, address, count)`` says whether a
    read touches an unmapped range; ``answer_unknown`` whether a unit id not served
    answers (exception 4) or stays silent."""

    def __init__(
        self,
        memory: dict[tuple[int, Table], list[int]],
        size: int,
        hole: Callable[[Table, int, int], int | None],
        answer_unknown: bool,
    ) -> None:
        self.memory = memory
        self.size = size
        self.hole = hole
        self.answer_unknown = answer_unknown
        self._server: asyncio.Server | None = None
        self.conns: set[_Conn] = set()
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Conn(self), host, port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            if hasattr(server, "close_clients"):  # 3.13+
                server.close_clients()
            for conn in list(self.conns):
                conn.transport.abort()
            await server.wait_closed()

    def answer(self, unit: int, pdu: bytes) -> bytes | None:
        """The answer PDU to ``pdu`` for ``unit`` (None: stay silent)."""
        fc = pdu[0] if pdu else 0
        regs = self.memory.get((unit, Table.HOLDING))
        if regs is None:
            return bytes([fc | 0x80, 4]) if self.answer_unknown else None
        try:
            if fc in _TABLES:
                address, count = struct.unpack_from(">HH", pdu, 1)
                table = _TABLES[fc]
                if not 1 <= count <= _LIMITS[fc]:
                    return bytes([fc | 0x80, 3])
                if address + count > self.size:
                    return bytes([fc | 0x80, 2])
                code = self.hole(table, address, count)
                if code is not None:
                    return bytes([fc | 0x80, code])
                words = self.memory[unit, table]
                if fc >= 3:
                    data = struct.pack(f">{count}H", *words[address : address + count])
                else:
                    packed = bytearray((count + 7) // 8)
                    for i in range(count):
                        a = address + i
                        if words[a >> 4] >> (a & 15) & 1:
                            packed[i >> 3] |= 1 << (i & 7)
                    data = bytes(packed)
                return bytes([fc, len(data)]) + data
            if fc in (5, 6):
                address, value = struct.unpack_from(">HH", pdu, 1)
                if address >= self.size:
                    return bytes([fc | 0x80, 2])
                if fc == 5:
                    if value not in (0, 0xFF00):
                        return bytes([fc | 0x80, 3])
                    self._set_bit(unit, address, value == 0xFF00)
                else:
                    regs[address] = value
                return pdu[:5]
            if fc in (15, 16):
                address, count, _ = struct.unpack_from(">HHB", pdu, 1)
                if address + count > self.size:
                    return bytes([fc | 0x80, 2])
                if fc == 16:
                    regs[address : address + count] = struct.unpack_from(f">{count}H", pdu, 6)
                else:
                    for i in range(count):
                        self._set_bit(unit, address + i, bool(pdu[6 + i // 8] >> (i % 8) & 1))
                return pdu[:5]
            if fc == 22:
                address, and_mask, or_mask = struct.unpack_from(">HHH", pdu, 1)
                if address >= self.size:
                    return bytes([fc | 0x80, 2])
                regs[address] = (regs[address] & and_mask) | (or_mask & ~and_mask & 0xFFFF)
                return pdu[:7]
        except (struct.error, IndexError):
            return bytes([fc | 0x80, 3])  # too short for its function: illegal data value
        return bytes([fc | 0x80, 1])

    def _set_bit(self, unit: int, address: int, on: bool) -> None:
        words = self.memory[unit, Table.COIL]
        word, bit = divmod(address, 16)
        words[word] = words[word] | (1 << bit) if on else words[word] & ~(1 << bit)


class _Conn(asyncio.Protocol):
    def __init__(self, server: FastServer) -> None:
        self.server = server
        self.buf = bytearray()
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.server.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.conns.discard(self)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while len(buf) >= 8:
            tid, pid, length, unit = _MBAP.unpack_from(buf)
            if pid != 0 or not 2 <= length <= 254:
                self.transport.close()  # not Modbus TCP: as a device would, hang up
                buf.clear()
                return
            if len(buf) < 6 + length:
                return
            pdu = bytes(buf[7 : 6 + length])
            del buf[: 6 + length]
            out = self.server.answer(unit, pdu)
            if out is not None:
                self.transport.write(_MBAP.pack(tid, 0, len(out) + 1, unit) + out)
