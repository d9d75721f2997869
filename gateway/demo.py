"""`edgegw demo`: simulated PLCs → gateway → mosquitto on [::1] → verifying receiver.

Everything is real: pymodbus's server plays the PLCs, the gateway runs as its own
process exactly as `edgegw run` would, mosquitto is the broker, and the receiver
verifies every signature. At the end polling stops, the backlog drains and the
summary compares what was polled with what was verified.
"""

from __future__ import annotations

import asyncio
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

from security import DeviceKey

from .mosquitto import Mosquitto, free_port
from .receiver import MqttReceiver, Receiver, SqliteSink, summary
from .status import read_status

DEMO_CONFIG = """\
# Written by `edgegw demo`: three simulated Modbus TCP devices on [::1].
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
"""


class _SimThread(threading.Thread):
    """The simulated PLCs, on their own event loop in a background thread."""

    def __init__(self, devices: list[Any]) -> None:
        super().__init__(daemon=True, name="simulator")
        self.devices = devices
        self.loop = asyncio.new_event_loop()
        self.stop_event: asyncio.Event | None = None
        self.ready = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        from drivers.modbus.simulator import serve_devices

        async def main() -> None:
            self.stop_event = asyncio.Event()
            task = asyncio.create_task(serve_devices(self.devices, self.stop_event))
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
    broker = Mosquitto(host="::1", workdir=sd / "broker").start()
    sim_port = free_port("::1")
    cfg_path = sd / "demo.yaml"
    cfg_path.write_text(
        DEMO_CONFIG.format(state_dir=sd, broker_port=broker.port, sim_port=sim_port)
    )
    cfg = load_config(cfg_path)
    sim = _SimThread(list(cfg.devices))
    sim.start()
    sim.ready.wait(15)
    if sim.error:
        broker.stop()
        raise SystemExit(f"edgegw demo: the simulator failed: {sim.error}")
    key, _ = DeviceKey.load_or_create(sd)  # the gateway loads this same key
    sink = SqliteSink(sd / "received.db")
    rx = Receiver({key.kid: key.public_key}, cfg.uplink.topic_prefix, sink, track_latency=True)
    mr = MqttReceiver(rx, "::1", broker.port).start()
    say(f"edgegw demo: broker [::1]:{broker.port}, PLC simulator [::1]:{sim_port}, state in {sd}")
    log = open(sd / "gateway.log", "wb")  # noqa: SIM115
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    gw = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "run", "-c", str(cfg_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    t0 = time.monotonic()
    try:
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
    finally:
        mr.stop()
        sink.close()
        sim.stop()
        broker.stop()
        log.close()
    res = _result(st, rx, time.monotonic() - t0, sd, gw.returncode)
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


def _progress(say: Any, t: float, st: dict[str, Any] | None, rx: Receiver) -> None:
    st = st or {}
    pipe, ob, up = st.get("pipeline", {}), st.get("outbox", {}), st.get("uplink", {})
    say(
        f"  {t:5.1f}s  polled {pipe.get('points_polled', 0):>7}  "
        f"verified {rx.stats.points_verified:>7}  messages {rx.stats.messages_verified:>5}  "
        f"backlog {ob.get('rows', 0):>3}  link {'up' if up.get('link_up') else 'down'}"
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
    )
    return r
