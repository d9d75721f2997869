"""The simulator: memory access, waveforms and serving device maps, read by the driver."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
from pathlib import Path

import pytest

from drivers.contract import Batch, ConnectError, Quality
from drivers.modbus import ModbusTcpDevice, ModbusTcpDriver, Table, compile_plan, load_device_map
from drivers.modbus.driver import Driver
from drivers.modbus.simulator import SAMPLE_MAP, ModbusSimulator, serve_devices, waveform_value
from drivers.modbus.types import TYPES


def test_registers_and_bits_round_trip_and_are_bounded() -> None:
    sim = ModbusSimulator(unit_ids=(1, 5), size=40)  # usable before start, too
    sim.set_registers(5, Table.INPUT, 38, [1, 65535])
    sim.set_bits(1, Table.COIL, 14, [True, False, True, True])
    assert sim.get_registers(5, Table.INPUT, 37, 3) == [0, 1, 65535]
    assert sim.get_registers(1, Table.INPUT, 38, 2) == [0, 0]  # units are separate
    assert sim.get_bits(1, Table.COIL, 13, 6) == [False, True, False, True, True, False]
    assert sim.get_bits(1, Table.DISCRETE, 14, 2) == [False, False]
    with pytest.raises(IndexError, match=r"input 39\.\.40 is outside 0\.\.39"):
        sim.set_registers(5, Table.INPUT, 39, [1, 2])
    with pytest.raises(ValueError, match=r"0\.\.65535"):
        sim.set_registers(5, Table.HOLDING, 0, [70000])
    with pytest.raises(ValueError, match="set_bits/get_bits"):
        sim.set_registers(5, Table.COIL, 0, [1])
    with pytest.raises(KeyError, match="unit id 2 is not served"):
        sim.get_bits(2, Table.COIL, 0, 1)


def _sample_on(port: int) -> list[ModbusTcpDevice]:
    return [
        d.model_copy(update={"host": "127.0.0.1", "port": port})
        for d in load_device_map(SAMPLE_MAP)
    ]


async def _read_all(devices: list[ModbusTcpDevice]) -> list[Batch]:
    batches = []
    for dev in devices:
        driver = ModbusTcpDriver(dev)
        await driver.connect()
        batches.append(await driver.read(compile_plan(dev)))
        await driver.close()
    return batches


@pytest.mark.parametrize("t", [0.0, 123.4, 1_700_000_000.25])
def test_waveforms_read_back_exactly_as_waveform_value(t: float) -> None:
    """What the driver decodes equals ``waveform_value`` for every tag of the sample map
    (float32, CDAB words, 64-bit counters, scale, bools, coils)."""

    async def main() -> tuple[list[ModbusTcpDevice], list[Batch]]:
        async with ModbusSimulator(unit_ids=(1, 2, 3)) as sim:
            devices = _sample_on(sim.port)
            sim.apply_waveforms(devices, t)
            return devices, await _read_all(devices)

    devices, batches = asyncio.run(main())
    for dev, batch in zip(devices, batches, strict=True):
        assert batch.ok, batch.error
        expected = {f"{dev.name}/{tag.name}": waveform_value(dev.name, tag, t) for tag in dev.tags}
        assert {r[0]: r[2] for r in batch.readings} == expected


def test_waveforms_are_deterministic_in_range_and_change() -> None:
    devices = load_device_map(SAMPLE_MAP)
    for dev in devices:
        for tag in dev.tags:
            values = [waveform_value(dev.name, tag, t) for t in range(0, 120, 3)]
            assert values == [waveform_value(dev.name, tag, t) for t in range(0, 120, 3)]
            assert len(set(values)) > 1, tag.name
            lo, hi = TYPES[tag.type].demo
            if TYPES[tag.type].is_string:  # text cycles through a few states
                assert all(isinstance(v, str) and len(v) <= (tag.length or 0) for v in values)
            elif tag.scale == 1 and tag.offset == 0:
                assert all(lo <= v <= hi for v in values)


def test_one_server_serves_many_unit_ids_concurrently() -> None:
    async def main() -> list[Batch]:
        async with ModbusSimulator(unit_ids=range(1, 21), size=200) as sim:
            for unit in range(1, 21):
                sim.set_registers(unit, Table.HOLDING, 0, [unit] * 125)
            devices = [
                ModbusTcpDevice.model_validate(
                    {
                        "protocol": "modbus_tcp",
                        "name": f"d{unit}",
                        "host": "127.0.0.1",
                        "port": sim.port,
                        "unit_id": unit,
                        "tags": [{"name": f"r{i}", "address": i} for i in range(125)],
                    }
                )
                for unit in range(1, 21)
            ]
            drivers = [ModbusTcpDriver(d) for d in devices]
            await asyncio.gather(*(d.connect() for d in drivers))
            batches = await asyncio.gather(
                *(d.read(compile_plan(dev)) for d, dev in zip(drivers, devices, strict=True))
            )
            await asyncio.gather(*(d.close() for d in drivers))
            return list(batches)

    for unit, batch in enumerate(asyncio.run(main()), 1):
        assert batch.ok and {r[2] for r in batch.readings} == {unit}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_serve_devices_serves_a_map_until_stopped() -> None:
    async def main() -> tuple[list[Batch], list[Batch]]:
        devices = _sample_on(_free_port())
        stop = asyncio.Event()
        task = asyncio.create_task(serve_devices(devices, stop, interval_s=0.02))
        for _ in range(100):  # wait until it listens
            await asyncio.sleep(0.02)
            try:
                batches = await _read_all(devices)
                break
            except ConnectError:  # not listening yet
                continue
        await asyncio.sleep(0.1)
        later = await _read_all(devices)
        stop.set()
        await asyncio.wait_for(task, 5)
        return batches, later

    first, later = asyncio.run(main())
    for batch in first + later:
        assert batch.ok and all(r[3] == Quality.GOOD for r in batch.readings)
    values = [[r[2] for r in b.readings] for b in (first, later) for b in b]
    assert values[: len(first)] != values[len(first) :], "waveforms did not advance"


RTU_MAP = SAMPLE_MAP.with_name("sample-rtu-map.yaml")


@pytest.mark.skipif(importlib.util.find_spec("serial") is None, reason="pyserial is not installed")
def test_serve_devices_serves_rtu_on_a_pty_line_and_rtu_over_tcp(tmp_path: Path) -> None:
    """The RTU sample map: two meters on one simulated serial line (linked where the map
    says the port is) and a drive behind an RTU-over-TCP server, read by the drivers."""
    devices = []
    for d in load_device_map(RTU_MAP):
        if d.protocol == "modbus_rtu":
            devices.append(d.model_copy(update={"port": str(tmp_path / "ttyRTU0")}))
        else:
            devices.append(d.model_copy(update={"port": _free_port()}))

    async def main() -> list[Batch]:
        stop = asyncio.Event()
        task = asyncio.create_task(serve_devices(devices, stop, interval_s=0.02))
        for _ in range(100):
            await asyncio.sleep(0.02)
            if (tmp_path / "ttyRTU0").exists():
                break
        await asyncio.sleep(0.1)
        batches = []
        for dev in devices:
            driver = Driver(dev)
            for _ in range(50):
                try:
                    await driver.connect()
                    break
                except ConnectError:
                    await asyncio.sleep(0.02)
            batches.append(await driver.read(compile_plan(dev)))
            await driver.close()
        stop.set()
        await asyncio.wait_for(task, 5)
        assert not (tmp_path / "ttyRTU0").exists()  # the link is removed
        return batches

    for dev, batch in zip(devices, asyncio.run(main()), strict=True):
        assert batch.ok, batch.error
        assert {r[0].split("/")[1] for r in batch.readings} == {t.name for t in dev.tags}
        for r in batch.readings:
            tag = next(t for t in dev.tags if t.name == r[0].split("/")[1])
            assert type(r[2]) is type(waveform_value(dev.name, tag, 0.0)), tag.name
