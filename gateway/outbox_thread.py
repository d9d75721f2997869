"""The outbox, driven from one dedicated thread.

SQLite commits block (an fsync on FULL), so they must not run on the event loop; one
thread owns the connection so every outbox call is serialised without locks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

from buffer import Outbox

P = ParamSpec("P")
T = TypeVar("T")


class OutboxThread:
    def __init__(
        self, path: Path, synchronous: Literal["NORMAL", "FULL"] = "NORMAL", **limits: Any
    ) -> None:
        self._path = path
        self._sync = synchronous
        self._limits = limits  # max_bytes, policy, min_free_bytes: see buffer.Outbox
        self._ex = ThreadPoolExecutor(1, thread_name_prefix="outbox")
        self.outbox: Outbox | None = None

    async def open(self) -> Outbox:
        self.outbox = await self.run(Outbox, self._path, synchronous=self._sync, **self._limits)
        return self.outbox

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._ex, lambda: fn(*args, **kwargs))

    async def close(self) -> None:
        if self.outbox is not None:
            await self.run(self.outbox.close)
        self._ex.shutdown(wait=True)
