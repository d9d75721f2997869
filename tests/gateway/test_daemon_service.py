"""`edgegw run` as systemd runs it: READY, STATUS and WATCHDOG over a real notify
socket, its own metrics and health endpoints, and a SIGHUP reload that adds a device
without losing or re-numbering anything."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from gateway.mosquitto import Mosquitto, free_port, wait_listening
from gateway.receiver import MqttReceiver, Receiver
from gateway.status import read_status
from security import AUDIT_FILE, DeviceKey

REPO = Path(__file__).resolve().parents[2]


def device(name: str, port: int, unit: int) -> str:
    return (
        f"  - {{name: {name}, protocol: modbus_tcp, host: 127.0.0.1, port: {port}, "
        f"unit_id: {unit}, poll_interval_ms: 100,\n"
        "     tags: [{name: t, address: 0, type: float32}]}\n"
    )


def test_notify_metrics_and_reload(tmp_path: Path, broker: Mosquitto) -> None:
    sim_port, metrics_port = free_port("127.0.0.1"), free_port("127.0.0.1")
    head = (
        "gateway: {id: gw-svc, state_dir: state, flush_window_ms: 100}\n"
        f"uplink: {{host: '::1', port: {broker.port}}}\n"
        f"metrics: {{host: 127.0.0.1, port: {metrics_port}}}\n"
        "devices:\n"
    )
    (tmp_path / "sim.yaml").write_text(head + device("a", sim_port, 1) + device("b", sim_port, 2))
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(head + device("a", sim_port, 1))
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(0.2)
    env = dict(
        os.environ, PYTHONPATH=str(REPO), NOTIFY_SOCKET=str(notify_path), WATCHDOG_USEC="2000000"
    )
    env.pop("WATCHDOG_PID", None)
    sim = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "simulate", "-c", str(tmp_path / "sim.yaml")],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    state = tmp_path / "state"
    key, _ = DeviceKey.load_or_create(state)
    rx = Receiver({"gw-svc": key.public_key}, "edgegw")
    mr = MqttReceiver(rx, "::1", broker.port).start()
    messages: list[str] = []

    def collect(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            with contextlib.suppress(TimeoutError):
                messages.append(notify.recv(4096).decode())

    gw = None
    try:
        wait_listening("127.0.0.1", sim_port, 20)
        gw = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "-c", str(cfg)],
            env=env,
            stdout=open(tmp_path / "gw.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        collect(4.0)
        assert any("READY=1" in m for m in messages), messages
        assert sum("WATCHDOG=1" in m for m in messages) >= 2, messages
        assert any(m.startswith("STATUS=") or "\nSTATUS=" in m for m in messages)
        # its own metrics and health endpoints
        base = f"http://127.0.0.1:{metrics_port}"
        with urllib.request.urlopen(base + "/healthz", timeout=5) as r:
            assert r.status == 200 and json.loads(r.read())["healthy"] is True
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            text = r.read().decode()
        assert "edgegw_points_polled_total" in text and 'edgegw_device_up{device="a"} 1' in text
        # reload: add device b
        cfg.write_text(head + device("a", sim_port, 1) + device("b", sim_port, 2))
        gw.send_signal(signal.SIGHUP)
        collect(3.0)
        assert any("RELOADING=1" in m for m in messages), messages
        st = read_status(state) or {}
        assert "b" in st.get("devices", {}), st.get("devices")
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(60) == 0
        collect(0.5)
        assert any("STOPPING=1" in m for m in messages)
        time.sleep(1.0)
    finally:
        for p in (gw, sim):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        mr.stop()
        notify.close()
    final = read_status(state) or {}
    assert final.get("final") and final["boot"] == 1
    assert rx.stats.points_verified == final["pipeline"]["points_polled"]
    assert rx.stats.gaps == 0 and rx.stats.duplicates == 0
    assert rx.received("gw-svc") == [(1, final["outbox"]["last_seq"])]
    audit = (state / AUDIT_FILE).read_bytes()
    assert b"config_change" in audit and b"applied" in audit
