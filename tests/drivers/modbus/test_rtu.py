"""Modbus RTU against pymodbus's serial server over a pseudo-terminal pair (real RTU
frames with CRCs through real ttys, no mock), and RTU framing over TCP.

The ``PtyBridge`` records every chunk that crosses the line, so the tests check the bus
itself: requests and answers alternate, each answer comes from the unit asked, the
quiet time before a request is kept.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import termios
import time
from pathlib import Path
from typing import Any

import pytest

from drivers.contract import Batch, ConnectError, Quality
from drivers.modbus import ModbusRtuDevice, ModbusRtuTcpDevice, Table, compile_plan
from drivers.modbus.driver import Driver
from drivers.modbus.ptybus import PtyBridge
from drivers.modbus.rtu import ModbusRtuDriver, shared_links
from drivers.modbus.simulator import ModbusSimulator

needs_serial = pytest.mark.skipif(
    importlib.util.find_spec("serial") is None,
    reason="pyserial is not installed: pymodbus needs it for serial ports (pyproject.toml)",
)
pytestmark = []


def crc16(data: bytes) -> int:
    """Modbus CRC-16 (poly 0xA001, init 0xFFFF), sent low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def messages(trace: list[tuple[str, float, bytes]]) -> list[tuple[str, float, float, bytes]]:
    """Consecutive chunks from one side joined: (side, first time, last time, bytes)."""
    out: list[tuple[str, float, float, bytes]] = []
    for side, t, data in trace:
        if out and out[-1][0] == side:
            s, t0, _, d = out[-1]
            out[-1] = (s, t0, t, d + data)
        else:
            out.append((side, t, t, data))
    return out


def rtu_device(port: str, unit: int, *tags: dict[str, Any], **kw: Any) -> ModbusRtuDevice:
    """A device on ``port``; parity N, the only one a pty carries (see ptybus.py)."""
    return ModbusRtuDevice.model_validate(
        {
            "protocol": "modbus_rtu",
            "name": f"u{unit}",
            "port": port,
            "unit_id": unit,
            "parity": "N",
            "tags": list(tags) or [{"name": "a", "address": 0}],
            **kw,
        }
    )


async def bus_with(units: tuple[int, ...], bridge: PtyBridge, **line: Any) -> ModbusSimulator:
    sim = ModbusSimulator(serial_port=bridge.server_path, unit_ids=units, size=1000, **line)
    await sim.start()
    for u in units:
        sim.set_registers(u, Table.HOLDING, 0, [u * 100 + i for i in range(600)])
    return sim


@needs_serial
def test_devices_on_one_bus_share_one_link_and_never_interleave() -> None:
    """Four drivers read concurrently (three requests each, five rounds): each gets its
    own values, and on the wire every request is answered by its unit before the next
    request starts; every frame's CRC is right."""
    tags = [{"name": f"r{a}", "address": a} for a in (0, 200, 400)]

    async def main() -> tuple[list[list[Batch]], list[tuple[str, float, bytes]], int, int]:
        async with PtyBridge(trace=True) as bridge:
            sim = await bus_with((1, 2, 3, 4), bridge)
            devices = [
                rtu_device(bridge.client_path, u, *tags, max_gap=0, baudrate=115200)
                for u in (1, 2, 3, 4)
            ]
            drivers = [Driver(d) for d in devices]
            await asyncio.gather(*(d.connect() for d in drivers))
            users = len(shared_links()[f"serial:{bridge.client_path}"].users)
            plans = [compile_plan(d) for d in devices]
            rounds = [
                list(
                    await asyncio.gather(*(d.read(p) for d, p in zip(drivers, plans, strict=True)))
                )
                for _ in range(5)
            ]
            for d in drivers:
                await d.close()
            await sim.stop()
            assert bridge.trace is not None
            return rounds, bridge.trace, users, len(shared_links())

    rounds, trace, users, links_after = asyncio.run(main())
    assert users == 4 and links_after == 0
    for batches in rounds:
        for unit, batch in enumerate(batches, 1):
            assert batch.ok, batch.error
            assert [r[2] for r in batch.readings] == [
                unit * 100,
                unit * 100 + 200,
                unit * 100 + 400,
            ]
    msgs = messages(trace)
    assert [m[0] for m in msgs] == ["C", "S"] * 60
    for request, answer in zip(msgs[::2], msgs[1::2], strict=True):
        for frame in (request[3], answer[3]):
            assert int.from_bytes(frame[-2:], "little") == crc16(frame[:-2])
        assert request[3][0] == answer[3][0]  # the unit asked is the unit answering
        assert request[2] <= answer[1]  # the answer starts after the request ended


@needs_serial
def test_inter_request_delay_keeps_the_bus_quiet() -> None:
    async def main() -> list[tuple[str, float, bytes]]:
        async with PtyBridge(trace=True) as bridge:
            sim = await bus_with((1, 2), bridge)
            devices = [rtu_device(bridge.client_path, u, inter_request_delay_ms=30) for u in (1, 2)]
            drivers = [Driver(d) for d in devices]
            for d in drivers:
                await d.connect()
            for _ in range(3):
                await asyncio.gather(
                    *(d.read(compile_plan(v)) for d, v in zip(drivers, devices, strict=True))
                )
            for d in drivers:
                await d.close()
            await sim.stop()
            assert bridge.trace is not None
            return bridge.trace

    msgs = messages(asyncio.run(main()))
    assert len(msgs) == 12
    gaps = [nxt[1] - prev[2] for prev, nxt in zip(msgs[1::2], msgs[2::2], strict=False)]
    assert len(gaps) == 5 and min(gaps) >= 0.028, gaps


@needs_serial
def test_silent_unit_is_bad_comm_and_only_that_device_goes_down() -> None:
    """A unit that never answers: its tags are BAD_COMM after timeout x (1 + retries),
    its driver reports disconnected (the gateway backs off on it), while the bus and
    the other devices stay up."""

    async def main() -> dict[str, Any]:
        async with PtyBridge(trace=True) as bridge:
            sim = await bus_with((1, 2), bridge)
            devices = [
                rtu_device(bridge.client_path, u, timeout_ms=150, retries=1) for u in (1, 2, 9)
            ]
            drivers = [Driver(d) for d in devices]
            for d in drivers:
                await d.connect()
            started = time.monotonic()
            batches = await asyncio.gather(
                *(d.read(compile_plan(v)) for d, v in zip(drivers, devices, strict=True))
            )
            elapsed = time.monotonic() - started
            state = [d.connected for d in drivers]
            again = await drivers[0].read(compile_plan(devices[0]))
            to_9 = sum(1 for s, _, b in bridge.trace or () if s == "C" and b[0] == 9)
            try:
                await drivers[2].connect()
                refused = ""
            except ConnectError as exc:
                refused = str(exc)
            result = {
                "batches": batches,
                "elapsed": elapsed,
                "state": state,
                "again": again,
                "refused": refused,
                "still_up": drivers[0].connected,
                "stats": drivers[2].stats,
                "to_9": to_9,
            }
            for d in drivers:
                await d.close()
            await sim.stop()
            return result

    r = asyncio.run(main())
    ok1, ok2, dead = r["batches"]
    assert ok1.ok and ok2.ok and ok1.readings[0][2] == 100 and ok2.readings[0][2] == 200
    ((_, _, value, quality, reason),) = dead.readings
    assert (value, quality) == (None, Quality.BAD_COMM)
    assert reason.startswith("no response within 150 ms (2 attempts) reading holding 0..0 from ")
    assert reason.endswith("(19200 8N1)")
    assert r["state"] == [True, True, False]
    assert r["to_9"] == 2 and 0.3 <= r["elapsed"] < 1.5
    assert r["again"].ok and r["still_up"]
    assert (r["stats"].requests, r["stats"].timeouts, r["stats"].link_errors) == (1, 1, 0)
    # Reconnecting asks the unit once: still silent, so the connect fails and the
    # gateway's backoff keeps growing; the port stays open for the others.
    assert (
        "is open but unit 9 (device 'u9') does not answer: no response within 150 ms"
        in (r["refused"])
    )


@needs_serial
def test_line_settings_reach_the_serial_port() -> None:
    """Baud rate and stop bits as the tty has them after connect; parity and data bits
    as pymodbus hands them to pyserial (a pty cannot hold parity: see ptybus.py)."""
    from drivers.modbus.rtu import _client

    async def main() -> list[Any]:
        async with PtyBridge() as bridge:
            dev = rtu_device(bridge.client_path, 1, baudrate=9600, stopbits=2)
            driver = Driver(dev)
            await driver.connect()
            fd = os.open(bridge.client_path, os.O_RDWR | os.O_NOCTTY)
            try:
                return termios.tcgetattr(fd)
            finally:
                os.close(fd)
                await driver.close()

    _, _, cflag, _, ispeed, ospeed, _ = asyncio.run(main())
    assert ispeed == ospeed == termios.B9600
    assert cflag & termios.CSTOPB and cflag & termios.CSIZE == termios.CS8

    async def client() -> Any:
        return _client(rtu_device("/dev/ttyS0", 1, parity="O", bytesize=7))

    params = asyncio.run(client()).comm_params
    assert (params.parity, params.bytesize, params.baudrate) == ("O", 7, 19200)


@needs_serial
def test_the_port_stays_open_while_any_driver_uses_it() -> None:
    """Two drivers of one device (as during a config reload) and another device: the
    port closes only when the last of them closes."""

    async def main() -> list[bool]:
        async with PtyBridge() as bridge:
            sim = await bus_with((1, 2), bridge)
            old, new = (Driver(rtu_device(bridge.client_path, 1)) for _ in range(2))
            other = Driver(rtu_device(bridge.client_path, 2))
            states = []
            for d in (old, new, other):
                await d.connect()
            await old.close()
            states.append(new.connected and other.connected)
            states.append((await new.read(compile_plan(rtu_device(bridge.client_path, 1)))).ok)
            await other.close()
            states.append(new.connected)
            await new.close()
            states.append(shared_links() == {})
            await sim.stop()
            return states

    assert asyncio.run(main()) == [True, True, True, True]


@needs_serial
def test_conflicting_line_settings_on_one_port_refuse_to_connect() -> None:
    async def main() -> None:
        async with PtyBridge() as bridge:
            a = Driver(rtu_device(bridge.client_path, 1, baudrate=9600))
            b = Driver(rtu_device(bridge.client_path, 2, baudrate=19200))
            await a.connect()
            try:
                with pytest.raises(
                    ConnectError, match=r"device 'u2' wants .* at 19200 8N1, but u1"
                ):
                    await b.connect()
            finally:
                await a.close()
                await b.close()

    asyncio.run(main())


@needs_serial
def test_missing_serial_port_is_a_connect_error_saying_so(tmp_path: Path) -> None:
    driver = Driver(rtu_device(str(tmp_path / "ttyUSB9"), 1, parity="E"))
    assert isinstance(driver, ModbusRtuDriver) and driver.bus == f"serial:{tmp_path}/ttyUSB9"

    async def main() -> None:
        try:
            await driver.connect()
        finally:
            await driver.close()

    with pytest.raises(
        ConnectError, match=r"cannot open .*ttyUSB9 \(19200 8E1\) .*: no such serial"
    ):
        asyncio.run(main())
    assert not driver.connected and shared_links() == {}


def test_rtu_over_tcp_devices_share_one_connection() -> None:
    """Two units behind one serial device server: one TCP connection, RTU frames."""

    async def main() -> tuple[list[Batch], int, list[int]]:
        async with ModbusSimulator(framer="rtu", unit_ids=(1, 2)) as sim:
            for u in (1, 2):
                sim.set_registers(u, Table.INPUT, 10, [u, u + 1])
            devices = [
                ModbusRtuTcpDevice.model_validate(
                    {
                        "protocol": "modbus_rtu_tcp",
                        "name": f"m{u}",
                        "host": "127.0.0.1",
                        "port": sim.port,
                        "unit_id": u,
                        "timeout_ms": 200,
                        "tags": [{"name": "v", "register": 30011, "type": "uint32"}],
                    }
                )
                for u in (1, 2, 3)
            ]
            drivers = [Driver(d) for d in devices]
            for d in drivers:
                await d.connect()
            connections = len(sim._server.active_connections)
            batches = await asyncio.gather(
                *(d.read(compile_plan(v)) for d, v in zip(drivers, devices, strict=True))
            )
            for d in drivers:
                await d.close()
            return list(batches), connections, [int(d.connected) for d in drivers]

    batches, connections, _ = asyncio.run(main())
    assert connections == 1
    assert [b.readings[0][2] for b in batches[:2]] == [0x00010002, 0x00020003]
    # unit 3 is absent: with RTU framing the server stays silent, as on a real bus
    assert batches[2].readings[0][3] == Quality.BAD_COMM
