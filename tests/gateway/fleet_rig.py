"""A platform rig with real processes: `edgegw receive` processes in one MQTT 5 shared
subscription group, a real mosquitto, a real PostgreSQL, and simulated gateways whose
messages are signed with their own keys (the daemon is not needed to make them)."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.wire import encode_payload
from security import DeviceKey, sign1
from tests.conftest import REPO


@dataclass
class Fleet:
    """Simulated gateways gw00..gwNN, each with its own key and enrolment file."""

    base: Path
    n: int
    keys: dict[str, DeviceKey] = field(default_factory=dict)

    def __post_init__(self) -> None:
        enrol = self.base / "enrolled"
        enrol.mkdir(parents=True, exist_ok=True)
        for i in range(self.n):
            gw = f"gw{i:02d}"
            key = DeviceKey.load_or_create(self.base / "keys" / gw)[0]
            self.keys[gw] = key
            (enrol / f"{gw}.pub.pem").write_bytes(key.public_pem())

    @property
    def enrol_dir(self) -> Path:
        return self.base / "enrolled"

    def message(self, gw: str, seq: int, points: int = 20, boot: int = 1) -> bytes:
        readings = [
            [f"dev{j % 4}/tag{j}", 1_700_000_000_000_000_000 + seq * 1000 + j, float(seq + j), 0]
            for j in range(points)
        ]
        p = encode_payload(gw=gw, seq=seq, boot=boot, kind="telemetry", t_ns=1, readings=readings)
        return sign1(p, self.keys[gw], f"edgegw/{gw}/telemetry".encode())


class Publisher:
    """One MQTT 5 client publishing QoS 1 messages (waits for every PUBACK)."""

    def __init__(
        self, port: int, tls: ssl.SSLContext | None = None, login: tuple[str, str] | None = None
    ) -> None:
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.c.max_inflight_messages_set(200)
        if tls is not None:
            self.c.tls_set_context(tls)
        if login is not None:
            self.c.username_pw_set(*login)
        self.c.connect("::1", port)
        self.c.loop_start()

    def publish(self, items: list[tuple[str, bytes]]) -> None:
        infos = [self.c.publish(t, b, qos=1) for t, b in items]
        for i in infos:
            i.wait_for_publish(30)
            assert i.is_published()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@dataclass
class ReceiverProc:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def term(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def last_json(self) -> dict:  # type: ignore[type-arg]
        for line in reversed(self.log.read_text().splitlines()):
            if line.startswith("{"):
                return json.loads(line)  # type: ignore[no-any-return]
        return {}


def start_receiver(
    base: Path, name: str, port: int, db: str, enrol: Path, share: str = "rx", *extra: str
) -> ReceiverProc:
    log = base / f"{name}.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "receive",
            "--host",
            "::1",
            "--port",
            str(port),
            "--enrol",
            str(enrol),
            "--db",
            db,
            "--share",
            share,
            "--client-id",
            name,
            "--session-expiry",
            "600",
            "--stats-interval",
            "1",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(log, "wb"),  # noqa: SIM115
        cwd=REPO,
    )
    deadline = time.monotonic() + 60
    while "receiving $share" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"receiver {name} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    return ReceiverProc(name, proc, log)


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)
