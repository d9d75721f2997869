"""Batches in, sealed messages out: collect for a flush window, encode once, sign once,
commit once.

Losses are never silent: when the outbox refuses a window (``stop_acquisition``) its
points are recorded as a drop; every drop the outbox records (evictions, quarantined
rows, seqs skipped after an unclean stop) is reported to the platform by a signed
``notice`` message, committed in the same transaction that marks the drop notified.

The outbox row is the final signed message (seal at acquisition), so data at rest is
integrity-protected and the forwarder only moves bytes. Encoding, signing and the
commit run in the outbox thread, inside one SQLite transaction, because the sequence
number is allocated by that transaction and is part of what is signed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from buffer import URGENT, Drop, OutboxFull
from drivers.contract import Batch, Quality
from security import DeviceKey, sign1
from security.cose import KEYCHAIN, encode_unprotected

from .outbox_thread import OutboxThread
from .wire import PAYLOAD_VERSION, encode_payload

log = logging.getLogger("edgegw.pipeline")

_BAD_CONFIG = int(Quality.BAD_CONFIG)


@dataclass(slots=True)
class PipelineStats:
    points_polled: int = 0
    points_sealed: int = 0
    messages_sealed: int = 0
    last_seq: int = 0
    seal_errors: int = 0
    points_refused: int = 0
    notices: int = 0


class Pipeline:
    def __init__(
        self,
        *,
        gw_id: str,
        boot: int,
        topic: str,
        notice_topic: str,
        key: DeviceKey,
        outbox: OutboxThread,
        flush_window_s: float,
        max_points: int,
        on_sealed: Callable[[], None] = lambda: None,
        on_drop: Callable[[dict[str, Any]], None] = lambda drop: None,
        queue_size: int = 1024,
        keychain: Sequence[bytes] = (),
        body_limit: Callable[[str], int] | None = None,
        payload_version: int = PAYLOAD_VERSION,
    ) -> None:
        self.gw_id, self.boot, self.topic, self.key = gw_id, boot, topic, key
        # A rotated key sends the certificates from the root to it with every message, so
        # a receiver can trust it before anything else arrives (encoded once, here).
        self._unprotected = encode_unprotected({KEYCHAIN: list(keychain)} if keychain else None)
        self._aad = topic.encode()
        self.notice_topic = notice_topic
        self.outbox = outbox
        self.window = flush_window_s
        self.max_points = max_points
        self.on_sealed = on_sealed
        self.on_drop = on_drop  # each drop, once notified (for the audit log)
        # Bounded: when the outbox falls behind, pollers wait here (backpressure).
        self.queue: asyncio.Queue[Batch | None] = asyncio.Queue(queue_size)
        self.stats = PipelineStats()
        self._unrecorded = 0  # refused points not yet recorded as a drop
        # Largest message body to seal for a topic (the forwarder's ``body_limit``:
        # uplink.max_message_bytes, lowered to what the broker announced); None: no limit.
        self.body_limit = body_limit
        self._bytes_per_point = 0.0  # of the last telemetry message, to pre-split windows
        self.payload_version = payload_version

    async def put(self, batch: Batch) -> None:
        self.stats.points_polled += len(batch.readings)
        await self.queue.put(batch)

    def offer(self, batch: Batch) -> bool:
        """Put without waiting (derived data such as model scores): False if full."""
        try:
            self.queue.put_nowait(batch)
        except asyncio.QueueFull:
            return False
        self.stats.points_polled += len(batch.readings)
        return True

    async def close(self) -> None:
        """Ask run() to seal what it holds and return."""
        await self.queue.put(None)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        q = self.queue
        while True:
            first = await q.get()
            if first is None:
                if self._unrecorded:
                    await self._record_refused("disk_full")
                return
            # One flat list, and where each batch ends in it: a batch (one device read)
            # becomes one block of payload version 2, sharing its timestamp and tag set.
            readings: list[Any] = list(first.readings)
            ends = [len(readings)]
            stopping = False
            # One timer for the whole window (not a wait_for, which makes a task, per
            # batch): at 100 devices a second that was a few hundred µs every second.
            deadline = loop.time() + self.window
            try:
                async with asyncio.timeout_at(deadline):
                    while len(readings) < self.max_points and loop.time() < deadline:
                        b = q.get_nowait() if not q.empty() else await q.get()
                        if b is None:
                            stopping = True
                            break
                        readings.extend(b.readings)
                        ends.append(len(readings))
            except TimeoutError:
                pass
            if readings:
                await self._seal(readings, ends)
            if stopping:
                if self._unrecorded:  # refused while the disk was full: say so now
                    await self._record_refused("disk_full")
                return

    async def seal_message(
        self,
        kind: str,
        topic: str,
        fields: dict[str, Any],
        marks: Mapping[str, int] | None = None,
    ) -> int:
        """Seal one urgent message of another kind (anomaly ``event``, ``audit`` records):
        same seq space, same signature, sent before any telemetry backlog. ``marks`` are
        outbox marks committed with it (see buffer.Outbox.append)."""

        def seal(seq: int) -> bytes:
            payload = encode_payload(
                gw=self.gw_id,
                seq=seq,
                boot=self.boot,
                kind=kind,
                t_ns=time.time_ns(),
                version=self.payload_version,
                **fields,
            )
            return sign1(payload, self.key, topic.encode(), self._unprotected)

        def append() -> int:
            assert self.outbox.outbox is not None
            return self.outbox.outbox.append(topic, seal, priority=URGENT, marks=marks or {})

        seq = await self.outbox.run(append)
        self.on_sealed()
        return seq

    async def notify_drops(self) -> None:
        """Seal a notice for drops recorded before this start (e.g. an unclean stop)."""
        if await self.outbox.run(self._notify_sync):
            self.on_sealed()

    async def _seal(self, readings: list[Any], ends: list[int] | None = None) -> None:
        delay = 0.2
        done = _Progress()  # what is committed survives a retry: never sealed twice
        while True:
            try:
                await self.outbox.run(self._seal_sync, readings, done, ends)
                break
            except OutboxFull as exc:
                # stop_acquisition (or a disk too full to make room): the rest is refused.
                rest = len(readings) - done.points
                self.stats.points_refused += rest
                self._unrecorded += rest
                log.warning("%s; %d points refused", exc, rest)
                self._sealed(done)
                await self._record_refused(exc.reason)
                return
            except Exception as exc:  # an I/O error must not kill the daemon
                self.stats.seal_errors += 1
                log.error(
                    "cannot commit %d points to the outbox: %s; retrying in %.1f s",
                    len(readings) - done.points,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        self._sealed(done)
        if self._unrecorded:
            await self._record_refused("disk_full")

    def _sealed(self, done: _Progress) -> None:
        if not done.messages:
            return
        self.stats.points_sealed += done.points
        self.stats.messages_sealed += done.messages
        self.stats.last_seq = done.last_seq
        self.on_sealed()

    async def _record_refused(self, reason: str) -> None:
        """Record refused points as a drop; on a full disk even that can fail: keep
        the count and record it with the next successful commit."""
        n = self._unrecorded
        try:
            await self.outbox.run(self._refuse_sync, n, reason)
        except Exception as exc:
            log.error("cannot record %d refused points yet: %s", n, exc)
            return
        self._unrecorded -= n

    def _seal_sync(
        self, readings: list[Any], done: _Progress | None = None, ends: list[int] | None = None
    ) -> int:
        """Runs in the outbox thread: one transaction, one encoding, one signature per
        message. A window larger than ``body_limit`` becomes several messages, each
        committed on its own; ``done`` counts the committed prefix of ``readings``;
        ``ends``: where each batch ends in ``readings`` (None: one batch)."""
        ob = self.outbox.outbox
        assert ob is not None
        done = done if done is not None else _Progress()
        ends = ends if ends else [len(readings)]
        t_ns = time.time_ns()
        limit = self.body_limit(self.topic) if self.body_limit is not None else None
        todo = deque(self._chunks(done.points, len(readings), limit))
        while todo:
            part = todo.popleft()
            size = 0
            groups = part.groups(readings, ends)
            points = part.points

            def seal(seq: int, groups: list[list[Any]] = groups) -> bytes:
                nonlocal size
                payload = encode_payload(
                    gw=self.gw_id,
                    seq=seq,
                    boot=self.boot,
                    kind="telemetry",
                    t_ns=t_ns,
                    groups=groups,
                    version=self.payload_version,
                )
                body = sign1(payload, self.key, self._aad, self._unprotected)
                size = len(body)
                if limit is not None and size > limit:
                    raise _TooLarge(size)  # rolls the append back: the seq is not used
                return body

            try:
                seq = ob.append(self.topic, seal, points=points)
            except _TooLarge as big:
                self._bytes_per_point = max(self._bytes_per_point, big.size / points)
                assert limit is not None
                todo.extendleft(reversed(_split(part, groups, big.size, limit)))
                continue
            self._bytes_per_point = size / points
            done.points += points
            done.messages += 1
            done.last_seq = seq
        self._notify_sync()
        return done.last_seq

    def _chunks(self, lo: int, hi: int, limit: int | None) -> list[_Part]:
        """The window ``[lo, hi)`` in parts that should fit ``limit``, from the bytes per
        point of the last message (so a window that never fits is not encoded twice every
        time)."""
        if limit is None or not self._bytes_per_point:
            return [_Part(lo, hi)]
        per = max(1, int(limit * 0.9 / self._bytes_per_point))
        if hi - lo <= per:
            return [_Part(lo, hi)]
        n = -(-(hi - lo) // per)
        step = -(-(hi - lo) // n)
        return [_Part(i, min(i + step, hi)) for i in range(lo, hi, step)]

    def _refuse_sync(self, points: int, reason: str) -> None:
        ob = self.outbox.outbox
        assert ob is not None
        ob.record_drop(points, "refused_" + reason)
        self._notify_sync()

    def _notify_sync(self) -> bool:
        """Seal one notice for all unnotified drops; True if one was sealed."""
        ob = self.outbox.outbox
        assert ob is not None
        drops = ob.pending_drops()
        if not drops:
            return False
        try:
            ob.append(
                self.notice_topic,
                lambda seq: self._notice(seq, drops),
                priority=URGENT,
                notifies=[d.id for d in drops],
            )
        except OutboxFull:  # urgent rows only fail on a truly full disk: retried next seal
            return False
        self.stats.notices += 1
        for d in drops:
            log.warning("data dropped: %s", _describe(d))
            self.on_drop(
                {
                    "reason": d.reason,
                    "first_seq": d.first_seq,
                    "last_seq": d.last_seq,
                    "messages": d.rows,
                    "points": d.points,
                }
            )
        return True

    def _notice(self, seq: int, drops: list[Drop]) -> bytes:
        payload = encode_payload(
            gw=self.gw_id,
            seq=seq,
            boot=self.boot,
            kind="notice",
            t_ns=time.time_ns(),
            version=self.payload_version,
            notice="data_dropped",
            drops=[
                {
                    "first_seq": d.first_seq,
                    "last_seq": d.last_seq,
                    "messages": d.rows,
                    "points": d.points,
                    "bytes": d.bytes,
                    "reason": d.reason,
                    "at": d.at_ns,
                }
                for d in drops
            ],
        )
        return sign1(payload, self.key, self.notice_topic.encode(), self._unprotected)


def _describe(d: Drop) -> str:
    seqs = f"seq {d.first_seq}..{d.last_seq}" if d.first_seq is not None else "no seq"
    return f"{d.reason}: {d.rows} messages, {d.points} points ({seqs})"


@dataclass(slots=True)
class _Progress:
    """How much of a window is committed (a prefix of its readings)."""

    points: int = 0
    messages: int = 0
    last_seq: int = 0


class _TooLarge(Exception):
    """A sealed message came out larger than the limit: split the part and try again."""

    def __init__(self, size: int) -> None:
        super().__init__(f"{size} bytes")
        self.size = size


@dataclass(frozen=True, slots=True)
class _Part:
    """Readings ``[lo, hi)`` of a window, sealed as one message; ``only``: instead, these
    readings (a reading too large to send, replaced by a bad one saying so)."""

    lo: int
    hi: int
    only: list[Any] | None = None

    @property
    def points(self) -> int:
        return self.hi - self.lo

    def groups(self, readings: list[Any], ends: list[int]) -> list[list[Any]]:
        """The part cut at batch ends: one list per batch (or piece of one)."""
        if self.only is not None:
            return [self.only]
        out = []
        lo, hi = self.lo, self.hi
        i = bisect_right(ends, lo)
        while lo < hi:
            end = min(ends[i], hi) if i < len(ends) else hi
            out.append(readings[lo:end])
            lo, i = end, i + 1
        return out


def _split(part: _Part, groups: list[list[Any]], size: int, limit: int) -> list[_Part]:
    """Split a part that sealed to ``size`` bytes into parts that should fit; one
    reading that alone is too large becomes a bad reading saying so (never a giant
    message, and its tag still shows up on the platform)."""
    if part.points == 1:
        r = groups[0][0]
        bad = (r[0], r[1], None, _BAD_CONFIG, _too_large(size, limit))
        return [_Part(part.lo, part.hi, [bad])]
    n = min(part.points, max(2, -(-size * 11 // (limit * 10))))
    step = -(-part.points // n)
    return [_Part(i, min(i + step, part.hi)) for i in range(part.lo, part.hi, step)]


def _too_large(size: int, limit: int) -> str:
    return (
        f"value too large: the reading takes {size} bytes sealed, more than one message may "
        f"carry ({limit} bytes: uplink.max_message_bytes, or the broker's limit)"
    )
