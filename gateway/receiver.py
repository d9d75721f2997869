"""`edgegw receive`: the platform side. Verify every message, drop duplicates by
(gateway, seq), notice gaps, and store or print the verified readings.

The classification is pure (``Receiver.handle``) and the MQTT part is a thin shell
(``MqttReceiver``), so the same logic can be tested without a broker and reused by a
platform that takes messages from elsewhere.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import sqlite3
import sys
import threading
import time
from array import array
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import cbor2
import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from security import BadSignature, CoseError, UnknownKid, learn_keys, verify1
from security.checkpoint import iter_records

from .wire import Payload, PayloadError, decode_payload

log = logging.getLogger("edgegw.receiver")

DIGEST_WINDOW = 50_000  # seqs per gateway whose digest is kept to tell a duplicate from a conflict


@dataclass(slots=True)
class ReceiverStats:
    messages_verified: int = 0
    points_verified: int = 0
    duplicates: int = 0
    conflicts: int = 0
    gaps: int = 0
    signature_failures: int = 0
    unknown_kid: int = 0
    malformed: int = 0
    topic_mismatch: int = 0
    store_errors: int = 0
    notices: int = 0
    events: int = 0  # anomaly events (kind "event")
    replays: int = 0  # an old boot's message that cannot be genuine now
    keys_learned: int = 0  # rotated keys learned from key_rotated certificates
    dropped_points: int = 0  # points the gateway reported lost (signed notices)
    dropped_seqs: int = 0  # seqs the gateway reported will never come


@dataclass(slots=True)
class _Track:
    """The seqs one gateway has delivered, as sorted disjoint intervals ``[lo, hi]``.

    Messages arrive out of order by design (urgent and live before backlog), so
    nothing assumes the first seq seen is the lowest; a hole between two intervals is
    a gap until it is filled (late delivery) or explained (a drop notice).
    """

    ranges: list[list[int]] = field(default_factory=list)
    digests: dict[int, bytes] = field(default_factory=dict)
    boot: int = 0
    boot_first_seq: dict[int, int] = field(default_factory=dict)  # lowest seq seen per boot

    def _find(self, seq: int) -> int:
        """Index of the last interval starting at or before seq (-1 if none)."""
        return bisect.bisect_right(self.ranges, seq, key=lambda r: r[0]) - 1

    def seen(self, seq: int) -> bool:
        i = self._find(seq)
        return i >= 0 and self.ranges[i][1] >= seq

    def add(self, seq: int) -> None:
        self.add_range(seq, seq)

    def add_range(self, lo: int, hi: int) -> None:
        """Mark lo..hi seen, merging with neighbours."""
        r = self.ranges
        i = max(self._find(lo), 0)
        # absorb every interval that overlaps or touches [lo, hi]
        j = i
        while j < len(r) and r[j][0] <= hi + 1:
            if r[j][1] >= lo - 1:
                lo, hi = min(lo, r[j][0]), max(hi, r[j][1])
                del r[j]
            else:
                j += 1
        r.insert(bisect.bisect_left(r, lo, key=lambda x: x[0]), [lo, hi])

    def missing(self) -> int:
        r = self.ranges
        return sum(r[k + 1][0] - r[k][1] - 1 for k in range(len(r) - 1))

    def missing_ranges(self, limit: int = 20) -> list[tuple[int, int]]:
        r = self.ranges
        return [(r[k][1] + 1, r[k + 1][0] - 1) for k in range(min(len(r) - 1, limit))]


class Sink(Protocol):
    def write(self, p: Payload, kid: bytes, received_ns: int) -> None: ...
    def close(self) -> None: ...


class Receiver:
    def __init__(
        self,
        keys: Mapping[bytes, Ed25519PublicKey],
        prefix: str,
        sink: Sink | None = None,
        track_latency: bool = False,
    ) -> None:
        self.keys = dict(keys)
        self.prefix = prefix.rstrip("/") + "/"
        self.sink = sink
        self.stats = ReceiverStats()
        self.tracks: dict[str, _Track] = {}
        self.latencies_ms = array("d") if track_latency else None
        self.lock = threading.Lock()

    def handle(self, topic: str, body: bytes, received_ns: int | None = None) -> str:
        """Classify one message; returns the outcome name and counts it."""
        now = received_ns or time.time_ns()
        with self.lock:
            outcome = self._handle(topic, body, now)
        return outcome

    def _handle(self, topic: str, body: bytes, now: int) -> str:
        st = self.stats
        parts = topic[len(self.prefix) :].split("/") if topic.startswith(self.prefix) else []
        if len(parts) != 2:
            st.malformed += 1
            return "malformed"
        topic_gw = parts[0]
        try:
            v = verify1(body, self.keys, topic.encode())
        except UnknownKid:
            # After a key rotation the gateway signs with its new key, and the audit
            # message carrying the certificate of that key is signed by it too: learn the
            # key from the certificate (signed by a key we trust), then verify.
            if not self._learn_keys(body):
                st.unknown_kid += 1
                return "unknown_kid"
            return self._handle(topic, body, now)
        except BadSignature:
            st.signature_failures += 1
            return "bad_signature"
        except CoseError:
            st.malformed += 1
            return "malformed"
        try:
            p = decode_payload(v.payload)
        except PayloadError:
            st.malformed += 1
            return "malformed"
        if p.gw != topic_gw or p.kind != parts[1]:
            st.topic_mismatch += 1
            return "topic_mismatch"
        tr = self.tracks.get(p.gw)
        if tr is None:
            tr = self.tracks[p.gw] = _Track()
        digest = hashlib.sha256(body).digest()[:16]
        if tr.seen(p.seq):
            old = tr.digests.get(p.seq)
            if old is not None and old != digest:
                st.conflicts += 1
                log.error(
                    "SECURITY: gateway %s sent two different messages with seq %d", p.gw, p.seq
                )
                return "conflict"
            if old is None and p.boot < tr.boot:
                return self._replay(p, "an old message re-sent long after")
            st.duplicates += 1
            return "duplicate"
        newest_first = tr.boot_first_seq.get(tr.boot)
        if p.boot < tr.boot and newest_first is not None and p.seq > newest_first:
            # seqs only grow: boot N-1 cannot have used a seq that boot N used before it
            return self._replay(p, f"seq {p.seq} of boot {p.boot} is after boot {tr.boot} began")
        first = tr.boot_first_seq.get(p.boot)
        if first is None or p.seq < first:
            tr.boot_first_seq[p.boot] = p.seq
        before = tr.missing()
        if p.kind == "notice":
            self._notice(p, tr)
        elif p.kind == "event":
            st.events += 1
        tr.add(p.seq)
        tr.digests[p.seq] = digest
        tr.digests.pop(p.seq - DIGEST_WINDOW, None)
        tr.boot = max(tr.boot, p.boot)
        st.gaps += tr.missing() - before
        st.messages_verified += 1
        st.points_verified += len(p.readings)
        if self.latencies_ms is not None:
            self.latencies_ms.extend((now - r[1]) / 1e6 for r in p.readings)
        if self.sink is not None:
            try:
                self.sink.write(p, v.kid, now)
            except Exception as exc:  # a full disk must not stop verification
                st.store_errors += 1
                log.error("cannot store seq %d of %s: %s", p.seq, p.gw, exc)
        return "valid"

    def _replay(self, p: Payload, why: str) -> str:
        self.stats.replays += 1
        log.error(
            "SECURITY: replayed message from gateway %s (boot %d, seq %d): %s",
            p.gw,
            p.boot,
            p.seq,
            why,
        )
        return "replay"

    def _learn_keys(self, body: bytes) -> bool:
        """Certificates from ``key_rotated`` audit records in a not yet verifiable
        message: each is checked against the keys we trust before it adds a key."""
        try:
            obj = cbor2.loads(body)
            arr = obj.value if isinstance(obj, cbor2.CBORTag) else obj
            payload = cbor2.loads(arr[2])
            entries = payload.get("entries") if payload.get("kind") == "audit" else None
        except Exception:
            return False
        if not isinstance(entries, list):
            return False
        certs = [
            r.detail["cert"]
            for r in iter_records(b"".join(e for e in entries if isinstance(e, bytes)))
            if r.event == "key_rotated" and isinstance(r.detail.get("cert"), bytes)
        ]
        if not certs:
            return False
        before = len(self.keys)
        self.keys = learn_keys(self.keys, certs, strict=False)
        self.stats.keys_learned += len(self.keys) - before
        return len(self.keys) > before

    def _notice(self, p: Payload, tr: _Track) -> None:
        """A signed drop notice explains gaps: those seqs will never come."""
        self.stats.notices += 1
        for d in p.body.get("drops", []) if p.body.get("notice") == "data_dropped" else []:
            self.stats.dropped_points += int(d.get("points", 0))
            lo, hi = d.get("first_seq"), d.get("last_seq")
            if isinstance(lo, int) and isinstance(hi, int) and lo <= hi:
                self.stats.dropped_seqs += sum(not tr.seen(q) for q in range(lo, hi + 1))
                tr.add_range(lo, hi)
            log.warning(
                "gateway %s dropped %s points (%s, seq %s..%s)",
                p.gw,
                d.get("points"),
                d.get("reason"),
                lo,
                hi,
            )

    def missing(self) -> dict[str, list[tuple[int, int]]]:
        with self.lock:
            return {gw: tr.missing_ranges() for gw, tr in self.tracks.items() if tr.missing()}


# -- sinks ---------------------------------------------------------------------------------


class JsonLinesSink:
    """One JSON object per reading, for pipes and quick looks."""

    def __init__(self, out: IO[str] = sys.stdout) -> None:
        self.out = out

    def write(self, p: Payload, kid: bytes, received_ns: int) -> None:
        w = self.out.write
        for r in p.readings:
            rec = {
                "gw": p.gw,
                "seq": p.seq,
                "tag": r[0],
                "ts": r[1],
                "value": r[2],
                "quality": r[3],
            }
            if len(r) > 4 and r[4] is not None:
                rec["reason"] = r[4]
            if len(r) > 5:
                rec["server_ts"] = r[5]
            w(json.dumps(rec) + "\n")
        self.out.flush()

    def close(self) -> None:
        self.out.flush()


class SqliteSink:
    """Verified messages and readings in a SQLite file (via sqlite-utils)."""

    def __init__(self, path: Path) -> None:
        import sqlite_utils  # costly to import; only the receiver's store needs it

        # paho delivers on its own thread; Receiver.lock serialises every use.
        self.db = sqlite_utils.Database(sqlite3.connect(path, check_same_thread=False))
        self.db.conn.execute("PRAGMA journal_mode=WAL")
        self.messages = self.db.table("messages")
        self.readings = self.db.table("readings")
        if not self.messages.exists():
            self.messages.create(
                {
                    "gw": str,
                    "seq": int,
                    "boot": int,
                    "kind": str,
                    "t": int,
                    "kid": str,
                    "received_ns": int,
                    "points": int,
                },
                pk=("gw", "seq"),
            )
        if not self.readings.exists():
            # value is declared BLOB: that affinity stores each value with its own type
            # (REAL, INTEGER, TEXT, NULL) instead of converting them all to text.
            self.readings.create(
                {
                    "gw": str,
                    "seq": int,
                    "tag": str,
                    "ts": int,
                    "value": bytes,
                    "quality": int,
                    "reason": str,
                    "server_ts": int,
                },
            )

    def write(self, p: Payload, kid: bytes, received_ns: int) -> None:
        with self.db.conn:
            self.messages.insert(
                {
                    "gw": p.gw,
                    "seq": p.seq,
                    "boot": p.boot,
                    "kind": p.kind,
                    "t": p.t_ns,
                    "kid": kid.hex(),
                    "received_ns": received_ns,
                    "points": len(p.readings),
                },
                replace=True,
            )
            self.db.conn.executemany(
                "INSERT INTO readings (gw, seq, tag, ts, value, quality, reason, server_ts) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        p.gw,
                        p.seq,
                        r[0],
                        r[1],
                        r[2],
                        r[3],
                        r[4] if len(r) > 4 else None,
                        r[5] if len(r) > 5 else None,
                    )
                    for r in p.readings
                ],
            )

    def known_seqs(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for gw, seq in self.db.conn.execute("SELECT gw, seq FROM messages ORDER BY gw, seq"):
            out.setdefault(gw, []).append(seq)
        return out

    def close(self) -> None:
        self.db.conn.close()


def restore_tracks(rx: Receiver, known: dict[str, list[int]]) -> None:
    """Resume de-duplication after a restart from what a store already holds."""
    for gw, seqs in known.items():
        tr = rx.tracks[gw] = _Track()
        for s in seqs:
            tr.add(s)


# -- MQTT ----------------------------------------------------------------------------------


class MqttReceiver:
    """Subscribes to ``<prefix>/+/+`` (QoS 1) and feeds every message to a Receiver.

    With ``share_group``, several receivers split the stream through an MQTT 5
    shared subscription. With a fixed ``client_id`` the session persists on the broker
    for ``session_expiry_s``, so messages sent while this receiver was away are kept.
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
    ) -> None:
        self.rx = rx
        self.host, self.port = host, port
        self.topic = rx.prefix + "+/+"
        if share_group:
            self.topic = f"$share/{share_group}/{self.topic}"
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        if tls_context is not None:
            self.client.tls_set_context(tls_context)
        self.client.reconnect_delay_set(1, 8)  # paho's default grows to 120 s
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.rx.handle(m.topic, m.payload)
        self._props = Properties(PacketTypes.CONNECT)
        self._props.SessionExpiryInterval = session_expiry_s
        self._clean = not (client_id and session_expiry_s)

    def _on_connect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            log.error("receiver: broker refused: %s", rc)
            return
        c.subscribe(self.topic, qos=1)

    def start(self, timeout: float = 10.0) -> MqttReceiver:
        self.client.connect(
            self.host, self.port, 30, clean_start=self._clean, properties=self._props
        )
        self.client.loop_start()
        if not self.subscribed.wait(timeout):
            self.stop()
            raise TimeoutError(f"receiver: no SUBACK from [{self.host}]:{self.port}")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def summary(rx: Receiver) -> dict[str, Any]:
    with rx.lock:
        return asdict(rx.stats)
