"""Shared fixtures: simulators (real asyncua servers on free loopback ports) running in a
thread of their own, so one server serves a whole test module while each test runs
its client on a fresh event loop (``asyncio.run``)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from drivers.contract import Batch
from drivers.opcua import DeviceConfig, compile_plan
from drivers.opcua.driver import Driver
from drivers.opcua.simulator import OpcuaSimulator

T = TypeVar("T")


class SimThread:
    """An OpcuaSimulator on an event loop in a background thread."""

    def __init__(self, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.sim = OpcuaSimulator(**options)
        self.run(self.sim.start())

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run a coroutine on the simulator's loop and wait for it (from any thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def arun(self, coro: Coroutine[Any, Any, T]) -> T:
        """Same, awaitable from a test's own loop without blocking it."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def call(self, fn: Callable[[], T]) -> T:
        """Run a plain function on the simulator's loop (its state is not thread-safe)."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def go() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(go)
        return future.result(10)

    @property
    def endpoint(self) -> str:
        return self.sim.endpoint

    def close(self) -> None:
        self.run(self.sim.__aexit__())
        self.run(_cancel_all())  # asyncua leaves session watchdogs of closed sessions
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def _cancel_all() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimThread]:
    """The plain simulator of a test module: no security, operation limits 5 reads and
    4 monitored items per call, 23 bulk nodes."""
    s = SimThread(max_nodes_per_read=5, max_monitored_items_per_call=4, bulk=23)
    yield s
    s.close()


def device(endpoint: str, *tags: dict[str, Any], **kw: Any) -> DeviceConfig:
    return DeviceConfig.model_validate(
        {"protocol": "opcua", "name": "plc", "endpoint": endpoint, "tags": list(tags), **kw}
    )


def by_tag(batch: Batch) -> dict[str, tuple[Any, ...]]:
    return {r[0].split("/", 1)[1]: r for r in batch.readings}


async def read_once(dev: DeviceConfig, pki_dir: Path) -> Batch:
    """Connect, read once, close."""
    driver = Driver(dev, pki_dir=pki_dir)
    await driver.connect()
    try:
        return await driver.read(compile_plan(dev))
    finally:
        await driver.close()


class Collector:
    """A sink that keeps batches and lets a test wait for a condition on them."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self._changed = asyncio.Event()

    async def __call__(self, batch: Batch) -> None:
        self.batches.append(batch)
        self._changed.set()

    @property
    def readings(self) -> list[tuple[Any, ...]]:
        return [r for b in self.batches for r in b.readings]

    async def wait_for(self, cond: Callable[[], bool], timeout: float = 10) -> None:
        async def loop() -> None:
            while not cond():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(loop(), timeout)

    def latest(self, tag: str) -> tuple[Any, ...] | None:
        for r in reversed(self.readings):
            if r[0].endswith("/" + tag):
                return r
        return None
