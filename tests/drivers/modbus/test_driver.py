"""The driver against a real pymodbus server (the simulator) on loopback, IPv4 and IPv6."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from drivers.contract import Batch, ConnectError, Driver, Quality
from drivers.modbus import ModbusTcpDevice, ModbusTcpDriver, Table, compile_plan
from drivers.modbus.simulator import ModbusSimulator
from tests.drivers.modbus.test_decode import MULTI, ORDERS, SINGLE

T = TypeVar("T")


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


HOSTS = [
    "127.0.0.1",
    pytest.param("::1", marks=pytest.mark.skipif(not _ipv6_loopback(), reason="no ::1")),
]


def device(host: str, port: int, *tags: dict[str, Any], **kw: Any) -> ModbusTcpDevice:
    return ModbusTcpDevice.model_validate(
        {
            "protocol": "modbus_tcp",
            "name": "plc",
            "host": host,
            "port": port,
            "tags": list(tags),
            **kw,
        }
    )


def with_sim(
    test: Callable[[ModbusSimulator], Awaitable[T]], *, host: str = "127.0.0.1", **kw: Any
) -> T:
    """Run ``test(sim)`` with a started simulator, on a fresh event loop."""

    async def main() -> T:
        async with ModbusSimulator(host=host, **kw) as sim:
            return await test(sim)

    return asyncio.run(main())


def by_tag(batch: Batch) -> dict[str, tuple[Any, ...]]:
    return {r[0].split("/", 1)[1]: r for r in batch.readings}


@pytest.mark.parametrize("host", HOSTS)
def test_every_type_and_order_reads_exactly_over_tcp(host: str) -> None:
    """Registers written from hand-written vectors decode to the exact values, for every
    type, byte order and word order, in holding and input tables, plus bits."""
    tags: list[dict[str, Any]] = []
    writes: list[tuple[Table, int, list[int]]] = []
    expected: dict[str, Any] = {}
    address = 0
    for table in ("holding", "input"):
        for i, (dtype, value, by_order) in enumerate(MULTI):
            for order, regs in by_order.items():
                byte, word = ORDERS[order]
                name = f"{table}_{dtype}_{i}_{order}"
                tags.append(
                    {
                        "name": name,
                        "table": table,
                        "address": address,
                        "type": dtype,
                        "byte_order": byte,
                        "word_order": word,
                    }
                )
                writes.append((Table(table), address, regs))
                expected[name] = value
                address += len(regs)
        for i, (dtype, value, big, little) in enumerate(SINGLE):
            for byte, reg in (("big", big), ("little", little)):
                name = f"{table}_{dtype}_{i}_{byte}"
                tags.append(
                    {
                        "name": name,
                        "table": table,
                        "address": address,
                        "type": dtype,
                        "byte_order": byte,
                    }
                )
                writes.append((Table(table), address, [reg]))
                expected[name] = value
                address += 1
        for reg, value in ((0, False), (0x0100, True)):
            tags.append(
                {"name": f"{table}_bool_{reg}", "table": table, "address": address, "type": "bool"}
            )
            writes.append((Table(table), address, [reg]))
            expected[f"{table}_bool_{reg}"] = value
            address += 1
    bits = [True, False, True, True, False]
    for table in ("coil", "discrete"):
        for i, bit in enumerate(bits):
            tags.append({"name": f"{table}_{i}", "table": table, "address": 3 + i * 2})
            expected[f"{table}_{i}"] = bit

    async def test(sim: ModbusSimulator) -> Batch:
        for table, addr, regs in writes:
            sim.set_registers(1, table, addr, regs)
        for table in (Table.COIL, Table.DISCRETE):
            sim.set_bits(1, table, 3, [b for bit in bits for b in (bit, not bit)])
        dev = device(host, sim.port, *tags)
        driver = ModbusTcpDriver(dev)
        await driver.connect()
        try:
            return await driver.read(compile_plan(dev))
        finally:
            await driver.close()

    batch = with_sim(test, host=host)
    assert batch.ok, batch.error
    got = by_tag(batch)
    assert {k: r[3] for k, r in got.items()} == dict.fromkeys(expected, int(Quality.GOOD))
    for name, value in expected.items():
        assert got[name][2] == value and type(got[name][2]) is type(value), name


def test_modbus_exception_is_bad_device_and_other_requests_still_read() -> None:
    async def test(sim: ModbusSimulator) -> tuple[Batch, Batch, bool]:
        sim.set_registers(1, Table.HOLDING, 0, [7])
        sim.set_registers(1, Table.INPUT, 50, [8])
        dev = device(
            "127.0.0.1",
            sim.port,
            {"name": "ok", "address": 0},
            {"name": "past_end", "address": 99, "type": "float32"},  # reads 99..100
            {"name": "in", "table": "input", "address": 50},
            max_gap=0,
        )
        gap = device(
            "127.0.0.1",
            sim.port,
            {"name": "a", "address": 95},
            {"name": "b", "address": 99, "type": "uint32"},
            max_gap=8,
            on_illegal_address="fail",
        )
        driver = ModbusTcpDriver(dev)
        await driver.connect()
        first = await driver.read(compile_plan(dev))
        still = driver.connected
        await driver.close()
        driver = ModbusTcpDriver(gap)
        await driver.connect()
        second = await driver.read(compile_plan(gap))
        await driver.close()
        return first, second, still

    first, second, connected = with_sim(test, size=100)
    got = by_tag(first)
    reason = "modbus exception 2 (illegal data address) reading holding 99..100"
    assert got["past_end"][2:] == (None, int(Quality.BAD_DEVICE), reason)
    assert got["ok"][2:] == (7, int(Quality.GOOD))
    assert got["in"][2:] == (8, int(Quality.GOOD))
    assert first.error == reason and connected
    # with on_illegal_address: fail, a request that bridged a gap says how to stop bridging
    (_, _, _, quality, hint), _ = second.readings
    assert quality == Quality.BAD_DEVICE
    assert hint.startswith("modbus exception 2 (illegal data address) reading holding 95..100")
    assert "reads 3 unused address(es)" in hint and "set max_gap: 0" in hint


def test_unit_id_not_served_is_bad_device() -> None:
    async def test(sim: ModbusSimulator) -> Batch:
        dev = device("127.0.0.1", sim.port, {"name": "a", "address": 0}, unit_id=9)
        driver = ModbusTcpDriver(dev)
        await driver.connect()
        batch = await driver.read(compile_plan(dev))
        await driver.close()
        return batch

    (reading,) = with_sim(test).readings
    assert reading[3] == Quality.BAD_DEVICE and reading[4].startswith("modbus exception 4")


@pytest.mark.parametrize("host", HOSTS)
def test_server_stop_gives_bad_comm_then_reconnect_reads_again(host: str) -> None:
    async def main() -> tuple[Batch, bool, Batch, Batch]:
        sim = ModbusSimulator(host=host)
        await sim.start()
        sim.set_registers(1, Table.HOLDING, 0, [11, 12])
        dev = device(
            host,
            sim.port,
            {"name": "a", "address": 0},
            {"name": "c", "table": "coil", "address": 0},
        )
        plan = compile_plan(dev)
        driver = ModbusTcpDriver(dev)
        await driver.connect()
        good = await driver.read(plan)
        await sim.stop()
        await asyncio.sleep(0.05)
        down = await driver.read(plan)  # must not raise
        connected = driver.connected
        await sim.start()  # same port, values kept
        await driver.connect()
        again = await driver.read(plan)
        await driver.close()
        await sim.stop()
        return good, connected, down, again

    good, connected, down, again = asyncio.run(main())
    assert good.ok and not connected
    assert not down.ok and "not connected to" in (down.error or "")
    assert [r[2:4] for r in down.readings] == [(None, int(Quality.BAD_COMM))] * 2
    assert all(r[4] == down.error for r in down.readings)
    assert again.ok and [r[2] for r in again.readings] == [11, False]


def test_timeout_fails_this_and_all_following_requests_and_disconnects() -> None:
    """A device that accepts but never answers: BAD_COMM after timeout_ms, link closed."""

    async def main() -> tuple[Batch, bool, float, int]:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        dev = device(
            "127.0.0.1",
            port,
            {"name": "a", "address": 0},
            {"name": "b", "address": 500},
            {"name": "c", "table": "coil", "address": 0},
            timeout_ms=100,
        )
        driver = ModbusTcpDriver(dev)
        await driver.connect()
        started = time.monotonic()
        batch = await driver.read(compile_plan(dev))
        elapsed = time.monotonic() - started
        connected = driver.connected
        await driver.close()
        server.close()
        return batch, connected, elapsed, port

    batch, connected, elapsed, port = asyncio.run(main())
    assert not connected and 0.09 < elapsed < 1.0
    assert batch.error == f"no response within 100 ms reading holding 0..0 from 127.0.0.1:{port}"
    assert all(r[4] == batch.error for r in batch.readings)
    assert [r[3] for r in batch.readings] == [int(Quality.BAD_COMM)] * 3


@pytest.mark.parametrize("host", HOSTS)
def test_connect_to_closed_port_raises_connect_error_quickly(host: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        port = s.getsockname()[1]  # nothing listens once closed
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    driver = ModbusTcpDriver(device(host, port, {"name": "a", "address": 0}))
    started = time.monotonic()
    pattern = rf"cannot connect to {re.escape(where)} \(device 'plc'\): Connection refused"
    with pytest.raises(ConnectError, match=pattern):
        asyncio.run(driver.connect())
    assert time.monotonic() - started < 1.0
    assert not driver.connected


def test_read_before_connect_and_double_close_are_safe() -> None:
    dev = device("127.0.0.1", 1, {"name": "a", "address": 0})
    driver = ModbusTcpDriver(dev)
    assert isinstance(driver, Driver) and driver.name == "plc"

    async def main() -> Batch:
        batch = await driver.read(compile_plan(dev))
        await driver.close()
        await driver.close()
        return batch

    batch = asyncio.run(main())
    assert batch.readings == [
        ("plc/a", batch.readings[0][1], None, int(Quality.BAD_COMM), "not connected to 127.0.0.1:1")
    ]


def test_each_response_has_its_own_timestamp() -> None:
    async def test(sim: ModbusSimulator) -> Batch:
        dev = device(
            "127.0.0.1",
            sim.port,
            {"name": "a", "address": 0},
            {"name": "b", "address": 1},
            {"name": "c", "address": 1000},
        )
        driver = ModbusTcpDriver(dev)
        await driver.connect()
        before = time.time_ns()
        batch = await driver.read(compile_plan(dev))
        await driver.close()
        assert all(before <= r[1] <= time.time_ns() for r in batch.readings)
        return batch

    stamps = [r[1] for r in with_sim(test).readings]
    assert stamps[0] == stamps[1] < stamps[2]
