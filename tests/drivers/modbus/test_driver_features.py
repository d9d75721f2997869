"""Driver options against real servers: per-tag intervals, retries, inter-request delay,
raw registers for tools, the answer check after a silent spell, dispatch by protocol."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from drivers.contract import Batch, ConnectError, Quality
from drivers.modbus import ModbusTcpDevice, Table, compile_plan
from drivers.modbus.driver import Driver, ModbusTcpDriver
from drivers.modbus.simulator import ModbusSimulator


def device(port: int, *tags: dict[str, Any], **kw: Any) -> ModbusTcpDevice:
    return ModbusTcpDevice.model_validate(
        {
            "protocol": "modbus_tcp",
            "name": "plc",
            "host": "127.0.0.1",
            "port": port,
            "tags": list(tags),
            **kw,
        }
    )


async def silent_server() -> tuple[asyncio.Server, int]:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_per_tag_intervals_read_slow_tags_every_nth_cycle() -> None:
    async def main() -> list[set[str]]:
        async with ModbusSimulator() as sim:
            dev = device(
                sim.port,
                {"name": "fast", "address": 0, "poll_interval_ms": 100},
                {"name": "slow", "address": 50, "poll_interval_ms": 300},
                {"name": "bit", "table": "coil", "address": 0, "poll_interval_ms": 300},
            )
            assert dev.poll_interval_ms == 100
            driver = Driver(dev)
            await driver.connect()
            plan = compile_plan(dev)
            seen = [{r[0][4:] for r in (await driver.read(plan)).readings} for _ in range(7)]
            await driver.close()
            return seen

    seen = asyncio.run(main())
    full, fast = {"fast", "slow", "bit"}, {"fast"}
    assert seen == [full, fast, fast, full, fast, fast, full]


def test_read_raw_gives_each_tags_registers_and_bits() -> None:
    async def main() -> tuple[Batch, dict[str, Any]]:
        async with ModbusSimulator(size=100) as sim:
            sim.set_registers(1, Table.HOLDING, 0, [0x0000, 0x4120, 0x5055, 0x4D50, 0x8001])
            sim.set_bits(1, Table.COIL, 3, [True])
            dev = device(
                sim.port,
                {"name": "f", "register": 40001, "type": "float32", "order": "CDAB"},
                {"name": "s", "register": 40003, "type": "string", "length": 4},
                {"name": "b15", "register": 40005, "type": "bool", "bit": 15},
                {"name": "c", "register": "00004"},
                {"name": "gone", "register": 40100, "type": "uint32"},  # past the end
                max_gap=0,
            )
            driver = ModbusTcpDriver(dev)
            await driver.connect()
            out = await driver.read_raw(compile_plan(dev))
            await driver.close()
            return out

    batch, raw = asyncio.run(main())
    assert raw == {
        "plc/f": [0x0000, 0x4120],
        "plc/s": [0x5055, 0x4D50],
        "plc/b15": [0x8001],
        "plc/c": [True],
        "plc/gone": None,
    }
    values = {r[0]: r[2] for r in batch.readings}
    assert values["plc/f"] == 10.0 and values["plc/s"] == "PUMP" and values["plc/b15"] is True


def test_exception_readings_name_the_tag_table_and_address() -> None:
    async def main() -> Batch:
        async with ModbusSimulator(size=100) as sim:
            dev = device(sim.port, {"name": "ok", "address": 0}, {"name": "bad", "address": 120})
            driver = Driver(dev)
            await driver.connect()
            batch = await driver.read(compile_plan(dev))
            assert driver.stats.exceptions == {2: 1} and driver.stats.requests == 2
            await driver.close()
            return batch

    got = {r[0]: r for r in asyncio.run(main()).readings}
    assert got["plc/ok"][3] == Quality.GOOD
    assert got["plc/bad"][3:] == (
        Quality.BAD_DEVICE,
        "modbus exception 2 (illegal data address) reading holding 120..120",
    )


def test_retries_resend_after_timeout_and_the_reason_counts_attempts() -> None:
    async def main() -> tuple[Batch, float]:
        server, port = await silent_server()
        dev = device(port, {"name": "a", "address": 0}, timeout_ms=100, retries=2)
        driver = Driver(dev)
        await driver.connect()
        started = time.monotonic()
        batch = await driver.read(compile_plan(dev))
        elapsed = time.monotonic() - started
        await driver.close()
        server.close()
        return batch, elapsed

    batch, elapsed = asyncio.run(main())
    assert (
        batch.error and "no response within 100 ms (3 attempts) reading holding 0..0" in batch.error
    )
    assert 0.29 <= elapsed < 1.5


def test_connect_after_a_silent_spell_asks_the_device_once() -> None:
    """A host that accepts connections but never answers: after the first timeout,
    ``connect`` fails (so the gateway's backoff grows) instead of succeeding each time."""

    async def main() -> tuple[str, str]:
        server, port = await silent_server()
        dev = device(port, {"name": "a", "address": 7}, timeout_ms=100)
        driver = Driver(dev)
        await driver.connect()  # the first connect does not ask: no spell yet
        batch = await driver.read(compile_plan(dev))
        with pytest.raises(ConnectError) as info:
            await driver.connect()
        assert not driver.connected
        await driver.close()
        server.close()
        return batch.error or "", str(info.value)

    error, refused = asyncio.run(main())
    assert error.startswith("no response within 100 ms")
    assert refused == (
        f"127.0.0.1:{refused.split(':')[1].split(' ')[0]} is open but unit 1 (device 'plc') "
        "does not answer: no response within 100 ms"
    )


def test_a_device_that_answers_again_is_back_after_one_connect() -> None:
    async def main() -> bool:
        async with ModbusSimulator() as sim:
            dev = device(sim.port, {"name": "a", "address": 0})
            driver = ModbusTcpDriver(dev)
            driver._silent = True  # as after a timeout
            await driver.connect()
            ok = driver.connected and not driver._silent
            await driver.close()
            return ok

    assert asyncio.run(main())


def test_inter_request_delay_spaces_requests_on_a_tcp_connection() -> None:
    async def main() -> tuple[Batch, float, float]:
        async with ModbusSimulator(size=1000) as sim:
            tags = [{"name": f"t{a}", "address": a} for a in (0, 300, 600)]
            fast = device(sim.port, *tags, max_gap=0)
            slow = device(sim.port, *tags, max_gap=0, inter_request_delay_ms=60)
            timings = []
            for dev in (fast, slow):
                driver = Driver(dev)
                await driver.connect()
                started = time.monotonic()
                batch = await driver.read(compile_plan(dev))
                batch = await driver.read(compile_plan(dev))
                timings.append(time.monotonic() - started)
                await driver.close()
            return batch, *timings

    batch, fast, slow = asyncio.run(main())
    assert batch.ok
    assert slow >= 5 * 0.06 - 0.005 and fast < 0.2  # 6 requests: 5 gaps between them


def test_registry_builds_every_modbus_protocol(tmp_path: Path) -> None:
    from drivers.modbus import ModbusRtuDevice, ModbusRtuTcpDevice
    from drivers.modbus.rtu import ModbusRtuDriver
    from gateway.registry import build_device, describe_device

    tags = [{"name": "a", "address": 0, "poll_interval_ms": 200}, {"name": "b", "address": 9}]
    devices = [
        device(502, *tags),
        ModbusRtuDevice.model_validate(
            {"protocol": "modbus_rtu", "name": "r", "port": "/dev/ttyUSB0", "tags": tags}
        ),
        ModbusRtuTcpDevice.model_validate(
            {"protocol": "modbus_rtu_tcp", "name": "g", "host": "::1", "tags": tags}
        ),
    ]
    kinds = [ModbusTcpDriver, ModbusRtuDriver, ModbusRtuDriver]
    for dev, kind in zip(devices, kinds, strict=True):
        rt = build_device(dev, tmp_path)
        assert type(rt.driver) is kind and rt.interval_s == 0.2 and not rt.subscribe
        assert describe_device(dev) == [
            "holding 0..0 (1 reg, every 200 ms): a",
            "holding 9..9 (1 reg, every 1000 ms): b",
        ]
    assert [getattr(build_device(d, tmp_path).driver, "bus", None) for d in devices] == [
        None,
        "serial:/dev/ttyUSB0",
        "rtu-tcp:::1:502",
    ]
