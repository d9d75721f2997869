"""SIGHUP reload restarts only the devices whose config changed: the others keep their
driver, their connection and their poll task; every device's counters go on; a removed
device goes, an added one starts; and what a driver learned is forgotten at a reload
after `edgegw read --relearn`."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from drivers.modbus.config import Table
from drivers.modbus.learn import learned_file
from drivers.modbus.simulator import ModbusSimulator
from gateway.config import load_config
from gateway.daemon import Daemon
from gateway.mosquitto import Mosquitto


def device(name: str, port: int, unit: int, extra: str = "") -> str:
    return (
        f"  - {{name: {name}, protocol: modbus_tcp, host: '127.0.0.1', port: {port}, "
        f"unit_id: {unit}, poll_interval_ms: 50{extra},\n"
        "     tags: [{name: a, address: 0}, {name: b, address: 4}]}\n"
    )


async def wait_for(cond: Any, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds  # bound only: it normally takes ~0.2 s
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def test_reload_restarts_only_changed_devices_and_counters_go_on(
    tmp_path: Path, broker: Mosquitto
) -> None:
    sim = ModbusSimulator(unit_ids=(1, 2, 3), holes={Table.HOLDING: [(2, 3)]})
    path = tmp_path / "gw.yaml"
    head = (
        "gateway: {id: gw-reload, state_dir: state, flush_window_ms: 50}\n"
        f"uplink: {{host: '::1', port: {broker.port}}}\n"
        "metrics: {enabled: false}\ndevices:\n"
    )

    async def main() -> dict[str, Any]:
        await sim.start()
        path.write_text(head + device("keep", sim.port, 1) + device("change", sim.port, 2))
        cfg = load_config(path)
        daemon = Daemon(cfg, path)
        stop = asyncio.Event()
        run = asyncio.create_task(daemon.run(stop))
        out: dict[str, Any] = {}
        try:
            assert await wait_for(lambda: len(daemon.devices) == 2)
            assert await wait_for(lambda: all(d.reads >= 3 for d in daemon.devices.values()))
            keep_task = daemon.tasks["poll:keep"]
            keep_driver = daemon._runtimes["keep"].driver
            change_driver = daemon._runtimes["change"].driver
            keep_learned = learned_file(cfg.state_dir, "keep")
            assert await wait_for(keep_learned.exists)  # the hole at 2 was learned
            requests_before = {n: d.driver.requests for n, d in daemon.devices.items()}
            reads_before = {n: d.reads for n, d in daemon.devices.items()}
            out["keep_plan_before"] = daemon.devices["keep"].driver.plan_requests
            splits_before = keep_driver.stats.splits

            keep_learned.unlink()  # edgegw read --relearn, while the daemon runs
            path.write_text(
                head
                + device("keep", sim.port, 1)
                + device("change", sim.port, 2, ", timeout_ms: 900")
                + device("added", sim.port, 3)
            )
            await daemon.reload()
            assert await wait_for(lambda: daemon.devices["added"].reads >= 2)
            assert await wait_for(
                lambda: daemon.devices["change"].reads >= reads_before["change"] + 2
            )
            out["same_task"] = daemon.tasks["poll:keep"] is keep_task
            out["same_keep_driver"] = daemon._runtimes["keep"].driver is keep_driver
            out["new_change_driver"] = daemon._runtimes["change"].driver is not change_driver
            out["keep_requests"] = (requests_before["keep"], daemon.devices["keep"].driver.requests)
            out["change_requests"] = (
                requests_before["change"],
                daemon.devices["change"].driver.requests,
            )
            out["change_reads"] = (reads_before["change"], daemon.devices["change"].reads)
            # it forgot, so it met the hole again, split again and learned it again
            await wait_for(lambda: keep_driver.stats.splits > splits_before)
            out["keep_splits"] = (splits_before, keep_driver.stats.splits)
            out["keep_relearned"] = keep_learned.exists()
            out["order"] = list(daemon.devices)

            path.write_text(head + device("keep", sim.port, 1))
            await daemon.reload()
            out["after_removal"] = list(daemon.devices)
            out["tasks"] = sorted(t for t in daemon.tasks if t.startswith("poll:"))
            out["keep_alive"] = not daemon.tasks["poll:keep"].done()
        finally:
            stop.set()
            await asyncio.wait_for(run, 30)
            await sim.stop()
        return out

    out = asyncio.run(main())
    assert out["same_task"] and out["same_keep_driver"] and out["new_change_driver"]
    before, after = out["keep_requests"]
    assert after > before
    before, after = out["change_requests"]
    assert after > before  # the new driver counts on from the old one's requests
    before, after = out["change_reads"]
    assert after >= before + 2
    # relearn: the unchanged device forgot what it had learned at the reload
    assert out["keep_plan_before"] == 2
    before, after = out["keep_splits"]
    assert after > before and out["keep_relearned"]
    assert out["order"] == ["keep", "change", "added"]
    assert out["after_removal"] == ["keep"] and out["tasks"] == ["poll:keep"]
    assert out["keep_alive"]
