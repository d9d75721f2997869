"""Subscriptions against a real asyncua server: changes delivered, deadband, monitored
items split by the server's limit, refused items and refusing servers polled."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.opcua import DeviceConfig, compile_plan
from drivers.opcua.driver import Driver
from tests.drivers.opcua.conftest import Collector, SimThread, device


@pytest.fixture(scope="module")
def nosub_sim() -> Iterator[SimThread]:
    """A server that refuses CreateSubscription (BadServiceUnsupported)."""
    s = SimThread(subscriptions=False)
    yield s
    s.close()


async def subscribed(
    dev: DeviceConfig, pki_dir: Path, sink: Collector
) -> tuple[Driver, asyncio.Task[None]]:
    driver = Driver(dev, pki_dir=pki_dir)
    await driver.connect()
    return driver, asyncio.create_task(driver.subscribe(compile_plan(dev), sink))


async def stop(driver: Driver, task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await driver.close()


def test_subscribe_delivers_changes_with_source_time(sim: SimThread, tmp_path: Path) -> None:
    dev = device(
        sim.endpoint,
        {"name": "a", "node": "ns=2;s=Bulk.0000"},
        {"name": "b", "node": "ns=2;s=Bulk.0001"},
        {"name": "on", "node": "ns=2;s=Types.Boolean"},
        publishing_interval_ms=50,
    )

    async def run() -> None:
        sink = Collector()
        await sim.arun(sim.sim.set_value("ns=2;s=Bulk.0000", 1.0))
        driver, task = await subscribed(dev, tmp_path, sink)
        await sink.wait_for(lambda: {r[0] for r in sink.readings} == set(dev_names(dev)))
        assert sim.call(sim.sim.subscription_count) == 1
        before = time.time_ns()
        await sim.arun(sim.sim.set_value("ns=2;s=Bulk.0000", 42.5))
        await sink.wait_for(lambda: (sink.latest("a") or ())[2:4] == (42.5, 0))
        assert before - 10**9 < last(sink, "a")[1] < time.time_ns()
        assert all(b.ok for b in sink.batches)
        await stop(driver, task)
        assert sim.call(sim.sim.subscription_count) == 0  # cancelling deleted it

    asyncio.run(run())


def last(sink: Collector, tag: str) -> tuple[Any, ...]:
    reading = sink.latest(tag)
    assert reading is not None, f"no reading of {tag}"
    return reading


def dev_names(dev: DeviceConfig) -> list[str]:
    return list(compile_plan(dev).tag_names)


def test_monitored_items_are_created_in_calls_of_the_server_limit(
    sim: SimThread, tmp_path: Path
) -> None:
    """23 tags and MaxMonitoredItemsPerCall = 4: six calls, all 23 initial values arrive."""
    tags = [{"name": f"b{k}", "node": f"ns=2;s=Bulk.{k:04d}"} for k in range(23)]
    dev = device(sim.endpoint, *tags, publishing_interval_ms=50)

    async def run() -> list[int]:
        sink = Collector()
        sim.call(sim.sim.item_calls.clear)
        driver, task = await subscribed(dev, tmp_path, sink)
        await sink.wait_for(lambda: len({r[0] for r in sink.readings}) == 23)
        calls = list(sim.sim.item_calls)
        await stop(driver, task)
        return calls

    assert asyncio.run(run()) == [4, 4, 4, 4, 4, 3]


def test_deadband_holds_back_small_changes(sim: SimThread, tmp_path: Path) -> None:
    node = "ns=2;s=Bulk.0005"
    dev = device(
        sim.endpoint,
        {"name": "x", "node": node, "deadband": {"type": "absolute", "value": 1.0}},
        publishing_interval_ms=50,
    )

    async def run() -> list[Any]:
        sink = Collector()
        await sim.arun(sim.sim.set_value(node, 10.0))
        driver, task = await subscribed(dev, tmp_path, sink)
        await sink.wait_for(lambda: sink.latest("x") is not None)
        await sim.arun(sim.sim.set_value(node, 10.5))  # within the deadband
        await asyncio.sleep(0.4)
        await sim.arun(sim.sim.set_value(node, 12.0))  # beyond it
        await sink.wait_for(lambda: (sink.latest("x") or ())[2] == 12.0)
        await stop(driver, task)
        return [r[2] for r in sink.readings]

    assert asyncio.run(run()) == [10.0, 12.0]


def test_nodes_the_server_will_not_monitor_are_polled_with_their_reason(
    sim: SimThread, tmp_path: Path
) -> None:
    dev = device(
        sim.endpoint,
        {"name": "good", "node": "ns=2;s=Bulk.0002"},
        {"name": "unknown", "node": "ns=2;s=NoSuchNode"},
        {"name": "path", "node": "/Objects/2:Nope"},
        publishing_interval_ms=50,
        poll_interval_ms=100,
    )

    async def run() -> Collector:
        sink = Collector()
        driver, task = await subscribed(dev, tmp_path, sink)

        def bad(tag: str) -> list[Any]:
            return [r for r in sink.readings if r[0] == f"plc/{tag}"]

        await sink.wait_for(lambda: len(bad("unknown")) >= 3 and len(bad("path")) >= 3)
        assert last(sink, "good")[3] == 0
        await stop(driver, task)
        return sink

    sink = asyncio.run(run())
    unknown, path = last(sink, "unknown"), last(sink, "path")
    assert unknown[2:] == (None, 2, "BadNodeIdUnknown (node ns=2;s=NoSuchNode)")
    assert path[3] == 3 and "no node '2:Nope' under /Objects" in path[4]


def test_poll_mode_reads_every_interval_without_a_subscription(
    sim: SimThread, tmp_path: Path
) -> None:
    dev = device(
        sim.endpoint,
        {"name": "a", "node": "ns=2;s=Bulk.0003"},
        {"name": "b", "node": "ns=2;s=Bulk.0004"},
        mode="poll",
        poll_interval_ms=100,
    )

    async def run() -> Collector:
        sink = Collector()
        driver, task = await subscribed(dev, tmp_path, sink)
        await sink.wait_for(lambda: len(sink.batches) >= 4)
        assert sim.call(sim.sim.subscription_count) == 0
        await stop(driver, task)
        return sink

    sink = asyncio.run(run())
    assert all(len(b.readings) == 2 and b.ok for b in sink.batches)


def test_a_server_refusing_subscriptions_is_polled(nosub_sim: SimThread, tmp_path: Path) -> None:
    dev = device(
        nosub_sim.endpoint,
        {"name": "t", "node": "ns=2;s=Plant.Boiler.Temperature"},
        poll_interval_ms=100,
    )

    async def run() -> Collector:
        sink = Collector()
        driver, task = await subscribed(dev, tmp_path, sink)
        await sink.wait_for(lambda: len(sink.batches) >= 3)
        await stop(driver, task)
        return sink

    sink = asyncio.run(run())
    assert all(b.ok and b.readings[0][3] == 0 for b in sink.batches)
