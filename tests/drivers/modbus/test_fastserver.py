"""The simulator's lean server (``server="fast"``, for benchmarks) answers what
pymodbus's server answers: the same readings through the real driver for every table
and type of the sample map, writes that read back, holes and out-of-range reads as
exception 2, an unknown unit id as exception 4 (or silence)."""

from __future__ import annotations

import asyncio
from typing import Any

from drivers.contract import Quality
from drivers.modbus import ModbusTcpDevice, ModbusTcpDriver, compile_plan
from drivers.modbus.config import load_device_map
from drivers.modbus.simulator import SAMPLE_MAP, ModbusSimulator
from drivers.modbus.types import Table


def _read_all(server: str) -> list[tuple[Any, ...]]:
    devices = load_device_map(SAMPLE_MAP)
    dev = devices[0]

    async def main() -> list[tuple[Any, ...]]:
        sim = ModbusSimulator(unit_ids=[dev.unit_id], server=server)  # type: ignore[arg-type]
        sim.apply_waveforms([dev], 1_700_000_000.0)
        await sim.start()
        try:
            d = dev.model_copy(update={"host": "127.0.0.1", "port": sim.port})
            drv = ModbusTcpDriver(d)
            await drv.connect()
            batch = await drv.read(compile_plan(d))
            await drv.close()
            return [(r[0], r[2], r[3]) for r in batch.readings]
        finally:
            await sim.stop()

    return asyncio.run(main())


def test_the_sample_map_reads_the_same_from_both_servers() -> None:
    fast, pymodbus = _read_all("fast"), _read_all("pymodbus")
    assert fast == pymodbus
    assert all(q == Quality.GOOD for _, _, q in fast)
    assert len({type(v) for _, v, _ in fast}) >= 3  # floats, ints, bools at least


def _device(port: int, unit: int, tags: list[dict[str, Any]]) -> ModbusTcpDevice:
    return ModbusTcpDevice.model_validate(
        {
            "protocol": "modbus_tcp",
            "name": "plc",
            "host": "127.0.0.1",
            "port": port,
            "unit_id": unit,
            "timeout_ms": 300,
            "on_illegal_address": "fail",
            "tags": tags,
        }
    )


def test_writes_read_back_and_refusals_are_exceptions() -> None:
    tags = [
        {"name": "r", "address": 10, "type": "uint16", "write": {"min": 0, "max": 9999}},
        {"name": "f", "address": 20, "type": "float32", "write": {"min": 0, "max": 9}},
        {"name": "b", "address": 30, "type": "bool", "bit": 3, "write": {}},
        {"name": "c", "address": 5, "table": "coil", "write": {}},
    ]

    async def main() -> dict[str, Any]:
        sim = ModbusSimulator(unit_ids=[1], size=100, server="fast")
        sim.add_hole(Table.HOLDING, 40, 50)
        await sim.start()
        out: dict[str, Any] = {}
        try:
            drv = ModbusTcpDriver(_device(sim.port, 1, tags))
            await drv.connect()
            for name, value in (("r", 4321), ("f", 2.5), ("b", True), ("c", True)):
                await drv.write(name, value)
                out[name] = await drv.read_tag(name)
            await drv.write("c", False)
            out["c2"] = await drv.read_tag("c")
            out["regs"] = sim.get_registers(1, Table.HOLDING, 30, 1)
            await drv.close()
            for what, dev_tags, unit in (
                ("hole", [{"name": "h", "address": 45}], 1),
                ("beyond", [{"name": "x", "address": 100}], 1),
                ("unknown unit", [{"name": "u", "address": 0}], 7),
            ):
                d = _device(sim.port, unit, dev_tags)
                drv = ModbusTcpDriver(d)
                await drv.connect()
                batch = await drv.read(compile_plan(d))
                out[what] = (batch.readings[0][3], batch.error)
                await drv.close()
        finally:
            await sim.stop()
        return out

    out = asyncio.run(main())
    assert (out["r"], out["f"], out["b"], out["c"], out["c2"]) == (4321, 2.5, True, True, False)
    assert out["regs"] == [1 << 3]
    assert out["hole"][0] == Quality.BAD_DEVICE and "exception 2" in out["hole"][1]
    assert out["beyond"][0] == Quality.BAD_DEVICE and "exception 2" in out["beyond"][1]
    assert out["unknown unit"][0] == Quality.BAD_DEVICE
    assert "exception 4" in out["unknown unit"][1]


def test_a_silent_unknown_unit_times_out() -> None:
    async def main() -> Any:
        sim = ModbusSimulator(unit_ids=[1], server="fast", answer_unknown_units=False)
        await sim.start()
        try:
            d = _device(sim.port, 9, [{"name": "u", "address": 0}])
            drv = ModbusTcpDriver(d)
            drv.check_after_silence = False
            await drv.connect()
            batch = await drv.read(compile_plan(d))
            await drv.close()
            return batch.readings[0]
        finally:
            await sim.stop()

    reading = asyncio.run(main())
    assert reading[3] == Quality.BAD_COMM and "no response within 300 ms" in reading[4]
