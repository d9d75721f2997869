"""What a platform sees of a gateway, for tests: a plain paho subscriber on a real broker,
every message verified from the enrolled root key alone (rotated keys are learned from
the ``keychain`` header, each certificate checked), and the audit log rebuilt from the
``audit`` messages by offset. Independent of gateway.receiver on purpose."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.status import read_status
from security import kid_for, verify1
from security.checkpoint import state_at
from security.cose import Envelope, parse1
from security.keyring import open_certificate

REPO = Path(__file__).resolve().parents[2]


class Collector:
    """Subscribes to ``<prefix>/<gw>/#`` (QoS 1) and keeps every message as received."""

    def __init__(self, port: int, topic: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("::1", port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("the collector did not get its subscription")

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def snapshot(self) -> list[tuple[str, bytes]]:
        with self.lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@dataclass
class Seen:
    """One verified message."""

    topic: str
    seq: int
    body: dict[str, Any]
    envelope: Envelope


@dataclass
class Upstream:
    messages: list[Seen]  # by seq, duplicates removed
    logs: dict[bytes, bytes]  # audit log id -> the copy rebuilt from the audit messages
    keys: dict[bytes, Ed25519PublicKey] = field(default_factory=dict)
    rewrites: list[tuple[bytes, int]] = field(default_factory=list)  # (log, offset)

    def audits(self) -> Iterator[Seen]:
        return (m for m in self.messages if m.body["kind"] == "audit")


def verify_all(
    raw: list[tuple[str, bytes]], root: Ed25519PublicKey, *, rewrites: bool = False
) -> Upstream:
    """Verify each message from ``root`` (and its keychain header), check that the header
    is there exactly when the signer is not the root and leads to the signer, and rebuild
    each audit log by offset, checking each message's ``base`` against the copy so far.
    Bytes that differ from what an earlier message put at an offset fail, unless
    ``rewrites`` (then they are listed)."""
    root_kid = kid_for(root)
    keys = {root_kid: root}
    by_seq: dict[int, Seen] = {}
    for topic, payload in raw:
        env = parse1(payload)
        chain = env.keychain
        assert (env.kid != root_kid) == bool(chain), (
            f"{topic}: keychain {len(chain)} certificates, signed by "
            f"{'the root' if env.kid == root_kid else 'a rotated key'}"
        )
        learned = {root_kid: root}
        for cert in chain:  # each certificate from the one before, starting at the root
            c = open_certificate(cert, learned)
            learned[c.kid] = c.public_key
        if chain:
            assert open_certificate(chain[-1], learned).kid == env.kid, "chain ends elsewhere"
        keys.update(learned)
        body = cbor2.loads(verify1(payload, learned, topic.encode()).payload)
        seen = Seen(topic, body["seq"], body, env)
        if body["seq"] in by_seq:
            assert by_seq[body["seq"]].body == body, f"seq {body['seq']} differs"
        by_seq[body["seq"]] = seen
    messages = [by_seq[s] for s in sorted(by_seq)]
    logs: dict[bytes, bytearray] = {}
    changed: list[tuple[bytes, int]] = []
    for m in messages:
        if m.body["kind"] != "audit":
            continue
        log_id, off = m.body["log"], m.body["offset"]
        buf = logs.setdefault(log_id, bytearray())
        data = b"".join(m.body["entries"])
        assert off <= len(buf), f"seq {m.seq}: the audit copy has a hole before byte {off}"
        if bytes(buf[off : off + len(data)]) != data[: len(buf) - off]:
            assert rewrites, f"seq {m.seq}: rewrites the audit copy at byte {off}"
            changed.append((log_id, off))
            del buf[off:]  # the newer version of the log goes on from here
        assert m.body["base"] == state_at(bytes(buf), log_id, off).base(), f"seq {m.seq}: base"
        assert len(data) <= 64 * 1024
        buf[off : off + len(data)] = data
    return Upstream(messages, {k: bytes(v) for k, v in logs.items()}, keys, changed)


class Gateway:
    """``edgegw run`` as a process."""

    def __init__(self, config: Path, state: Path, log: Path) -> None:
        self.config, self.state, self.log = config, state, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "run", "-c", str(self.config)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30  # generous: a cold start on a loaded machine
        while time.monotonic() < deadline:
            st = read_status(self.state) or {}
            if st.get("pid") == self.proc.pid and not st.get("final"):
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"edgegw run exited {self.proc.returncode}: {self.text()}")
            time.sleep(0.1)
        raise AssertionError(f"edgegw run did not come up: {self.text()}")

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(60) == 0, self.text()
        self.proc = None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def wait_for(pred: Any, what: str, timeout: float = 20.0) -> None:
    """Poll ``pred`` until true; ``timeout`` only catches a hang (not a timing claim)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
