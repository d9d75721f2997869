"""A scripted MQTT 5 broker on a raw socket, for the forwarder's unit tests: it speaks
just enough MQTT 5 (CONNECT/CONNACK, PUBLISH QoS 1/PUBACK, SUBSCRIBE/SUBACK, PINGREQ,
DISCONNECT) and lets a test decide what a real broker decides on its own: the PUBACK
reason code of each message, when PUBACKs go out (held, then released), the properties
of CONNACK (Receive Maximum, or any others: ``connack_props``, built with ``props``),
refusing connections, and dropping them mid-stream. It keeps what each CONNECT said.
For the receiver's tests it also delivers to a subscriber (``deliver``, any packet id)
and records the PUBACKs it gets back, per connection (``pubacks``).
Like the hostile Modbus device, it is a peer that misbehaves on purpose; mosquitto
covers the well-behaved paths.

Message bodies in these tests are ``b"<seq>"`` (the forwarder only moves bytes), so the
broker knows each message's outbox seq.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


async def _read_varint(r: asyncio.StreamReader) -> int:
    n = shift = 0
    while True:
        b = (await r.readexactly(1))[0]
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n
        shift += 7


def _packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([kind << 4 | flags]) + _varint(len(body)) + body


def _utf8(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">H", len(raw)) + raw


def props(
    *,
    max_qos: int | None = None,
    retain_available: bool | None = None,
    max_packet_size: int | None = None,
    assigned_client_id: str | None = None,
    topic_alias_maximum: int | None = None,
    wildcard_available: bool | None = None,
    shared_available: bool | None = None,
    server_keepalive: int | None = None,
) -> bytes:
    """CONNACK properties (MQTT 5, 3.2.2.3), in the wire encoding."""
    out = b""
    if max_qos is not None:
        out += b"\x24" + bytes([max_qos])
    if retain_available is not None:
        out += b"\x25" + bytes([retain_available])
    if max_packet_size is not None:
        out += b"\x27" + struct.pack(">I", max_packet_size)
    if assigned_client_id is not None:
        out += b"\x12" + _utf8(assigned_client_id)
    if topic_alias_maximum is not None:
        out += b"\x22" + struct.pack(">H", topic_alias_maximum)
    if wildcard_available is not None:
        out += b"\x28" + bytes([wildcard_available])
    if shared_available is not None:
        out += b"\x2a" + bytes([shared_available])
    if server_keepalive is not None:
        out += b"\x13" + struct.pack(">H", server_keepalive)
    return out


@dataclass(frozen=True)
class Connect:
    """What one CONNECT said."""

    client_id: str
    clean_start: bool
    keepalive: int


def _parse_connect(body: bytes) -> Connect:
    pos = 2 + struct.unpack(">H", body[:2])[0] + 1  # protocol name, level
    flags = body[pos]
    keepalive = struct.unpack(">H", body[pos + 1 : pos + 3])[0]
    pos += 3
    plen, shift = 0, 0
    while True:  # properties length
        b = body[pos]
        pos += 1
        plen |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    pos += plen
    n = struct.unpack(">H", body[pos : pos + 2])[0]
    return Connect(body[pos + 2 : pos + 2 + n].decode(), bool(flags & 0x02), keepalive)


@dataclass
class ScriptedBroker:
    receive_maximum: int | None = None  # announced in CONNACK
    connack_props: bytes = b""  # more CONNACK properties (see ``props``)
    refuse: int = 0  # connections to refuse (CONNACK 0x88 server unavailable) first
    puback: Callable[[int, int], int] = lambda seq, attempt: 0  # reason code per message
    host: str = "::1"
    port: int = 0
    hold: bool = False  # keep PUBACKs until release()
    suback: int = 0x01  # SUBACK reason code for every filter (0x01 granted QoS 1)
    received: list[tuple[str, int]] = field(default_factory=list)  # (topic, seq) in order
    connects: list[float] = field(default_factory=list)  # loop time of each CONNECT
    connect_packets: list[Connect] = field(default_factory=list)  # what each one said
    subscriptions: list[str] = field(default_factory=list)  # topic filters, in order
    max_unacked: int = 0
    pubacks: list[tuple[int, int]] = field(default_factory=list)  # (connection, packet id)
    # A DISCONNECT reason code to answer a message with instead of its PUBACK, then hang
    # up (as a broker does with 0x95 Packet too large); None: the PUBACK as usual.
    disconnect: Callable[[int, int], int | None] = lambda seq, attempt: None
    _held: list[tuple[asyncio.StreamWriter, bytes]] = field(default_factory=list)
    _unacked: int = 0
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _attempts: dict[int, int] = field(default_factory=dict)
    _server: asyncio.base_events.Server | None = None
    _latest: asyncio.StreamWriter | None = None  # the last connection's, for deliver()

    async def start(self) -> ScriptedBroker:
        self._server = await asyncio.start_server(self._client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.kick()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def kick(self) -> None:
        """Drop every connection (as a broker restart would)."""
        for w in list(self._writers):
            with contextlib.suppress(Exception):
                w.transport.abort()
        self._writers.clear()
        self._held.clear()
        self._unacked = 0

    def release(self) -> None:
        """Send the PUBACKs held so far and stop holding."""
        self.hold = False
        held, self._held = self._held, []
        for w, pkt in held:
            with contextlib.suppress(Exception):
                w.write(pkt)
        self._unacked = 0

    def deliver(self, topic: str, payload: bytes, pid: int) -> None:
        """Send a QoS 1 PUBLISH with packet id ``pid`` to the latest connection (as a
        broker delivers to a subscriber); its PUBACKs are recorded in ``pubacks``."""
        assert self._latest is not None
        t = topic.encode()
        body = struct.pack(">H", len(t)) + t + struct.pack(">H", pid) + b"\x00" + payload
        self._latest.write(_packet(3, 0x02, body))

    def deliver_raw(self, topic: bytes, payload: bytes, pid: int) -> None:
        """``deliver`` with the topic's bytes as given: a broker that passes on a topic
        that is not UTF-8 (MQTT forbids it; not every broker checks)."""
        assert self._latest is not None
        body = struct.pack(">H", len(topic)) + topic + struct.pack(">H", pid) + b"\x00" + payload
        self._latest.write(_packet(3, 0x02, body))

    def seqs(self) -> list[int]:
        return [s for _, s in self.received]

    async def _client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self._writers.add(w)
        conn = 0  # this connection's number (1 for the first CONNECT)
        try:
            while True:
                head = (await r.readexactly(1))[0]
                body = await r.readexactly(await _read_varint(r))
                kind = head >> 4
                if kind == 1:  # CONNECT
                    self.connects.append(asyncio.get_running_loop().time())
                    self.connect_packets.append(_parse_connect(body))
                    conn, self._latest = len(self.connects), w
                    if self.refuse > 0:
                        self.refuse -= 1
                        w.write(_packet(2, 0, b"\x00\x88\x00"))
                        await w.drain()
                        return
                    props = self.connack_props
                    if self.receive_maximum is not None:
                        props += b"\x21" + struct.pack(">H", self.receive_maximum)
                    w.write(_packet(2, 0, b"\x00\x00" + _varint(len(props)) + props))
                elif kind == 8:  # SUBSCRIBE: granted, QoS 1
                    w.write(_packet(9, 0, self._subscribe(body)))
                elif kind == 3:  # PUBLISH, QoS 1
                    self._publish(w, head, body)
                elif kind == 4:  # PUBACK from a subscriber (see deliver)
                    self.pubacks.append((conn, struct.unpack(">H", body[:2])[0]))
                elif kind == 12:  # PINGREQ
                    w.write(b"\xd0\x00")
                elif kind == 14:  # DISCONNECT
                    return
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:  # ends normally (see tests/drivers/modbus/hostile.py)
            pass
        finally:
            self._writers.discard(w)
            w.close()

    def _subscribe(self, body: bytes) -> bytes:
        pid, pos = body[:2], 2
        plen, shift = 0, 0
        while True:  # properties length
            b = body[pos]
            pos += 1
            plen |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        pos += plen
        codes = b""
        while pos < len(body):
            n = struct.unpack(">H", body[pos : pos + 2])[0]
            self.subscriptions.append(body[pos + 2 : pos + 2 + n].decode())
            pos += 2 + n + 1  # the filter and its options
            codes += bytes([self.suback])
        return pid + b"\x00" + codes

    def _publish(self, w: asyncio.StreamWriter, head: int, body: bytes) -> None:
        n = struct.unpack(">H", body[:2])[0]
        topic = body[2 : 2 + n].decode()
        pos = 2 + n
        pid = None
        if (head >> 1) & 3:
            pid = body[pos : pos + 2]
            pos += 2
        plen, i = 0, 0
        while True:  # properties length (a varint)
            b = body[pos + i]
            plen |= (b & 0x7F) << (7 * i)
            i += 1
            if not b & 0x80:
                break
        payload = body[pos + i + plen :]
        seq = int(payload)
        self.received.append((topic, seq))
        if pid is None:
            return
        attempt = self._attempts.get(seq, 0) + 1
        self._attempts[seq] = attempt
        reason = self.disconnect(seq, attempt)
        if reason is not None:  # DISCONNECT (MQTT 5, 3.14): reason code, no properties
            w.write(_packet(14, 0, bytes([reason]) + b"\x00"))
            w.close()
            return
        code = self.puback(seq, attempt)
        pkt = _packet(4, 0, pid + bytes([code]) + b"\x00")
        self._unacked += 1
        self.max_unacked = max(self.max_unacked, self._unacked)
        if self.hold:
            self._held.append((w, pkt))
        else:
            self._unacked -= 1
            w.write(pkt)
