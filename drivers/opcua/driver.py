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
from typing import TYPE_CHECKING, Any

from asyncua import ua

from drivers.contract import Batch, ConnectError, DriverError, Quality, Value, ValueRejected

from .client import OpcuaClient, ResponseTooLarge, message_limit
from .decode import Decoder, status_name
from .plan import OpcuaPlan, TagPlan, compile_plan
from .runtime import (
    LINK_CODES,
    LINK_ERRORS,
    RECHECK_S,
    TOO_MUCH,
    OpcuaStats,
    Oversize,
    Reads,
    Runtime,
)
from .subscription import SubscriptionRun

if TYPE_CHECKING:
    from .config import OpcuaDevice

__all__ = ["Driver", "OpcuaDriver"]

log = logging.getLogger("edgegw.opcua")

_BAD_COMM, _BAD_DEVICE = int(Quality.BAD_COMM), int(Quality.BAD_DEVICE)
_BAD_CONFIG = int(Quality.BAD_CONFIG)
_GOOD, _UNCERTAIN = int(Quality.GOOD), int(Quality.UNCERTAIN)


class OpcuaDriver:
    """One OPC UA server (one session); see the module docstring."""

    def __init__(self, device: OpcuaDevice, *, pki_dir: Path) -> None:
        self.device = device
        self.name = device.name
        self.client = OpcuaClient(
            device,
            pki_dir=Path(pki_dir),
            name=device.name,
            max_message_bytes=message_limit(device.max_value_bytes),
        )
        self.oversize = Oversize()  # tags whose answer was over the message limit
        self._oversize_plan: OpcuaPlan | None = None
        self._generation = 0
        self._rt: Runtime | None = None
        self.subscription: int | None = None
        self._logged: set[str] = set()
        self._own_plan: OpcuaPlan | None = None  # for writes: tag -> node
        self.stats = OpcuaStats()
        """Requests, timeouts, bad statuses by name, ... (status and metrics)."""

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
        if self._oversize_plan is not plan:  # what was found is about another plan's tags
            self.oversize, self._oversize_plan = Oversize(), plan
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
            counts=self.stats,
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
        pos, bad = 0, 0
        alone: list[int] = []
        if self.oversize:  # rare: some answer was over the message limit
            together, alone, skipped = self.oversize.split(reads.indices, time.monotonic())
            reads = self.subset(rt, together)
            ts = time.time_ns()
            out += [(rt.plan.tag_names[i], ts, None, _BAD_CONFIG, why) for i, why in skipped]
            bad += len(skipped)
        indices = reads.indices
        while pos < len(indices):
            size = min(self.client.limits.max_nodes_per_read, len(indices) - pos)
            try:
                bad += await self.read_part(rt, reads, pos, size, out)
            except LINK_ERRORS as exc:
                self.read_failed(batch, rt, indices[pos:] + alone, exc)
                return
            pos += size
        for k, i in enumerate(alone):  # suspects, after the others: one may drop the link
            try:
                bad += await self.read_part(rt, self.subset(rt, [i]), 0, 1, out)
            except LINK_ERRORS as exc:
                self.read_failed(batch, rt, alone[k:], exc)
                return
        if rt.unresolved:
            ts = time.time_ns()
            for i, reason in rt.unresolved:
                out.append((rt.plan.tag_names[i], ts, None, _BAD_CONFIG, reason))
            bad += len(rt.unresolved)
        if bad and batch.error is None:
            # a bad one (a good value with the server's timestamp has 6 elements too)
            first = next(r for r in out if r[3] not in (_GOOD, _UNCERTAIN))
            batch.error = f"{bad} of {len(out)} tag(s) bad, e.g. {first[0]}: {first[4]}"

    async def read_part(
        self, rt: Runtime, reads: Reads, pos: int, size: int, out: list[Any]
    ) -> int:
        """Read ``size`` nodes from ``pos``; returns the number of bad readings.

        A service fault that is not about the link (e.g. BadInternalError because of
        one odd node) is narrowed down by halving, so only the culprits read bad.
        Link faults raise.
        """
        stats = self.stats
        stats.requests += 1
        try:
            results = await self.client.read(reads.params(pos, size))
        except ResponseTooLarge:
            self.oversize.tripped(
                reads.indices[pos : pos + size], self._too_large(), time.monotonic()
            )
            raise
        except ua.UaStatusCodeError as exc:
            if exc.code in LINK_CODES:
                raise
            stats.bad_status(exc.code)
            stats.last_exception = f"{status_name(exc.code)} reading {size} node(s)"
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
            stats.decode_errors += 1
        else:
            if self.oversize:
                self.oversize.cleared(reads.indices[pos : pos + size])
            stats.last_ok_ns = now = time.time_ns()
            return rt.decoder.decode(results, reads.indices[pos : pos + size], out, now)
        if size == 1:
            i = reads.indices[pos]
            reason = f"{fault} (node {rt.plan.tags[i].node_text})"
            self.log_once(f"fault:{i}:{fault}", "tag %s: %s", rt.plan.tag_names[i], reason)
            out.append((rt.plan.tag_names[i], time.time_ns(), None, _BAD_DEVICE, reason))
            return 1
        half = size // 2
        first = await self.read_part(rt, reads, pos, half, out)
        return first + await self.read_part(rt, reads, pos + half, size - half, out)

    def _too_large(self) -> str:
        """The reason a tag gets when its answer alone is over the message limit."""
        return (
            f"value too large: the server's answer for this node is over "
            f"{self.client.max_message_bytes} bytes (the message limit, from max_value_bytes "
            f"{self.device.max_value_bytes}); read again every {RECHECK_S / 60:.0f} min; "
            "raise the device's max_value_bytes if such values are meant"
        )

    def read_failed(
        self, batch: Batch, rt: Runtime, indices: list[int], exc: BaseException
    ) -> None:
        """The link failed while reading: tags found too large say so, the rest BAD_COMM."""
        culprits = self.oversize.culprits
        ts = time.time_ns()
        for i in indices:
            if i in culprits:
                batch.readings.append((rt.plan.tag_names[i], ts, None, _BAD_CONFIG, culprits[i][0]))
        names = [rt.plan.tag_names[i] for i in indices if i not in culprits]
        self.link_failed(batch, names, exc, "reading")

    def fail(self, batch: Batch, names: Any, reason: str) -> None:
        ts = time.time_ns()
        batch.readings += [(t, ts, None, _BAD_COMM, reason) for t in names]
        batch.error = reason

    def link_failed(self, batch: Batch, names: Any, exc: BaseException, doing: str) -> None:
        if isinstance(exc, TimeoutError | asyncio.TimeoutError):
            why = f"no response within {self.device.timeout_ms} ms"
            self.stats.timeouts += 1
        elif isinstance(exc, ResponseTooLarge):
            why = f"{exc} (the tags read with it are read one at a time to find which value)"
            self.stats.link_errors += 1
        elif isinstance(exc, ua.UaStatusCodeError):
            why = f"the server answered {status_name(exc.code)}"
            self.stats.link_errors += 1
        else:
            why = f"connection lost ({type(exc).__name__}: {exc})" if str(exc) else "link error"
            self.stats.link_errors += 1
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

    # --- writes (drivers.contract.Writer) ------------------------------------------------

    async def _node(self, name: str) -> tuple[TagPlan, ua.NodeId]:
        if self._own_plan is None:
            self._own_plan = compile_plan(self.device)
        full = f"{self.name}/{name}"
        tag = next((t for t in self._own_plan.tags if t.full_name == full), None)
        if tag is None:
            raise ValueRejected(f"device {self.name!r} has no tag {name!r}")
        if not self.connected:
            raise ConnectError(f"not connected to {self.device.endpoint}")
        try:
            (node,) = await self.client.resolve([tag.node])
        except LINK_ERRORS as exc:
            raise self._link_error(exc, f"resolving {tag.node_text}") from None
        if isinstance(node, str):
            raise DriverError(f"tag {name!r}: {node}")
        return tag, node

    def _link_error(self, exc: BaseException, doing: str) -> ConnectError:
        batch = Batch(self.name)
        self.link_failed(batch, (), exc, doing)
        return ConnectError(batch.error or f"link error {doing}")

    async def _read_value(self, tag: TagPlan, node: ua.NodeId) -> ua.DataValue:
        params = ua.ReadParameters(
            NodesToRead=[
                ua.ReadValueId(
                    NodeId=node, AttributeId=ua.AttributeIds.Value, IndexRange=tag.index_range
                )
            ],
            TimestampsToReturn=ua.TimestampsToReturn.Both,
        )
        try:
            (dv,) = await self.client.read(params)
        except ua.UaStatusCodeError as exc:
            if exc.code in LINK_CODES:
                raise self._link_error(exc, f"reading {tag.node_text}") from None
            raise DriverError(f"the server answered {status_name(exc.code)}") from None
        except LINK_ERRORS as exc:
            raise self._link_error(exc, f"reading {tag.node_text}") from None
        return dv

    async def read_tag(self, name: str) -> Value:
        """Read one tag now, decoded as a poll would."""
        tag, node = await self._node(name)
        dv = await self._read_value(tag, node)
        decoder = Decoder(
            [tag.full_name],
            [tag.node_text],
            [tag.expected_type],
            [None if tag.index_range is None else int(tag.index_range)],
            max_value_bytes=self.device.max_value_bytes,
        )
        out: list[Any] = []
        decoder.decode([dv], [0], out, time.time_ns())
        reading = out[0]
        if reading[3] not in (int(Quality.GOOD), int(Quality.UNCERTAIN)):
            raise DriverError(str(reading[4]))
        value: Value = reading[2]
        return value

    async def write(self, name: str, value: Value) -> None:
        """Write a tag's Value attribute with the node's own data type (the one its value
        has now, or the tag's declared ``type``)."""
        tag, node = await self._node(name)
        vtype = tag.expected_type
        if vtype is None:
            dv = await self._read_value(tag, node)
            if dv.Value is None or dv.Value.VariantType is None:
                raise DriverError(f"the server gives no value (and so no type) for {name!r}")
            vtype = dv.Value.VariantType.value
        variant = _variant(name, vtype, value)
        wv = ua.WriteValue(
            NodeId=node,
            AttributeId=ua.AttributeIds.Value,
            Value=ua.DataValue(variant),
            IndexRange=tag.index_range,
        )
        try:
            (status,) = await self.client.uaclient.write(ua.WriteParameters(NodesToWrite=[wv]))
        except ua.UaStatusCodeError as exc:
            if exc.code in LINK_CODES:
                raise self._link_error(exc, f"writing {tag.node_text}") from None
            raise DriverError(f"the server refused the write: {status_name(exc.code)}") from None
        except LINK_ERRORS as exc:
            raise self._link_error(exc, f"writing {tag.node_text}") from None
        if not status.is_good():
            raise DriverError(
                f"the server refused the write of {tag.node_text}: {status_name(status.value)}"
            )

    async def unsubscribe(self) -> None:
        sub, self.subscription = self.subscription, None
        if sub is None or not self.connected:
            return  # a lost session's subscription is closed at the next connect
        with contextlib.suppress(LINK_ERRORS):
            await asyncio.wait_for(self.client.delete_subscriptions([sub]), self.client.timeout_s)


def _variant(name: str, vtype: int, value: Value) -> ua.Variant:
    """The command's value as a Variant of the node's type; ValueRejected when it does not
    fit (asyncua would fail later, while encoding the request)."""
    kind = _KINDS.get(vtype)
    vt = ua.VariantType(vtype)
    if kind is None:
        raise ValueRejected(f"tag {name!r}: writing OPC UA type {vt.name} is not supported")
    if kind is bool:
        if type(value) is not bool:
            raise ValueRejected(f"tag {name!r} is a Boolean; got {type(value).__name__}")
        return ua.Variant(value, vt)
    if kind is str:
        if type(value) is not str:
            raise ValueRejected(f"tag {name!r} is a String; got {type(value).__name__}")
        return ua.Variant(value, vt)
    if type(value) not in (int, float):
        raise ValueRejected(f"tag {name!r} is a {vt.name}; got {type(value).__name__}")
    if kind is float:
        v = float(value)
        if vtype == ua.VariantType.Float.value and abs(v) > 3.4028234663852886e38:
            raise ValueRejected(f"{value!r} does not fit a Float")
        return ua.Variant(v, vt)
    if isinstance(value, float) and not value.is_integer():
        raise ValueRejected(f"tag {name!r} is a {vt.name} (whole numbers); got {value!r}")
    lo, hi = _INT_RANGES[vtype]
    if not lo <= int(value) <= hi:
        raise ValueRejected(f"{value!r} does not fit {vt.name} ({lo}..{hi})")
    return ua.Variant(int(value), vt)


_V = ua.VariantType
_KINDS: dict[int, type] = {
    _V.Boolean.value: bool,
    **{t.value: int for t in (_V.SByte, _V.Byte, _V.Int16, _V.UInt16, _V.Int32, _V.UInt32)},
    _V.Int64.value: int,
    _V.UInt64.value: int,
    _V.Float.value: float,
    _V.Double.value: float,
    _V.String.value: str,
}
_INT_RANGES: dict[int, tuple[int, int]] = {
    _V.SByte.value: (-(2**7), 2**7 - 1),
    _V.Byte.value: (0, 2**8 - 1),
    _V.Int16.value: (-(2**15), 2**15 - 1),
    _V.UInt16.value: (0, 2**16 - 1),
    _V.Int32.value: (-(2**31), 2**31 - 1),
    _V.UInt32.value: (0, 2**32 - 1),
    _V.Int64.value: (-(2**63), 2**63 - 1),
    _V.UInt64.value: (0, 2**64 - 1),
}

Driver = OpcuaDriver
