"""A hostile device on a raw socket (tests/drivers/modbus/hostile.py): every wrong answer
is bad quality with a reason that says what did not match, never GOOD data; the driver
drops the link and reconnects. A good device polled beside a hostile one keeps its
period."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from drivers.contract import Quality
from drivers.modbus import ModbusTcpDevice, ModbusTcpDriver, compile_plan
from drivers.modbus.simulator import ModbusSimulator
from gateway.poller import DeviceState, poll_device

from .hostile import GOOD_BASE, HostileDevice

TIMEOUT_MS = 400

# mode -> what the reason of every bad reading must contain
EXPECTED = {
    "wrong_function": "mismatched response (an answer for function {other} to a function {fc} "
    "request)",
    "exception_other_function": "mismatched response (an exception answer for function "
    "{other} to a function {fc} request)",
    "wrong_tid": "mismatched response (an answer with transaction id",
    "tid_zero": "mismatched response (transaction id 0 in the answer, ",
    "wrong_unit": "mismatched response (an answer from unit id 2 arrived, 1 asked",
    "short_byte_count": "mismatched response (byte count {short} for {n} {what} (expected {want}))",
    "long_byte_count": "mismatched response (byte count {long} for {n} {what} (expected {want}))",
    "byte_count_lies": "mismatched response (byte count {lie}, but the answer holds {held} data",
    "truncated": "mismatched response (an incomplete frame arrived (",
    "oversized": "mismatched response (an incomplete frame arrived (",
    "garbage": "mismatched response (bytes that are not a Modbus TCP frame arrived",
    "drip": "mismatched response (an incomplete frame arrived (",
    "close_after_request": "connection lost reading",
}
OTHER = {3: 4, 1: 2}


def device(port: int, table: str, n: int, **kw: Any) -> ModbusTcpDevice:
    return ModbusTcpDevice.model_validate(
        {
            "protocol": "modbus_tcp",
            "name": "plc",
            "host": "127.0.0.1",
            "port": port,
            "timeout_ms": TIMEOUT_MS,
            "on_illegal_address": "fail",
            "tags": [{"name": f"t{i}", "address": i, "table": table} for i in range(n)],
            **kw,
        }
    )


@pytest.mark.parametrize("table", ["holding", "coil"])
@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_no_wrong_answer_is_good(mode: str, table: str) -> None:
    n = 10  # 10 registers, or 10 coils in two bytes
    fc = 3 if table == "holding" else 1
    regs = table == "holding"
    want = 2 * n if regs else 2
    expected = EXPECTED[mode].format(
        fc=fc,
        other=OTHER[fc],
        n=n,
        what="registers" if regs else "bits",
        want=want,
        short=want - (2 if regs else 1),
        long=want + (2 if regs else 1),
        lie=want - 2 if regs else want,
        held=want if regs else want + 1,
    )

    async def main() -> tuple[list[Any], bool, int]:
        dev = await HostileDevice(mode).start()
        drv = ModbusTcpDriver(device(dev.port, table, n))
        plan = compile_plan(drv.device)
        try:
            await drv.connect()
            batch = await asyncio.wait_for(drv.read(plan), 30)
            return batch.readings, drv.connected, drv.stats.link_errors
        finally:
            await drv.close()
            await dev.stop()

    readings, connected, link_errors = asyncio.run(main())
    assert len(readings) == n
    assert all(r[3] == Quality.BAD_COMM and r[2] is None for r in readings), readings
    assert all(expected in r[4] for r in readings), (expected, readings[0][4])
    assert not connected  # the link is dropped: a stream out of step is never trusted
    assert link_errors == 1


def test_a_good_answer_still_is_good() -> None:
    """The same raw-socket device answering correctly: the checks let it through."""

    async def main() -> list[Any]:
        dev = await HostileDevice("good").start()
        out = []
        for table in ("holding", "coil"):
            drv = ModbusTcpDriver(device(dev.port, table, 10))
            await drv.connect()
            out += (await drv.read(compile_plan(drv.device))).readings
            await drv.close()
        await dev.stop()
        return out

    readings = asyncio.run(main())
    assert [r[2] for r in readings[:10]] == [GOOD_BASE + i for i in range(10)]
    assert [r[2] for r in readings[10:]] == [i % 2 == 1 for i in range(10)]
    assert all(r[3] == Quality.GOOD for r in readings)


def test_accept_then_close_is_bad_quality_and_reconnects() -> None:
    async def main() -> tuple[list[Any], int]:
        dev = await HostileDevice("accept_then_close").start()
        drv = ModbusTcpDriver(device(dev.port, "holding", 3))
        plan = compile_plan(drv.device)
        seen: list[Any] = []
        connects = 0
        for _ in range(5):
            if not drv.connected:
                try:
                    await drv.connect()
                    connects += 1
                except Exception as exc:  # ConnectError only: anything else is a bug
                    assert type(exc).__name__ == "ConnectError", repr(exc)
                    continue
            seen += (await drv.read(plan)).readings
        await drv.close()
        await dev.stop()
        return seen, connects

    seen, connects = asyncio.run(main())
    assert connects >= 2 and seen
    assert all(r[3] == Quality.BAD_COMM for r in seen)


def test_a_good_device_beside_hostile_ones_keeps_its_period() -> None:
    """Poll loops for a simulator and for hostile devices (drip, garbage, close, wrong
    function) on one event loop: the good one reads every period, all GOOD."""
    period_s, run_s = 0.1, 4.0

    async def main() -> tuple[DeviceState, list[Any], dict[str, list[Any]]]:
        hostile = {
            m: await HostileDevice(m).start()
            for m in ("drip", "garbage", "accept_then_close", "wrong_function")
        }
        sim = ModbusSimulator()
        await sim.start()
        stop = asyncio.Event()
        good_batches: list[Any] = []
        bad: dict[str, list[Any]] = {m: [] for m in hostile}
        tasks = []
        good_state = DeviceState("good")

        async def good_sink(b: Any) -> None:
            good_batches.append(b)

        drv = ModbusTcpDriver(
            device(sim.port, "holding", 4, poll_interval_ms=int(period_s * 1000)).model_copy(
                update={"name": "good"}
            )
        )
        tasks.append(
            asyncio.create_task(
                poll_device(
                    drv, compile_plan(drv.device), [], period_s, good_sink, good_state, stop
                )
            )
        )
        for m, h in hostile.items():
            hd = ModbusTcpDriver(device(h.port, "holding", 4).model_copy(update={"name": m}))

            async def sink(b: Any, m: str = m) -> None:
                bad[m].append(b)

            tasks.append(
                asyncio.create_task(
                    poll_device(hd, compile_plan(hd.device), ["x"], 0.1, sink, DeviceState(m), stop)
                )
            )
        await asyncio.sleep(run_s)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
        await sim.stop()
        for h in hostile.values():
            await h.stop()
        return good_state, good_batches, bad

    t0 = time.monotonic()
    state, good, bad = asyncio.run(main())
    assert time.monotonic() - t0 < 60  # bound only
    assert all(r[3] == Quality.GOOD for b in good for r in b.readings)
    # A generous lower bound (~40 periods in 4 s; half of them even on a loaded machine):
    # a loop blocked by a hostile peer would read a handful of times at most.
    assert state.reads >= 20, (state.reads, state.overruns)
    assert state.errors == 0
    for m, batches in bad.items():
        assert batches, m
        assert all(r[3] != Quality.GOOD for b in batches for r in b.readings), m
