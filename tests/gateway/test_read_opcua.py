"""`edgegw read` on an OPC UA device: a technician's one-shot read through the same
registry path as the daemon, against asyncua's real server over [::1]."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path

from drivers.opcua.simulator import serve_devices
from gateway.config import load_config
from gateway.mosquitto import free_port, wait_listening

REPO = Path(__file__).resolve().parents[2]


def test_read_an_opcua_device(tmp_path: Path) -> None:
    port = free_port("::1")
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        "gateway: {id: gw-read, state_dir: state}\n"
        "devices:\n"
        "  - name: boiler-ua\n    protocol: opcua\n"
        f"    endpoint: opc.tcp://[::1]:{port}/edgegw/sim\n"
        "    tags:\n"
        "      - {name: water_temp, node: 'ns=2;s=Boiler.WaterTemp', type: Double, unit: degC}\n"
        "      - {name: burner_on, node: 'ns=2;s=Boiler.BurnerOn', type: Boolean}\n"
        "      - {name: missing, node: 'ns=2;s=No.Such.Node', type: Double}\n"
    )
    # the simulator serves the two real nodes; the map the technician reads asks for three
    sim_cfg = tmp_path / "sim.yaml"
    sim_cfg.write_text(
        cfg.read_text().replace(
            "      - {name: missing, node: 'ns=2;s=No.Such.Node', type: Double}\n", ""
        )
    )
    devices = list(load_config(sim_cfg).devices)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    t = threading.Thread(
        target=loop.run_until_complete, args=(serve_devices(devices, stop),), daemon=True
    )
    t.start()
    try:
        wait_listening("::1", port, 30)
        r = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "read", "-c", str(cfg)],
            capture_output=True,
            text=True,
            timeout=90,
            cwd=REPO,
        )
    finally:
        loop.call_soon_threadsafe(stop.set)
        t.join(30)
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines() if line.strip()}
    # one bad node: exit 1, and the table says which tag and why
    assert r.returncode == 1, r.stdout + r.stderr
    assert rows["water_temp"][-1] == "GOOD" and "degC" in rows["water_temp"]
    assert rows["burner_on"][-1] == "GOOD"
    assert "missing" in rows and "GOOD" not in rows["missing"]
    assert "BadNodeIdUnknown" in r.stdout + r.stderr
    assert "Traceback" not in r.stderr
