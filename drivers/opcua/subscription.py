"""``subscribe``: one subscription per device, plus reads of what it cannot monitor.

The publish callback gets asyncua's raw ``PublishResult`` (no per-item objects) and
turns each notification burst into one batch; a queue between it and the sink gives
backpressure (asyncua then waits before its next Publish request). A ticker puts
poll markers into the same queue for the tags read instead (refused monitored items,
unresolved nodes, or all tags when the server refuses subscriptions) and watches for
a subscription that went silent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from asyncua import ua

from drivers.contract import Batch, ConnectError, Quality

from .decode import Decoder, status_name
from .plan import OpcuaPlan
from .runtime import FILTER_REFUSED, LINK_CODES, LINK_ERRORS, Runtime
from .types import Mode

if TYPE_CHECKING:
    from .driver import OpcuaDriver

__all__ = ["SubscriptionRun"]

_HIGH_WATER, _LOW_WATER = 64, 16  # batches queued between publish loop and sink


class _Poll:
    """Queue marker: time to read the polled nodes."""


_POLL = _Poll()


@dataclass(slots=True)
class _Lost:
    reason: str


class SubscriptionRun:
    """One ``subscribe`` call: runs until cancelled or the link is lost."""

    def __init__(
        self, driver: OpcuaDriver, plan: OpcuaPlan, sink: Callable[[Batch], Awaitable[None]]
    ) -> None:
        self.driver, self.plan, self.sink = driver, plan, sink
        self.queue: asyncio.Queue[Batch | _Poll | _Lost] = asyncio.Queue()
        self.room = asyncio.Event()  # set while the queue has room (backpressure)
        self.room.set()
        self.last_publish = 0.0
        self.poll_queued = False
        self.decoder: Decoder | None = None

    async def run(self) -> None:
        d, plan, sink, queue = self.driver, self.plan, self.sink, self.queue
        if not d.connected:
            raise ConnectError(f"not connected to {d.device.endpoint} (device {d.name!r})")
        d.client.on_lost = lambda reason: queue.put_nowait(_Lost(reason))
        ticker: asyncio.Task[None] | None = None
        try:
            first = Batch(d.name)
            try:
                rt = await d.prepare(plan)
                polled, stale_s = list(rt.nodes), None
                if plan.mode is Mode.SUBSCRIBE and d.oversize.read_first:
                    probe = Batch(d.name)  # its values come again from the subscription
                    await d.read_into(rt, rt.reads, probe)
                    if not d.connected:  # a value was too large again: keep looking
                        await sink(probe)
                        raise ConnectError(probe.error)
                    d.oversize.read_first = False
                if plan.mode is Mode.SUBSCRIBE:
                    polled, stale_s = await self._monitor(rt)
            except LINK_ERRORS as exc:
                d.link_failed(first, plan.tag_names, exc, "subscribing to")
                await sink(first)
                raise ConnectError(first.error) from None
            reads = d.subset(rt, polled)
            poll = bool(reads.indices or rt.unresolved)
            ticker = asyncio.create_task(self._tick(poll, stale_s))
            while True:
                item = await queue.get()
                if queue.qsize() <= _LOW_WATER:
                    self.room.set()
                if isinstance(item, Batch):
                    await sink(item)
                elif isinstance(item, _Poll):
                    self.poll_queued = False
                    batch = Batch(d.name)
                    await d.read_into(rt, reads, batch)
                    await sink(batch)
                    if not d.connected:
                        raise ConnectError(batch.error)
                else:
                    reason = item.reason
                    if d.client.too_large_seen:  # a notification over the message limit
                        d.oversize.read_first = True
                        reason = f"{d.client.too_large()} (finding which value)"
                    d.drop(reason)
                    d.stats.link_errors += 1
                    lost = Batch(d.name)
                    d.fail(lost, plan.tag_names, reason)
                    await sink(lost)
                    raise ConnectError(f"device {d.name!r}: {reason}")
        finally:
            d.client.on_lost = None
            if ticker is not None:
                ticker.cancel()
            await d.unsubscribe()

    async def _tick(self, poll: bool, stale_s: float | None) -> None:
        """Poll markers every poll interval (skipped, not bunched, when the consumer lags),
        and the watchdog of a subscription that went silent."""
        queue, client = self.queue, self.driver.client
        interval = self.plan.poll_interval_ms / 1000
        loop = asyncio.get_running_loop()
        next_poll = loop.time()
        while True:
            now = loop.time()
            if poll and now >= next_poll:
                if not self.poll_queued:
                    self.poll_queued = True
                    queue.put_nowait(_POLL)
                next_poll += interval * (int((now - next_poll) // interval) + 1)
            if stale_s is not None and now - self.last_publish > stale_s:
                queue.put_nowait(
                    _Lost(f"no data or keep-alive from the server for {stale_s:.0f} s")
                )
                return
            if client.lost is not None:
                queue.put_nowait(_Lost(client.lost))
                return
            wake = next_poll if poll else now + 1.0
            await asyncio.sleep(max(0.0, min(wake - now, 1.0)))

    def _on_publish(self, result: ua.PublishResult) -> Any:
        """asyncua's publish loop calls this; a returned awaitable is awaited (backpressure)."""
        self.last_publish = asyncio.get_running_loop().time()
        batch = None
        for n in result.NotificationMessage.NotificationData or ():
            if isinstance(n, ua.DataChangeNotification):
                batch = batch or Batch(self.driver.name)
                assert self.decoder is not None  # set before the subscription exists
                now = time.time_ns()
                if self.decoder.decode_items(n.MonitoredItems, batch.readings, now):
                    # bad values: said as a poll says them (counted as bad by the poller)
                    batch.error = batch.error or _bad_summary(batch)
                stats = self.driver.stats
                stats.notifications += len(n.MonitoredItems)
                stats.last_ok_ns = now
            elif isinstance(n, ua.StatusChangeNotification):
                why = f"subscription ended: {status_name(n.Status.value)}"
                self.queue.put_nowait(_Lost(why))
        if batch is not None:
            self.queue.put_nowait(batch)
            if self.queue.qsize() >= _HIGH_WATER:
                self.room.clear()
                return self.room.wait()
        return None

    def _refused(
        self, rt: Runtime, what: str, exc: ua.UaStatusCodeError
    ) -> tuple[list[int], float | None]:
        """The server refuses ``what`` (not because the link is gone): poll everything."""
        if exc.code in LINK_CODES:
            raise exc
        self.driver.log_once(
            "refused:" + what,
            "the server refuses %s (%s): reading every %d ms instead",
            what,
            status_name(exc.code),
            rt.plan.poll_interval_ms,
        )
        return list(rt.nodes), None

    async def _monitor(self, rt: Runtime) -> tuple[list[int], float | None]:
        """Create the subscription and its monitored items; returns the tags to read
        instead (refused ones, or all) and the silence after which the link counts as lost."""
        d, plan, client = self.driver, rt.plan, self.driver.client
        await d.unsubscribe()  # never two subscriptions for one device
        self.decoder = rt.decoder
        try:
            sub_id, silence_s = await client.create_subscription(
                plan.publishing_interval_ms, self._on_publish
            )
        except ua.UaStatusCodeError as exc:
            return self._refused(rt, "subscriptions", exc)
        d.subscription = sub_id
        self.last_publish = asyncio.get_running_loop().time()
        too_large = [i for i in rt.nodes if i in d.oversize.culprits]  # read instead
        indices = [i for i in rt.nodes if i not in d.oversize.culprits]
        try:
            results = await client.create_monitored_items(
                sub_id, [_item(rt, i, True) for i in indices]
            )
        except ua.UaStatusCodeError as exc:  # e.g. BadTooManyMonitoredItems in all
            await d.unsubscribe()
            return self._refused(rt, "monitored items", exc)
        pairs = list(zip(indices, results, strict=True))
        refused = [i for i, r in pairs if r.StatusCode.value in FILTER_REFUSED]
        if refused:
            d.log_once("filter", "deadband refused for %d tag(s): monitored without", len(refused))
            again = await client.create_monitored_items(
                sub_id, [_item(rt, i, False) for i in refused]
            )
            retried = dict(zip(refused, again, strict=True))
            pairs = [(i, retried.get(i, r)) for i, r in pairs]
        failed = [(i, r.StatusCode.value) for i, r in pairs if not r.StatusCode.is_good()]
        if failed:
            d.log_once(
                f"refused:{len(failed)}",
                "the server would not monitor %d tag(s) (e.g. %s: %s): reading them every %d ms",
                len(failed),
                plan.tag_names[failed[0][0]],
                status_name(failed[0][1]),
                plan.poll_interval_ms,
            )
        return [i for i, _ in failed] + too_large, silence_s + d.device.timeout_ms / 1000


def _item(rt: Runtime, i: int, with_filter: bool) -> ua.MonitoredItemCreateRequest:
    tag = rt.plan.tags[i]
    params = ua.MonitoringParameters(
        ClientHandle=i,  # the tag's index: notifications map back without a lookup
        SamplingInterval=float(rt.plan.sampling_interval_ms),
        QueueSize=1,
        DiscardOldest=True,
    )
    if with_filter and tag.deadband is not None:
        params.Filter = ua.DataChangeFilter(
            Trigger=ua.DataChangeTrigger.StatusValue,
            DeadbandType=tag.deadband[0],
            DeadbandValue=tag.deadband[1],
        )
    return ua.MonitoredItemCreateRequest(
        ItemToMonitor=ua.ReadValueId(
            NodeId=rt.nodes[i], AttributeId=ua.AttributeIds.Value, IndexRange=tag.index_range
        ),
        MonitoringMode=ua.MonitoringMode.Reporting,
        RequestedParameters=params,
    )


def _bad_summary(batch: Batch) -> str:
    readings = batch.readings
    bad = [r for r in readings if r[3] not in _NOT_BAD]
    first = bad[0] if bad else readings[0]
    return f"{len(bad)} of {len(readings)} value(s) bad, e.g. {first[0]}: {first[4]}"


_NOT_BAD = (int(Quality.GOOD), int(Quality.UNCERTAIN))
