"""Fixtures of the Modbus tests: a simulator on a thread of its own, for code that runs
its own event loop (the command line tools, hypothesis examples)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from drivers.modbus.simulator import ModbusSimulator


class ThreadedSimulator:
    """A ``ModbusSimulator`` served from a daemon thread's event loop."""

    def __init__(self, **kw: Any) -> None:
        self.sim = ModbusSimulator(**kw)
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            try:
                await self.sim.start()
            except BaseException as exc:
                self._error = exc
                raise
            finally:
                self._ready.set()
            await self._stop.wait()
            await self.sim.stop()

        self._loop.run_until_complete(main())

    def __enter__(self) -> ModbusSimulator:
        self._thread.start()
        assert self._ready.wait(10), "simulator did not start"
        if self._error is not None:
            raise self._error
        return self.sim

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def threaded_sim() -> Iterator[Callable[..., ModbusSimulator]]:
    """``threaded_sim(**kw)`` starts a simulator on a thread; all are stopped after."""
    started: list[ThreadedSimulator] = []

    def start(**kw: Any) -> ModbusSimulator:
        t = ThreadedSimulator(**kw)
        sim = t.__enter__()
        started.append(t)
        return sim

    yield start
    for t in reversed(started):
        t.__exit__()
