"""OPC UA driver: polling (``read``) and subscriptions (``subscribe``) on one client wrapper.

Satisfies ``drivers.contract.Driver`` and ``drivers.contract.Subscriber``. Node ids
are resolved at the first read or subscribe after each connect; a tag whose node does
not resolve reports BAD_CONFIG with the reason at every cycle while the others work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from asyncua import ua

from drivers.contract import Batch, Quality

from .client import OpcuaClient
from .config import OpcuaDevice
from .decode import Decoder, status_name
from .plan import OpcuaPlan
from .runtime import LINK_CODES, LINK_ERRORS, TOO_MUCH, Reads, Runtime
from .subscription import SubscriptionRun

__all__ = ["Driver", "OpcuaDriver"]

log = logging.getLogger("edgegw.opcua")

_BAD_COMM, _BAD_DEVICE = int(Quality.BAD_COMM), int(Quality.BAD_DEVICE)
_BAD_CONFIG = int(Quality.BAD_CONFIG)


class OpcuaDriver:
    """One OPC UA server (one session); see the module docstring."""

    def __init__(self, device: OpcuaDevice, *, pki_dir: Path) -> None:
        self.device = device
        self.name = device.name
        self.client = OpcuaClient(device, pki_dir=Path(pki_dir), name=device.name)
        self._generation = 0
        self._rt: Runtime | None = None
        self.subscription: int | None = None
        self._logged: set[str] = set()

    def __repr__(self) -> str:
        return f"OpcuaDriver({self.name!r}, {self.device.endpoint})"

    @property
    def connected(self) -> bool:
        return self.client.connected

    async def connect(self) -> None:
        """Open a session; raises ``ConnectError`` saying what to fix."""
        self.subscription = None  # a new session starts clean
        await self.client.connect()
        self._generation += 1

    async def close(self) -> None:
        """Close the session with its subscription; safe to call twice."""
        self.subscription = None
        await self.client.close()

    def log_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.warning("opcua %s: " + message, self.name, *args)

    def drop(self, reason: str) -> None:
        """The link is gone: ``connected`` turns False so the caller reconnects."""
        if self.client.lost is None:
            self.client.lost = reason

    # --- resolution -------------------------------------------------------------------

    async def prepare(self, plan: OpcuaPlan) -> Runtime:
        rt = self._rt
        if rt is not None and rt.plan is plan and rt.generation == self._generation:
            return rt
        resolved = await self.client.resolve([t.node for t in plan.tags])
        nodes: dict[int, ua.NodeId] = {}
        unresolved: list[tuple[int, str]] = []
        items = []
        for i, (tag, r) in enumerate(zip(plan.tags, resolved, strict=True)):
            if isinstance(r, str):
                unresolved.append((i, r))
                self.log_once(f"resolve:{i}:{r}", "tag %s: %s", tag.full_name, r)
                continue
            nodes[i] = r
            items.append(
                ua.ReadValueId(
                    NodeId=r, AttributeId=ua.AttributeIds.Value, IndexRange=tag.index_range
                )
            )
        decoder = Decoder(
            plan.tag_names,
            [t.node_text for t in plan.tags],
            [t.expected_type for t in plan.tags],
            [None if t.index_range is None else int(t.index_range) for t in plan.tags],
            max_value_bytes=self.device.max_value_bytes,
        )
        rt = Runtime(plan, self._generation, decoder, nodes, unresolved, Reads(list(nodes), items))
        self._rt = rt
        return rt

    def subset(self, rt: Runtime, indices: list[int]) -> Reads:
        if indices == rt.reads.indices:
            return rt.reads
        position = {i: k for k, i in enumerate(rt.reads.indices)}
        return Reads(indices, [rt.reads.items[position[i]] for i in indices])

    # --- polling ----------------------------------------------------------------------

    async def read(self, plan: OpcuaPlan) -> Batch:
        """Read every tag once: one Read per MaxNodesPerRead nodes; never raises for
        device or link faults (they become qualities and ``batch.error``)."""
        batch = Batch(self.name)
        if not self.connected:
            self.fail(batch, plan.tag_names, f"not connected to {self.device.endpoint}")
            return batch
        try:
            rt = await self.prepare(plan)
        except LINK_ERRORS as exc:
            self.link_failed(batch, plan.tag_names, exc, "resolving nodes")
            return batch
        await self.read_into(rt, rt.reads, batch)
        return batch

    async def read_into(self, rt: Runtime, reads: Reads, batch: Batch) -> None:
        out = batch.readings
        indices = reads.indices
        pos, bad = 0, 0
        while pos < len(indices):
            size = min(self.client.limits.max_nodes_per_read, len(indices) - pos)
            try:
                bad += await self.read_part(rt, reads, pos, size, out)
            except LINK_ERRORS as exc:
                names = [rt.plan.tag_names[i] for i in indices[pos:]]
                self.link_failed(batch, names, exc, "reading")
                return
            pos += size
        if rt.unresolved:
            ts = time.time_ns()
            for i, reason in rt.unresolved:
                out.append((rt.plan.tag_names[i], ts, None, _BAD_CONFIG, reason))
            bad += len(rt.unresolved)
        if bad and batch.error is None:
            first = next(r for r in out if len(r) > 4 and r[3] != int(Quality.UNCERTAIN))
            batch.error = f"{bad} of {len(out)} tag(s) bad, e.g. {first[0]}: {first[4]}"

    async def read_part(
        self, rt: Runtime, reads: Reads, pos: int, size: int, out: list[Any]
    ) -> int:
        """Read ``size`` nodes from ``pos``; returns the number of bad readings.

        A service fault that is not about the link (e.g. BadInternalError because of
        one odd node) is narrowed down by halving, so only the culprits read bad.
        Link faults raise.
        """
        try:
            results = await self.client.read(reads.params(pos, size))
        except ua.UaStatusCodeError as exc:
            if exc.code in LINK_CODES:
                raise
            if exc.code in TOO_MUCH and size > 1:
                self.client.shrink("max_nodes_per_read", size)
                bad, p, end = 0, pos, pos + size
                while p < end:  # the limit may shrink further inside
                    step = min(self.client.limits.max_nodes_per_read, end - p)
                    bad += await self.read_part(rt, reads, p, step, out)
                    p += step
                return bad
            fault = f"the server answered {status_name(exc.code)}"
        except (ConnectionError, OSError, TimeoutError):
            raise
        except (ua.UaError, ValueError, struct.error) as exc:
            fault = f"cannot decode the server's response ({type(exc).__name__}: {exc})"
        else:
            return rt.decoder.decode(results, reads.indices[pos : pos + size], out, time.time_ns())
        if size == 1:
            i = reads.indices[pos]
            reason = f"{fault} (node {rt.plan.tags[i].node_text})"
            self.log_once(f"fault:{i}:{fault}", "tag %s: %s", rt.plan.tag_names[i], reason)
            out.append((rt.plan.tag_names[i], time.time_ns(), None, _BAD_DEVICE, reason))
            return 1
        half = size // 2
        first = await self.read_part(rt, reads, pos, half, out)
        return first + await self.read_part(rt, reads, pos + half, size - half, out)

    def fail(self, batch: Batch, names: Any, reason: str) -> None:
        ts = time.time_ns()
        batch.readings += [(t, ts, None, _BAD_COMM, reason) for t in names]
        batch.error = reason

    def link_failed(self, batch: Batch, names: Any, exc: BaseException, doing: str) -> None:
        if isinstance(exc, TimeoutError | asyncio.TimeoutError):
            why = f"no response within {self.device.timeout_ms} ms"
        elif isinstance(exc, ua.UaStatusCodeError):
            why = f"the server answered {status_name(exc.code)}"
        else:
            why = f"connection lost ({type(exc).__name__}: {exc})" if str(exc) else "link error"
        reason = f"{why} {doing} {self.device.endpoint}"
        self.drop(reason)
        self.fail(batch, names, reason)

    # --- subscriptions ----------------------------------------------------------------

    async def subscribe(self, plan: OpcuaPlan, sink: Callable[[Batch], Awaitable[None]]) -> None:
        """Deliver one batch per notification burst until cancelled (see the README).

        Mode ``poll`` (or a server refusing subscriptions) reads every
        ``poll_interval_ms`` instead. On link loss: one BAD_COMM batch for every tag,
        then ``ConnectError``; call ``connect`` and ``subscribe`` again.
        """
        await SubscriptionRun(self, plan, sink).run()

    async def unsubscribe(self) -> None:
        sub, self.subscription = self.subscription, None
        if sub is None or not self.connected:
            return  # a lost session's subscription is closed at the next connect
        with contextlib.suppress(LINK_ERRORS):
            await asyncio.wait_for(self.client.delete_subscriptions([sub]), self.client.timeout_s)


Driver = OpcuaDriver
