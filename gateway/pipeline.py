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
from dataclasses import dataclass, field
from typing import Any

from buffer import NORMAL, URGENT, Drop, OutboxError, OutboxFull, OutboxRow
from drivers.contract import Batch, Quality
from security import DeviceKey, sign1
from security.cose import KEYCHAIN, encode_unprotected

from .outbox_thread import OutboxThread
from .wire import PAYLOAD_VERSION, encode_payload

log = logging.getLogger("edgegw.pipeline")

_BAD_CONFIG = int(Quality.BAD_CONFIG)
REFUSAL_NOTICE_S = 10.0  # while refusing, one notice per this long (the rest: next seal)


@dataclass(slots=True)
class PipelineStats:
    points_polled: int = 0
    points_sealed: int = 0
    messages_sealed: int = 0
    last_seq: int = 0
    seal_errors: int = 0
    points_refused: int = 0
    notices: int = 0
    seal_failures: int = 0
    """Windows (or their rest) that could not be sealed at all: dropped with a notice."""
    readings_unsealable: int = 0
    """Readings that could not be encoded, sent as bad readings saying why."""


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
        # Telemetry rows just committed, as the outbox holds them (the forwarder's offer():
        # it can send them without fetching them back from the outbox).
        self.on_rows: Callable[[list[OutboxRow]], None] = lambda rows: None
        # Bounded: when the outbox falls behind, pollers wait here (backpressure).
        self.queue: asyncio.Queue[Batch | None] = asyncio.Queue(queue_size)
        self.stats = PipelineStats()
        # refused points not yet recorded as a drop, by reason (outbox_full, disk_full)
        self._unrecorded: dict[str, int] = {}
        # Largest message body to seal for a topic (the forwarder's ``body_limit``:
        # uplink.max_message_bytes, lowered to what the broker announced); None: no limit.
        self.body_limit = body_limit
        self._bytes_per_point = 0.0  # of the last telemetry message, to pre-split windows
        self.payload_version = payload_version
        # Taken off the queue, not yet committed: (readings, where each batch ends).
        self._held: tuple[list[Any], list[int]] = ([], [])
        self._closing = False  # close() was taken off the queue
        self._unsealable = ""  # the last "cannot be sealed" logged
        self._refusal_notice_at = -REFUSAL_NOTICE_S  # monotonic time of the last one

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
        """Collect windows and seal them until ``close()``. Restartable: the window taken
        off the queue when a run failed (``_held``) is sealed first by the next run, and a
        ``close()`` already taken is honoured, so a supervisor's restart loses nothing."""
        loop = asyncio.get_running_loop()
        q = self.queue
        if self._held[0]:
            await self._seal(*self._held)
        while not self._closing:
            first = await q.get()
            if first is None:
                self._closing = True
                break
            # One flat list, and where each batch ends in it: a batch (one device read)
            # becomes one block of payload version 2, sharing its timestamp and tag set.
            # Held from the moment it leaves the queue: kept across a failure of run().
            readings: list[Any] = list(first.readings)
            ends = [len(readings)]
            self._held = (readings, ends)
            # One timer for the whole window (not a wait_for, which makes a task, per
            # batch): at 100 devices a second that was a few hundred µs every second.
            deadline = loop.time() + self.window
            try:
                async with asyncio.timeout_at(deadline):
                    while len(readings) < self.max_points and loop.time() < deadline:
                        b = q.get_nowait() if not q.empty() else await q.get()
                        if b is None:
                            self._closing = True
                            break
                        readings.extend(b.readings)
                        ends.append(len(readings))
            except TimeoutError:
                pass
            if readings:
                await self._seal(readings, ends)
            else:
                self._held = ([], [])
        if self._unrecorded:  # refused while the disk was full: say so now
            await self._record_refused()
        try:  # what is recorded but not yet told (refusals are told at most every 10 s)
            await self.notify_drops()
        except Exception as exc:  # recorded: told at the next start
            log.error("cannot seal the last drop notice: %s", exc)

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
            return self.sign(payload, topic)

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
        """Commit ``readings`` (held in ``_held`` until they are). An outbox error (I/O,
        a locked or vanished file) is transient: retried with backoff, the same data. A
        failure to encode or sign is deterministic: ``_seal_sync`` isolates the readings
        that cause it, and what cannot be sealed at all is dropped with a signed notice;
        acquisition goes on either way."""
        ends = ends if ends else [len(readings)]
        delay = 0.2
        done = _Progress()  # what is committed survives a retry: never sealed twice
        self._held = (readings, ends)
        try:
            while True:
                try:
                    await self.outbox.run(self._seal_sync, readings, done, ends)
                    break
                except OutboxFull as exc:
                    # stop_acquisition (or a disk too full to make room): the rest is refused.
                    rest = len(readings) - done.points
                    self.stats.points_refused += rest
                    self._unrecorded[exc.reason] = self._unrecorded.get(exc.reason, 0) + rest
                    log.warning("%s; %d points refused", exc, rest)
                    self._sealed(done)
                    await self._record_refused()
                    return
                except SealFailed as exc:
                    rest = len(readings) - done.points
                    self.stats.seal_failures += 1
                    log.error(
                        "cannot seal %d points (%s); they are dropped and reported in a notice",
                        rest,
                        exc,
                        exc_info=exc.__cause__,
                    )
                    self._sealed(done)
                    await self._record_drop(rest, "seal_failed")
                    return
                except (OutboxError, OSError) as exc:  # I/O: must not kill the daemon
                    self.stats.seal_errors += 1
                    log.error(
                        "cannot commit %d points to the outbox: %s; retrying in %.1f s",
                        len(readings) - done.points,
                        exc,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
        except BaseException:
            # the next run() seals the rest first, batch boundaries kept
            n = done.points
            self._held = (readings[n:], [e - n for e in ends if e > n])
            self._sealed(done)
            raise
        self._held = ([], [])
        self._sealed(done)
        if self._unrecorded:
            await self._record_refused()

    def _sealed(self, done: _Progress) -> None:
        if not done.messages:
            return
        self.stats.points_sealed += done.points
        self.stats.messages_sealed += done.messages
        self.stats.last_seq = done.last_seq
        rows, done.rows = done.rows, []
        if rows:
            self.on_rows(rows)
        self.on_sealed()

    async def _record_drop(self, points: int, reason: str) -> None:
        try:
            await self.outbox.run(self._drop_sync, points, reason)
        except Exception as exc:
            log.error("cannot record %d dropped points (%s): %s", points, reason, exc)
        self.on_sealed()  # a notice may have been sealed: the forwarder looks

    def _drop_sync(self, points: int, reason: str) -> None:
        ob = self.outbox.outbox
        assert ob is not None
        ob.record_drop(points, reason)
        try:
            self._notify_sync()
        except (OutboxError, OSError):
            raise
        except Exception:  # recorded: the notice goes with the next window that seals
            log.exception("cannot seal the notice of %d dropped points yet", points)

    async def _record_refused(self) -> None:
        """Record refused points as drops, each with the reason it was refused for; on a
        full disk even that can fail: keep the counts and record them with the next
        successful commit."""
        for reason, n in list(self._unrecorded.items()):
            try:
                await self.outbox.run(self._refuse_sync, n, reason)
            except Exception as exc:
                log.error("cannot record %d refused points (%s) yet: %s", n, reason, exc)
                return
            left = self._unrecorded[reason] - n  # more may have been refused meanwhile
            if left:
                self._unrecorded[reason] = left
            else:
                del self._unrecorded[reason]
        self.on_sealed()  # a notice may have been sealed: the forwarder looks

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
        # a retry after every reading was committed (the notice failed): only the notice
        todo = deque(
            self._chunks(done.points, len(readings), limit) if done.points < len(readings) else ()
        )
        while todo:
            part = todo.popleft()
            size = 0
            body = b""
            groups = part.groups(readings, ends)
            points = part.points

            def seal(seq: int, groups: list[list[Any]] = groups) -> bytes:
                nonlocal size, body
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
            except (OutboxError, OSError):  # I/O (a key in hardware too): transient
                raise
            except Exception as exc:  # encoding or signing: the same data fails again
                todo.extendleft(reversed(self._isolate(part, groups, exc)))
                continue
            self._bytes_per_point = size / points
            done.points += points
            done.messages += 1
            done.last_seq = seq
            done.rows.append(OutboxRow(seq, self.topic, body, NORMAL, t_ns, points))
        try:
            self._notify_sync()
        except OutboxError:
            raise
        except Exception:  # the drops stay recorded: the next window tries again
            log.exception("cannot seal a drop notice")
        return done.last_seq

    def _isolate(self, part: _Part, groups: list[list[Any]], exc: Exception) -> list[_Part]:
        """``part`` cannot be sealed: halve it until the readings that cause it are
        alone, and replace each by a bad reading saying why (one bad value must not cost
        its neighbours). A replacement that cannot be sealed either (the key, not the
        data): SealFailed, and the rest of the window is dropped with a notice."""
        if part.only is not None:
            raise SealFailed(f"{type(exc).__name__}: {exc}") from exc
        if part.points > 1:
            mid = part.lo + part.points // 2
            return [_Part(part.lo, mid), _Part(mid, part.hi)]
        r = groups[0][0]
        why = f"cannot be sealed: {type(exc).__name__}: {exc}"
        self.stats.readings_unsealable += 1
        if why != self._unsealable:  # once until it changes: no log flood
            log.error("reading %.200r %s; sent as a bad reading", r, why)
            self._unsealable = why
        try:
            tag, ts = str(r[0]), int(r[1])
        except Exception:
            tag, ts = repr(r)[:200], time.time_ns()
        return [_Part(part.lo, part.hi, [(tag, ts, None, _BAD_CONFIG, why[:500])])]

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
        """Record refused points (durably, at once; the outbox adds them to the drop not
        yet notified); while windows keep being refused, a notice at most every
        ``REFUSAL_NOTICE_S``: on a full disk each notice spends the reserve that deletes
        of acknowledged rows need."""
        ob = self.outbox.outbox
        assert ob is not None
        ob.record_drop(points, "refused_" + reason)
        # Recorded (committed): from here nothing may raise, or the caller would record
        # the same points again. A notice that fails now goes with the next seal.
        now = time.monotonic()
        if now - self._refusal_notice_at < REFUSAL_NOTICE_S:
            return
        try:
            if self._notify_sync():
                self._refusal_notice_at = now
        except Exception as exc:
            log.error("cannot seal the notice of %d refused points yet: %s", points, exc)

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
                essential=True,  # may spend the disk reserve: a loss is always told
            )
        except OutboxFull:  # not even the reserve was enough: retried with the next seal
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
        return self.sign(payload, self.notice_topic)

    def sign(self, payload: bytes, topic: str) -> bytes:
        """A COSE_Sign1 of ``payload`` for ``topic``, as every message of this gateway is
        signed (its key, the topic as external AAD, the key chain when there is one)."""
        return sign1(payload, self.key, topic.encode(), self._unprotected)


def _describe(d: Drop) -> str:
    seqs = f"seq {d.first_seq}..{d.last_seq}" if d.first_seq is not None else "no seq"
    return f"{d.reason}: {d.rows} messages, {d.points} points ({seqs})"


@dataclass(slots=True)
class _Progress:
    """How much of a window is committed (a prefix of its readings)."""

    points: int = 0
    messages: int = 0
    last_seq: int = 0
    rows: list[OutboxRow] = field(default_factory=list)  # committed, not yet offered


class SealFailed(Exception):
    """Nothing of a window could be sealed, not even a bad reading saying so (the
    signing key, not the data): its points are dropped with a notice."""


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
