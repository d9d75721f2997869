"""The OPC UA and S7 drivers keep the counters Modbus keeps (requests, timeouts, errors
by kind, bad readings, last good read), counted against real servers (asyncua's and
snap7's simulators) with a failing node or area and a server that stops answering, run
by the gateway's own poll loops, and exported as the same `edgegw_device_*` metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from asyncua import ua

from drivers.contract import Batch
from drivers.opcua import DeviceConfig as OpcuaDevice
from drivers.opcua import compile_plan as opcua_plan
from drivers.opcua.driver import Driver as OpcuaDriver
from drivers.opcua.simulator import UNENCODABLE
from drivers.s7 import DeviceConfig as S7Device
from drivers.s7 import compile_plan as s7_plan
from drivers.s7.driver import Driver as S7Driver
from drivers.s7.simulator import S7Simulator
from gateway.daemon import _cancel_all
from gateway.metrics import MetricsServer
from gateway.poller import DeviceState, poll_device, subscribe_device
from tests.drivers.opcua.conftest import SimThread

from .conftest import make_snapshot
from .test_metrics import get
from .test_metrics_counters import samples

TEMPERATURE = "ns=2;s=Plant.Boiler.Temperature"
SENSOR = "ns=2;s=Types.Double"  # pinned with a bad status: a failing node


async def until(cond: Callable[[], bool], what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds  # a bound only
    while not cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


def metrics(name: str, device: dict[str, Any]) -> Callable[..., float]:
    snap = make_snapshot(devices={name: device})
    with MetricsServer(lambda: snap, port=0) as srv:
        m = samples(get(srv.url + "/metrics")[2])

    def v(metric: str, **labels: str) -> float:
        return m[(metric, tuple(sorted({"device": name, **labels}.items())))]

    return v


def test_opcua_polling_counts_requests_bad_statuses_and_a_timeout(tmp_path: Path) -> None:
    sim = SimThread()
    try:
        sim.run(sim.sim.set_value(SENSOR, 1.5, ua.StatusCodes.BadSensorFailure))
        dev = OpcuaDevice.model_validate(
            {
                "protocol": "opcua",
                "name": "plc",
                "endpoint": sim.endpoint,
                "timeout_ms": 300,
                "poll_interval_ms": 50,
                "tags": [
                    {"name": "temperature", "node": TEMPERATURE},
                    {"name": "sensor", "node": SENSOR},
                    {"name": "odd", "node": UNENCODABLE},  # the Read fails as a whole
                ],
            }
        )

        async def main() -> tuple[dict[str, Any], int]:
            state, got = DeviceState("plc"), []

            async def sink(b: Batch) -> None:
                got.append(b)

            stop, plan = asyncio.Event(), opcua_plan(dev)
            driver = OpcuaDriver(dev, pki_dir=tmp_path / "pki")
            task = asyncio.create_task(
                poll_device(driver, plan, list(plan.tag_names), 0.05, sink, state, stop)
            )
            try:
                await until(lambda: len(got) >= 5, "5 cycles")
                # the server stops answering for a while: a timeout, then a reconnect
                sim.loop.call_soon_threadsafe(time.sleep, 1.0)
                await until(lambda: driver.stats.timeouts >= 1, "a timeout")
                await until(lambda: state.up and got[-1].readings[0][3] == 0, "back")
            finally:
                stop.set()
                await _cancel_all([task])
            return asdict(state), len(got)

        device, cycles = asyncio.run(main())
    finally:
        sim.close()
    drv = device["driver"]
    v = metrics("plc", device)
    assert v("edgegw_device_requests_total") == drv["requests"] >= cycles
    # one bad value per cycle; the unencodable node's fault at each halving step
    assert v("edgegw_device_exceptions_total", code="BadSensorFailure") >= 5
    assert v("edgegw_device_exceptions_total", code="BadInternalError") >= 5
    assert v("edgegw_device_timeouts_total") == drv["timeouts"] >= 1
    assert v("edgegw_device_bad_readings_total") >= 2 * 5  # sensor and odd, each cycle
    assert abs(v("edgegw_device_last_success_timestamp_seconds") - time.time()) < 60
    assert drv["last_ok_ns"] and "reading" in (drv["last_exception"] or "")


def test_opcua_subscriptions_count_notifications_and_bad_values(tmp_path: Path) -> None:
    sim = SimThread()
    try:
        sim.run(sim.sim.set_value(SENSOR, 1.5, ua.StatusCodes.BadSensorFailure))
        dev = OpcuaDevice.model_validate(
            {
                "protocol": "opcua",
                "name": "plc",
                "endpoint": sim.endpoint,
                "mode": "subscribe",
                "poll_interval_ms": 100,
                "tags": [
                    {"name": "temperature", "node": TEMPERATURE},
                    {"name": "sensor", "node": SENSOR},
                ],
            }
        )

        async def main() -> dict[str, Any]:
            state = DeviceState("plc")

            async def sink(b: Batch) -> None:
                pass

            stop, plan = asyncio.Event(), opcua_plan(dev)
            driver = OpcuaDriver(dev, pki_dir=tmp_path / "pki")
            task = asyncio.create_task(
                subscribe_device(driver, plan, list(plan.tag_names), sink, state, stop)
            )
            try:
                await until(lambda: driver.stats.notifications >= 2, "notifications")
                await until(lambda: state.bad_readings >= 1, "the bad value counted")
            finally:
                stop.set()
                await _cancel_all([task])
            return asdict(state)

        device = asyncio.run(main())
    finally:
        sim.close()
    v = metrics("plc", device)
    assert v("edgegw_device_notifications_total") == device["driver"]["notifications"] >= 2
    assert v("edgegw_device_exceptions_total", code="BadSensorFailure") >= 1
    assert v("edgegw_device_bad_readings_total") >= 1  # pushed bad values count too
    assert "BadSensorFailure" in (device["last_error"] or "")


def test_s7_counts_requests_refused_items_by_code_and_a_timeout() -> None:
    with S7Simulator(dbs={1: 64}) as sim:
        dev = S7Device.model_validate(
            {
                "protocol": "s7",
                "name": "plc",
                "host": "127.0.0.1",
                "port": sim.port,
                "timeout_ms": 200,
                "poll_interval_ms": 50,
                "tags": [
                    {"name": "good", "address": "DB1.DBD0", "type": "REAL"},
                    {"name": "past_end", "address": "DB1.DBD62", "type": "REAL"},  # 0x05
                    {"name": "no_db", "address": "DB9.DBW0"},  # 0x0a
                ],
            }
        )

        async def main() -> tuple[dict[str, Any], int]:
            state, got = DeviceState("plc"), []

            async def sink(b: Batch) -> None:
                got.append(b)

            stop, plan = asyncio.Event(), s7_plan(dev)
            driver = S7Driver(dev)
            task = asyncio.create_task(
                poll_device(driver, plan, list(plan.tag_names), 0.05, sink, state, stop)
            )
            try:
                await until(lambda: len(got) >= 5, "5 cycles")
                with sim.stalled("DB", db=1):  # the PLC stops answering
                    await until(lambda: driver.stats.timeouts >= 1, "a timeout")
                await until(lambda: state.up and got[-1].readings[0][3] == 0, "back")
            finally:
                stop.set()
                await _cancel_all([task])
            return asdict(state), len(got)

        device, cycles = asyncio.run(main())
    drv = device["driver"]
    v = metrics("plc", device)
    assert v("edgegw_device_requests_total") == drv["requests"] >= cycles
    assert v("edgegw_device_exceptions_total", code="0x05") >= 5
    assert v("edgegw_device_exceptions_total", code="0x0a") >= 5
    assert v("edgegw_device_timeouts_total") == drv["timeouts"] >= 1
    assert v("edgegw_device_bad_readings_total") >= 2 * 5
    assert abs(v("edgegw_device_last_success_timestamp_seconds") - time.time()) < 60
    last = str(drv["last_exception"])
    assert drv["last_ok_ns"] and ("does not exist" in last or "out of range" in last), last
