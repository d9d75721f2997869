"""What the gateway learned about a device's map, as a plant engineer and a technician
see it: `edgegw validate` shows it with the plan, `edgegw read` uses it without writing
it, and `edgegw read --relearn` forgets it."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from drivers.modbus import Table, compile_plan
from drivers.modbus.driver import Driver
from drivers.modbus.learn import learned_file
from drivers.modbus.simulator import ModbusSimulator
from gateway.config import load_config
from gateway.mosquitto import Mosquitto
from gateway.status import read_status
from tests.drivers.modbus.test_cli_read_scan import run

Sim = Callable[..., ModbusSimulator]

TAGS = """\
    tags:
      - {name: a, register: 40001}
      - {name: b, register: 40005}
      - {name: c, register: 40009}
"""


def test_validate_shows_what_was_learned_and_read_relearn_forgets_it(
    capsys: pytest.CaptureFixture[str], threaded_sim: Sim, tmp_path: Path
) -> None:
    sim = threaded_sim(holes={Table.HOLDING: [(2, 3)]})
    path = tmp_path / "config.yaml"
    path.write_text(
        f"gateway: {{id: gw1, state_dir: {tmp_path / 'state'}}}\n"
        "devices:\n"
        f"  - protocol: modbus_tcp\n    name: meter\n    host: 127.0.0.1\n    port: {sim.port}\n"
        + TAGS
    )
    code, out, _ = run(capsys, "validate", str(path))
    assert code == 0 and "holding 0..8 (9 regs, 6 unused): a, b, c" in out
    assert "learned" not in out

    # the daemon's driver learns (and writes the state dir)
    cfg = load_config(path)

    async def daemon_cycle() -> None:
        driver = Driver(cfg.devices[0], learned_file=learned_file(cfg.state_dir, "meter"))
        await driver.connect()
        await driver.read(compile_plan(cfg.devices[0]))
        await driver.close()

    asyncio.run(daemon_cycle())
    saved = learned_file(cfg.state_dir, "meter")
    assert saved.exists()

    code, out, _ = run(capsys, "validate", str(path))
    assert code == 0, out
    assert "holding 0..0 (1 reg): a" in out and "holding 4..8 (5 regs, 3 unused): b, c" in out
    assert "what the gateway learned about the device" in out
    assert "    holding 1..3: refused by the device, not bridged" in out

    # read uses it (two requests, all good) and leaves the file as it was
    before = saved.read_bytes()
    code, out, err = run(capsys, "read", "-c", str(path), "--device", "meter")
    assert code == 0, out + err
    assert "3 tag(s) in 2 request(s)" in out
    assert "learned: holding 1..3: refused by the device, not bridged" in out
    assert saved.read_bytes() == before

    # --relearn forgets it; the read splits again to learn, in memory only
    code, out, err = run(capsys, "read", "-c", str(path), "--device", "meter", "--relearn")
    assert code == 0, out + err
    assert "meter: forgot what was learned" in err and not saved.exists()
    assert "3 tag(s) in 5 request(s)" in out and "3 good, 0 bad" in out
    code, out, _ = run(
        capsys, "read", "modbus-tcp://127.0.0.1:1", "--register", "40001", "--relearn"
    )
    assert code == 2


def test_read_relearn_tells_the_running_daemon(
    capsys: pytest.CaptureFixture[str], threaded_sim: Sim, tmp_path: Path, broker: Mosquitto
) -> None:
    """With `edgegw run` running, --relearn deletes the file and sends the daemon a
    SIGHUP (its pid from status.json): the daemon forgets too and learns again (it splits
    again), instead of going on with, and later writing back, what it knew."""
    sim = threaded_sim(holes={Table.HOLDING: [(2, 3)]})
    state = tmp_path / "state"
    path = tmp_path / "config.yaml"
    path.write_text(
        f"gateway: {{id: gw1, state_dir: {state}, flush_window_ms: 100}}\n"
        f"uplink: {{host: '::1', port: {broker.port}}}\nmetrics: {{enabled: false}}\n"
        "devices:\n"
        f"  - protocol: modbus_tcp\n    name: meter\n    host: 127.0.0.1\n    port: {sim.port}\n"
        "    poll_interval_ms: 100\n" + TAGS
    )
    saved = learned_file(state, "meter")
    log = (tmp_path / "run.log").open("wb")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "run", "-c", str(path)], stderr=log
    )

    def splits() -> int:
        snap = read_status(state) or {}
        driver = (snap.get("devices", {}).get("meter") or {}).get("driver") or {}
        return int(driver.get("splits", 0))

    def wait(cond: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 30  # a bound only
        while not cond():
            if time.monotonic() > deadline or daemon.poll() is not None:
                pytest.fail(f"{what}:\n" + (tmp_path / "run.log").read_text()[-3000:])
            time.sleep(0.1)

    try:
        wait(lambda: saved.exists() and splits() > 0, "the daemon did not learn")
        learned_before = splits()
        time.sleep(0.5)
        assert splits() == learned_before  # settled: it learned once, then reads around it
        code, out, err = run(capsys, "read", "-c", str(path), "--device", "meter", "--relearn")
        assert code == 0, out + err
        assert "meter: forgot what was learned" in err
        assert f"told the running daemon (pid {daemon.pid}) to reload" in err
        wait(lambda: splits() > learned_before, "the daemon did not learn again")
        wait(saved.exists, "the daemon did not save what it learned again")
        assert daemon.poll() is None
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log.close()


def test_read_relearn_without_a_daemon_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"gateway: {{id: gw1, state_dir: {tmp_path / 'state'}}}\ndevices:\n"
        "  - {protocol: modbus_tcp, name: meter, host: 127.0.0.1, port: 1, timeout_ms: 100,\n"
        "     tags: [{name: a, register: 40001}]}\n"
    )
    code, _, err = run(capsys, "read", "-c", str(path), "--relearn")
    assert code == 1  # nothing answers on port 1
    assert f"no daemon runs on {tmp_path / 'state'}: it starts without it" in err
