"""The outbox, driven from one dedicated thread.

SQLite commits block (an fsync on FULL), so they must not run on the event loop; one
thread owns the connection so every outbox call is serialised without locks.

A call is handed over on a queue and its result comes back with one
``call_soon_threadsafe``: about a third of the CPU of ``run_in_executor`` (which chains
a ``concurrent.futures.Future`` to an asyncio one), and the pipeline, the forwarder and
the status task make several such trips for every message.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

from buffer import Outbox

P = ParamSpec("P")
T = TypeVar("T")

log = logging.getLogger("edgegw.outbox")

_Item = tuple[asyncio.Future[Any], asyncio.AbstractEventLoop, Callable[[], Any]]


class OutboxThread:
    def __init__(
        self, path: Path, synchronous: Literal["NORMAL", "FULL"] = "NORMAL", **limits: Any
    ) -> None:
        self._path = path
        self._sync = synchronous
        self._limits = limits  # max_bytes, policy, min_free_bytes: see buffer.Outbox
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.outbox: Outbox | None = None

    async def open(self) -> Outbox:
        self.outbox = await self.run(Outbox, self._path, synchronous=self._sync, **self._limits)
        return self.outbox

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` in the outbox thread, after every call before it. A
        caller cancelled while waiting does not cancel the call (as with an executor)."""
        if self._closed:
            raise RuntimeError("the outbox thread is closed")
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="outbox_0", daemon=True)
            self._thread.start()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put((fut, loop, (lambda: fn(*args, **kwargs)) if args or kwargs else fn))
        return await fut

    def _work(self) -> None:
        get = self._queue.get
        while (item := get()) is not None:
            fut, loop, call = item
            try:
                result = call()
            except BaseException as exc:  # handed to the caller, whatever it is
                _hand_over(loop, fut, None, exc)
            else:
                _hand_over(loop, fut, result, None)
            del item, fut, call  # no reference to a result kept while waiting

    async def close(self) -> None:
        if self.outbox is not None:
            await self.run(self.outbox.close)
        self._closed = True
        thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join()


def _hand_over(
    loop: asyncio.AbstractEventLoop,
    fut: asyncio.Future[Any],
    result: Any,
    exc: BaseException | None,
) -> None:
    try:
        loop.call_soon_threadsafe(_settle, fut, result, exc)
    except RuntimeError:  # the loop is closed: nobody waits for this any more
        log.debug("outbox call finished after its event loop closed")


def _settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.cancelled():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)
