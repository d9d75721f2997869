"""/readyz of a real `edgegw run` answers what a load balancer or an orchestrator needs:
200 while it runs (even with the broker down: that is degraded, not unready), 503 from
SIGTERM on while the outbox drains (live all the while), and the server stays up until
the final status is written."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest

from gateway.mosquitto import free_port, wait_listening
from gateway.status import read_status

from .test_metrics import get


def test_readyz_is_503_during_the_shutdown_drain(tmp_path: Path) -> None:
    state = tmp_path / "state"
    sim_port, metrics_port = free_port("::1"), free_port("127.0.0.1")
    dead_broker = free_port("::1")  # nothing listens: the drain waits its full time
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        f"gateway: {{id: gw-drain, state_dir: {state}, flush_window_ms: 100, "
        "shutdown_drain_s: 6}\n"
        f"uplink: {{host: '::1', port: {dead_broker}}}\n"
        f"metrics: {{enabled: true, host: 127.0.0.1, port: {metrics_port}}}\n"
        "devices:\n"
        f"  - name: boiler\n    protocol: modbus_tcp\n    host: '::1'\n    port: {sim_port}\n"
        "    poll_interval_ms: 100\n"
        "    tags: [{name: temperature, address: 0, type: float32}]\n"
    )
    cli = [sys.executable, "-m", "gateway.cli"]
    url = f"http://127.0.0.1:{metrics_port}"
    with (tmp_path / "sim.log").open("wb") as sim_log, (tmp_path / "run.log").open("wb") as log:
        sim = subprocess.Popen([*cli, "simulate", "-c", str(cfg)], stderr=sim_log)
        run = None
        try:
            wait_listening("::1", sim_port, timeout=20)
            run = subprocess.Popen([*cli, "run", "-c", str(cfg)], stderr=log)
            deadline = time.monotonic() + 30  # a bound only
            while True:
                snap = read_status(state) or {}
                backlog = (snap.get("outbox") or {}).get("rows", 0)
                try:
                    ready = get(url + "/readyz")[0]
                except urllib.error.URLError:
                    ready = None
                if ready == 200 and backlog > 0:
                    break
                if time.monotonic() > deadline or run.poll() is not None:
                    pytest.fail("not ready:\n" + (tmp_path / "run.log").read_text()[-3000:])
                time.sleep(0.1)
            health = json.loads(get(url + "/healthz")[2])
            assert health["status"] == "degraded" and health["ready"] is True  # broker down

            run.send_signal(signal.SIGTERM)
            seen: list[tuple[int, int] | str] = []
            deadline = time.monotonic() + 40  # a bound only: the drain takes 6 s
            while run.poll() is None and time.monotonic() < deadline:
                try:
                    code, _, body = get(url + "/readyz")
                    live = get(url + "/livez")[0]
                except OSError:  # refused, or reset while the server closes
                    seen.append("closed")  # after the final status: the end
                    time.sleep(0.05)
                    continue
                seen.append((code, live))
                if code == 503:
                    doc = json.loads(body)
                    assert doc["stopping"] is True and doc["live"] is True, doc
                time.sleep(0.05)
            answers = [s for s in seen if s != "closed"]
            draining = [s for s in answers if s[0] == 503]
            # 503 at once (at most the answers already under way before), then all
            # along the drain; live all the while (the loop runs; the drain is work)
            assert len(draining) >= 10, seen
            first = answers.index(draining[0])
            assert first <= 2 and answers[first:] == draining, seen
            assert all(live == 200 for _, live in answers), seen
            assert "closed" not in seen or set(seen[seen.index("closed") :]) == {"closed"}
            assert run.wait(30) == 0
            final = read_status(state) or {}
            assert final.get("final") is True and final.get("stopping") is True
        finally:
            for p in (run, sim):
                if p is not None and p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    try:
                        p.wait(20)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()
