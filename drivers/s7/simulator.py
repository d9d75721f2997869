"""An S7 PLC simulator on snap7's own server, for tests, the demo and benchmarks.

snap7 3.3's server listens on **IPv4 only** (an AF_INET socket; ``start_to`` checks the
address with ``inet_aton``), so the simulator binds 127.0.0.1 by default and never all
addresses. The driver itself reaches IPv6 hosts; the tests cover that through a
loopback proxy on ``[::1]``.

It registers a DB per DB number used and the M, I and Q areas (1024 bytes each, or more
if a tag needs it); reading past the end of a DB answers return code 0x05 (address out
of range) and an unregistered DB 0x0A, which is how the tests exercise per-item errors.
Values are set as raw bytes (``set_bytes``/``set_bit``), per tag (``write_tag``), or
follow deterministic waveforms for a config's tags (``apply_waveforms``).

Run ``python -m drivers.s7.simulator [devices.yaml]`` to serve devices (by default the
sample next to this file) until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import socket
import struct
import sys
import threading
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from snap7.server import Server
from snap7.type import SrvArea, WordLen

from .config import DeviceConfig, S7Tag, load_devices
from .decode import encode_raw, encode_value
from .types import TYPES, Area, DataType

__all__ = ["SAMPLE", "S7Simulator", "serve_devices", "waveform_value"]

SAMPLE = Path(__file__).with_name("sample-device.yaml")

_SRV_AREAS: dict[Area, SrvArea] = {
    Area.DB: SrvArea.DB,
    Area.M: SrvArea.MK,
    Area.I: SrvArea.PE,
    Area.Q: SrvArea.PA,
}
_S7_BIT = WordLen.Bit
AREA_SIZE = 1024
"""Default size of the M, I and Q areas (an S7-1200 has 1024 bytes of I and Q)."""


class _Server(Server):
    """snap7's server whose ``stop`` also ends established connections.

    snap7 3.3's ``stop`` closes only the listening socket: a connected client is served
    for up to 5 s more and ``stop`` waits a second per client. A stopped PLC must look
    like one that lost power, so the client sockets are tracked and reset.
    """

    def __init__(self) -> None:
        super().__init__(log=False)
        self._sockets: set[socket.socket] = set()
        self._sockets_lock = threading.Lock()

    def _handle_client(self, client_socket: socket.socket, address: tuple[str, int]) -> None:
        with self._sockets_lock:
            self._sockets.add(client_socket)
        try:
            super()._handle_client(client_socket, address)
        finally:
            with self._sockets_lock:
                self._sockets.discard(client_socket)

    def _parse_address_specification(self, addr_spec: bytes) -> dict[str, Any]:
        parsed: dict[str, Any] = super()._parse_address_specification(addr_spec)
        if len(addr_spec) >= 12:
            parsed["bit"] = addr_spec[11] & 7  # snap7 keeps only the byte of a bit address
        return parsed

    def _handle_write_area(self, request: dict[str, Any], client_address: Any) -> bytes:
        """As a PLC does it: a bit write (transport size BIT) changes that one bit of its
        byte; snap7 3.3 would store the data byte over the whole byte."""
        spec = request.get("parameters", {}).get("address_spec") or {}
        data = request.get("data", {}).get("data", b"")
        if spec.get("word_len") == _S7_BIT and data:
            key = (spec["area"], spec["db_number"])
            memory = self.memory_areas.get(key)
            start, mask = spec["start"], 1 << spec.get("bit", 0)
            if memory is not None and start < len(memory):
                with self.area_locks[key]:
                    now = memory[start]
                    new = now | mask if data[0] & 1 else now & ~mask & 0xFF
                request["data"]["data"] = bytes([new])
        reply: bytes = super()._handle_write_area(request, client_address)
        return reply

    def drop_clients(self) -> None:
        with self._sockets_lock:
            sockets = list(self._sockets)
        for s in sockets:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.shutdown(socket.SHUT_RDWR)  # unblocks the handler, which closes it: RST


def _bind_address(host: str) -> str:
    if host == "localhost":
        return "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"host {host!r}: the simulator binds an IPv4 address") from None
    if ip.version != 4:
        raise ValueError(
            f"host {host!r}: snap7's server listens on IPv4 only; simulate S7 devices on "
            "127.0.0.1 (the driver itself connects over IPv6 too)"
        )
    return host


class S7Simulator:
    """A snap7 server with DBs of given sizes and the M, I, Q areas, on loopback."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        dbs: Mapping[int, int] | None = None,
        area_size: int = AREA_SIZE,
    ) -> None:
        self.host = _bind_address(host)
        self.port = port
        self._memory: dict[tuple[Area, int], bytearray] = {}
        for db, size in (dbs if dbs is not None else {1: 1024}).items():
            self._memory[Area.DB, db] = bytearray(size)
        for area in (Area.M, Area.I, Area.Q):
            self._memory[area, 0] = bytearray(area_size)
        self._server = _Server()
        for (area, index), data in self._memory.items():
            self._server.register_area(_SRV_AREAS[area], index, data)  # shared, not copied

    @classmethod
    def for_devices(
        cls, devices: Sequence[DeviceConfig], *, host: str = "127.0.0.1", port: int = 0
    ) -> S7Simulator:
        """A simulator whose DBs and areas hold every tag of ``devices``."""
        ends: dict[tuple[Area, int], int] = {}
        for device in devices:
            for tag in device.tags:
                key = (tag.location.area, tag.location.db)
                ends[key] = max(ends.get(key, 0), tag.location.byte + tag.size)
        dbs = {db: end + (end & 1) for (area, db), end in ends.items() if area is Area.DB}
        area_size = max([AREA_SIZE, *(e for (a, _), e in ends.items() if a is not Area.DB)])
        return cls(host=host, port=port, dbs=dbs, area_size=area_size)

    @property
    def running(self) -> bool:
        return self._server.running

    def start(self) -> None:
        """Listen; keeps the port and the values across restarts."""
        if self._server.running:
            return
        self._server.host = self.host
        self._server.start(self.port)
        assert self._server.server_socket is not None
        self.port = self._server.server_socket.getsockname()[1]

    def stop(self) -> None:
        """Stop listening and drop every connection, like a PLC that lost power."""
        self._server.drop_clients()
        self._server.stop()
        self._server.drop_clients()  # one that connected meanwhile

    def __enter__(self) -> S7Simulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _block(self, area: Area | str, db: int, start: int, size: int) -> bytearray:
        key = (Area(area), db if Area(area) is Area.DB else 0)
        if key not in self._memory:
            raise KeyError(f"DB{db} is not simulated here; simulated: {self.dbs}")
        data = self._memory[key]
        if start < 0 or start + size > len(data):
            raise IndexError(f"bytes {start}..{start + size - 1} are outside 0..{len(data) - 1}")
        return data

    @property
    def dbs(self) -> dict[int, int]:
        """Simulated DB numbers and their sizes."""
        return {db: len(m) for (area, db), m in self._memory.items() if area is Area.DB}

    def set_bytes(self, area: Area | str, start: int, data: bytes, *, db: int = 0) -> None:
        """Write raw bytes (under the server's lock: a read never sees half a value)."""
        block = self._block(area, db, start, len(data))
        key = (_SRV_AREAS[Area(area)], db if Area(area) is Area.DB else 0)
        self._server.lock_area(*key)
        try:
            block[start : start + len(data)] = data
        finally:
            self._server.unlock_area(*key)

    @contextlib.contextmanager
    def stalled(self, area: Area | str, *, db: int = 0) -> Iterator[None]:
        """Reads touching this area wait until the block ends: a PLC that stops answering
        while the link stays up (for timeout tests)."""
        key = (_SRV_AREAS[Area(area)], db if Area(area) is Area.DB else 0)
        self._server.lock_area(*key)
        try:
            yield
        finally:
            self._server.unlock_area(*key)

    def get_bytes(self, area: Area | str, start: int, size: int, *, db: int = 0) -> bytes:
        return bytes(self._block(area, db, start, size)[start : start + size])

    def set_bit(self, area: Area | str, byte: int, bit: int, value: bool, *, db: int = 0) -> None:
        old = self.get_bytes(area, byte, 1, db=db)[0]
        new = old | 1 << bit if value else old & ~(1 << bit)
        self.set_bytes(area, byte, bytes([new]), db=db)

    def write_tag(self, tag: S7Tag, value: Any) -> None:
        """Write an engineering value (scale/offset undone) where the tag reads it."""
        self._write_raw(tag, encode_value(tag, value))

    def _write_raw(self, tag: S7Tag, data: bytes) -> None:
        at = tag.location
        if tag.data_type is DataType.BOOL:
            self.set_bit(at.area, at.byte, at.bit or 0, data[0] != 0, db=at.db)
        else:
            self.set_bytes(at.area, at.byte, data, db=at.db)

    def apply_waveforms(self, devices: Sequence[DeviceConfig], t: float) -> None:
        """Write every tag of every device at time ``t``."""
        for device in devices:
            for tag in device.tags:
                self._write_raw(tag, encode_raw(tag, _waveform_raw(device.name, tag, t)))

    async def run_waveforms(self, devices: Sequence[DeviceConfig], interval_s: float = 0.1) -> None:
        """Apply waveforms every ``interval_s`` until cancelled."""
        while True:
            self.apply_waveforms(devices, time.time())
            await asyncio.sleep(interval_s)


_WORDS = ("idle", "starting", "running", "cleaning", "stopped", "fault")


def _waveform_raw(device_name: str, tag: S7Tag, t: float) -> bool | int | float | str:
    # crc32, not hash(): the same tag gets the same waveform in every process.
    h = zlib.crc32(f"{device_name}/{tag.name}".encode())
    period = 10.0 + h % 50  # seconds
    x = (t / period + (h >> 8) % 1000 / 1000) % 1.0
    dtype = tag.data_type
    if dtype is DataType.BOOL:
        return x < 0.5
    if dtype is DataType.STRING:
        return _WORDS[int(x * len(_WORDS))][: tag.length]
    shape = (h >> 20) % 3
    u = (0.5 + 0.5 * math.sin(2 * math.pi * x), x, 1.0 if x < 0.5 else 0.0)[shape]
    spec = TYPES[dtype]
    lo, hi = spec.demo
    raw = lo + u * (hi - lo)
    if not spec.is_float:
        return round(raw)
    if dtype is DataType.REAL:  # what a REAL can actually hold
        return float(struct.unpack(">f", struct.pack(">f", raw))[0])
    return raw


def waveform_value(device_name: str, tag: S7Tag, t: float) -> bool | int | float | str:
    """The engineering value (after scale/offset) the simulator serves for a tag at ``t``.

    Deterministic: a sine, ramp or square wave per tag, period 10-59 s, inside the type's
    range; strings cycle through a few machine states. Equals what the driver decodes.
    """
    raw = _waveform_raw(device_name, tag, t)
    if isinstance(raw, bool | str) or (tag.scale == 1 and tag.offset == 0):
        return raw
    return raw * tag.scale + tag.offset


async def serve_devices(
    devices: Sequence[DeviceConfig], stop: asyncio.Event, *, interval_s: float = 0.1
) -> None:
    """Simulate devices until ``stop`` is set: one server per (host, port), waveforms on.

    Devices sharing a host and port share one PLC's memory, as on a real one.
    """
    groups: dict[tuple[str, int], list[DeviceConfig]] = {}
    for d in devices:
        groups.setdefault((d.host, d.port), []).append(d)
    sims = [S7Simulator.for_devices(g, host=h, port=p) for (h, p), g in groups.items()]
    tasks: list[asyncio.Task[None]] = []
    try:
        for sim, group in zip(sims, groups.values(), strict=True):
            sim.apply_waveforms(group, time.time())
            sim.start()
            tasks.append(asyncio.create_task(sim.run_waveforms(group, interval_s)))
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sim in sims:
            await asyncio.to_thread(sim.stop)  # joins the server's threads


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a devices file until interrupted."""
    args = sys.argv[1:] if argv is None else list(argv)
    path = Path(args[0]) if args else SAMPLE
    devices = load_devices(path)
    for d in devices:
        print(f"simulating {d.name}: {d.host}:{d.port}, {len(d.tags)} tags (IPv4, snap7 server)")

    async def run() -> None:
        await serve_devices(devices, asyncio.Event())

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
