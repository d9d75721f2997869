"""Faults of the link: a server restart and a cut link. Subscriptions are recreated
after the reconnect, and the server never holds two for one device (counted on the
server side)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.contract import ConnectError
from drivers.opcua import DeviceConfig, compile_plan
from drivers.opcua.driver import Driver
from tests.drivers.opcua.conftest import Collector, SimThread, device
from tests.linkproxy import LinkProxy

NODE = "ns=2;s=Plant.Boiler.Temperature"


@pytest.fixture(scope="module")
def rsim() -> Iterator[SimThread]:
    """A server of this module's own: these tests restart it."""
    s = SimThread()
    yield s
    s.close()


def boiler(endpoint: str) -> DeviceConfig:
    return device(
        endpoint, {"name": "temp", "node": NODE}, publishing_interval_ms=50, timeout_ms=1000
    )


async def reconnect(driver: Driver, timeout: float = 15) -> None:
    """What the gateway does: retry connect with a (short, here) backoff."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await driver.connect()
            return
        except ConnectError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


async def subscribe_until_value(
    driver: Driver, dev: DeviceConfig, sink: Collector, sim: SimThread, value: float
) -> asyncio.Task[None]:
    task = asyncio.create_task(driver.subscribe(compile_plan(dev), sink))
    await sim.arun(sim.sim.set_value(NODE, value))
    await sink.wait_for(lambda: (sink.latest("temp") or ())[2:4] == (value, 0))
    return task


async def ended(task: asyncio.Task[None]) -> BaseException | None:
    """How ``subscribe`` ended (it must end by itself when the link goes)."""
    await asyncio.wait({task}, timeout=15)
    assert task.done(), "subscribe did not notice the lost link"
    return task.exception()


def test_server_restart_resubscribes_once(rsim: SimThread, tmp_path: Path) -> None:
    dev = boiler(rsim.endpoint)

    async def run() -> None:
        driver, sink = Driver(dev, pki_dir=tmp_path), Collector()
        await driver.connect()
        task = await subscribe_until_value(driver, dev, sink, rsim, 1.0)
        assert rsim.call(rsim.sim.subscription_count) == 1
        await rsim.arun(rsim.sim.restart())  # sessions and subscriptions are gone
        error = await ended(task)
        assert isinstance(error, ConnectError), error
        assert not driver.connected
        lost = sink.batches[-1]
        assert lost.readings[0][2:4] == (None, 1) and "lost" in lost.readings[0][4]
        await reconnect(driver)
        task = await subscribe_until_value(driver, dev, sink, rsim, 2.0)
        assert rsim.call(rsim.sim.subscription_count) == 1
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await driver.close()
        assert rsim.call(rsim.sim.subscription_count) == 0

    asyncio.run(run())


def test_cut_link_with_surviving_session_leaves_no_duplicate(
    rsim: SimThread, tmp_path: Path
) -> None:
    """The server keeps a session with subscriptions when the link drops. The reconnect
    resumes that session and closes it (its subscription with it) before subscribing
    anew: one subscription on the server, not two."""
    host, port = "127.0.0.1", int(rsim.endpoint.rsplit(":", 1)[1].split("/")[0])
    proxy = LinkProxy((host, port), listen_host=host)
    dev = boiler(f"opc.tcp://{host}:{proxy.port}/edgegw/sim")

    async def run() -> None:
        driver, sink = Driver(dev, pki_dir=tmp_path), Collector()
        await driver.connect()
        task = await subscribe_until_value(driver, dev, sink, rsim, 3.0)
        assert (tmp_path / "session.json").exists()
        proxy.cut()
        assert isinstance(await ended(task), ConnectError)
        assert rsim.call(rsim.sim.subscription_count) == 1  # the session outlived the link
        proxy.restore()
        await reconnect(driver)
        assert rsim.call(rsim.sim.subscription_count) == 0  # closed with its session
        task = await subscribe_until_value(driver, dev, sink, rsim, 4.0)
        assert rsim.call(rsim.sim.subscription_count) == 1
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await driver.close()
        assert not (tmp_path / "session.json").exists()  # a clean close leaves nothing

    try:
        asyncio.run(run())
    finally:
        proxy.close()
    assert rsim.call(rsim.sim.subscription_count) == 0


def test_reading_after_restart_reports_bad_comm_then_recovers(
    rsim: SimThread, tmp_path: Path
) -> None:
    dev = boiler(rsim.endpoint)

    async def run() -> None:
        driver = Driver(dev, pki_dir=tmp_path)
        plan = compile_plan(dev)
        await driver.connect()
        assert (await driver.read(plan)).ok
        await rsim.arun(rsim.sim.restart())
        batch = await driver.read(plan)
        assert not batch.ok and batch.readings[0][3] == 1 and not driver.connected
        await reconnect(driver)
        batch = await driver.read(plan)
        assert batch.ok, batch.error
        await driver.close()

    asyncio.run(run())
