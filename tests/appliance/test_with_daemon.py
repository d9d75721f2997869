"""status, doctor and metrics on the status of a real `edgegw run`: a simulated Modbus
device (`edgegw simulate`), a real mosquitto, the daemon as its own process."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.commands import doctor, status
from gateway.metrics import MetricsServer
from gateway.mosquitto import Mosquitto, free_port, wait_listening
from gateway.status import read_status

from .conftest import make_snapshot, run_command
from .test_metrics import get


def _stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@pytest.fixture
def running(
    tmp_path: Path, broker: Mosquitto
) -> Iterator[tuple[Path, Path, subprocess.Popen[bytes]]]:
    state = tmp_path / "state"
    sim_port = free_port("::1")
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        f"gateway: {{id: gw-live, state_dir: {state}, flush_window_ms: 100}}\n"
        f"uplink: {{host: '::1', port: {broker.port}}}\n"
        "devices:\n"
        f"  - name: boiler\n    protocol: modbus_tcp\n    host: '::1'\n    port: {sim_port}\n"
        "    poll_interval_ms: 100\n"
        "    tags: [{name: temperature, address: 0, type: float32}]\n"
    )
    cli = [sys.executable, "-m", "gateway.cli"]
    logs = tmp_path / "logs"
    logs.mkdir()
    sim = subprocess.Popen(
        [*cli, "simulate", "-c", str(cfg)],
        stderr=open(logs / "sim.log", "wb"),  # noqa: SIM115
    )
    run = None
    try:
        wait_listening("::1", sim_port, timeout=20)
        run = subprocess.Popen(
            [*cli, "run", "-c", str(cfg)],
            stderr=open(logs / "run.log", "wb"),  # noqa: SIM115
        )
        deadline = time.monotonic() + 30
        while True:
            snap = read_status(state)
            up = snap and snap["uplink"]["link_up"] and snap["devices"]["boiler"]["up"]
            if up and snap["pipeline"]["points_polled"] > 0:  # type: ignore[index]
                break
            if time.monotonic() > deadline or run.poll() is not None:
                pytest.fail("the daemon did not come up:\n" + (logs / "run.log").read_text())
            time.sleep(0.2)
        yield cfg, state, run
    finally:
        if run is not None:
            _stop(run)
        _stop(sim)


def test_status_doctor_and_metrics_on_a_live_daemon(
    running: tuple[Path, Path, subprocess.Popen[bytes]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg, state, run = running

    # The real snapshot has every key the fixtures of the other tests assume.
    real: dict[str, Any] = read_status(state)  # type: ignore[assignment]
    model = make_snapshot()
    assert set(model) <= set(real)
    for part in ("pipeline", "uplink", "outbox"):
        assert set(model[part]) <= set(real[part]), part  # type: ignore[arg-type]
    assert set(model["devices"]["boiler"]) <= set(real["devices"]["boiler"])  # type: ignore[index]

    assert run_command(status, "status", "-c", str(cfg), "--once") == 0
    out = capsys.readouterr().out
    assert f"running, pid {run.pid}" in out and "uplink   up" in out
    assert next(line for line in out.splitlines() if line.startswith("boiler")).split()[1] == "up"

    monkeypatch.setattr(doctor, "SERVICE_USER", "edgegw-test-no-such-user")  # files are ours
    c = {x.name: x for x in doctor.run_checks(str(cfg), timeout=2)}
    assert c["daemon"].outcome == "pass" and "link up" in c["daemon"].detail
    assert c["broker IPv6"].outcome == "pass"
    assert c["device boiler"].outcome == "pass"
    assert c["device key"].outcome == "pass", c["device key"]  # created by the daemon: 0600
    assert c["state dir"].outcome == "pass", c["state dir"]

    with MetricsServer(lambda: read_status(state), port=0) as srv:
        body = get(srv.url + "/metrics")[2]
        assert get(srv.url + "/healthz")[0] == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(body)
        for s in f.samples
    }
    assert samples[("edgegw_device_up", (("device", "boiler"),))] == 1
    assert samples[("edgegw_uplink_up", ())] == 1
    assert samples[("edgegw_points_polled_total", ())] > 0
    # the forwarder's and the host's figures come from the real daemon too
    assert samples[("edgegw_uplink_bytes_sent_total", ())] > 0
    assert samples[("edgegw_uplink_puback_latency_seconds_count", ())] > 0
    assert samples[("edgegw_outbox_limit_bytes", ())] > 0
    assert any(name == "edgegw_disk_free_bytes" and v > 0 for (name, _), v in samples.items())
    assert (
        samples[("edgegw_build_info", (("gateway", "gw-live"), ("version", real["version"])))] == 1
    )

    # A clean stop leaves a final snapshot that status names as such.
    _stop(run)
    assert run.returncode == 0
    assert run_command(status, "status", "--state-dir", str(state), "--once") == 1
    assert "STOPPED cleanly" in capsys.readouterr().out
