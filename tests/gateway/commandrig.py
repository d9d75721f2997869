"""A gateway that takes signed commands, for the downlink tests: the daemon (in this
process, on this event loop) polling a Modbus TCP simulator (pymodbus), an OPC UA server
(asyncua) and an S7 PLC (snap7), a real mosquitto between it and the platform, and the
platform's side as `edgegw command` does it (sign, publish, wait for the signed result
verified from the gateway's enrolled key)."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from drivers.modbus.simulator import ModbusSimulator
from drivers.opcua.config import OpcuaDevice
from drivers.opcua.simulator import OpcuaSimulator
from drivers.s7.simulator import S7Simulator
from gateway.commands.broker_options import Broker
from gateway.commands.command import send_and_wait
from gateway.config import load_config
from gateway.daemon import Daemon
from gateway.downlink.wire import encode_command, sign_command
from gateway.receiver import Enrolments
from security import DeviceKey, sign1
from security.audit import read_log
from security.checkpoint import Record

GW = "gw-cmd"
UA_TAGS = [
    {"name": "sp", "node": "ns=2;s=Cmd.Setpoint", "type": "Double",
     "write": {"min": 0, "max": 100, "min_interval_s": 0}},
    {"name": "mode", "node": "ns=2;s=Cmd.Mode", "type": "Int32",
     "write": {"values": [0, 1, 2], "min_interval_s": 0}},
]  # fmt: skip


def make_key(path: Path) -> DeviceKey:
    """A platform command key: private PEM (0600) at ``path``, public beside it."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    path.with_name(path.name.split(".")[0] + ".pub.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return DeviceKey.load(path)


def modbus_device(port: int) -> str:
    return (
        f"  - name: plc\n    protocol: modbus_tcp\n    host: 127.0.0.1\n    port: {port}\n"
        "    poll_interval_ms: 100\n    timeout_ms: 500\n    tags:\n"
        "      - {name: sp, address: 10, type: float32, order: CDAB, scale: 0.1,"
        " write: {min: 0, max: 80, min_interval_s: 0}}\n"
        "      - {name: slow, address: 12, type: int16,"
        " write: {min: 0, max: 10, min_interval_s: 60}}\n"
        "      - {name: other, address: 14, type: uint16,"
        " write: {min: 0, max: 10, min_interval_s: 0}}\n"
        "      - {name: fixed, address: 16, type: uint16}\n"
        "      - {name: run, table: coil, address: 3, write: {min_interval_s: 0}}\n"
    )  # fmt: skip


@dataclass
class Rig:
    tmp: Path
    broker_port: int
    uplink_port: int | None = None  # where the gateway connects (a LinkProxy), default broker
    health_s: float = 3.0
    protocol: str = "mqtt5"
    extra_devices: str = ""
    extra_scopes: str = ""  # more '<device>/<tag>' patterns for the ops key, e.g. ", 'far/*'"
    uplink_extra: str = ""  # more uplink settings, e.g. ", username: gw, password_file: pw"
    mb: ModbusSimulator | None = None
    ua: OpcuaSimulator | None = None
    s7: S7Simulator | None = None
    daemon: Daemon | None = None
    task: asyncio.Task[None] | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.state = self.tmp / "state"
        self.cfg_path = self.tmp / "gw.yaml"
        self.ops = make_key(self.tmp / "ops.ed25519.pem")
        self.admin = make_key(self.tmp / "admin.ed25519.pem")
        self.rogue = make_key(self.tmp / "rogue.ed25519.pem")  # not in the config
        self.device_key, _ = DeviceKey.load_or_create(self.state)
        self.trust = Enrolments.of({GW: self.device_key.public_key})
        self.topic = f"edgegw/{GW}/command"

    def config_text(self, devices: str | None = None) -> str:
        assert self.mb is not None and self.ua is not None and self.s7 is not None
        devices = devices if devices is not None else self.devices()
        return (
            f"gateway: {{id: {GW}, state_dir: {self.state}, flush_window_ms: 50}}\n"
            f"uplink: {{host: '::1', port: {self.uplink_port or self.broker_port}, "
            f"reconnect_max_s: 1, protocol: {self.protocol}{self.uplink_extra}}}\n"
            "metrics: {enabled: false}\n"
            "commands:\n"
            f"  config_health_s: {self.health_s}\n"
            "  keys:\n"
            "    - {name: ops, public_key: ops.pub.pem, operations: [write],\n"
            "       tags: ['plc/sp', 'plc/slow', 'plc/fixed', 'plc/run', 'ua/*', 's7/*'"
            f"{self.extra_scopes}]}}\n"
            "    - {name: admin, public_key: admin.pub.pem, operations: [config]}\n"
            f"devices:\n{devices}"
        )

    def devices(self) -> str:
        assert self.mb is not None and self.ua is not None and self.s7 is not None
        ua_tags = "".join(f"      - {t}\n".replace("'", '"') for t in UA_TAGS)
        return (
            modbus_device(self.mb.port)
            + f"  - name: ua\n    protocol: opcua\n    endpoint: {self.ua.endpoint}\n"
            "    mode: poll\n    poll_interval_ms: 200\n    tags:\n"
            + ua_tags
            + f"  - name: s7\n    protocol: s7\n    host: 127.0.0.1\n    port: {self.s7.port}\n"
            "    poll_interval_ms: 100\n    tags:\n"
            "      - {name: bit, address: DB1.DBX2.5, write: {min_interval_s: 0}}\n"
            "      - {name: level, address: DB1.DBD4, type: REAL, write: {min: -50, max: 50,"
            " min_interval_s: 0}}\n" + self.extra_devices
        )

    async def __aenter__(self) -> Rig:
        self.mb = ModbusSimulator()
        await self.mb.start()
        served = OpcuaDevice.model_validate(
            {
                "name": "ua",
                "protocol": "opcua",
                "endpoint": "opc.tcp://127.0.0.1:4840",
                "tags": UA_TAGS,
            }
        )
        self.ua = OpcuaSimulator(devices=[served])
        await self.ua.start()
        self.s7 = S7Simulator(dbs={1: 64})
        self.s7.start()
        self.cfg_path.write_text(self.config_text())
        await self.start_daemon()
        return self

    async def start_daemon(self) -> None:
        self.stop = asyncio.Event()
        self.daemon = Daemon(load_config(self.cfg_path), self.cfg_path)
        self.task = asyncio.create_task(self.daemon.run(self.stop))
        await self.until(
            lambda: (
                self.daemon is not None
                and self.daemon.downlink is not None
                and self.daemon.downlink.subscription_ok is True
                and all(d.up for d in self.daemon.devices.values())
                and len(self.daemon.devices) >= 3
            ),
            20,
            "the gateway did not come up (devices, subscription)",
        )

    async def stop_daemon(self) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 60)
        self.task = None

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self.task is not None:
                await self.stop_daemon()
        finally:
            if self.mb is not None:
                await self.mb.stop()
            if self.ua is not None:
                await self.ua.stop()
            if self.s7 is not None:
                self.s7.stop()

    @staticmethod
    async def until(cond: Any, seconds: float, what: str) -> None:
        deadline = time.monotonic() + seconds  # a bound only; normally well under a second
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(what)
            await asyncio.sleep(0.05)

    # -- the platform's side -------------------------------------------------------------

    def message(
        self,
        op: str,
        args: dict[str, Any],
        *,
        key: DeviceKey | None = None,
        id: str | None = None,
        lifetime_s: float = 60,
        iat_ns: int | None = None,
        gw: str = GW,
    ) -> bytes:
        payload = encode_command(
            gw=gw,
            id=id or f"c-{time.time_ns()}",
            op=op,
            args=args,
            lifetime_s=lifetime_s,
            iat_ns=iat_ns,
        )
        return sign_command(payload, key or self.ops, self.topic)

    def signed_raw(self, payload: bytes, key: DeviceKey) -> bytes:
        return sign1(payload, key, self.topic.encode())

    async def send(self, message: bytes, timeout: float = 20) -> dict[str, Any] | None:
        """Publish a command and wait for its verified result (None: none in time)."""
        return await asyncio.to_thread(
            send_and_wait,
            Broker("::1", self.broker_port),
            "edgegw",
            GW,
            self.trust,
            self.topic,
            message,
            timeout,
        )

    def audit_records(self, event_prefix: str = "command_") -> list[Record]:
        records = [e.record for e in read_log(self.state / "audit.cborseq").entries if e.record]
        return [r for r in records if r.event.startswith(event_prefix)]
