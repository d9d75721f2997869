"""One dead device never delays the others: the gateway's poll loops with the real Modbus
drivers against a real pymodbus server, measured.

50 Modbus TCP devices poll every 200 ms; one of them points at a black hole (a socket
that accepts and never answers). The 49 healthy devices must keep their period: median
within 10 %, no gap longer than 3 periods. The same holds on a shared RTU bus, where a
silent unit costs the others at most one timeout per backoff step.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import statistics
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from drivers.contract import Batch, Quality
from drivers.modbus import Table, compile_plan
from drivers.modbus.config import Device
from drivers.modbus.driver import Driver
from drivers.modbus.simulator import ModbusSimulator
from gateway.daemon import _cancel_all
from gateway.poller import DeviceState, poll_device

PERIOD_S = 0.2
HEALTHY = 49
RUN_S = 4.0


@pytest.fixture
def server() -> Iterator[ModbusSimulator]:
    """The simulator on a thread of its own, as a PLC is a peer of its own."""
    sim = ModbusSimulator(unit_ids=range(1, HEALTHY + 1), size=200)
    for unit in range(1, HEALTHY + 1):
        sim.set_registers(unit, Table.HOLDING, 0, [unit] * 20)
    loop = asyncio.new_event_loop()
    ready, stop = threading.Event(), asyncio.Event()

    def run() -> None:
        async def main() -> None:
            await sim.start()
            ready.set()
            await stop.wait()
            await sim.stop()

        loop.run_until_complete(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield sim
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)


def _device(name: str, fields: dict[str, Any], unit: int, **kw: Any) -> Any:
    from pydantic import TypeAdapter

    data = {
        "name": name,
        "unit_id": unit,
        "poll_interval_ms": int(PERIOD_S * 1000),
        "tags": [{"name": f"r{i}", "address": i * 5} for i in range(4)],
        **fields,
        **kw,
    }
    return TypeAdapter(Device).validate_python(data)


async def _poll(
    devices: list[Any], seconds: float
) -> tuple[dict[str, list[tuple[float, Batch]]], dict[str, DeviceState]]:
    loop = asyncio.get_running_loop()
    seen: dict[str, list[tuple[float, Batch]]] = {d.name: [] for d in devices}
    states = {d.name: DeviceState(d.name) for d in devices}
    stop = asyncio.Event()

    def sink_for(name: str) -> Any:
        async def sink(batch: Batch) -> None:
            seen[name].append((loop.time(), batch))

        return sink

    tasks = [
        asyncio.create_task(
            poll_device(
                Driver(d),
                compile_plan(d),
                list(compile_plan(d).tag_names),
                d.poll_interval_ms / 1000,
                sink_for(d.name),
                states[d.name],
                stop,
            )
        )
        for d in devices
    ]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait_for(_cancel_all(tasks), 10)
    return seen, states


def _periods(batches: list[tuple[float, Batch]]) -> list[float]:
    times = [t for t, _ in batches[1:]]  # the first includes the connect
    return [b - a for a, b in itertools.pairwise(times)]


def _assert_kept_period(name: str, batches: list[tuple[float, Batch]]) -> None:
    assert all(b.ok for _, b in batches), (name, [b.error for _, b in batches if not b.ok][:1])
    periods = _periods(batches)
    assert periods, name
    median, longest = statistics.median(periods), max(periods)
    assert abs(median - PERIOD_S) <= 0.1 * PERIOD_S, (name, median)
    assert longest <= 3 * PERIOD_S, (name, longest)


def test_one_black_holed_device_does_not_delay_49_others(server: ModbusSimulator) -> None:
    async def main() -> tuple[dict[str, list[tuple[float, Batch]]], dict[str, DeviceState]]:
        async def black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # accepts, reads, never answers
            writer.close()

        hole = await asyncio.start_server(black_hole, "127.0.0.1", 0)
        hole_port = hole.sockets[0].getsockname()[1]
        tcp = {"protocol": "modbus_tcp", "host": "127.0.0.1"}
        devices = [
            _device(f"ok{u}", {**tcp, "port": server.port}, u, timeout_ms=1000)
            for u in range(1, HEALTHY + 1)
        ]
        devices.append(_device("dead", {**tcp, "port": hole_port}, 1, timeout_ms=1000))
        try:
            return await _poll(devices, RUN_S)
        finally:
            hole.close()

    seen, states = asyncio.run(main())
    for u in range(1, HEALTHY + 1):
        _assert_kept_period(f"ok{u}", seen[f"ok{u}"])
        assert len(seen[f"ok{u}"]) >= RUN_S / PERIOD_S - 2
    dead = [b for _, b in seen["dead"]]
    assert dead and all(not b.ok for b in dead)
    assert all(r[3] == Quality.BAD_COMM for b in dead for r in b.readings)
    assert "no response within 1000 ms reading holding 0..15" in (dead[0].error or "")
    state = states["dead"]
    assert not state.up and state.errors >= 2 and state.last_error
    # exponential backoff: a handful of attempts in 4 s, not one per period
    assert len(dead) <= 4
    ok = states["ok1"]
    assert ok.up and ok.errors == 0 and ok.last_latency_ms is not None


@pytest.mark.skipif(importlib.util.find_spec("serial") is None, reason="pyserial is not installed")
def test_a_silent_unit_on_a_shared_rtu_bus_costs_the_others_little() -> None:
    """Four units and one silent one on one serial line (pty): the four keep their
    period; the silent one is backed off, so it holds the bus only now and then."""
    from drivers.modbus.ptybus import PtyBridge

    async def main() -> tuple[dict[str, list[tuple[float, Batch]]], int]:
        async with PtyBridge(trace=True) as bridge:
            sim = ModbusSimulator(serial_port=bridge.server_path, unit_ids=(1, 2, 3, 4))
            async with sim:
                rtu = {"protocol": "modbus_rtu", "port": bridge.client_path, "parity": "N"}
                rtu["baudrate"] = 115200
                devices = [_device(f"u{u}", rtu, u, timeout_ms=100) for u in (1, 2, 3, 4, 9)]
                seen, _ = await _poll(devices, 3.0)
            to_silent = sum(1 for s, _, b in bridge.trace or () if s == "C" and b[0] == 9)
            return seen, to_silent

    seen, to_silent = asyncio.run(main())
    for u in (1, 2, 3, 4):
        _assert_kept_period(f"u{u}", seen[f"u{u}"])
    assert all(not b.ok for _, b in seen["u9"]) and 1 <= to_silent <= 5
