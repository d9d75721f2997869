"""Nothing durable runs on the event loop: audit records (signed and fsynced), audit
checkpoints, the audit log's open and seal, and status.json writes all happen in other
threads, whatever calls them (a reload, the link, the status task, a drop)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import gateway.daemon as daemon_mod
from drivers.modbus.simulator import ModbusSimulator
from gateway.config import load_config
from gateway.daemon import Daemon
from gateway.mosquitto import Mosquitto
from security.audit import AuditLog


def test_audit_and_status_writes_stay_off_the_loop(
    tmp_path: Path, broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str]] = []
    for name in ("record", "tick", "close", "checkpoint"):
        real = getattr(AuditLog, name)

        def spy(self: Any, *a: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            calls.append((_name, threading.current_thread().name))
            return _real(self, *a, **kw)

        monkeypatch.setattr(AuditLog, name, spy)
    real_status = daemon_mod.write_status

    def status_spy(*a: Any) -> None:
        calls.append(("write_status", threading.current_thread().name))
        real_status(*a)

    monkeypatch.setattr(daemon_mod, "write_status", status_spy)
    sim = ModbusSimulator()
    path = tmp_path / "gw.yaml"

    async def main() -> str:
        await sim.start()
        path.write_text(
            "gateway: {id: gw-loop, state_dir: state, flush_window_ms: 50}\n"
            f"uplink: {{host: '::1', port: {broker.port}}}\n"
            "metrics: {enabled: false}\naudit: {checkpoint_every: 2}\ndevices:\n"
            f"  - {{name: d, protocol: modbus_tcp, host: 127.0.0.1, port: {sim.port}, "
            "poll_interval_ms: 50, tags: [{name: t, address: 0}]}\n"
        )
        d = Daemon(load_config(path), path)
        stop = asyncio.Event()
        run = asyncio.create_task(d.run(stop))
        loop_thread = threading.current_thread().name
        try:
            deadline = time.monotonic() + 20  # a bound only
            while not (d.forwarder and d.forwarder.stats.link_up):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            path.write_text(
                path.read_text().replace("poll_interval_ms: 50", "poll_interval_ms: 60")
            )
            await d.reload()  # a config_change record
            await asyncio.sleep(2.5)  # status writes, checkpoints
        finally:
            stop.set()
            await asyncio.wait_for(run, 60)
            await sim.stop()
        return loop_thread

    loop_thread = asyncio.run(main())
    kinds = {k for k, _ in calls}
    assert {"record", "close", "write_status"} <= kinds, kinds
    on_loop = [(k, t) for k, t in calls if t == loop_thread]
    assert on_loop == [], on_loop
