"""A Modbus device simulator on pymodbus's own server, for tests, the demo and benchmarks.

One server serves many unit ids (one per simulated device), each with its own four tables
of ``size`` addresses; reading past ``size`` answers exception 2 (illegal data address),
and so does a read touching a *hole* (``holes=`` or ``add_hole``: unmapped addresses, as
many meters have).
It speaks Modbus TCP (default), RTU framing over TCP (``framer="rtu"``) or RTU on a
serial port (``serial_port=``, e.g. one side of a ``PtyBridge``). Values are set directly
(``set_registers``/``set_bits``) or follow deterministic waveforms derived from a device
map (``apply_waveforms``), so a demo shows live values. Anomalies (spike, drift, stuck
sensor; ``anomalies.py``) can be scheduled on top of the waveforms with ``inject`` or
``anomaly_schedule``; with none scheduled the waveforms are unchanged.

Run ``python -m drivers.modbus.simulator [device-map.yaml]`` to serve a map (by default
the sample map next to this file) until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from .anomalies import (
    SCHEDULE_DURATIONS,
    Anomaly,
    AnomalyKind,
    anomalous_raw,
    anomalous_value,
    anomaly_schedule,
    parse_anomaly,
)
from .config import Device, ModbusRtuDevice, load_device_map
from .decode import encode_raw, encode_value
from .fastserver import FastServer
from .ptybus import PtyBridge
from .types import TABLES, Table
from .waveforms import waveform_raw, waveform_value

__all__ = [
    "SAMPLE_MAP",
    "SCHEDULE_DURATIONS",
    "Anomaly",
    "AnomalyKind",
    "ModbusSimulator",
    "anomalous_value",
    "anomaly_schedule",
    "encode_value",
    "parse_anomaly",
    "serve_devices",
    "waveform_value",
]

SAMPLE_MAP = Path(__file__).with_name("sample-device-map.yaml")

# Keys of pymodbus's per-table memory blocks, in SimDevice's tuple order.
_BLOCKS: dict[Table, str] = {
    Table.COIL: "c",
    Table.DISCRETE: "d",
    Table.HOLDING: "h",
    Table.INPUT: "i",
}


# Read function code -> table, for holes answered with another code than 2.
_FUNCTION_TABLES = {1: Table.COIL, 2: Table.DISCRETE, 3: Table.HOLDING, 4: Table.INPUT}


class ModbusSimulator:
    """A pymodbus server holding ``size`` registers/bits per table per unit id.

    ``answer_unknown_units``: whether a unit id not served here answers (pymodbus sends
    exception 4) or stays silent like an absent device on a bus; default: answers over
    Modbus TCP, silent with RTU framing.

    ``holes``: per table, ``(start, end)`` address ranges (end excluded) that are not
    mapped on any unit: a read touching one answers exception 2, like a device that
    refuses unmapped registers. Coil and discrete holes cover whole groups of 16 bits
    (pymodbus keeps bits by register). ``hole_exception``: the exception code holes
    answer; 2 (illegal data address) by default, 3 (illegal data value) as some devices do.

    ``server="fast"``: Modbus TCP from ``fastserver.py`` instead of pymodbus's server
    (same memory, same answers, a fraction of the CPU: for benchmarks, where the
    simulator must not be the limit). Holes there cover exactly their addresses.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        unit_ids: Iterable[int] = (1,),
        size: int = 10000,
        framer: Literal["socket", "rtu"] = "socket",
        serial_port: str | None = None,
        baudrate: int = 19200,
        parity: str = "N",
        stopbits: int = 1,
        bytesize: int = 8,
        answer_unknown_units: bool | None = None,
        holes: Mapping[Table, Iterable[tuple[int, int]]] | None = None,
        hole_exception: int = 2,
        server: Literal["pymodbus", "fast"] = "pymodbus",
    ) -> None:
        self.host = host
        self.port = port
        self.unit_ids = tuple(dict.fromkeys(unit_ids))
        if not 1 <= size <= 65536:
            raise ValueError(f"size {size} is out of range; accepted: 1..65536")
        if not self.unit_ids or not all(0 <= u <= 255 for u in self.unit_ids):
            raise ValueError(f"unit_ids {self.unit_ids!r}: need at least one, each 0..255")
        self.size = size
        self.serial_port = serial_port
        self.framer = "rtu" if serial_port else framer
        if server not in ("pymodbus", "fast"):
            raise ValueError(f"server {server!r}: accepted: 'pymodbus', 'fast'")
        if server == "fast" and self.framer != "socket":
            raise ValueError("server='fast' serves Modbus TCP only (no RTU framing, no serial)")
        self.server = server
        self._line = {
            "baudrate": baudrate,
            "parity": parity,
            "stopbits": stopbits,
            "bytesize": bytesize,
        }
        if answer_unknown_units is None:
            answer_unknown_units = self.framer == "socket"
        self.answer_unknown_units = answer_unknown_units
        self._server: Any = None
        self.holes: list[tuple[Table, int, int]] = []
        self.hole_exception = hole_exception
        for table, spans in (holes or {}).items():
            for start, end in spans:
                self.add_hole(table, start, end)
        # (device, tag) -> anomalies on that tag; empty means plain waveforms.
        self._anomalies: dict[tuple[str, str], list[Anomaly]] = {}
        # Registers; bits are packed 16 per register, bit 0 first (pymodbus's layout).
        # Before start these are our lists; after, pymodbus's live ones.
        self._memory: dict[tuple[int, Table], list[int]] = {
            (u, t): [0] * self._words(t) for u in self.unit_ids for t in Table
        }

    def _words(self, table: Table) -> int:
        return (self.size + 15) // 16 + 1 if TABLES[table].bits else self.size + 1

    def _simdata(self) -> tuple[list[SimData], list[SimData], list[SimData], list[SimData]]:
        bits = SimData(0, values=[False] * self.size, datatype=SimType.BITS)
        regs = SimData(0, count=self.size, values=0, datatype=SimType.REGISTERS)
        return ([bits], [bits], [regs], [regs])

    def _filter(self, sending: bool, data: bytes) -> bytes:
        """Drop answers for unit ids not served here (a silent absent device)."""
        if sending and data:
            unit = data[0] if self.framer == "rtu" else (data[6] if len(data) > 6 else -1)
            if unit not in self.unit_ids:
                return b""
        return data

    async def start(self) -> None:
        """Listen; returns once the server accepts requests. Keeps values across restarts."""
        if self._server is not None:
            return
        if self.server == "fast":
            fast = FastServer(self._memory, self.size, self._hole_code, self.answer_unknown_units)
            try:
                await fast.start(self.host, self.port)
            except OSError as exc:
                raise OSError(exc.errno, f"cannot listen on {self.host}:{self.port}") from exc
            self._server, self.port = fast, fast.port
            return
        action = self._hole_action if self.hole_exception != 2 else None
        devices = [SimDevice(id=u, simdata=self._simdata(), action=action) for u in self.unit_ids]
        trace = None if self.answer_unknown_units else self._filter
        if trace is not None and 0 not in self.unit_ids:
            # pymodbus hands unknown ids to device 0 (else it logs a KeyError): its
            # answers are then dropped by the filter.
            devices.append(SimDevice(id=0, simdata=self._simdata()))
        server: Any
        if self.serial_port is not None:
            server = ModbusSerialServer(
                devices, port=self.serial_port, trace_packet=trace, **self._line
            )
        else:
            framer = FramerType.RTU if self.framer == "rtu" else FramerType.SOCKET
            server = ModbusTcpServer(
                devices, address=(self.host, self.port), framer=framer, trace_packet=trace
            )
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:
            where = self.serial_port or f"{self.host}:{self.port}"
            raise OSError(f"cannot listen on {where}") from exc
        self._server = server
        if self.serial_port is None:
            self.port = server.transport.sockets[0].getsockname()[1]
        # pymodbus keeps each table as (start, count, registers, flags); we write the
        # registers list in place so reads see values at once, without a request.
        for (unit, table), old in self._memory.items():
            live: list[int] = server.context.devices[unit].block[_BLOCKS[table]][2]
            live[: len(old)] = old
            self._memory[unit, table] = live
        for hole in self.holes:
            self._mark_hole(*hole)

    def add_hole(self, table: Table, start: int, end: int) -> None:
        """Make ``start..end-1`` of ``table`` unmapped on every unit (exception 2 when read)."""
        if not 0 <= start < end <= self.size:
            raise ValueError(f"hole {start}..{end - 1} is outside 0..{self.size - 1}")
        self.holes.append((table, start, end))
        if self._server is not None:
            self._mark_hole(table, start, end)

    def _hole_code(self, table: Table, address: int, count: int) -> int | None:
        """The exception a read of ``count`` at ``address`` answers for a hole, or None."""
        for t, lo, hi in self.holes:
            if t is table and address < hi and address + count > lo:
                return self.hole_exception
        return None

    async def _hole_action(
        self, fc: int, _start: int, address: int, count: int, _regs: Any, _values: Any
    ) -> ExcCodes | None:
        table = _FUNCTION_TABLES.get(fc)
        for t, lo, hi in self.holes:
            if t is table and address < hi and address + count > lo:
                return ExcCodes(self.hole_exception)
        return None

    def _mark_hole(self, table: Table, start: int, end: int) -> None:
        if self.hole_exception != 2 or self.server == "fast":
            return  # answered by _hole_action (or the fast server) with its own code
        # pymodbus checks a per-register flag on every read: INVALID answers exception 2.
        if TABLES[table].bits:
            start, end = start // 16, (end + 15) // 16
        for unit in self.unit_ids:
            flags: list[int] = self._server.context.devices[unit].block[_BLOCKS[table]][3]
            flags[start:end] = [int(SimType.INVALID)] * (end - start)

    async def stop(self) -> None:
        """Stop listening and drop every client connection."""
        server, self._server = self._server, None
        if isinstance(server, FastServer):
            await server.stop()
        elif server is not None:
            await server.shutdown()
            await asyncio.sleep(0)  # let the transports close

    async def __aenter__(self) -> ModbusSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _mem(self, unit_id: int, table: Table, address: int, n: int, bits: bool) -> list[int]:
        if TABLES[table].bits != bits:
            kind = "set_bits/get_bits" if TABLES[table].bits else "set_registers/get_registers"
            raise ValueError(f"table {table.value!r} is accessed with {kind}")
        if (unit_id, table) not in self._memory:
            raise KeyError(f"unit id {unit_id} is not served here; served: {self.unit_ids}")
        if address < 0 or address + n > self.size:
            raise IndexError(
                f"{table.value} {address}..{address + n - 1} is outside 0..{self.size - 1}"
            )
        return self._memory[unit_id, table]

    def set_registers(
        self, unit_id: int, table: Table, address: int, values: Sequence[int]
    ) -> None:
        """Write holding/input registers (0..65535 each)."""
        regs = self._mem(unit_id, table, address, len(values), bits=False)
        if any(not 0 <= v <= 0xFFFF for v in values):
            raise ValueError(f"register values must be 0..65535: {list(values)!r}")
        regs[address : address + len(values)] = values

    def get_registers(self, unit_id: int, table: Table, address: int, count: int) -> list[int]:
        regs = self._mem(unit_id, table, address, count, bits=False)
        return regs[address : address + count]

    def set_bits(self, unit_id: int, table: Table, address: int, values: Sequence[bool]) -> None:
        """Write coils/discrete inputs."""
        words = self._mem(unit_id, table, address, len(values), bits=True)
        for i, v in enumerate(values, address):
            word, bit = divmod(i, 16)
            words[word] = words[word] | (1 << bit) if v else words[word] & ~(1 << bit)

    def get_bits(self, unit_id: int, table: Table, address: int, count: int) -> list[bool]:
        words = self._mem(unit_id, table, address, count, bits=True)
        return [bool(words[i >> 4] >> (i & 15) & 1) for i in range(address, address + count)]

    def inject(
        self,
        device: str,
        tag: str,
        kind: AnomalyKind | str,
        start_t: float,
        duration_s: float,
        magnitude: float = 0.0,
    ) -> Anomaly:
        """Schedule an anomaly on ``device/tag`` from ``start_t`` (same clock as the ``t``
        of ``apply_waveforms``, i.e. Unix time when serving) for ``duration_s``."""
        a = Anomaly(device, tag, AnomalyKind(kind), start_t, duration_s, magnitude)
        self.add_anomalies([a])
        return a

    def add_anomalies(self, anomalies: Iterable[Anomaly]) -> None:
        """Schedule several anomalies (e.g. from ``anomaly_schedule``)."""
        for a in anomalies:
            self._anomalies.setdefault((a.device, a.tag), []).append(a)

    def clear_anomalies(self) -> None:
        self._anomalies.clear()

    def apply_waveforms(self, devices: Sequence[Device], t: float) -> None:
        """Write every tag of every device served here (by unit id) at time ``t``."""
        for device in devices:
            unit = device.unit_id
            if unit not in self.unit_ids:
                continue
            for tag in device.tags:
                scheduled = self._anomalies.get((device.name, tag.name))
                raw = (
                    anomalous_raw(device.name, tag, t, scheduled)
                    if scheduled
                    else waveform_raw(device.name, tag, t)
                )
                values = encode_raw(tag, device, raw)
                address = tag.address
                assert address is not None
                if TABLES[tag.table].bits:
                    self.set_bits(unit, tag.table, address, [bool(values[0])])
                elif tag.bit is not None:  # one bit of a register: keep the others
                    (old,) = self.get_registers(unit, tag.table, address, 1)
                    new = old | (1 << tag.bit) if raw else old & ~(1 << tag.bit)
                    self.set_registers(unit, tag.table, address, [new])
                else:
                    self.set_registers(unit, tag.table, address, [int(v) for v in values])

    async def run_waveforms(self, devices: Sequence[Device], interval_s: float = 0.1) -> None:
        """Apply waveforms every ``interval_s`` until cancelled."""
        while True:
            self.apply_waveforms(devices, time.time())
            await asyncio.sleep(interval_s)


def _server_for(
    group: Sequence[Device],
    bridges: list[PtyBridge],
    server: Literal["pymodbus", "fast"] = "pymodbus",
) -> ModbusSimulator:
    first = group[0]
    ends = (t.address + t.registers for d in group for t in d.tags if t.address is not None)
    size = min(65536, max(10000, *ends))
    units = [d.unit_id for d in group]
    if isinstance(first, ModbusRtuDevice):
        bridge = PtyBridge()
        bridge.link(first.port)
        bridges.append(bridge)
        return ModbusSimulator(
            unit_ids=units,
            size=size,
            serial_port=bridge.server_path,
            baudrate=first.baudrate,
            parity=first.parity.value,
            stopbits=first.stopbits,
            bytesize=first.bytesize,
        )
    framer: Literal["socket", "rtu"] = "rtu" if first.protocol == "modbus_rtu_tcp" else "socket"
    host, port = first.host, first.port  # type: ignore[union-attr]
    return ModbusSimulator(
        host=host,
        port=port,
        unit_ids=units,
        size=size,
        framer=framer,
        server=server if framer == "socket" else "pymodbus",
    )


async def serve_devices(
    devices: Sequence[Device],
    stop: asyncio.Event,
    *,
    interval_s: float = 0.1,
    anomalies: Iterable[Anomaly] = (),
    server: Literal["pymodbus", "fast"] = "pymodbus",
) -> None:
    """Simulate devices until ``stop`` is set: one server per TCP host:port and protocol,
    one per serial port (a ``PtyBridge`` whose client side is linked at the device's
    ``port``, which must not exist or be a symlink), waveforms on, with ``anomalies``
    (e.g. from ``anomaly_schedule``) injected on their tags. ``server="fast"``: Modbus
    TCP devices from the lean server (``fastserver.py``), for benchmarks."""
    scheduled = list(anomalies)
    groups: dict[tuple[Any, ...], list[Device]] = {}
    for d in devices:
        key = (d.port,) if isinstance(d, ModbusRtuDevice) else (d.protocol, d.host, d.port)
        groups.setdefault(key, []).append(d)
    bridges: list[PtyBridge] = []
    sims: list[ModbusSimulator] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        for group in groups.values():
            sims.append(sim := _server_for(group, bridges, server))
            names = {d.name for d in group}
            sim.add_anomalies(a for a in scheduled if a.device in names)
            sim.apply_waveforms(group, time.time())
        for bridge in bridges:
            await bridge.start()
        for sim, group in zip(sims, groups.values(), strict=True):
            await sim.start()
            tasks.append(asyncio.create_task(sim.run_waveforms(group, interval_s)))
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sim in sims:
            await sim.stop()
        for bridge in bridges:
            await bridge.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a device map until interrupted."""
    args = sys.argv[1:] if argv is None else list(argv)
    path = Path(args[0]) if args else SAMPLE_MAP
    devices = load_device_map(path)
    for d in devices:
        if isinstance(d, ModbusRtuDevice):
            at = f"{d.port} ({d.line})"
        else:
            at = f"{f'[{d.host}]' if ':' in d.host else d.host}:{d.port}"
        print(f"simulating {d.name}: {d.protocol} {at} unit {d.unit_id}, {len(d.tags)} tags")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # stop cleanly: remove pty links
            loop.add_signal_handler(sig, stop.set)
        await serve_devices(devices, stop)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
