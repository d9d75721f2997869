"""Inference inside the daemon: windows of live Modbus data are scored by a real
onnxruntime model; the anomaly event and the published scores reach the platform
signed; a model whose hash does not match stops the daemon with a clear error and an
audit record."""

from __future__ import annotations

import asyncio
import struct
import subprocess
import sys
import time
from pathlib import Path

from drivers.modbus.config import Table
from drivers.modbus.simulator import ModbusSimulator
from gateway.config import load_config
from gateway.daemon import Daemon
from gateway.mosquitto import Mosquitto, free_port
from gateway.receiver import MqttReceiver, Payload, Receiver
from security import AUDIT_FILE, DeviceKey, Outcome, verify
from tests.inference.conftest import save, score_model


class Sink:
    def __init__(self) -> None:
        self.payloads: list[Payload] = []

    def write(self, p: Payload, kid: bytes, received_ns: int) -> None:
        self.payloads.append(p)

    def close(self) -> None:
        pass


def config(tmp: Path, broker_port: int, sim_port: int, sha: str) -> Path:
    f = tmp / "gw.yaml"
    f.write_text(
        "gateway: {id: gw-inf, state_dir: state, flush_window_ms: 100}\n"
        f"uplink: {{host: '::1', port: {broker_port}}}\n"
        "metrics: {enabled: false}\n"
        "inference:\n  models:\n"
        "    - name: m\n      model: score.onnx\n"
        f"      sha256: {sha}\n"
        "      inputs: [plc/a, plc/b]\n      sample_ms: 100\n      window: 2\n"
        "      threshold: {enter: 10, exit: 5, min_duration_ms: 0}\n"
        "      publish_scores: true\n"
        "devices:\n"
        f"  - {{name: plc, protocol: modbus_tcp, host: '::1', port: {sim_port},\n"
        "     poll_interval_ms: 50, tags: [{name: a, address: 0, type: float32},\n"
        "                                  {name: b, address: 2, type: float32}]}\n"
    )
    return f


def regs(x: float) -> list[int]:
    raw = struct.pack(">f", x)
    return [int.from_bytes(raw[:2], "big"), int.from_bytes(raw[2:], "big")]


def test_anomaly_event_and_scores_arrive_signed(tmp_path: Path, broker: Mosquitto) -> None:
    sha = save(score_model(2, 2), tmp_path / "score.onnx")  # score = mean of the window
    sim = ModbusSimulator(host="::1", port=free_port("::1"))
    cfg = load_config(config(tmp_path, broker.port, sim.port, sha))
    key, _ = DeviceKey.load_or_create(cfg.state_dir)
    sink = Sink()
    rx = Receiver({"gw-inf": key.public_key}, "edgegw", sink)
    daemon = Daemon(cfg)

    async def main() -> None:
        await sim.start()
        sim.set_registers(1, Table.HOLDING, 0, regs(20.0) + regs(30.0))  # mean 25 > enter 10
        mr = MqttReceiver(rx, "::1", broker.port).start()
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        deadline = time.monotonic() + 15
        while rx.stats.events == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.wait_for(task, 30)
        await asyncio.sleep(0.5)
        mr.stop()
        await sim.stop()

    asyncio.run(main())
    events = [p.body["event"] for p in sink.payloads if p.kind == "event"]
    assert events and events[0]["model"] == "m" and events[0]["kind"] == "start"
    assert events[0]["score"] == 25.0
    scores = [
        r
        for p in sink.payloads
        if p.kind == "telemetry"
        for r in p.readings
        if r[0] == "inference/m/score"
    ]
    assert scores and all(r[2] == 25.0 and r[3] == 0 for r in scores)
    assert rx.stats.signature_failures == 0 and rx.stats.gaps == 0
    report = verify(cfg.state_dir / AUDIT_FILE, {key.kid: key.public_key})
    assert report.outcome == Outcome.OK


def test_a_changed_model_is_refused(tmp_path: Path, broker: Mosquitto) -> None:
    sha = save(score_model(2, 2), tmp_path / "score.onnx")
    model = tmp_path / "score.onnx"
    model.write_bytes(model.read_bytes() + b"\0")  # one byte appended after pinning
    cfg_path = config(tmp_path, broker.port, free_port("::1"), sha)
    r = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "run", "-c", str(cfg_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # exit 2: systemd does not restart it (RestartPreventExitStatus=2), restarting
    # cannot fix a file; and the refusal comes before the key, outbox and audit log
    assert r.returncode == 2, r.stderr[-2000:]
    assert "refusing to start" in r.stderr and "score.onnx" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "state" / AUDIT_FILE).exists()
    assert not list((tmp_path / "state").glob("outbox*"))


def test_the_inference_task_comes_back_after_a_failure(tmp_path: Path, broker: Mosquitto) -> None:
    """The inference task fails delivering a score (an injected error): the supervisor
    starts it again, the windows it had not judged go back first, and the anomaly event
    and the scores after it still reach the platform signed."""
    sha = save(score_model(2, 2), tmp_path / "score.onnx")
    sim = ModbusSimulator(host="::1", port=free_port("::1"))
    cfg = load_config(config(tmp_path, broker.port, sim.port, sha))
    key, _ = DeviceKey.load_or_create(cfg.state_dir)
    sink = Sink()
    rx = Receiver({"gw-inf": key.public_key}, "edgegw", sink)
    daemon = Daemon(cfg)
    fired: list[int] = []
    real = daemon._on_score

    def on_score(model: str, score: float, window_end_ns: int) -> None:
        if not fired:
            fired.append(window_end_ns)
            raise RuntimeError("injected into inference")
        real(model, score, window_end_ns)

    daemon._on_score = on_score  # type: ignore[method-assign]

    async def main() -> tuple[int, bool]:
        await sim.start()
        sim.set_registers(1, Table.HOLDING, 0, regs(20.0) + regs(30.0))
        mr = MqttReceiver(rx, "::1", broker.port).start()
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        deadline = time.monotonic() + 20  # a bound only
        while (rx.stats.events == 0 or not fired) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        h = daemon.sup.health["inference"]
        alive = not daemon.sup.tasks["inference"].done()
        stop.set()
        await asyncio.wait_for(task, 30)
        await asyncio.sleep(0.5)
        mr.stop()
        await sim.stop()
        return h.restarts, alive

    restarts, alive = asyncio.run(main())
    assert fired and restarts == 1 and alive
    assert rx.stats.events >= 1
    scores = [r for p in sink.payloads for r in p.readings if r[0] == "inference/m/score"]
    assert len(scores) >= 5 and any(r[1] == fired[0] for r in scores)  # put back, sent
