"""Outbox → MQTT: publish committed messages in order with QoS 1, delete them on PUBACK.

The outbox is the only source of truth. Each connection gets a fresh paho client, and
after any disconnect sending restarts at the first unacknowledged row, so nothing
depends on what paho kept in memory. Messages in flight when a link drops are sent
again (at-least-once); the platform drops the duplicates by (gateway, seq).

What goes first, within the in-flight window: urgent messages (anomaly events, audit
records, drop notices), then live telemetry (sealed since this connection came up),
then the backlog, oldest first. So live data keeps flowing while a long backlog drains,
and the backlog drains in order as fast as the window and ``max_bytes_per_s`` allow.

The broker's word is law (MQTT 5 CONNACK): nothing is published when it allows only
QoS 0; the in-flight window never exceeds its Receive Maximum; a stored message larger
than its Maximum Packet Size is set aside with a signed notice instead of blocking the
messages behind it, and the pipeline seals new windows to fit (``body_limit``). A
message the broker keeps refusing on its own (while it acknowledges others) is sent
alone, and after ``STRIKES`` refusals set aside the same way. Refusals that an operator
must fix (login, rights, QoS) are retried slowly, up to ``REFUSED_RETRY_MAX_S`` apart.

paho's network loop runs in a thread of its own (``mqttlink.NetworkThread``: it sleeps
until there is traffic or a keep-alive is due, where ``loop_start`` woke every second);
its callbacks only hand events to the event loop with ``call_soon_threadsafe``, so all
state here is touched by one thread.

Nothing wakes without work: the pump sleeps until a commit (``wake``), a PUBACK or the
end of the session, and asks the outbox for rows only when a commit came since it last
saw every row there (``Outbox.last_seq``); acknowledged rows are deleted in the same
trip to the outbox thread as that question, when there is one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from buffer import OutboxError, OutboxRow

from .backoff import Backoff
from .credentials import CredentialError
from .digest import Digest
from .histogram import Histogram
from .mqttlink import (
    AUTH_CODES,
    BrokerLimits,
    NetworkThread,
    connect_kwargs,
    explain_refusal,
    new_client,
    publish_overhead,
)
from .outbox_thread import OutboxThread

if TYPE_CHECKING:
    from .config import UplinkConfig

log = logging.getLogger("edgegw.forwarder")

REFUSED_RETRY_MAX_S = 300.0  # longest wait between attempts the broker refuses
STRIKES = 3  # lone sends a message may fail before it is set aside
# While nothing happens the pump looks at the outbox's last seq this often (no query).
# Every commit wakes it (the pipeline's on_sealed); this only bounds the delay of one
# that would not say so, and is long so that an idle gateway does not wake for it.
IDLE_CHECK_S = 60.0
OFFER_MAX, OFFER_MAX_BYTES = 64, 2**20  # offered, not taken: let go, the fetch reads them
SET_ASIDE_REASON = "refused_by_broker"
# PUBACK codes that refuse a topic or this client, not one message: never set aside
_TOPIC_CODES = {0x87, 0x90}
_QUOTA = 0x97


@dataclass(slots=True)
class ForwarderStats:
    link_up: bool = False
    connects: int = 0
    disconnects: int = 0
    published: int = 0
    acked: int = 0
    rejected: int = 0
    last_error: str | None = None
    set_aside: int = 0  # messages the broker refused for good, reported in a notice
    limits: dict[str, Any] = field(default_factory=dict)
    """What is in force: the broker's CONNACK limits, the in-flight window and the
    largest message the pipeline seals (``max_message_bytes``)."""
    bytes_published: int = 0  # message bodies published, re-sends included
    puback_latency: Histogram = field(default_factory=Histogram)  # publish to PUBACK, s


class CommandInlet(Protocol):
    """Where this connection hands the messages it receives (gateway/downlink/): the
    forwarder subscribes to ``topic`` (QoS 1) with a persistent session while
    ``enabled``, and passes each message on without looking at it; ``ack`` sends its
    PUBACK and is called once the inlet has recorded the message. Runs on the loop."""

    topic: str

    @property
    def enabled(self) -> bool: ...

    @property
    def session_expiry_s(self) -> int: ...

    def offer(self, topic: str, payload: bytes, ack: Callable[[], None]) -> None: ...

    def subscribed(self, ok: bool, why: str | None) -> None: ...


class BrokerRefused(ConnectionError):
    """The broker refuses in a way retrying soon will not fix (login, rights, QoS 0,
    protocol version): an operator must act. Retried slowly."""


class AuthRefused(BrokerRefused):
    """The broker refused our credentials or certificate."""


class _Session:
    """One MQTT connection: a paho client and the futures its callbacks resolve."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: mqtt.Client) -> None:
        self.loop = loop
        self.client = client
        self.net: NetworkThread | None = None  # paho's network loop, once connect() returned
        self.connected: asyncio.Future[BrokerLimits] = loop.create_future()
        self.lost: asyncio.Future[str] = loop.create_future()
        self.broker_reason: int | None = None  # reason code of the broker's DISCONNECT
        self.acked_any = False  # the broker acknowledged something on this connection
        self.rejected_any = False  # ... and refused a message
        self.refusal: BrokerRefused | None = None  # a refusal an operator must fix

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
        on_set_aside: Callable[[], Awaitable[None]] | None = None,
        commands: CommandInlet | None = None,
    ) -> None:
        self.uplink = uplink
        self.commands = commands  # the downlink: subscribed to on each connect
        self.client_id = client_id
        self.outbox = outbox
        self.tls_context = tls_context
        self.on_link = on_link
        # ("tls_failure" | "auth_failure" | "broker_refusal", why): for the audit log
        self.on_problem = on_problem
        self.on_set_aside = on_set_aside  # rows were set aside: seal a notice about them
        self.stats = ForwarderStats()
        self.limits: BrokerLimits | None = None  # of the current (or last) connection
        self._broker_max_packet: int | None = None  # what the broker last announced
        self._warned_mps: int | None = None
        self._wake = asyncio.Event()
        self._inflight: dict[int, tuple[int, int]] = {}  # paho mid -> (outbox seq, bytes)
        self._sent_at: dict[int, float] = {}  # paho mid -> time.monotonic() at publish
        self._acks: list[int] = []
        self._cursors = _Cursors()
        # Every row up to this seq was fetched (or acknowledged) in this session; None:
        # rows may be waiting (a session's start, a fetch that filled its room).
        self._fetched_upto: int | None = None
        self._offered: list[OutboxRow] = []  # see offer()
        self._ack_error = ""
        self._bucket = _TokenBucket(uplink.max_bytes_per_s) if uplink.max_bytes_per_s else None
        self._drained = asyncio.Event()
        self._max_acked = 0  # largest message the broker ever acknowledged (bytes)
        self._strikes: dict[int, int] = {}  # seq -> lone sends that failed
        # Evidence that a refusal is about the message, not the broker: acks since the
        # message was first refused (on any connection; a message refused first on
        # every new connection never sees an ack on its own one).
        self._acks_total = 0
        self._refused_at: dict[int, int] = {}  # seq -> _acks_total at its first refusal
        self._held: dict[int, OutboxRow] = {}  # suspects, sent alone
        self._lone: int | None = None  # the suspect now in flight alone
        self._condemned: list[int] = []  # refused STRIKES times: set aside at session end
        self._log = Digest(self._log_event, first_s=60, max_s=3600)
        self._last_failure: str | None = None
        self._said_limits = ""
        self._update_limits()

    def wake(self) -> None:
        """New rows were committed."""
        self._drained.clear()
        self._wake.set()

    def offer(self, rows: list[OutboxRow]) -> None:
        """Rows the pipeline has just committed, as the outbox holds them. When they are
        the next rows this session would fetch (every row before them fetched, none
        after them), they go out without a trip to the outbox thread to read them back:
        at a message a second that trip was a third of the forwarder's outbox work.
        Anything else is left to the fetch; an offer is only ever a shortcut."""
        held = self._offered
        if (
            self._fetched_upto is None
            or len(held) + len(rows) > OFFER_MAX
            or sum(len(r.body) for r in held) + sum(len(r.body) for r in rows) > OFFER_MAX_BYTES
        ):
            # no session, or rows wait to be fetched anyway, or nobody takes them (the
            # window stays full): held in memory for nothing; the fetch reads them
            self._offered.clear()
        else:
            self._offered += rows
        self.wake()

    def _take_offered(self, ob: Any, room: int) -> list[OutboxRow]:
        """The offered rows if they are exactly the rows waiting for this session."""
        offered, self._offered = self._offered, []
        upto = self._fetched_upto
        if upto is None:
            return []
        rows = [r for r in offered if r.seq > upto]
        if (
            not rows
            or len(rows) > room
            or rows[0].seq != upto + 1
            or rows[-1].seq != upto + len(rows)
            or ob.last_seq != rows[-1].seq  # something else was committed: fetch it all
        ):
            return []
        self._cursors.live = max(self._cursors.live, rows[-1].seq)
        self._fetched_upto = rows[-1].seq
        return rows

    def body_limit(self, topic: str) -> int:
        """Largest message body to seal for ``topic``: ``uplink.max_message_bytes``, and
        never more than the broker's Maximum Packet Size allows."""
        limit = self.uplink.max_message_bytes
        if self._broker_max_packet is not None:
            fit = self._broker_max_packet - publish_overhead(topic, self.uplink.protocol)
            limit = min(limit, max(fit, 1))
        return limit

    # -- running -------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, pump, reconnect with backoff; runs until cancelled. Restartable (a
        supervisor's restart after a failure): what a session had in flight is forgotten
        and sent again from the outbox, which still holds it."""
        self._forget_session()
        backoff = Backoff(first=0.5, cap=self.uplink.reconnect_max_s)
        slow = Backoff(first=max(5.0, self.uplink.reconnect_max_s), cap=REFUSED_RETRY_MAX_S)
        try:
            while True:
                session: _Session | None = None
                wait = backoff
                try:
                    session = await self._connect()
                    self._link(True, None)
                    await self._pump(session)
                except OutboxError as exc:
                    # e.g. a full disk refusing even the deletes of acknowledged rows:
                    # those rows are sent again later (duplicates, never losses).
                    log.error("outbox: %s; retrying", exc)
                    self._link(False, f"outbox error: {exc}")
                except (CredentialError, BrokerRefused) as exc:
                    why = str(exc)
                    auth = isinstance(exc, AuthRefused | CredentialError)
                    self.on_problem("auth_failure" if auth else "broker_refusal", why)
                    self._failed(why)
                    wait = slow
                except (OSError, ConnectionError, TimeoutError, ssl.SSLError) as exc:
                    why = _describe(exc, self.uplink)
                    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
                        self.on_problem("tls_failure", why)
                    self._failed(why)
                except Exception as exc:  # a bug here must not stop the uplink for good
                    log.exception("uplink: unexpected error; reconnecting")
                    self._failed(f"internal error: {exc!r}")
                finally:
                    if session is not None:
                        if session.acked_any:  # it worked: a later refusal is news
                            slow.reset()
                        # A connection that only had a message refused made no progress:
                        # the next one waits longer (no reconnect storm over one message).
                        if session.acked_any or not session.rejected_any:
                            backoff.reset()
                        await self._end(session)
                await asyncio.sleep(wait.next())
        finally:
            self._log.flush()

    async def drain(self, timeout: float) -> bool:
        """Wait until the outbox is empty (True) or the timeout passes (False)."""
        self.wake()
        try:
            await asyncio.wait_for(self._drained.wait(), timeout)
            return True
        except TimeoutError:
            return False

    def _failed(self, why: str) -> None:
        """One log line per new problem; repeats (and the link going up and down with
        them) are counted (see digest.py)."""
        if why != self._last_failure:  # said at once, counted from here
            self._log.restart("failure")
            self._last_failure = why
        self._log.note("failure", why)
        self._link(False, why)

    def _link(self, up: bool, why: str | None) -> None:
        changed = up != self.stats.link_up
        self.stats.link_up = up
        self.stats.last_error = why
        if up:
            self.stats.connects += 1
        if changed:
            if not up:
                self.stats.disconnects += 1
            self._log.note("link_up" if up else "link_down", why)  # a flapping link: counted
            self.on_link(up, why)

    def _update_limits(self) -> None:
        lim = self.limits or BrokerLimits(protocol=self.uplink.protocol)
        self.stats.limits = {
            **lim.as_dict(),
            "inflight_window": min(self.uplink.max_inflight, lim.receive_maximum),
            "max_message_bytes": self.body_limit(""),
            "keepalive_s": lim.server_keepalive_s or self.uplink.keepalive_s,  # in force
            "client_id": self.client_id,
        }

    async def _connect(self) -> _Session:
        loop = asyncio.get_running_loop()
        up = self.uplink
        inlet = self.commands if self.commands is not None and self.commands.enabled else None
        client = new_client(  # may raise CredentialError
            up, self.client_id, self.tls_context, persistent=inlet is not None
        )
        client.max_inflight_messages_set(up.max_inflight)  # _pump keeps to Receive Maximum
        s = _Session(loop, client)

        def on_connect(c: Any, u: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
            if rc.is_failure:
                cls = AuthRefused if rc.value in AUTH_CODES else ConnectionError
                if rc.value == 0x84:
                    cls = BrokerRefused
                err = cls(
                    f"broker refused the connection: {rc} (0x{rc.value:02X}); "
                    + explain_refusal(rc, up)
                )
                loop.call_soon_threadsafe(s._set, s.connected, None, err)
            else:
                lim = BrokerLimits.from_connack(up.protocol, props)
                loop.call_soon_threadsafe(s._set, s.connected, lim)

        def on_disconnect(c: Any, u: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
            from_broker = getattr(flags, "is_disconnect_packet_from_server", False)
            why = (
                f"broker disconnected us: {rc} (0x{rc.value:02X})"
                if from_broker
                else (f"disconnected: {rc}")
            )
            loop.call_soon_threadsafe(self._on_lost, s, why, rc.value if from_broker else None)

        def on_publish(c: Any, u: Any, mid: int, rc: ReasonCode, props: Any) -> None:
            loop.call_soon_threadsafe(self._on_puback, s, mid, rc)

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_publish = on_publish
        expiry = None
        if inlet is not None:
            expiry = inlet.session_expiry_s
            self._hook_commands(loop, client, inlet)
        kw = connect_kwargs(up, expiry)
        # connect() resolves the name and opens the socket: blocking, so off the loop.
        await asyncio.wait_for(
            loop.run_in_executor(
                None, lambda: client.connect(up.host, up.port, up.keepalive_s, **kw)
            ),
            timeout=15,
        )
        s.net = NetworkThread(client, lambda why: self._network_ended(s, why))
        s.net.start()
        try:
            lim = await asyncio.wait_for(asyncio.shield(s.connected), timeout=15)
            self._accept(s, lim)
            if inlet is not None:
                client.subscribe(inlet.topic, qos=1)
        except BaseException:
            await self._end(s)
            raise
        return s

    @staticmethod
    def _hook_commands(
        loop: asyncio.AbstractEventLoop, client: mqtt.Client, inlet: CommandInlet
    ) -> None:
        """Messages on the command topic go to the inlet on the loop, untouched; each is
        acknowledged when the inlet says (a crash before that: the broker sends it again)."""

        def on_message(c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
            mid, qos = msg.mid, msg.qos
            try:
                topic, payload = msg.topic, bytes(msg.payload)
            except UnicodeDecodeError:
                # MQTT topics are UTF-8; a broker that does not check passed this one on.
                # It cannot be on the command topic: acknowledged and dropped, or the
                # broker would deliver it again on every connection.
                log.error("the broker delivered a message on a topic that is not UTF-8: dropped")
                if qos:
                    c.ack(mid, qos)
                return

            def ack() -> None:
                if qos:
                    c.ack(mid, qos)  # a closed client ignores it: re-delivered, then seen

            try:
                loop.call_soon_threadsafe(inlet.offer, topic, payload, ack)
            except RuntimeError:  # the loop is closing: the broker delivers it again
                log.warning("a command arrived while stopping; the broker keeps it")

        def on_subscribe(c: Any, u: Any, mid: int, codes: Any, props: Any) -> None:
            refused = [rc for rc in codes if getattr(rc, "is_failure", False)]
            why = (
                f"the broker refused the subscription to {inlet.topic}: {refused[0]}"
                if refused
                else None
            )
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(inlet.subscribed, not refused, why)

        client.on_message = on_message
        client.on_subscribe = on_subscribe

    def _accept(self, s: _Session, lim: BrokerLimits) -> None:
        """Check what the broker announced in CONNACK; raise when we cannot work with it."""
        up = self.uplink
        self.limits = lim
        if lim.max_packet_size is not None:
            self._broker_max_packet = lim.max_packet_size
        self._update_limits()
        if lim.announced and lim.describe() != self._said_limits:  # once, not per flap
            self._said_limits = lim.describe()
            log.info("broker limits: %s", self._said_limits)
        if lim.max_qos < 1:
            raise BrokerRefused(
                "the broker allows only QoS 0 (Maximum QoS 0 in CONNACK): delivery could not "
                "be acknowledged, so nothing is sent; allow QoS 1 for this client on the "
                "broker (mosquitto: max_qos 1 on the listener)"
            )
        if lim.max_packet_size is not None and up.max_message_bytes > self.body_limit(""):
            if self._warned_mps != lim.max_packet_size:
                log.warning(
                    "the broker's Maximum Packet Size is %d bytes, below uplink."
                    "max_message_bytes (%d): new messages are sealed to fit; set uplink."
                    "max_message_bytes: %d or less so data sealed before a connect fits too",
                    lim.max_packet_size,
                    up.max_message_bytes,
                    max(4096, lim.max_packet_size - 256),
                )
            self._warned_mps = lim.max_packet_size
        if lim.assigned_client_id and lim.assigned_client_id != self.client_id:
            self._adopt_client_id(lim.assigned_client_id)

    def _adopt_client_id(self, assigned: str) -> None:
        """The broker named our session (MQTT 5 Assigned Client Identifier): reconnects
        use that name, so a persistent session (the command subscription) resumes."""
        persistent = self.commands is not None and self.commands.enabled
        log.log(
            logging.WARNING if persistent else logging.INFO,
            "the broker assigned client id %r (asked for %r); reconnects use it%s",
            assigned,
            self.client_id,
            "; a restart asks for the configured one again and the broker starts a new "
            "session (commands queued while the gateway was away are lost): set "
            f"uplink.client_id: {assigned} to keep the session"
            if persistent
            else "",
        )
        self.client_id = assigned
        self._update_limits()

    async def _end(self, s: _Session) -> None:
        try:
            await self._flush_acks()
        except OutboxError as exc:  # the rows stay and are sent again: duplicates only
            log.error("outbox: cannot delete acknowledged rows: %s", exc)
        try:
            if s.connected.done() and not s.connected.exception():
                await self._judge_inflight(s)
            if self._condemned:
                await self._set_aside(self._condemned)
                self._condemned = []
        except OutboxError as exc:  # kept, and judged again after the next session
            log.error("outbox: cannot set a refused message aside yet: %s", exc)
        self._forget_session()
        await asyncio.get_running_loop().run_in_executor(None, _close_client, s)

    def _forget_session(self) -> None:
        self._inflight.clear()
        self._sent_at.clear()
        self._lone = None
        self._held.clear()
        self._cursors = _Cursors()  # the next session starts at the first unacknowledged row
        self._fetched_upto = None
        self._offered.clear()

    def _network_ended(self, s: _Session, why: str) -> None:
        """In the network thread, as it ends on its own: the session is over (if paho's
        on_disconnect said so first, its reason stands)."""
        with contextlib.suppress(RuntimeError):  # the event loop is closed: nobody waits
            s.loop.call_soon_threadsafe(self._on_ended, s, why)

    def _on_ended(self, s: _Session, why: str) -> None:
        if not s.connected.done():
            s._set(s.connected, None, ConnectionError(_before_connack(why, self.uplink)))
        s._set(s.lost, why)

    def _on_lost(self, s: _Session, why: str, broker_reason: int | None) -> None:
        s.broker_reason = broker_reason
        if not s.connected.done():
            s._set(s.connected, None, ConnectionError(_before_connack(why, self.uplink)))
        s._set(s.lost, why)

    async def _pump(self, s: _Session) -> None:
        ob = self.outbox.outbox
        assert ob is not None
        c = self._cursors
        c.live_from = (await self.outbox.run(ob.stats)).last_seq
        lim = self.limits or BrokerLimits()
        window = min(self.uplink.max_inflight, lim.receive_maximum)  # the broker's word
        wake = self._wake
        s.lost.add_done_callback(lambda _: wake.set())
        while True:
            if s.lost.done():
                raise s.refusal or ConnectionError(s.lost.result())
            wake.clear()
            room = window - len(self._inflight)
            if self._lone is not None:
                room = 0  # a suspect is alone in flight
            elif self._held and not self._inflight and not self._more(ob):
                # alone, after the others (also when only one fits in the window)
                await self._publish(s, [self._held.pop(min(self._held))], lone=True)
                room = 0
            if room > 0 and self._offered and (rows := self._take_offered(ob, room)):
                await self._publish(s, await self._screen(rows))
            elif room > 0 and self._more(ob):
                rows = await self._fetch(room)
                rows = await self._screen(rows)
                await self._publish(s, rows)
                if self._fetched_upto is None:
                    continue  # more may be waiting; the window is full only if acks lag
            elif self._acks:
                await self._flush_acks()
            # (not once the session is lost: a refused row left the in-flight map but
            # is still in the outbox, to go again on the next connection)
            if not (self._inflight or self._acks or self._held or s.lost.done()) and not self._more(
                ob
            ):
                self._drained.set()
            if wake.is_set() or s.lost.done():
                continue
            if self._held and not self._inflight and self._lone is None:
                continue  # a suspect just held back goes alone now
            try:  # deletes that failed (a full disk) are tried again within a second
                async with asyncio.timeout(1.0 if self._acks else IDLE_CHECK_S):
                    await wake.wait()
            except TimeoutError:
                pass

    def _more(self, ob: Any) -> bool:
        """Rows may be waiting in the outbox that this session has not fetched."""
        return self._fetched_upto is None or ob.last_seq > self._fetched_upto

    async def _fetch(self, room: int) -> list[OutboxRow]:
        """One trip to the outbox thread: delete the acknowledged rows, take the next
        ``room`` rows to send."""
        acks, self._acks = self._acks, []
        try:
            res = await self.outbox.run(self._exchange_sync, acks, room)
        except BaseException:
            self._acks[:0] = acks  # kept for the next attempt (a restart, a retry)
            raise
        self._acked(acks, res.ack_error)
        if res.error is not None:
            raise res.error
        self._fetched_upto = res.upto
        return res.rows

    def _exchange_sync(self, acks: list[int], room: int) -> _Exchange:
        """In the outbox thread: ``_flush_acks`` and ``_next_rows`` in one trip."""
        ob = self.outbox.outbox
        assert ob is not None
        res = _Exchange()
        if acks:
            try:
                ob.ack(acks)
            except OutboxError as exc:  # a full disk: kept, and the rows still go out
                res.ack_error = exc
        upto, quarantined = ob.last_seq, ob.quarantined
        try:
            res.rows = self._next_rows(room)
        except Exception as exc:
            res.error = exc
            return res
        # Fewer rows than asked, none set aside as corrupt on the way: every row up to
        # ``upto`` has been handed to this session.
        if len(res.rows) < room and ob.quarantined == quarantined:
            res.upto = upto
        return res

    async def _publish(self, s: _Session, rows: list[OutboxRow], lone: bool = False) -> None:
        for row in rows:
            if self._bucket is not None:
                await self._bucket.take(len(row.body))
            info = s.client.publish(row.topic, row.body, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise ConnectionError(f"publish failed: {mqtt.error_string(info.rc)}")
            self._inflight[info.mid] = (row.seq, len(row.body))
            self._sent_at[info.mid] = time.monotonic()
            self.stats.bytes_published += len(row.body)
            if lone:
                self._lone = row.seq
        self.stats.published += len(rows)

    async def _screen(self, rows: list[OutboxRow]) -> list[OutboxRow]:
        """Set aside rows larger than the broker takes; hold back suspects (sent alone)."""
        mps = self._broker_max_packet
        proto = self.uplink.protocol
        too_big = [
            r
            for r in rows
            if mps is not None and len(r.body) + publish_overhead(r.topic, proto) > mps
        ]
        if too_big:
            for r in too_big:
                log.error(
                    "seq %d (%d bytes, %s) is larger than the broker's Maximum Packet Size "
                    "(%d bytes): set aside and reported in a notice",
                    r.seq,
                    len(r.body),
                    r.topic,
                    mps,
                )
            await self._set_aside([r.seq for r in too_big])
        aside = {r.seq for r in too_big}
        out = []
        for r in rows:
            if r.seq in aside:
                continue
            if r.seq in self._strikes:
                self._held[r.seq] = r
            else:
                out.append(r)
        return out

    async def _set_aside(self, seqs: list[int]) -> None:
        assert self.outbox.outbox is not None
        n = await self.outbox.run(self.outbox.outbox.set_aside, seqs, SET_ASIDE_REASON)
        self.stats.set_aside += n
        for q in seqs:
            self._strikes.pop(q, None)
            self._refused_at.pop(q, None)
        self.on_problem("message_set_aside", f"seq {', '.join(map(str, seqs))}: {SET_ASIDE_REASON}")
        if self.on_set_aside is not None:
            try:
                await self.on_set_aside()
            except Exception:  # the drop stays recorded: the next sealed window reports it
                log.exception("cannot seal the notice about set-aside messages yet")

    async def _judge_inflight(self, s: _Session) -> None:
        """A session ended with messages in flight. If the broker accepts messages but
        this one is larger than any it acknowledged, it may be what it refuses: send it
        alone next time; after STRIKES lone sends that end the connection, set it aside.
        A broker that acknowledged nothing gives no evidence: nothing is set aside."""
        if not self._inflight or s.lost.cancelled():
            return
        if self._lone is not None:
            seq = self._lone
            size = next((b for q, b in self._inflight.values() if q == seq), 0)
            if size <= self._max_acked or self._max_acked == 0:
                self._strikes.pop(seq, None)
                return
            strikes = self._strikes.get(seq, 0) + (STRIKES if s.broker_reason == 0x95 else 1)
            self._strikes[seq] = strikes
            log.warning(
                "the connection ended while seq %d (%d bytes) was alone in flight "
                "(%d of %d strikes)",
                seq,
                size,
                min(strikes, STRIKES),
                STRIKES,
            )
            if strikes >= STRIKES:
                log.error(
                    "the broker does not take seq %d (%d bytes; the largest it acknowledged "
                    "is %d bytes): set aside and reported in a notice; see the broker's "
                    "message size limit and uplink.max_message_bytes",
                    seq,
                    size,
                    self._max_acked,
                )
                await self._set_aside([seq])
            return
        if self._max_acked == 0:
            return
        big = max(self._inflight.values(), key=lambda qb: qb[1])
        if big[1] > self._max_acked:
            self._strikes.setdefault(big[0], 0)  # a suspect: sent alone next time

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
        entry = self._inflight.pop(mid, None)
        sent = self._sent_at.pop(mid, None)
        if entry is None:
            return
        if sent is not None:
            self.stats.puback_latency.observe(time.monotonic() - sent)
        seq, size = entry
        if self._lone == seq:
            self._lone = None
        if rc.is_failure:
            self.stats.rejected += 1
            code = rc.value
            if code in _TOPIC_CODES:
                s.refusal = BrokerRefused(
                    f"broker refused a publish: {rc} (0x{code:02X}): it does not let this "
                    f"client publish under {self.uplink.topic_prefix}/; allow the user to "
                    f"write {self.uplink.topic_prefix}/<gateway id>/# (the broker's ACL)"
                )
                s._set(s.lost, str(s.refusal))
                return
            s.rejected_any = True
            first = self._refused_at.setdefault(seq, self._acks_total)
            if code != _QUOTA and not (s.acked_any or self._acks_total > first):
                # no evidence yet: it goes alone, after the others, next time
                self._strikes.setdefault(seq, 0)
            elif code != _QUOTA:
                # this message, not the link: it goes alone next time, then aside
                n = self._strikes.get(seq, 0) + 1
                self._strikes[seq] = n
                if n >= STRIKES:
                    log.error(
                        "the broker refused seq %d (%d bytes) %d times while it takes other "
                        "messages (%s): set aside and reported in a notice",
                        seq,
                        size,
                        n,
                        rc,
                    )
                    self._condemned.append(seq)
            # keep the row and start over on a new connection rather than skip it
            s._set(s.lost, f"broker rejected seq {seq}: {rc} (0x{code:02X})")
            return
        s.acked_any = True
        self._acks_total += 1
        self._max_acked = max(self._max_acked, size)
        self._strikes.pop(seq, None)
        self._refused_at.pop(seq, None)
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
            self._acked(acks, exc)
            return
        except BaseException:
            self._acks[:0] = acks  # kept for the next attempt (a restart, a retry)
            raise
        self._acked(acks, None)

    def _acked(self, acks: list[int], exc: OutboxError | None) -> None:
        """The deletes of ``acks`` were committed (``exc`` None) or failed with ``exc``."""
        if exc is None:
            self._ack_error = ""
            self.stats.acked += len(acks)
            return
        # e.g. a disk too full even for deletes: keep them and try again later;
        # the MQTT session is fine and keeps sending.
        self._acks[:0] = acks
        if str(exc) != self._ack_error:
            log.error("outbox: cannot delete %d acknowledged rows yet: %s", len(acks), exc)
        self._ack_error = str(exc)

    def _log_event(self, event: str, detail: dict[str, Any]) -> None:
        """The journal's side of the digest: the first occurrence, then counts."""
        failure = event == "failure"
        level = logging.WARNING if failure else logging.INFO
        if "repeated" not in detail:
            why = detail.get("reason")
            if failure:
                log.warning("uplink [%s]:%d: %s", self.uplink.host, self.uplink.port, why)
            else:
                log.info("uplink %s%s", event[5:], f": {why}" if why else "")
            return
        n = detail["repeated"]
        what = f"{n} more failed attempts" if failure else f"went {event[5:]} {n} more time(s)"
        reasons = "; ".join(f"{k}× {r}" for r, k in detail["reasons"].items() if r)
        why = f": {reasons}" if reasons else ""
        log.log(level, "uplink: %s in %.0f s%s", what, detail["over_s"], why)


def _before_connack(why: str, up: UplinkConfig) -> str:
    """The broker hung up before CONNACK: say what usually causes it."""
    hints = []
    if up.tls is None:
        hints.append("is this a TLS port? then set uplink.tls")
    if up.protocol == "mqtt5":
        hints.append(
            "a broker that speaks only MQTT 3.1.1 hangs up on MQTT 5: try uplink.protocol: mqtt311"
        )
    hints.append("the broker's log says why")
    return f"the broker closed the connection before answering CONNECT ({why}): " + "; ".join(hints)


@dataclass(slots=True)
class _Exchange:
    """What one trip to the outbox thread did (``Forwarder._exchange_sync``)."""

    rows: list[OutboxRow] = field(default_factory=list)
    ack_error: OutboxError | None = None  # the deletes failed (kept for later)
    error: Exception | None = None  # taking the next rows failed
    upto: int | None = None  # every row up to this seq is among ``rows`` or was before


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


def _close_client(s: _Session) -> None:
    """Blocking: DISCONNECT if the link is up, and the network thread ended."""
    if s.net is not None:
        s.net.stop()
        return
    with contextlib.suppress(Exception):  # connect() failed or never ran: nothing to stop
        s.client.disconnect()


def _describe(exc: BaseException, up: UplinkConfig) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, ssl.SSLError) and "WRONG_VERSION_NUMBER" in text.upper():
        return (
            f"TLS handshake failed ({text}): port {up.port} does not speak TLS; use the "
            "broker's TLS port (usually 8883) or remove uplink.tls"
        )
    return text
