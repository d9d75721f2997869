"""`edgegw demo`: simulated PLCs → gateway → mosquitto on [::1] → verifying receiver.

Everything is real: pymodbus's server plays the PLCs, the gateway runs as its own
process exactly as `edgegw run` would, mosquitto is the broker, and the receiver
verifies every signature. At the end polling stops, the backlog drains and the
summary compares what was polled with what was verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from security.keyring import init_keys

from .mosquitto import Mosquitto, free_port
from .receiver import MqttReceiver, Receiver, SqliteStore, summary
from .status import read_status

DEMO_CONFIG = """\
# Written by `edgegw demo`: simulated Modbus TCP devices and an OPC UA server on [::1],
# a Siemens S7 PLC on 127.0.0.1 (snap7's simulator is IPv4 only), and the shipped
# anomaly model watching six tags.
gateway:
  id: demo-gw
  state_dir: {state_dir}
  flush_window_ms: 250
uplink:
  host: "::1"
  port: {broker_port}
  topic_prefix: edgegw
devices:
  - name: boiler
    protocol: modbus_tcp
    host: "::1"
    port: {sim_port}
    unit_id: 1
    poll_interval_ms: 100
    tags:
      - {{name: temperature, address: 0, type: float32, unit: degC}}
      - {{name: pressure, address: 2, type: float32, unit: bar}}
      - {{name: burner_on, address: 4, type: bool}}
      - {{name: starts, address: 5, type: uint32}}
      - {{name: setpoint, address: 10, type: int16, scale: 0.1, unit: degC}}
  - name: pump
    protocol: modbus_tcp
    host: "::1"
    port: {sim_port}
    unit_id: 2
    poll_interval_ms: 200
    byte_order: big
    word_order: little
    tags:
      - {{name: flow, address: 0, type: float32, unit: m3/h}}
      - {{name: speed, address: 2, type: uint16, unit: rpm}}
      - {{name: running, table: coil, address: 0, type: bool}}
      - {{name: energy, table: input, address: 0, type: float64, unit: kWh}}
  - name: meter
    protocol: modbus_tcp
    host: "::1"
    port: {sim_port}
    unit_id: 3
    poll_interval_ms: 500
    tags:
      - {{name: voltage, table: input, address: 0, type: float32, unit: V}}
      - {{name: current, table: input, address: 2, type: float32, unit: A}}
      - {{name: power, table: input, address: 4, type: int32, unit: W}}
      - {{name: counter, table: input, address: 6, type: uint64}}
  - name: boiler-ua
    protocol: opcua
    endpoint: opc.tcp://[::1]:{ua_port}/edgegw/sim
    publishing_interval_ms: 500
    sampling_interval_ms: 250
    tags:
      - {{name: water_temp, node: "ns=2;s=Boiler.WaterTemp", type: Double, unit: degC}}
      - {{name: burner_on, node: "ns=2;s=Boiler.BurnerOn", type: Boolean}}
      - {{name: starts, node: "ns=2;i=1001", type: UInt32}}
  - name: press
    protocol: s7
    host: 127.0.0.1
    port: {s7_port}
    rack: 0
    slot: 1
    poll_interval_ms: 500
    tags:
      - {{name: force, address: DB1.DBD0, type: REAL, unit: kN}}
      - {{name: strokes, address: DB1.DBD4, type: DINT}}
      - {{name: running, address: DB1.DBX8.0}}
      - {{name: mode, address: MW10, type: INT}}
inference:
  models:
    - name: demo
      model: default
      sha256: 2298e92f287fbd92f61c5fe037edb568133c2c05ed93566fa4f726421442e971
      inputs: [boiler/temperature, boiler/pressure, pump/flow, pump/speed, meter/voltage,
               meter/current]
      sample_ms: 1000
      window: 16
      stride: 1
      missing: skip
      threshold: {{enter: 0.011, exit: 0.0057, min_duration_ms: 2000}}
"""


START_LIMIT_S = 600.0
"""How long the demo waits for the gateway to come up (generous: emulated machines)."""


class _SimThread(threading.Thread):
    """The simulated PLCs, on their own event loop in a background thread."""

    def __init__(self, devices: list[Any], anomalies: list[Any]) -> None:
        super().__init__(daemon=True, name="simulator")
        self.devices = devices
        self.anomalies = anomalies
        self.loop = asyncio.new_event_loop()
        self.stop_event: asyncio.Event | None = None
        self.ready = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        from .simulate import serve_all

        async def main() -> None:
            self.stop_event = asyncio.Event()
            task = asyncio.create_task(
                serve_all(self.devices, self.stop_event, anomalies=self.anomalies)
            )
            await asyncio.sleep(0.5)
            self.ready.set()
            await task

        try:
            self.loop.run_until_complete(main())
        except BaseException as exc:
            self.error = exc
            self.ready.set()

    def stop(self) -> None:
        if self.stop_event is not None:
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.join(10)


def run_demo(duration: float, state_dir: str | None, json_out: bool) -> int:
    from .config import load_config

    sd = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="edgegw-demo-"))
    sd = sd.resolve()
    sd.mkdir(parents=True, exist_ok=True)
    say = print
    # Everything started is stopped again, in reverse order, whatever fails.
    with contextlib.ExitStack() as stack:
        broker = Mosquitto(host="::1", workdir=sd / "broker").start()
        stack.callback(broker.stop)
        sim_port, ua_port, s7_port = free_port("::1"), free_port("::1"), free_port("127.0.0.1")
        cfg_path = sd / "demo.yaml"
        text = DEMO_CONFIG.format(
            state_dir=sd,
            broker_port=broker.port,
            sim_port=sim_port,
            ua_port=ua_port,
            s7_port=s7_port,
        )
        no_model = _why_no_inference()
        if no_model:  # e.g. the armhf package: run everything else
            text = text[: text.index("inference:\n")]
            say(f"edgegw demo: the anomaly model is left out: {no_model}")
        cfg_path.write_text(text)
        cfg = load_config(cfg_path)
        sim = _SimThread(list(cfg.devices), _anomalies(cfg, duration))
        sim.start()
        stack.callback(sim.stop)
        sim.ready.wait(15)
        if sim.error:
            raise SystemExit(f"edgegw demo: the simulator failed: {sim.error}")
        key, _ = init_keys(sd)  # the gateway loads this same key; its root is enrolled
        store = SqliteStore(sd / "received.db")
        stack.callback(store.close)
        rx = Receiver(
            {cfg.gateway.id: key.public_key},
            cfg.uplink.topic_prefix,
            store=store,
            track_latency=True,
        )
        mr = MqttReceiver(rx, "::1", broker.port).start()
        stack.callback(mr.stop)
        say(
            f"edgegw demo: broker [::1]:{broker.port}; simulated PLCs: Modbus [::1]:{sim_port}, "
            f"OPC UA [::1]:{ua_port}, S7 127.0.0.1:{s7_port}; state in {sd}"
        )
        log = stack.enter_context(open(sd / "gateway.log", "wb"))
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        gw = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "-c", str(cfg_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        stack.callback(_kill, gw)
        # --duration counts polling, not start-up: on a slow machine (a Pi Zero, or an
        # arm image under qemu) importing the protocol and model libraries takes a while.
        started = time.monotonic()
        while gw.poll() is None and time.monotonic() - started < START_LIMIT_S:
            st = read_status(sd) or {}
            if st.get("pid") == gw.pid and not st.get("final"):
                break
            time.sleep(0.2)
        if time.monotonic() - started > 5:
            say(f"edgegw demo: the gateway took {time.monotonic() - started:.0f} s to start")
        t0 = time.monotonic()
        while time.monotonic() - t0 < duration:
            time.sleep(1.0)
            if gw.poll() is not None:
                say(
                    f"edgegw demo: the gateway exited early ({gw.returncode}); see {sd}/gateway.log"
                )
                break
            _progress(say, time.monotonic() - t0, read_status(sd), rx)
        if gw.poll() is None:
            say("edgegw demo: stopping the gateway (it seals its last window and drains)")
            gw.send_signal(signal.SIGTERM)
            try:
                gw.wait(cfg.gateway.shutdown_drain_s + 20)
            except subprocess.TimeoutExpired:
                gw.kill()
                gw.wait()
        st = read_status(sd) or {}
        sealed = st.get("pipeline", {}).get("points_sealed", 0)
        deadline = time.monotonic() + 15
        while rx.stats.points_verified < sealed and time.monotonic() < deadline:
            time.sleep(0.1)
    res = _result(st, rx, time.monotonic() - t0, sd, gw.returncode)
    res["left_out"] = {"inference": no_model} if no_model else {}
    say(
        f"edgegw demo: polled {res['points_polled']} points, verified {res['points_verified']} "
        f"in {res['messages_verified']} signed messages; duplicates {res['duplicates']}, "
        f"gaps {res['gaps']}, bad signatures {res['signature_failures']}; "
        f"latency p50 {res['latency_p50_ms']} ms p99 {res['latency_p99_ms']} ms"
    )
    say(
        "edgegw demo: "
        + (
            "OK: every polled point arrived verified"
            if res["ok"]
            else "FAILED: see the figures above and " + str(sd)
        )
    )
    if json_out:
        print(json.dumps(res), flush=True)
    return 0 if res["ok"] else 1


def _why_no_inference() -> str | None:
    """Why this installation cannot run the shipped model (None: it can). Looked up, not
    imported: the gateway process imports onnxruntime, the demo's own process need not."""
    if all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "numpy")):
        return None
    from .preflight import install_hint

    return install_hint("inference", "ONNX inference (onnxruntime)")


def _kill(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.kill()
        p.wait()


def _anomalies(cfg: Any, duration: float) -> list[Any]:
    """Anomalies on the model's input tags, the first once its 16-sample windows are
    full (~20 s), then one every 15 s: spike, stuck sensor, drift, in turn."""
    from drivers.modbus.simulator import AnomalyKind, anomaly_schedule

    model_inputs = set(cfg.inference.models[0].inputs) if cfg.inference.models else set()
    targets = [
        (d.name, t)
        for d in cfg.devices
        if d.protocol == "modbus_tcp"
        for t in d.tags
        if f"{d.name}/{t.name}" in model_inputs
    ]
    start = time.time() + 5
    if not targets or duration < 25:
        return []
    kinds = (AnomalyKind.SPIKE, AnomalyKind.STUCK, AnomalyKind.DRIFT)
    durations = {AnomalyKind.SPIKE: 3.0, AnomalyKind.STUCK: 8.0, AnomalyKind.DRIFT: 10.0}
    return anomaly_schedule(
        targets,
        seed=7,
        start_t=start,
        end_t=start + duration - 8,
        every_s=15,
        kinds=kinds,
        magnitude=0.5,
        durations=durations,
    )


def _progress(say: Any, t: float, st: dict[str, Any] | None, rx: Receiver) -> None:
    st = st or {}
    pipe, ob, up = st.get("pipeline", {}), st.get("outbox", {}), st.get("uplink", {})
    say(
        f"  {t:5.1f}s  polled {pipe.get('points_polled', 0):>7}  "
        f"verified {rx.stats.points_verified:>7}  messages {rx.stats.messages_verified:>5}  "
        f"backlog {ob.get('rows', 0):>3}  link {'up' if up.get('link_up') else 'down'}  "
        f"anomaly events {rx.stats.events}"
    )


def _pct(values: Any, q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 2)


def _result(
    st: dict[str, Any], rx: Receiver, elapsed: float, sd: Path, rc: int | None
) -> dict[str, Any]:
    pipe = st.get("pipeline", {})
    r: dict[str, Any] = {
        "points_polled": pipe.get("points_polled", 0),
        "points_sealed": pipe.get("points_sealed", 0),
        "messages_sealed": pipe.get("messages_sealed", 0),
        **summary(rx),
        "anomaly_events": rx.stats.events,
        "latency_p50_ms": _pct(rx.latencies_ms, 0.5),
        "latency_p99_ms": _pct(rx.latencies_ms, 0.99),
        "seconds": round(elapsed, 1),
        "gateway_exit": rc,
        "state_dir": str(sd),
    }
    r["ok"] = bool(
        rc == 0
        and r["points_polled"] > 0
        and r["points_verified"] == r["points_polled"]
        and r["signature_failures"] == 0
        and r["gaps"] == 0
        and r["conflicts"] == 0
        and r["alerts"] == 0
    )
    return r
