"""A Modbus TCP device simulator on pymodbus's own server, for tests, the demo and benchmarks.

One server serves many unit ids (one per simulated device), each with its own four tables
of ``size`` addresses; reading past ``size`` answers exception 2 (illegal data address).
Values are set directly (``set_registers``/``set_bits``) or follow deterministic
waveforms derived from a device map (``apply_waveforms``), so a demo shows live values.
Anomalies (spike, drift, stuck sensor) can be scheduled on top of the waveforms with
``inject`` or ``anomaly_schedule``; with none scheduled the waveforms are unchanged.

Run ``python -m drivers.modbus.simulator [device-map.yaml]`` to serve a map (by default
the sample map next to this file) until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import struct
import sys
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from .config import ModbusTag, ModbusTcpDevice, load_device_map
from .decode import encode_raw, encode_value
from .types import TABLES, TYPES, Table, register_count

__all__ = [
    "SAMPLE_MAP",
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


class ModbusSimulator:
    """A pymodbus TCP server holding ``size`` registers/bits per table per unit id."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        unit_ids: Iterable[int] = (1,),
        size: int = 10000,
    ) -> None:
        self.host = host
        self.port = port
        self.unit_ids = tuple(dict.fromkeys(unit_ids))
        if not 1 <= size <= 65536:
            raise ValueError(f"size {size} is out of range; accepted: 1..65536")
        if not self.unit_ids or not all(0 <= u <= 255 for u in self.unit_ids):
            raise ValueError(f"unit_ids {self.unit_ids!r}: need at least one, each 0..255")
        self.size = size
        self._server: ModbusTcpServer | None = None
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

    async def start(self) -> None:
        """Listen; returns once the server accepts connections. Keeps values across restarts."""
        if self._server is not None:
            return
        devices = [SimDevice(id=u, simdata=self._simdata()) for u in self.unit_ids]
        server = ModbusTcpServer(devices, address=(self.host, self.port))
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {self.host}:{self.port}") from exc
        self._server = server
        self.port = server.transport.sockets[0].getsockname()[1]
        # pymodbus keeps each table as (start, count, registers, flags); we write the
        # registers list in place so reads see values at once, without a request.
        for (unit, table), old in self._memory.items():
            live: list[int] = server.context.devices[unit].block[_BLOCKS[table]][2]
            live[: len(old)] = old
            self._memory[unit, table] = live

    async def stop(self) -> None:
        """Stop listening and drop every client connection."""
        server, self._server = self._server, None
        if server is not None:
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

    def apply_waveforms(self, devices: Sequence[ModbusTcpDevice], t: float) -> None:
        """Write every tag of every device served here (by unit id) at time ``t``."""
        for device in devices:
            if device.unit_id not in self.unit_ids:
                continue
            for tag in device.tags:
                scheduled = self._anomalies.get((device.name, tag.name))
                raw = (
                    _anomalous_raw(device.name, tag, t, scheduled)
                    if scheduled
                    else _waveform_raw(device.name, tag, t)
                )
                values = encode_raw(tag, device, raw)
                if TABLES[tag.table].bits:
                    self.set_bits(device.unit_id, tag.table, tag.address, [bool(values[0])])
                else:
                    self.set_registers(device.unit_id, tag.table, tag.address, values)

    async def run_waveforms(
        self, devices: Sequence[ModbusTcpDevice], interval_s: float = 0.1
    ) -> None:
        """Apply waveforms every ``interval_s`` until cancelled."""
        while True:
            self.apply_waveforms(devices, time.time())
            await asyncio.sleep(interval_s)


def _waveform_raw(device_name: str, tag: ModbusTag, t: float) -> bool | int | float:
    # crc32, not hash(): the same tag gets the same waveform in every process.
    h = zlib.crc32(f"{device_name}/{tag.name}".encode())
    period = 10.0 + h % 50  # seconds
    x = (t / period + (h >> 8) % 1000 / 1000) % 1.0
    spec = TYPES[tag.type]
    if spec.is_bool:
        return x < 0.5
    shape = (h >> 20) % 3
    u = (0.5 + 0.5 * math.sin(2 * math.pi * x), x, 1.0 if x < 0.5 else 0.0)[shape]
    lo, hi = spec.demo
    raw = lo + u * (hi - lo)
    if not spec.is_float:
        return round(raw)
    if spec.code == "f":  # what a float32 register pair can actually hold
        return float(struct.unpack("f", struct.pack("f", raw))[0])
    return raw


def waveform_value(device_name: str, tag: ModbusTag, t: float) -> bool | int | float:
    """The engineering value (after scale/offset) the simulator serves for a tag at ``t``.

    Deterministic; a sine, ramp or square wave chosen per tag, with a period of 10-59 s,
    whose raw value stays inside the type's range. Equals what the driver decodes.
    """
    raw = _waveform_raw(device_name, tag, t)
    if isinstance(raw, bool) or (tag.scale == 1 and tag.offset == 0):
        return raw
    return raw * tag.scale + tag.offset


class AnomalyKind(StrEnum):
    """What a scheduled anomaly does to a tag's value while it is active."""

    SPIKE = "spike"
    """``magnitude`` (engineering units) is added; a bool tag is inverted instead."""
    DRIFT = "drift"
    """An offset growing linearly from 0 to ``magnitude`` over the duration; bools unchanged."""
    STUCK = "stuck"
    """The value at ``start_t`` is held (a frozen sensor); ``magnitude`` is unused."""


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One anomaly on one tag, active for ``start_t <= t < start_t + duration_s``."""

    device: str
    tag: str
    kind: AnomalyKind
    start_t: float
    duration_s: float
    magnitude: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.duration_s) and self.duration_s > 0):
            raise ValueError(f"anomaly duration_s {self.duration_s!r}: accepted: a number > 0")
        if not (math.isfinite(self.start_t) and math.isfinite(self.magnitude)):
            raise ValueError(f"anomaly start_t/magnitude must be finite: {self!r}")

    @property
    def end_t(self) -> float:
        return self.start_t + self.duration_s


def _anomalous_raw(
    device_name: str, tag: ModbusTag, t: float, anomalies: Iterable[Anomaly]
) -> bool | int | float:
    raw = _waveform_raw(device_name, tag, t)
    spec = TYPES[tag.type]
    for a in anomalies:
        if not a.start_t <= t < a.end_t:
            continue
        if a.kind is AnomalyKind.STUCK:
            raw = _waveform_raw(device_name, tag, a.start_t)
        elif spec.is_bool:
            raw = not raw if a.kind is AnomalyKind.SPIKE else raw
        else:
            delta = a.magnitude / tag.scale  # engineering units -> raw
            if a.kind is AnomalyKind.DRIFT:
                delta *= (t - a.start_t) / a.duration_s
            # Clamped to the type, so the registers can always hold it.
            x = min(max(float(raw) + delta, spec.lo), spec.hi)
            if not spec.is_float:
                raw = int(min(max(round(x), spec.lo), spec.hi))
            elif spec.code == "f":
                raw = float(struct.unpack("f", struct.pack("f", x))[0])
            else:
                raw = x
    return raw


def anomalous_value(
    device_name: str, tag: ModbusTag, t: float, anomalies: Iterable[Anomaly]
) -> bool | int | float:
    """``waveform_value`` with the anomalies of this tag applied (the others are ignored):
    what the driver decodes from a simulator with those anomalies injected."""
    mine = [a for a in anomalies if a.device == device_name and a.tag == tag.name]
    raw = _anomalous_raw(device_name, tag, t, mine)
    if isinstance(raw, bool) or (tag.scale == 1 and tag.offset == 0):
        return raw
    return raw * tag.scale + tag.offset


# Default durations of anomaly_schedule, per kind (seconds).
SCHEDULE_DURATIONS: dict[AnomalyKind, float] = {
    AnomalyKind.SPIKE: 2.0,
    AnomalyKind.DRIFT: 60.0,
    AnomalyKind.STUCK: 30.0,
}


def anomaly_schedule(
    targets: Sequence[tuple[str, ModbusTag]],
    *,
    seed: int,
    start_t: float,
    end_t: float,
    every_s: float = 120.0,
    kinds: Sequence[AnomalyKind] = tuple(AnomalyKind),
    magnitude: float = 0.5,
    durations: Mapping[AnomalyKind, float] = SCHEDULE_DURATIONS,
) -> list[Anomaly]:
    """A deterministic (by ``seed``) schedule: one anomaly every ``every_s`` seconds from
    ``start_t`` (the first after one interval) until ``end_t``, kinds taken in turn, each
    on a tag drawn from ``targets`` ((device name, tag) pairs) early in its slot, so the
    tag is normal again for a while before the next. Spikes and drifts have a random sign
    and ``magnitude`` times the tag's demo span (its waveform's range) in engineering
    units. Anomalies never overlap."""
    if not targets or not kinds:
        raise ValueError("anomaly_schedule needs at least one target and one kind")
    longest = max(durations[k] for k in kinds)
    if every_s <= longest:
        raise ValueError(f"every_s {every_s} must exceed the longest duration {longest}")
    rng = random.Random(seed)
    out: list[Anomaly] = []
    slot = start_t + every_s
    i = 0
    while slot + every_s <= end_t:
        device, tag = targets[rng.randrange(len(targets))]
        kind = kinds[i % len(kinds)]
        lo, hi = TYPES[tag.type].demo
        size = magnitude * (hi - lo) * abs(tag.scale) * rng.choice((-1.0, 1.0))
        # In the first half of what the slot leaves: the tag is normal again for a while.
        begin = slot + rng.uniform(0.0, (every_s - durations[kind]) / 2)
        out.append(Anomaly(device, tag.name, kind, begin, durations[kind], size))
        slot += every_s
        i += 1
    return out


def parse_anomaly(spec: str, t0: float = 0.0) -> Anomaly:
    """``device/tag:kind:start_s:duration_s[:magnitude]`` (start relative to ``t0``), the
    form a command-line flag takes, e.g. ``boiler/temperature:spike:30:2:50``."""
    parts = spec.split(":")
    name = parts[0].split("/")
    try:
        if len(parts) not in (4, 5) or len(name) != 2 or not all(name):
            raise ValueError("expected device/tag:kind:start_s:duration_s[:magnitude]")
        if parts[1] not in AnomalyKind.__members__.values():
            raise ValueError(f"unknown kind {parts[1]!r}; accepted: {', '.join(AnomalyKind)}")
        numbers = [float(x) for x in parts[2:]]
        return Anomaly(name[0], name[1], AnomalyKind(parts[1]), t0 + numbers[0], *numbers[1:])
    except ValueError as exc:
        raise ValueError(
            f"anomaly {spec!r}: {exc} (e.g. boiler/temperature:spike:30:2:50)"
        ) from None


async def serve_devices(
    devices: Sequence[ModbusTcpDevice],
    stop: asyncio.Event,
    *,
    interval_s: float = 0.1,
    anomalies: Iterable[Anomaly] = (),
) -> None:
    """Simulate devices until ``stop`` is set: one server per (host, port), waveforms on,
    with ``anomalies`` (e.g. from ``anomaly_schedule``) injected on their tags."""
    scheduled = list(anomalies)
    groups: dict[tuple[str, int], list[ModbusTcpDevice]] = {}
    for d in devices:
        groups.setdefault((d.host, d.port), []).append(d)
    sims = []
    for (host, port), group in groups.items():
        ends = (t.address + register_count(t.table, t.type) for d in group for t in d.tags)
        size = min(65536, max(10000, *ends))
        sims.append(
            ModbusSimulator(host=host, port=port, unit_ids=[d.unit_id for d in group], size=size)
        )
    tasks: list[asyncio.Task[None]] = []
    try:
        for sim, group in zip(sims, groups.values(), strict=True):
            names = {d.name for d in group}
            sim.add_anomalies(a for a in scheduled if a.device in names)
            sim.apply_waveforms(group, time.time())
            await sim.start()
            tasks.append(asyncio.create_task(sim.run_waveforms(group, interval_s)))
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sim in sims:
            await sim.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a device map until interrupted."""
    args = sys.argv[1:] if argv is None else list(argv)
    path = Path(args[0]) if args else SAMPLE_MAP
    devices = load_device_map(path)
    for d in devices:
        host = f"[{d.host}]" if ":" in d.host else d.host
        print(f"simulating {d.name}: {host}:{d.port} unit {d.unit_id}, {len(d.tags)} tags")

    async def run() -> None:
        await serve_devices(devices, asyncio.Event())

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
