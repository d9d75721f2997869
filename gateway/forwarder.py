"""Outbox → MQTT: publish committed messages in order with QoS 1, delete them on PUBACK.

The outbox is the only source of truth. Each connection gets a fresh paho client, and
after any disconnect sending restarts at the first unacknowledged row, so nothing
depends on what paho kept in memory. Messages in flight when a link drops are sent
again (at-least-once); the platform drops the duplicates by (gateway, seq).

What goes first, within the in-flight window: urgent messages (anomaly events, audit
records, drop notices), then live telemetry (sealed since this connection came up),
then the backlog, oldest first. So live data keeps flowing while a long backlog drains,
and the backlog drains in order as fast as the window and ``max_bytes_per_s`` allow.

paho runs its network loop in its own thread; its callbacks only hand events to the
event loop with ``call_soon_threadsafe``, so all state here is touched by one thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from buffer import OutboxError, OutboxRow

from .backoff import Backoff
from .config import UplinkConfig
from .outbox_thread import OutboxThread

log = logging.getLogger("edgegw.forwarder")


@dataclass(slots=True)
class ForwarderStats:
    link_up: bool = False
    connects: int = 0
    disconnects: int = 0
    published: int = 0
    acked: int = 0
    rejected: int = 0
    last_error: str | None = None


class _Session:
    """One MQTT connection: a paho client and the futures its callbacks resolve."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: mqtt.Client) -> None:
        self.loop = loop
        self.client = client
        self.connected: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[str] = loop.create_future()

    def _set(
        self, fut: asyncio.Future[Any], value: Any = None, exc: BaseException | None = None
    ) -> None:
        if not fut.done():
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(value)


class Forwarder:
    def __init__(
        self,
        uplink: UplinkConfig,
        client_id: str,
        outbox: OutboxThread,
        tls_context: ssl.SSLContext | None = None,
        on_link: Callable[[bool, str | None], None] = lambda up, why: None,
        on_problem: Callable[[str, str], None] = lambda kind, why: None,
    ) -> None:
        self.uplink = uplink
        self.client_id = client_id
        self.outbox = outbox
        self.tls_context = tls_context
        self.on_link = on_link
        self.on_problem = on_problem  # ("tls_failure" | "auth_failure", why): for the audit log
        self.stats = ForwarderStats()
        self._wake = asyncio.Event()
        self._inflight: dict[int, int] = {}  # paho mid -> outbox seq
        self._acks: list[int] = []
        self._cursors = _Cursors()
        self._ack_error = ""
        self._bucket = _TokenBucket(uplink.max_bytes_per_s) if uplink.max_bytes_per_s else None
        self._drained = asyncio.Event()

    def wake(self) -> None:
        """New rows were committed."""
        self._drained.clear()
        self._wake.set()

    # -- running -------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, pump, reconnect with backoff; runs until cancelled."""
        backoff = Backoff(first=0.5, cap=self.uplink.reconnect_max_s)
        while True:
            session: _Session | None = None
            try:
                session = await self._connect()
                backoff.reset()
                self._link(True, None)
                await self._pump(session)
            except OutboxError as exc:
                # e.g. a full disk refusing even the deletes of acknowledged rows: those
                # rows are sent again later (duplicates, never losses).
                log.error("outbox: %s; retrying", exc)
                why = f"outbox error: {exc}"
                self._link(False, why)
            except (OSError, ConnectionError, TimeoutError, ssl.SSLError) as exc:
                why = _describe(exc)
                if isinstance(exc, ssl.SSLError | ssl.CertificateError):
                    self.on_problem("tls_failure", why)
                elif isinstance(exc, AuthRefused):
                    self.on_problem("auth_failure", why)
                if self.stats.link_up or self.stats.last_error != why:
                    log.warning("uplink [%s]:%d: %s", self.uplink.host, self.uplink.port, why)
                self._link(False, why)
            finally:
                if session is not None:
                    await self._end(session)
            await asyncio.sleep(backoff.next())

    async def drain(self, timeout: float) -> bool:
        """Wait until the outbox is empty (True) or the timeout passes (False)."""
        self.wake()
        try:
            await asyncio.wait_for(self._drained.wait(), timeout)
            return True
        except TimeoutError:
            return False

    def _link(self, up: bool, why: str | None) -> None:
        changed = up != self.stats.link_up
        self.stats.link_up = up
        self.stats.last_error = why
        if up:
            self.stats.connects += 1
        if changed:
            if not up:
                self.stats.disconnects += 1
            log.info("uplink %s%s", "up" if up else "down", f": {why}" if why else "")
            self.on_link(up, why)

    async def _connect(self) -> _Session:
        loop = asyncio.get_running_loop()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5
        )
        client.max_inflight_messages_set(self.uplink.max_inflight)
        if self.tls_context is not None:
            client.tls_set_context(self.tls_context)
        s = _Session(loop, client)

        def on_connect(c: Any, u: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
            if rc.is_failure:
                err = (AuthRefused if rc.value in _AUTH_CODES else ConnectionError)(
                    f"broker refused: {rc}"
                )
                loop.call_soon_threadsafe(s._set, s.connected, None, err)
            else:
                loop.call_soon_threadsafe(s._set, s.connected)

        def on_disconnect(c: Any, u: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
            loop.call_soon_threadsafe(s._set, s.lost, f"disconnected: {rc}")

        def on_publish(c: Any, u: Any, mid: int, rc: ReasonCode, props: Any) -> None:
            loop.call_soon_threadsafe(self._on_puback, s, mid, rc)

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_publish = on_publish
        # connect() resolves the name and opens the socket: blocking, so off the loop.
        await asyncio.wait_for(
            loop.run_in_executor(
                None,
                lambda: client.connect(
                    self.uplink.host, self.uplink.port, self.uplink.keepalive_s, clean_start=True
                ),
            ),
            timeout=15,
        )
        client.loop_start()
        try:
            await asyncio.wait_for(asyncio.shield(s.connected), timeout=15)
        except BaseException:
            await self._end(s)
            raise
        return s

    async def _end(self, s: _Session) -> None:
        try:
            await self._flush_acks()
        except OutboxError as exc:  # the rows stay and are sent again: duplicates only
            log.error("outbox: cannot delete acknowledged rows: %s", exc)
        self._inflight.clear()
        self._cursors = _Cursors()  # the next session starts at the first unacknowledged row
        c = s.client
        await asyncio.get_running_loop().run_in_executor(None, _close_client, c)

    async def _pump(self, s: _Session) -> None:
        ob = self.outbox.outbox
        assert ob is not None
        c = self._cursors
        c.live_from = (await self.outbox.run(ob.stats)).last_seq
        window = self.uplink.max_inflight
        while True:
            if s.lost.done():
                raise ConnectionError(s.lost.result())
            room = window - len(self._inflight)
            if room > 0:
                await self._flush_acks()
                rows = await self.outbox.run(self._next_rows, room)
                for row in rows:
                    if self._bucket is not None:
                        await self._bucket.take(len(row.body))
                    info = s.client.publish(row.topic, row.body, qos=1)
                    if info.rc != mqtt.MQTT_ERR_SUCCESS:
                        raise ConnectionError(f"publish failed: {mqtt.error_string(info.rc)}")
                    self._inflight[info.mid] = row.seq
                self.stats.published += len(rows)
                if not rows and not self._inflight and not self._acks:
                    self._drained.set()
                if len(rows) == room:
                    continue  # more may be waiting; the window is full only if acks lag
            self._wake.clear()
            wake = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({wake, s.lost}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            finally:
                wake.cancel()

    def _next_rows(self, room: int) -> list[OutboxRow]:
        """In the outbox thread: urgent, then live, then backlog rows, at most ``room``."""
        ob = self.outbox.outbox
        assert ob is not None
        c = self._cursors
        rows = ob.pending(c.urgent, room, urgent=True)
        if rows:
            c.urgent = rows[-1].seq
        if len(rows) < room:
            live = ob.pending(max(c.live, c.live_from), room - len(rows), urgent=False)
            if live:
                c.live = live[-1].seq
            rows += live
        if len(rows) < room and c.backlog < c.live_from:
            old = ob.pending(c.backlog, room - len(rows), urgent=False, max_seq=c.live_from)
            c.backlog = old[-1].seq if old else c.live_from
            rows += old
        return rows

    def _on_puback(self, s: _Session, mid: int, rc: ReasonCode) -> None:
        seq = self._inflight.pop(mid, None)
        if seq is None:
            return
        if rc.is_failure:
            # The broker refused this message (quota, authorisation): keep the row and
            # start over on a new connection rather than skip it.
            self.stats.rejected += 1
            s._set(s.lost, f"broker rejected seq {seq}: {rc}")
            return
        self._acks.append(seq)
        self._drained.clear()
        self._wake.set()

    async def _flush_acks(self) -> None:
        if not self._acks:
            return
        acks, self._acks = self._acks, []
        assert self.outbox.outbox is not None
        try:
            await self.outbox.run(self.outbox.outbox.ack, acks)
        except OutboxError as exc:
            # e.g. a disk too full even for deletes: keep them and try again later;
            # the MQTT session is fine and keeps sending.
            self._acks[:0] = acks
            if str(exc) != self._ack_error:
                log.error("outbox: cannot delete %d acknowledged rows yet: %s", len(acks), exc)
            self._ack_error = str(exc)
            return
        self._ack_error = ""
        self.stats.acked += len(acks)


class AuthRefused(ConnectionError):
    """The broker refused our credentials or certificate."""


# CONNACK reason codes: bad user name or password, not authorized, bad auth method
_AUTH_CODES = {0x86, 0x87, 0x8C}


@dataclass(slots=True)
class _Cursors:
    """Highest seq handed to this session, per stream; ``live_from`` splits live from
    backlog: the last seq committed when the connection came up."""

    urgent: int = 0
    live: int = 0
    backlog: int = 0
    live_from: int = 0


class _TokenBucket:
    """Paces publishing to ``rate`` bytes/s with a one-second burst."""

    def __init__(self, rate: int) -> None:
        self.rate = float(rate)
        self.tokens = float(rate)
        self.t = time.monotonic()

    async def take(self, n: int) -> None:
        while True:
            now = time.monotonic()
            self.tokens = min(self.rate, self.tokens + (now - self.t) * self.rate)
            self.t = now
            # a message larger than the burst still goes, once the bucket is full
            if self.tokens >= min(n, self.rate):
                self.tokens -= n
                return
            await asyncio.sleep((min(n, self.rate) - self.tokens) / self.rate)


def _close_client(c: mqtt.Client) -> None:
    with contextlib.suppress(Exception):  # already closed
        c.disconnect()
    c.loop_stop()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return str(exc) or type(exc).__name__
