"""What the forwarder and `edgegw doctor` share about talking MQTT to a broker: building
the paho client from ``uplink`` (protocol, credentials, TLS), reading the limits the
broker announces in CONNACK, and saying what a refusal means and how to fix it.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from .credentials import password_source, read_password

if TYPE_CHECKING:
    from .config import UplinkConfig

log = logging.getLogger("edgegw.mqttlink")

PROTOCOLS = {"mqtt5": mqtt.MQTTv5, "mqtt311": mqtt.MQTTv311}
PROTOCOL_NAMES = {"mqtt5": "MQTT 5", "mqtt311": "MQTT 3.1.1"}


@dataclass(slots=True)
class BrokerLimits:
    """What the broker said in CONNACK (MQTT 5 properties; MQTT 3.1.1 says nothing, so
    the defaults of the protocol apply and ``announced`` is False)."""

    protocol: str = "mqtt5"
    announced: bool = False
    max_qos: int = 2
    receive_maximum: int = 65535
    max_packet_size: int | None = None  # None: no limit announced
    topic_alias_maximum: int = 0  # we never use topic aliases: always within it
    retain_available: bool = True  # we never retain: always within it
    wildcard_subscription_available: bool = True
    shared_subscription_available: bool = True
    assigned_client_id: str | None = None
    server_keepalive_s: int | None = None

    @classmethod
    def from_connack(cls, protocol: str, props: Any) -> BrokerLimits:
        lim = cls(protocol=protocol)
        if protocol != "mqtt5" or props is None:
            return lim
        lim.announced = True
        get = lambda name, default: getattr(props, name, default)  # noqa: E731
        lim.max_qos = int(get("MaximumQoS", 2))
        lim.receive_maximum = int(get("ReceiveMaximum", 65535))
        mps = get("MaximumPacketSize", None)
        lim.max_packet_size = int(mps) if mps else None
        lim.topic_alias_maximum = int(get("TopicAliasMaximum", 0))
        lim.retain_available = bool(get("RetainAvailable", 1))
        lim.wildcard_subscription_available = bool(get("WildcardSubscriptionAvailable", 1))
        lim.shared_subscription_available = bool(get("SharedSubscriptionAvailable", 1))
        assigned = get("AssignedClientIdentifier", None)
        lim.assigned_client_id = str(assigned) if assigned else None
        ka = get("ServerKeepAlive", None)
        lim.server_keepalive_s = int(ka) if ka is not None else None
        return lim

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        if not self.announced:
            return f"{PROTOCOL_NAMES[self.protocol]}: the broker announces no limits"
        parts = [
            f"max QoS {self.max_qos}",
            f"receive maximum {self.receive_maximum}",
            "max packet "
            + (f"{self.max_packet_size} bytes" if self.max_packet_size else "not limited"),
            f"topic aliases {self.topic_alias_maximum}",
            f"retain {'yes' if self.retain_available else 'no'}",
            f"wildcards {'yes' if self.wildcard_subscription_available else 'no'}",
            f"shared subscriptions {'yes' if self.shared_subscription_available else 'no'}",
        ]
        if self.server_keepalive_s is not None:
            parts.append(f"keep-alive {self.server_keepalive_s} s (set by the broker)")
        if self.assigned_client_id:
            parts.append(f"client id {self.assigned_client_id!r} (assigned)")
        return ", ".join(parts)


def new_client(
    up: UplinkConfig,
    client_id: str,
    tls_context: ssl.SSLContext | None,
    *,
    persistent: bool = False,
) -> mqtt.Client:
    """A paho client set up as ``uplink`` says; raises CredentialError for a password
    that cannot be read. The password is read here, at every connect. ``persistent``:
    the broker keeps the session (subscriptions, QoS 1 messages for us) while we are
    away (MQTT 3.1.1: clean session off; MQTT 5: see ``connect_kwargs``), and incoming
    messages are acknowledged by the caller (``client.ack``) once handled."""
    proto = PROTOCOLS[up.protocol]
    kw: dict[str, Any] = {} if proto == mqtt.MQTTv5 else {"clean_session": not persistent}
    if persistent:
        kw["manual_ack"] = True
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=proto, **kw)
    if up.username is not None:
        client.username_pw_set(up.username, read_password(up))
    if tls_context is not None:
        client.tls_set_context(tls_context)
    return client


def connect_kwargs(up: UplinkConfig, session_expiry_s: int | None = None) -> dict[str, Any]:
    """paho ``connect`` arguments that depend on the protocol version. With
    ``session_expiry_s`` (MQTT 5) the session is resumed and kept that long after a
    disconnect (for the command subscription); otherwise every connect starts clean."""
    if up.protocol != "mqtt5":
        return {}
    if session_expiry_s is None:
        return {"clean_start": True}
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = session_expiry_s
    return {"clean_start": False, "properties": props}


def publish_overhead(topic: str, protocol: str) -> int:
    """Bytes a QoS 1 PUBLISH adds to its payload: fixed header (1 + up to 4 bytes of
    length), topic (2 + its UTF-8), packet id (2), and MQTT 5's property length (1)."""
    return 1 + 4 + 2 + len(topic.encode()) + 2 + (1 if protocol == "mqtt5" else 0)


# CONNACK reason codes that mean "your credentials or certificate": an operator must act.
AUTH_CODES = {0x86, 0x87, 0x8A, 0x8C}


def explain_refusal(rc: ReasonCode | int, up: UplinkConfig) -> str:
    """What to do about a CONNACK refusal, in one sentence."""
    code = rc if isinstance(rc, int) else rc.value
    if code == 0x84:
        if up.protocol == "mqtt5":
            return "the broker does not speak MQTT 5: set uplink.protocol: mqtt311"
        return "the broker does not accept MQTT 3.1.1: set uplink.protocol: mqtt5"
    if code in (0x86, 0x87):
        # mosquitto answers a wrong password with 0x87 (Not authorized), others with 0x86
        if up.username is None:
            return (
                "the broker requires a login: set uplink.username and the password "
                "(uplink.password_file), or use a client certificate the broker accepts"
            )
        return (
            f"check uplink.username ({up.username!r}) and the password in "
            f"{password_source(up)} against the broker's users"
            + (", and the user's rights to connect" if code == 0x87 else "")
        )
    if code == 0x85:
        return "the broker rejects the client id: set uplink.client_id to one it accepts"
    if code == 0x8A:
        return "this client is banned on the broker: ask the broker's administrator"
    if code == 0x8C:
        return "the broker wants another authentication method: ask its administrator"
    if code in (0x88, 0x89, 0x9F, 0x97):
        return "the broker is unavailable or busy: retrying with backoff"
    if code in (0x9C, 0x9D):
        return "the broker sends us elsewhere: set uplink.host to the broker it names"
    return "see the broker's log for why it refused"


def select_timeout(keepalive_s: float) -> float:
    """How long the network thread may sleep with nothing to do: a quarter of the
    keep-alive in force. paho checks the keep-alive after each wait, so a PINGREQ goes
    out at most 1.25 keep-alives after the last packet (the broker waits 1.5), and an
    unanswered one is noticed at most a quarter late."""
    return keepalive_s / 4 if keepalive_s > 0 else 3600.0


class NetworkThread:
    """paho's network loop in a thread of our own, in place of ``loop_start``.

    ``loop_start`` wakes every second whatever the keep-alive (its ``select`` timeout is
    fixed inside paho). Here the thread sleeps until there is something to send or read
    or a keep-alive check is due (:func:`select_timeout`, from the keep-alive in force:
    the broker may set its own in CONNACK). ``stop`` sends DISCONNECT and ends it at
    once; it never reconnects (a session is one connection: the forwarder makes a new
    client for the next). ``on_end(why)`` is called from the thread when it ends on its
    own (the link closed, or an error in paho or a callback, which is logged): the owner
    learns of it even where paho did not call ``on_disconnect``.
    """

    def __init__(
        self, client: mqtt.Client, on_end: Callable[[str], None], name: str = "mqtt_link"
    ) -> None:
        self.client = client
        self._on_end = on_end
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        # Every write from this thread: with a write callback registered, paho queues
        # what other threads send (publish, ack, subscribe, disconnect) and wakes this
        # thread's select (its socket pair) instead of writing from the caller's thread,
        # which would race this one. (loop_start gets the same from a thread of paho's.)
        self.client.on_socket_register_write = _no_op
        self._thread.start()

    def _run(self) -> None:
        c = self.client
        why = "the MQTT network loop ended"
        try:
            while not self._stopping:
                rc = c.loop(timeout=select_timeout(c.keepalive))
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    why = f"connection closed: {mqtt.error_string(rc)}"
                    break
        except Exception as exc:  # a bug in paho or in a callback: said, and the owner told
            log.exception("the MQTT network thread failed")
            why = f"the MQTT network thread failed: {exc!r}"
        if not self._stopping:
            try:
                self._on_end(why)
            except Exception:
                log.exception("the MQTT network thread could not report its end (%s)", why)

    def stop(self, timeout: float = 10.0) -> None:
        """Send DISCONNECT if the link is up, end the thread and wait for it (blocking)."""
        self._stopping = True
        with contextlib.suppress(Exception):  # already closed
            self.client.disconnect()  # queued: wakes the thread, which sends it and closes
        if self._thread.ident is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():  # a bound, never expected: say so, do not hang
                log.error("the MQTT network thread did not end within %.0f s", timeout)
                return
        if self.client.socket() is not None:
            # it ended on its own (an error) with the link still open: nobody else writes
            # now, so send the DISCONNECT from here (paho closes the socket after it)
            with contextlib.suppress(Exception):
                self.client.loop_write()


def _no_op(*_: Any) -> None:
    pass
