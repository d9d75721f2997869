"""The poll loop stops even when a library swallows the cancellation (as
asyncio.wait_for can on Python 3.11, CPython gh-86296)."""

from __future__ import annotations

import asyncio

from drivers.contract import Batch
from gateway.daemon import _cancel_all
from gateway.poller import DeviceState, poll_device


class SwallowingDriver:
    """Its read eats the first cancellation, like the race inside wait_for."""

    name = "d"

    def __init__(self) -> None:
        self.swallowed = 0
        self.closed = False

    @property
    def connected(self) -> bool:
        return True

    async def connect(self) -> None:
        pass

    async def read(self, plan: object) -> Batch:
        try:
            # until cancelled: the cancellation always lands here (a short read let the
            # loop see the stop flag first on a loaded machine, and nothing was swallowed)
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if self.swallowed == 0:
                self.swallowed += 1
                return Batch("d", [("d/t", 1, 1, 0)])
            raise
        return Batch("d", [("d/t", 1, 1, 0)])

    async def close(self) -> None:
        self.closed = True


def test_stop_ends_a_poll_loop_whose_cancellation_was_swallowed() -> None:
    async def main() -> SwallowingDriver:
        drv = SwallowingDriver()
        stop = asyncio.Event()
        got: list[Batch] = []

        async def sink(b: Batch) -> None:
            got.append(b)

        task = asyncio.create_task(
            poll_device(drv, None, ["d/t"], 0.001, sink, DeviceState("d"), stop)
        )
        await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(_cancel_all([task]), 5)
        assert task.done() and got
        return drv

    drv = asyncio.run(main())
    assert drv.swallowed == 1 and drv.closed
