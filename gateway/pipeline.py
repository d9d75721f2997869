"""Batches in, sealed messages out: collect for a flush window, encode once, sign once,
commit once.

The outbox row is the final signed message (seal at acquisition), so data at rest is
integrity-protected and the forwarder only moves bytes. Encoding, signing and the
commit run in the outbox thread, inside one SQLite transaction, because the sequence
number is allocated by that transaction and is part of what is signed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from drivers.contract import Batch
from security import DeviceKey, sign1

from .outbox_thread import OutboxThread
from .wire import encode_payload

log = logging.getLogger("edgegw.pipeline")


@dataclass(slots=True)
class PipelineStats:
    points_polled: int = 0
    points_sealed: int = 0
    messages_sealed: int = 0
    last_seq: int = 0
    seal_errors: int = 0


class Pipeline:
    def __init__(
        self,
        *,
        gw_id: str,
        boot: int,
        topic: str,
        key: DeviceKey,
        outbox: OutboxThread,
        flush_window_s: float,
        max_points: int,
        on_sealed: Callable[[], None] = lambda: None,
        queue_size: int = 1024,
    ) -> None:
        self.gw_id, self.boot, self.topic, self.key = gw_id, boot, topic, key
        self._aad = topic.encode()
        self.outbox = outbox
        self.window = flush_window_s
        self.max_points = max_points
        self.on_sealed = on_sealed
        # Bounded: when the outbox falls behind, pollers wait here (backpressure).
        self.queue: asyncio.Queue[Batch | None] = asyncio.Queue(queue_size)
        self.stats = PipelineStats()

    async def put(self, batch: Batch) -> None:
        self.stats.points_polled += len(batch.readings)
        await self.queue.put(batch)

    async def close(self) -> None:
        """Ask run() to seal what it holds and return."""
        await self.queue.put(None)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        q = self.queue
        while True:
            first = await q.get()
            if first is None:
                return
            readings: list[Any] = list(first.readings)
            deadline = loop.time() + self.window
            stopping = False
            while len(readings) < self.max_points:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    b = (
                        q.get_nowait()
                        if not q.empty()
                        else await asyncio.wait_for(q.get(), remaining)
                    )
                except TimeoutError:
                    break
                if b is None:
                    stopping = True
                    break
                readings.extend(b.readings)
            if readings:
                await self._seal(readings)
            if stopping:
                return

    async def _seal(self, readings: list[Any]) -> None:
        delay = 0.2
        while True:
            try:
                seq = await self.outbox.run(self._seal_sync, readings)
                break
            except Exception as exc:  # a full disk or I/O error must not kill the daemon
                self.stats.seal_errors += 1
                log.error(
                    "cannot commit %d points to the outbox: %s; retrying in %.1f s",
                    len(readings),
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        self.stats.points_sealed += len(readings)
        self.stats.messages_sealed += 1
        self.stats.last_seq = seq
        self.on_sealed()

    def _seal_sync(self, readings: list[Any]) -> int:
        """Runs in the outbox thread: one transaction, one encoding, one signature."""
        assert self.outbox.outbox is not None
        t_ns = time.time_ns()

        def seal(seq: int) -> bytes:
            payload = encode_payload(
                gw=self.gw_id,
                seq=seq,
                boot=self.boot,
                kind="telemetry",
                t_ns=t_ns,
                readings=readings,
            )
            return sign1(payload, self.key, self._aad)

        return self.outbox.outbox.append(self.topic, seal)
