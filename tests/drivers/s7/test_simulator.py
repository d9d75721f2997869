"""The simulator: snap7's server on loopback, deterministic waveforms, serve_devices, CLI."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from drivers.contract import ConnectError, Quality
from drivers.s7 import DeviceConfig, compile_plan, load_devices
from drivers.s7.driver import Driver
from drivers.s7.simulator import SAMPLE, S7Simulator, serve_devices, waveform_value
from tests.drivers.s7.conftest import by_tag, closed_port

ROOT = Path(__file__).parents[3]


def sample_on(port: int) -> list[DeviceConfig]:
    return [d.model_copy(update={"port": port}) for d in load_devices(SAMPLE)]


def test_waveforms_are_what_the_driver_reads() -> None:
    """Every tag of the sample (every type, scale/offset, two devices sharing one PLC)
    reads back exactly as ``waveform_value`` says, at two instants."""
    devices = sample_on(0)
    with S7Simulator.for_devices(devices) as sim:
        devices = sample_on(sim.port)

        async def main(t: float) -> None:
            sim.apply_waveforms(devices, t)
            for dev in devices:
                driver = Driver(dev)
                await driver.connect()
                batch = await driver.read(compile_plan(dev))
                await driver.close()
                assert batch.ok, batch.error
                got = by_tag(batch)
                for tag in dev.tags:
                    assert got[tag.name][2] == waveform_value(dev.name, tag, t), tag.name

        for t in (1_000_000.0, 1_000_017.5):
            asyncio.run(main(t))


def test_waveforms_are_deterministic_and_change() -> None:
    (dev, _) = sample_on(102)
    now = [waveform_value(dev.name, t, 500.0) for t in dev.tags]
    assert now == [waveform_value(dev.name, t, 500.0) for t in dev.tags]
    later = [waveform_value(dev.name, t, 520.0) for t in dev.tags]
    assert sum(a != b for a, b in zip(now, later, strict=True)) >= len(now) // 2


def test_areas_are_sized_for_the_devices_and_checked() -> None:
    sim = S7Simulator.for_devices(sample_on(102))
    assert sim.dbs == {10: 30, 11: 22, 20: 26}  # each DB ends at its last tag (even)
    with pytest.raises(KeyError, match="DB5 is not simulated here"):
        sim.set_bytes("DB", 0, b"\x00", db=5)
    with pytest.raises(IndexError, match=r"bytes 29\.\.30 are outside 0\.\.29"):
        sim.set_bytes("DB", 29, b"\x00\x00", db=10)
    sim.set_bit("M", 3, 5, True)
    assert sim.get_bytes("M", 3, 1) == bytes([0b0010_0000])


def test_binds_loopback_ipv4_only() -> None:
    with pytest.raises(ValueError, match="snap7's server listens on IPv4 only"):
        S7Simulator(host="::1")
    with S7Simulator() as sim:
        assert sim.host == "127.0.0.1" and sim.running and sim.port > 0
    assert not sim.running


def test_serve_devices_until_stop() -> None:
    port = closed_port("127.0.0.1")
    devices = sample_on(port)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(serve_devices(devices, stop, interval_s=0.05))
        await asyncio.sleep(0.2)
        driver = Driver(devices[0])
        await driver.connect()
        batch = await driver.read(compile_plan(devices[0]))
        assert batch.ok, batch.error
        stop.set()
        await asyncio.wait_for(task, 5)
        after = await driver.read(compile_plan(devices[0]))
        assert after.readings[0][3] == int(Quality.BAD_COMM)
        with pytest.raises(ConnectError, match="Connection refused"):
            await driver.connect()

    asyncio.run(main())


def test_command_line_serves_a_devices_file(tmp_path: Path) -> None:
    port = closed_port("127.0.0.1")
    data = yaml.safe_load(SAMPLE.read_text())
    for d in data["devices"]:
        d["port"] = port
    path = tmp_path / "devices.yaml"
    path.write_text(yaml.safe_dump(data))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "drivers.s7.simulator", str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(f"simulating filler-1: 127.0.0.1:{port}")
        dev = load_devices(path)[0]

        async def main() -> None:
            for _ in range(50):  # the server starts right after the banner
                try:
                    driver = Driver(dev)
                    await driver.connect()
                    break
                except ConnectError:
                    await asyncio.sleep(0.1)
            batch = await driver.read(compile_plan(dev))
            await driver.close()
            assert batch.ok, batch.error

        asyncio.run(main())
    finally:
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        proc.wait(10)
    assert time.monotonic() - started < 5 and proc.returncode == 0
