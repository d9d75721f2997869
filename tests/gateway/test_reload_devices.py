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
            keep_cfg, change_cfg = daemon.cfg.devices
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
            # the unchanged device keeps its config objects (the new copy is let go)
            out["same_keep_cfg"] = daemon.cfg.devices[0] is keep_cfg
            out["new_change_cfg"] = daemon.cfg.devices[1] is not change_cfg
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
    assert out["same_keep_cfg"] and out["new_change_cfg"]
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


def test_opcua_and_s7_counters_go_on_across_a_reload(tmp_path: Path, broker: Mosquitto) -> None:
    """A reload that changes an OPC UA and an S7 device gives each a new driver whose
    counters (requests, bad statuses / refusals by code) go on from the old driver's,
    as Modbus's do (gateway.poller.carry_counters)."""
    from asyncua import ua

    from drivers.s7.simulator import S7Simulator
    from tests.drivers.opcua.conftest import SimThread

    ua_sim = SimThread()
    ua_sim.run(ua_sim.sim.set_value("ns=2;s=Types.Double", 1.5, ua.StatusCodes.BadSensorFailure))
    path = tmp_path / "gw.yaml"

    def config(s7_port: int, interval: int) -> str:
        return (
            "gateway: {id: gw-reload, state_dir: state, flush_window_ms: 50}\n"
            f"uplink: {{host: '::1', port: {broker.port}}}\n"
            "metrics: {enabled: false}\ndevices:\n"
            f"  - {{name: ua, protocol: opcua, endpoint: '{ua_sim.endpoint}', mode: poll, "
            f"poll_interval_ms: {interval},\n"
            "     tags: [{name: t, node: 'ns=2;s=Plant.Boiler.Temperature'},\n"
            "            {name: bad, node: 'ns=2;s=Types.Double'}]}\n"
            f"  - {{name: plc, protocol: s7, host: 127.0.0.1, port: {s7_port}, "
            f"poll_interval_ms: {interval},\n"
            "     tags: [{name: t, address: DB1.DBW0}, {name: no_db, address: DB9.DBW0}]}\n"
        )

    async def main(s7: S7Simulator) -> dict[str, Any]:
        path.write_text(config(s7.port, 50))
        daemon = Daemon(load_config(path), path)
        stop = asyncio.Event()
        run = asyncio.create_task(daemon.run(stop))
        out: dict[str, Any] = {}
        try:
            assert await wait_for(lambda: len(daemon.devices) == 2, 30)
            ok = await wait_for(lambda: all(d.reads >= 3 for d in daemon.devices.values()), 30)
            assert ok, {n: (d.reads, d.last_error) for n, d in daemon.devices.items()}
            old = {n: daemon._runtimes[n].driver for n in ("ua", "plc")}
            path.write_text(config(s7.port, 60))
            await daemon.reload()
            new = {n: daemon._runtimes[n].driver for n in ("ua", "plc")}
            # the old drivers have stopped: their counts are final now
            out["before"] = {
                n: (d.stats.requests, dict(d.stats.exceptions)) for n, d in old.items()
            }
            out["after"] = {n: (d.stats.requests, dict(d.stats.exceptions)) for n, d in new.items()}
            out["new"] = {n: new[n] is not old[n] for n in new}
            # status and metrics read the new drivers' counters once their tasks run
            out["shown"] = await wait_for(
                lambda: all(daemon.devices[n].driver is new[n].stats for n in new), 30
            )
        finally:
            stop.set()
            await asyncio.wait_for(run, 30)
        return out

    try:
        with S7Simulator(dbs={1: 64}) as s7:
            out = asyncio.run(main(s7))
    finally:
        ua_sim.close()
    assert out["new"] == {"ua": True, "plc": True}
    assert out["shown"]
    for name, code in (("ua", "BadSensorFailure"), ("plc", "0x0a")):
        (req0, exc0), (req1, exc1) = out["before"][name], out["after"][name]
        assert exc0.get(code, 0) >= 3, (name, exc0)
        assert req1 >= req0 >= 3 and exc1.get(code, 0) >= exc0[code], (name, out)
