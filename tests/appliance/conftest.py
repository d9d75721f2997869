"""Fixtures for the appliance tests: TLS material for a real mosquitto TLS listener, and
a way to call one command module the way the CLI would."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.tlscerts import Pki, make_pki


def run_command(module: ModuleType, *argv: str) -> int:
    """Parse ``argv`` with only ``module``'s sub-command registered, and run it."""
    parser = argparse.ArgumentParser(prog="edgegw")
    sub = parser.add_subparsers(dest="command", required=True)
    module.register(sub)
    args = parser.parse_args(list(argv))
    return int(args.func(args))


@pytest.fixture(scope="session")
def pki() -> Iterator[Pki]:
    """The shared test PKI (tests/tlscerts.py): a CA, a broker certificate for ``::1``,
    ``127.0.0.1`` and ``localhost``, and an unrelated (rogue) CA."""
    d = Path(tempfile.mkdtemp(prefix="edgegw-test-pki-"))
    try:
        yield make_pki(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def make_snapshot(now_ns: int | None = None, **overrides: object) -> dict[str, object]:
    """A status snapshot shaped like ``Daemon.snapshot()`` (the integration test checks
    the real one has the same keys)."""
    import os
    import time

    now = time.time_ns() if now_ns is None else now_ns
    snap: dict[str, object] = {
        "gateway": "gw-test",
        "version": "0.1.0",
        "pid": os.getpid(),
        "boot": 7,
        "final": False,
        "time_ns": now,
        "started_ns": now - 100 * 10**9,
        "pipeline": {
            "points_polled": 5000,
            "points_sealed": 4990,
            "messages_sealed": 400,
            "last_seq": 1234,
            "seal_errors": 0,
        },
        "uplink": {
            "link_up": True,
            "connects": 2,
            "disconnects": 1,
            "published": 410,
            "acked": 398,
            "rejected": 0,
            "last_error": None,
        },
        "outbox": {
            "rows": 3,
            "bytes": 12_345,
            "first_seq": 1232,
            "last_seq": 1234,
            "oldest_created_ns": now - 2 * 10**9,
        },
        "devices": {
            "boiler": {
                "name": "boiler",
                "up": True,
                "reads": 1000,
                "errors": 2,
                "overruns": 1,
                "last_error": None,
                "last_latency_ms": 4.5,
                "last_read_ns": now - 300_000_000,
            },
            "press": {
                "name": "press",
                "up": False,
                "reads": 10,
                "errors": 40,
                "overruns": 0,
                "last_error": "connect [::1]:1502: connection refused",
                "last_latency_ms": None,
                "last_read_ns": None,
            },
        },
    }
    snap.update(overrides)
    return snap


class SerialBus:
    """A Modbus RTU bus in software for doctor's serial checks: two ptys joined back to
    back (drivers/modbus/ptybus.py) with the project's simulator serving ``units`` on
    one end, in a thread of its own; ``port`` is the end a device config names."""

    def __init__(self, units: tuple[int, ...] = (1,)) -> None:
        import asyncio
        import threading

        self._ready, self._stop = threading.Event(), threading.Event()
        self.port = ""
        self._units = units
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError(f"the serial bus did not start: {self._error!r}")

    async def _serve(self) -> None:
        import asyncio

        from drivers.modbus import Table
        from drivers.modbus.ptybus import PtyBridge
        from drivers.modbus.simulator import ModbusSimulator

        try:
            async with PtyBridge() as bridge:
                sim = ModbusSimulator(serial_port=bridge.server_path, unit_ids=self._units)
                async with sim:
                    for u in self._units:
                        sim.set_registers(u, Table.HOLDING, 0, [u * 100 + i for i in range(8)])
                    self.port = bridge.client_path
                    self._ready.set()
                    while not self._stop.is_set():
                        await asyncio.sleep(0.02)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            raise

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def serial_bus() -> Iterator[SerialBus]:
    """A serial line with unit 1 on it (pyserial is a dependency of the modbus extra)."""
    pytest.importorskip("serial", reason="pyserial is not installed (pyproject.toml)")
    bus = SerialBus()
    try:
        yield bus
    finally:
        bus.close()


def rtu_device(port: str, unit: int = 1, **kw: object) -> dict[str, object]:
    """A Modbus RTU device on ``port``, parity N (the only one a pty carries)."""
    return {
        "name": "meter",
        "protocol": "modbus_rtu",
        "port": port,
        "unit_id": unit,
        "parity": "N",
        "baudrate": 115200,
        "timeout_ms": 300,
        "tags": [{"name": f"r{i}", "address": i} for i in range(3)],
        **kw,
    }
