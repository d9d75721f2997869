"""The thin MQTT shell around a Receiver: subscribe, hand messages over, acknowledge.

paho's thread checks what needs no store (size, envelope, signature, payload) and
queues each message; one worker thread takes what has queued (up to
``BATCH_MAX``) and hands it to the receiver as one store transaction (group commit: one
commit per batch instead of one per message, the receiver's throughput against a real
database). A QoS 1 message is acknowledged (PUBACK) only after its transaction
committed, and not at all when the store could not commit: the broker then re-delivers
it after a reconnect (with a persistent session: ``client_id`` and
``session_expiry_s``). A full queue blocks paho's thread: backpressure to the broker.
Nothing raised in a callback may kill paho's network thread or the worker; ``health()``
tells whether both still run, so the command can exit (and systemd restart it) instead of
silently receiving nothing.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .core import Prepared, Receiver
from .outcome import Outcome

log = logging.getLogger("edgegw.receiver")

RECONNECT_AFTER_STORE_ERROR_S = 2.0
BATCH_MAX = 256  # messages per store transaction at most
QUEUE_MAX = 1024  # received, not yet handled: beyond this paho's thread waits


@dataclass(frozen=True, slots=True)
class _Received:
    generation: int  # which connection it came on: an ack is only valid on that one
    mid: int
    qos: int
    prepared: Prepared  # verified and decoded in paho's thread, while the worker stores


@dataclass(frozen=True, slots=True)
class Health:
    thread_alive: bool  # paho's network thread and the worker that handles messages
    connected: bool
    subscribed: bool
    last_message_ns: int  # 0: none yet
    unacked: int  # messages not acknowledged because the store failed

    @property
    def ok(self) -> bool:
        return self.thread_alive


class MqttReceiver:
    """Subscribes to ``<prefix>/+/+`` (QoS 1) and feeds every message to a Receiver.

    With ``share_group``, several receivers split the stream through an MQTT 5 shared
    subscription. With a fixed ``client_id`` the session persists on the broker for
    ``session_expiry_s``, so messages sent while this receiver was away are kept.
    """

    def __init__(
        self,
        rx: Receiver,
        host: str,
        port: int,
        *,
        client_id: str = "",
        share_group: str | None = None,
        session_expiry_s: int = 0,
        tls_context: Any = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.rx = rx
        self.host, self.port = host, port
        self.topic = rx.prefix + "+/+"
        if share_group:
            self.topic = f"$share/{share_group}/{self.topic}"
        self.subscribed = threading.Event()
        self.suback_error: str | None = None
        self.connack_error: str | None = None
        self._last_message_ns = 0
        self._unacked = 0
        self._reconnect_at = 0.0
        self._generation = 0
        self._queue: queue.Queue[_Received] = queue.Queue(QUEUE_MAX)
        self._stopping = threading.Event()
        self._worker = threading.Thread(target=self._work, name="receiver-store", daemon=True)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        # paho logs an exception raised in a callback instead of ending its thread.
        self.client.suppress_exceptions = True
        self.client.enable_logger(logging.getLogger("edgegw.receiver.paho"))
        if tls_context is not None:
            self.client.tls_set_context(tls_context)
        if username is not None or password is not None:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(1, 8)  # paho's default grows to 120 s
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self._props = Properties(PacketTypes.CONNECT)
        self._props.SessionExpiryInterval = session_expiry_s
        self._clean = not (client_id and session_expiry_s)

    # -- callbacks (paho's thread) -------------------------------------------------------

    def _on_connect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            self.connack_error = str(rc)
            log.error("receiver: broker [%s]:%d refused: %s", self.host, self.port, rc)
            self.subscribed.set()  # wakes start(), which reports it
            return
        self.connack_error = None
        self._generation += 1
        log.info("receiver: connected to [%s]:%d", self.host, self.port)
        c.subscribe(self.topic, qos=1)

    def _on_disconnect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            log.warning("receiver: disconnected from [%s]:%d: %s", self.host, self.port, rc)

    def _on_subscribe(self, c: Any, u: Any, mid: int, codes: Any, props: Any) -> None:
        bad = [str(rc) for rc in codes if rc.is_failure]
        if bad:
            self.suback_error = ", ".join(bad)
            log.error("receiver: the broker refused the subscription to %s: %s", self.topic, bad)
        self.subscribed.set()

    def _on_message(self, c: Any, u: Any, m: Any) -> None:
        self._last_message_ns = now = time.time_ns()
        # The checks that need no store run here, overlapping the worker's database time.
        item = _Received(self._generation, m.mid, m.qos, self.rx.prepare(m.topic, m.payload, now))
        while not self._stopping.is_set():
            try:
                self._queue.put(item, timeout=1.0)  # full: the broker waits for us
                return
            except queue.Full:
                if not self._worker.is_alive():
                    return  # not acknowledged: delivered again; health() reports the worker
        # stopping: not acknowledged, so a persistent session delivers it again

    # -- the worker ---------------------------------------------------------------------------

    def _work(self) -> None:
        while not (self._stopping.is_set() and self._queue.empty()):
            try:
                batch = [self._queue.get(timeout=0.2)]
            except queue.Empty:
                continue
            while len(batch) < BATCH_MAX:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._handle(batch)
            except Exception:  # never dies: the messages stay unacknowledged (re-delivered)
                log.exception("receiver: handling %d messages failed", len(batch))
                self._store_failed(len(batch))

    def _handle(self, batch: list[_Received]) -> None:
        outcomes = self.rx.handle_many([m.prepared for m in batch])
        failed = 0
        for m, outcome in zip(batch, outcomes, strict=True):
            if outcome is Outcome.STORE_ERROR:
                failed += 1
            elif m.generation == self._generation:  # in order of arrival, after the commit
                self.client.ack(m.mid, m.qos)
            # else: it came on an earlier connection, whose packet ids mean nothing now;
            # the broker delivers it again (a duplicate, recognised as one)
        if failed:
            self._store_failed(failed)

    def _store_failed(self, n: int) -> None:
        """Not acknowledged: after a reconnect the broker sends them again. Reconnect soon,
        from the supervising thread (never from inside paho's loop)."""
        self._unacked += n
        if not self._reconnect_at:
            self._reconnect_at = time.monotonic() + RECONNECT_AFTER_STORE_ERROR_S

    # -- control (the caller's thread) ------------------------------------------------------

    def start(self, timeout: float = 10.0) -> MqttReceiver:
        self.client.connect(
            self.host, self.port, 30, clean_start=self._clean, properties=self._props
        )
        self._worker.start()
        self.client.loop_start()
        if not self.subscribed.wait(timeout):
            self.stop()
            raise TimeoutError(f"receiver: no SUBACK from [{self.host}]:{self.port}")
        if self.connack_error is not None:
            self.stop()
            raise PermissionError(
                f"receiver: the broker [{self.host}]:{self.port} refused the connection: "
                f"{self.connack_error} (check --username / --password-file and the broker's ACL)"
            )
        if self.suback_error is not None:
            self.stop()
            raise PermissionError(
                f"receiver: the broker refused to subscribe to {self.topic}: {self.suback_error}"
            )
        return self

    def supervise(self) -> Health:
        """Call every few seconds: reconnects after a store failure; returns the health."""
        if self._reconnect_at and time.monotonic() >= self._reconnect_at:
            self._reconnect_at = 0.0
            log.warning(
                "receiver: %d message(s) not stored; reconnecting so the broker re-delivers them",
                self._unacked,
            )
            self._unacked = 0
            try:
                self.client.reconnect()
            except OSError as exc:
                log.error("receiver: reconnect failed: %s (paho keeps trying)", exc)
        return self.health()

    def health(self) -> Health:
        thread = getattr(self.client, "_thread", None)
        return Health(
            thread_alive=thread is not None and thread.is_alive() and self._worker.is_alive(),
            connected=self.client.is_connected(),
            subscribed=self.subscribed.is_set()
            and self.suback_error is None
            and self.connack_error is None,
            last_message_ns=self._last_message_ns,
            unacked=self._unacked,
        )

    def stop(self, drain_s: float = 10.0) -> None:
        """Handle (and acknowledge) what has been received, then disconnect."""
        deadline = time.monotonic() + drain_s
        while not self._queue.empty() and self._worker.is_alive():
            if time.monotonic() > deadline:
                log.warning("receiver: stopping with %d messages unhandled", self._queue.qsize())
                break
            time.sleep(0.02)
        self._stopping.set()
        if self._worker.is_alive():
            self._worker.join(drain_s)
        self.client.disconnect()
        self.client.loop_stop()
